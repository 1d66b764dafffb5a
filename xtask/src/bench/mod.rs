//! `cargo xtask bench`: measurements that print figures and write a report under
//! `target/bench/`. Nothing here asserts a timing; tests do not run it.

pub mod kube_proxy;
mod programming;
mod stats;

use anyhow::Result;

#[derive(clap::Subcommand, Clone)]
pub enum BenchCommand {
    /// Control-plane programming: time to program N services from the API server, full
    /// resync time, agent memory, and the latency of single endpoint changes.
    Programming(programming::Args),
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Programming(args) => programming::run(args),
    }
}
