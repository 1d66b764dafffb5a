//! `lbctl`: shows what the datapath holds, from the maps the agent pinned.

use std::process::ExitCode;

use clap::Parser;
use lb_agent::{
    ctl::cli::{run, Args, EXIT_ERROR},
    error_chain::error_chain,
};

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(outcome) => {
            print!("{}", outcome.stdout);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("lbctl: {}", error_chain(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
