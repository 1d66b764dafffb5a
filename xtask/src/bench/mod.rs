//! `cargo xtask bench`: measurements that print figures and write a report under
//! `target/bench/`. Nothing here asserts a timing; tests do not run it (except `--quick`, as
//! a smoke test of the harness, which asserts none).
//!
//! `cargo xtask bench [--quick] [--services ..] [--endpoints ..] [--modes ..] [--only ..]`
//! runs each [`Part`] in turn for every size and mode, collecting [`results::Figure`]s, and
//! then writes the report.

mod datapath;
pub mod kube_proxy;
mod memory;
mod programming;
// Filled by the measurement parts as they land.
#[allow(dead_code)]
mod results;
mod rule_apply;
mod stats;

use anyhow::Result;

use results::{Mode, Part, Results, Settings};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCommand>,
    /// Small N and few samples, in under 5 minutes: a smoke test of the harness.
    #[arg(long)]
    quick: bool,
    /// Service counts to measure at [default: 100,1000,10000,30000; --quick: 100].
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Endpoints per service [default: 2,10; --quick: 2].
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<usize>>,
    /// What runs on the nodes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ebpf,iptables,nftables,direct"
    )]
    modes: Vec<Mode>,
    /// Run only these parts [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<Part>>,
}

#[derive(clap::Subcommand, Clone)]
pub enum BenchCommand {
    /// Control-plane programming: time to program N services from the API server, full
    /// resync time, agent memory, and the latency of single endpoint changes.
    Programming(programming::Args),
}

impl BenchArgs {
    fn settings(&self) -> Settings {
        let (services, endpoints) = if self.quick {
            (vec![100], vec![2])
        } else {
            (vec![100, 1000, 10_000, 30_000], vec![2, 10])
        };
        Settings {
            quick: self.quick,
            services: self.services.clone().unwrap_or(services),
            endpoints: self.endpoints.clone().unwrap_or(endpoints),
            modes: self.modes.clone(),
            parts: self.only.clone().unwrap_or_else(|| Part::ALL.to_vec()),
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(cmd) = &args.cmd {
        return match cmd {
            BenchCommand::Programming(a) => programming::run(a),
        };
    }
    let settings = args.settings();
    let mut results = Results::default();
    // Temporary dispatch until the harness lands.
    let mut status = |s: &str| crate::run::say(s);
    for part in &settings.parts {
        match part {
            Part::Datapath => datapath::run(&settings, &mut results, &mut status)?,
            Part::Memory => memory::run(&settings, &mut results, &mut status)?,
            Part::Programming => rule_apply::run(&settings, &mut results, &mut status)?,
            _ => results.note(format!("{part:?}: not measured yet")),
        }
    }
    let workspace = crate::build::workspace_root();
    let dir = workspace.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bench.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&serde_json::json!({
            "settings": settings,
            "results": results,
        }))?,
    )?;
    crate::run::say(&format!("raw figures in {}", file.display()));
    Ok(())
}
