//! What `lbctl` shows: the pinned maps read back and rendered as text tables.

pub mod pinned;
pub mod render;
pub mod table;

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, which conntrack
/// timestamps come from.
pub fn monotonic_ns() -> Result<u64, nix::Error> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    // The monotonic clock is never negative.
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(t.tv_nsec()).unwrap_or(0))
}
