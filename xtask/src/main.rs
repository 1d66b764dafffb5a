//! `cargo xtask`: build, test, lab and demo automation for lb.

mod bench;
mod build;
mod demo;
mod fuzz;
mod run;
mod soak;
mod test;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and run lb")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object and the userspace binaries (installs missing toolchain pieces).
    Build(build::BuildArgs),
    /// The main job: a simulated Kind cluster with ClusterIP services, exercised from pods.
    Demo(demo::DemoArgs),
    /// Run every test: host unit tests, BPF packet tests and lab tests.
    Test(test::TestArgs),
    /// The datapath fuzzer's long run: generated and mutated packets through every packet
    /// program, checked by an oracle (`--packets N [--seed S] [--threads T]`).
    Fuzz(fuzz::FuzzArgs),
    /// Mixed traffic and churn for `--minutes M` in the lab: agent memory and CPU, map fill
    /// and GC cost over time, every failure (report in target/soak/).
    Soak(soak::SoakArgs),
    /// Measurements that print figures and write a report under target/bench/.
    Bench(bench::BenchArgs),
    /// Manage the network-namespace lab (a simulated Kind cluster).
    Lab {
        #[command(subcommand)]
        cmd: lb_lab::cli::LabCommand,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build(args) => build::run_build(&args).map(|_| ()),
        Cmd::Demo(args) => demo::run_demo(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Test(args) => test::run_tests(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Soak(args) => soak::run(&args),
        Cmd::Lab { cmd } => {
            // Only `up` starts binaries; the rest work on what is already there.
            let artifacts = if matches!(cmd, lb_lab::cli::LabCommand::Up { .. }) {
                toolchain::ensure_lab_tools()?;
                build::run_build(&build::BuildArgs::default())?
            } else {
                build::Artifacts::existing(false)
            };
            lb_lab::cli::run(cmd, &artifacts.lab_binaries())
        }
    }
}
