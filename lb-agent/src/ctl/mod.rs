//! `lbctl`: what the datapath holds, read from the maps the agent pinned (so it works while
//! the agent is down), and how that compares with what the agent wants.
//!
//! [`pinned`] reads the maps into a [`snapshot::Snapshot`]; [`dump`], [`services`],
//! [`conntrack`], [`stats`] and [`diff`] turn it into views, each printable as a table or as
//! JSON ([`output`]); [`skipped`] shows what the agent left out (from its `/state`, as
//! [`diff`] reads it); [`parity`] compares the maps with kube-proxy's ruleset; [`cli`] wires
//! them to the command line.

pub mod attachments;
pub mod cli;
pub mod conntrack;
pub mod desired;
pub mod diff;
pub mod dump;
pub mod format;
pub mod http;
pub mod map_id;
pub mod output;
pub mod parity;
pub mod pinned;
pub mod services;
pub mod skipped;
pub mod snapshot;
pub mod stats;
pub mod table;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod kernel_tests;

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, which conntrack
/// and affinity timestamps come from.
pub fn monotonic_ns() -> Result<u64, nix::Error> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    // The monotonic clock is never negative.
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(t.tv_nsec()).unwrap_or(0))
}
