//! `lbctl`: shows what the datapath holds, from the maps the agent pinned.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lb_agent::{
    ctl::{monotonic_ns, pinned, render},
    privilege,
};

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Inspect the lb datapath's pinned maps"
)]
struct Args {
    /// The agent's --pin-dir.
    #[arg(long, default_value = "/sys/fs/bpf/lb", global = true)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with the maps.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Packet counters by reason (non-zero ones).
    Stats,
}

#[derive(Debug, Subcommand)]
enum MapsCommand {
    /// Print frontends, backend slots, backends, conntrack and counters.
    Dump,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<String> {
    privilege::check_reader("lbctl")?;
    let out = match args.command {
        Command::Maps {
            command: MapsCommand::Dump,
        } => {
            let contents = pinned::read_maps(&args.pin_dir)?;
            let counters = pinned::read_counters(&args.pin_dir)?;
            let now = monotonic_ns().context("reading CLOCK_MONOTONIC")?;
            render::dump(&contents, &counters, now)
        }
        Command::Stats => render::counters(&pinned::read_counters(&args.pin_dir)?).to_string(),
    };
    Ok(out)
}
