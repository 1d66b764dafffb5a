//! `cargo xtask bench`: measurements that print figures and write a report under
//! `target/bench/`. Nothing here asserts a timing; tests do not run it (except `--quick`, as
//! a smoke test of the harness, which asserts none).
//!
//! `cargo xtask bench [--quick] [--services ..] [--endpoints ..] [--modes ..] [--only ..]`
//! runs each [`Part`] in turn for every size and mode, collecting [`results::Figure`]s, and
//! then writes the report.

mod client;
mod datapath;
mod gc;
pub use xtask::kube_proxy;
mod lab_modes;
mod machine;
mod masq;
mod memory;
mod plots;
mod programming;
mod report;
mod results;
mod rule_apply;
mod stats;
pub(crate) mod traffic;

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
    /// The largest kube-proxy ruleset, in chains (services × (endpoints + 1)), that the
    /// iptables and nftables baselines load; larger sizes run ebpf and direct only, with a
    /// note in the report.
    #[arg(long, default_value_t = results::BASELINE_MAX_CHAINS)]
    baseline_max_chains: usize,
    /// Run only these parts [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<Part>>,
}

#[derive(clap::Subcommand, Clone)]
pub enum BenchCommand {
    /// Control-plane programming: time to program N services from the API server, full
    /// resync time, agent memory, and the latency of single endpoint changes.
    Programming(programming::Args),
    /// The GC part's measurement alone, as JSON (what a full run starts in a release build).
    #[command(hide = true)]
    GcPass(gc::Args),
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
            baseline_max_chains: self.baseline_max_chains,
        }
    }
}

/// A status message that starts with this marks one step (a size in a mode) done: the bar
/// moves on. Any other message only changes the bar's text.
pub const STEP_DONE: &str = "\u{2713} ";

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(cmd) = &args.cmd {
        return match cmd {
            BenchCommand::Programming(a) => programming::run(a),
            BenchCommand::GcPass(a) => gc::pass_command(a),
        };
    }
    let dir = crate::build::workspace_root().join("target/bench");
    measure_and_report(&args.settings(), &dir).map(drop)
}

/// The smoke test `cargo xtask test` runs: the `--quick` bench, every part and mode, with its
/// report under `target/bench/quick/`; fails unless every part that this build measures
/// produced figures and the report and plots were written. Asserts no timing.
pub fn smoke() -> Result<()> {
    let settings = Settings {
        quick: true,
        services: vec![100],
        endpoints: vec![2],
        modes: Mode::ALL.to_vec(),
        parts: Part::ALL.to_vec(),
        baseline_max_chains: results::BASELINE_MAX_CHAINS,
    };
    let dir = crate::build::workspace_root().join("target/bench/quick");
    let results = measure_and_report(&settings, &dir)?;
    let report = std::fs::read_to_string(dir.join("report.md"))?;
    let mut missing = Vec::new();
    for part in &settings.parts {
        for metric in part_metrics(*part) {
            for mode in part_subjects(*part) {
                if !results
                    .figures
                    .iter()
                    .any(|f| f.metric == *metric && mode.is_none_or(|m| f.subject == m.name()))
                {
                    missing.push(format!(
                        "{part:?}: {metric} {}",
                        mode.map_or("", |m| m.name())
                    ));
                }
            }
            if !report.contains(metric) {
                missing.push(format!("report.md does not mention {metric}"));
            }
        }
    }
    if !dir.join("connect_latency.png").exists() {
        missing.push("connect_latency.png".into());
    }
    anyhow::ensure!(
        missing.is_empty(),
        "the quick bench left out: {}\nnotes: {:#?}",
        missing.join(", "),
        results.notes
    );
    crate::run::say(&format!(
        "bench smoke test: report and plots in {}",
        dir.display()
    ));
    Ok(())
}

/// The metrics each part must produce.
fn part_metrics(part: Part) -> &'static [&'static str] {
    match part {
        Part::Connect => &["connect_latency"],
        Part::ConnRate => &["conn_rate"],
        Part::Throughput => &["throughput", "rr_latency"],
        Part::Cpu => &["cpu_per_mpkt"],
        Part::Programming => &["program_full", "endpoint_change"],
        Part::Datapath => &["ns_per_packet"],
        Part::Memory => &["agent_rss", "map_memory"],
        Part::MasqConnRate => &["masq_conn_rate", "masq_failures"],
        Part::Sustained => &["sustained_conn_rate", "sustained_failures"],
        Part::Gc => &["gc_pass", "gc_per_entry"],
    }
}

/// Whose figures each part must have: every mode for the traffic parts (but `direct` from
/// the host, which has no route to pods), anyone otherwise.
fn part_subjects(part: Part) -> Vec<Option<Mode>> {
    match part {
        Part::Connect | Part::ConnRate | Part::Throughput | Part::Cpu => {
            Mode::ALL.iter().copied().map(Some).collect()
        }
        Part::MasqConnRate | Part::Sustained => masq::MODES.iter().copied().map(Some).collect(),
        Part::Programming => vec![Some(Mode::Ebpf)],
        Part::Datapath | Part::Memory | Part::Gc => vec![None],
    }
}

/// Runs every part of `settings` and writes the report into `dir`.
fn measure_and_report(settings: &Settings, dir: &std::path::Path) -> Result<Results> {
    let started = std::time::Instant::now();
    let mut results = Results::default();
    let steps = settings.parts.len() * settings.sizes().len() * settings.modes.len();
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}",
        )?
        .progress_chars("=> "),
    );
    let mut status = |msg: &str| {
        match msg.strip_prefix(STEP_DONE) {
            Some(rest) => {
                bar.inc(1);
                bar.set_message(rest.to_string());
            }
            None => bar.set_message(msg.to_string()),
        }
        // Also in the log: a bar alone leaves nothing behind when a run fails, and a hidden
        // bar (no terminal) prints nothing at all.
        if bar.is_hidden() {
            eprintln!("bench: {msg}");
        } else {
            bar.println(format!("bench: {msg}"));
        }
    };
    // The lab parts share one lab, brought up once for all of them (at the first of them).
    let mut lab = traffic::Once::default();
    for &part in &settings.parts {
        let (settings, results) = (&settings, &mut results);
        let outcome = match part {
            Part::Datapath => datapath::run(settings, results, &mut status),
            Part::Memory => memory::run(settings, results, &mut status),
            Part::Gc => gc::run(settings, results, &mut status),
            // kube-proxy's tools in a throwaway namespace, then ours in the lab.
            Part::Programming => rule_apply::run(settings, results, &mut status).and(lab.run(
                settings,
                results,
                &mut status,
            )),
            Part::Connect
            | Part::ConnRate
            | Part::MasqConnRate
            | Part::Throughput
            | Part::Cpu
            | Part::Sustained => lab.run(settings, results, &mut status),
        };
        if let Err(e) = outcome {
            results.note(format!("{part:?} failed: {e:#}"));
            status(&format!("{part:?} failed: {e:#}"));
        }
    }
    bar.finish_with_message("done");
    let written = report::write(dir, settings, &results, started.elapsed())?;
    for file in written {
        crate::run::say(&format!("wrote {}", file.display()));
    }
    Ok(results)
}
