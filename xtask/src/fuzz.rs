//! `cargo xtask fuzz`: the datapath fuzzer's long run (`lb_ebpf_tests::fuzz`), one node per
//! thread, each in a network namespace of its own; failing packets are written to
//! `lb-ebpf-tests/fuzz/regressions/`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use lb_ebpf_tests::fuzz::{self, corpus};

use crate::{
    build::{run_build, BuildArgs},
    run::say,
};

#[derive(clap::Args, Clone)]
pub struct FuzzArgs {
    /// Generated packets in all (each goes through every packet program).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// The run's seed (thread i uses seed + i); random if not given.
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Threads, each with its own datapath and network namespace.
    #[arg(long, default_value_t = 2)]
    pub threads: u64,
    /// Write the seed corpus into lb-ebpf-tests/fuzz/corpus and stop.
    #[arg(long)]
    pub write_corpus: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| e.to_string())
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.write_corpus {
        let dir = corpus::dir().join("corpus");
        let n = corpus::write_seeds(&dir)?;
        say(&format!("wrote {n} seed packets into {}", dir.display()));
        return Ok(());
    }
    if !lb_lab::testing::is_root() {
        bail!("the fuzzer loads BPF programs and creates network namespaces: run it as root");
    }
    let artifacts = run_build(&BuildArgs::default())?;
    // The harness finds the object through this, as under `cargo xtask test`.
    std::env::set_var("LB_EBPF_OBJECT", &artifacts.ebpf_object);
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let threads = args.threads.max(1);
    let corpus_packets: Vec<Vec<u8>> = corpus::load(&corpus::dir().join("corpus"))?
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let regressions = corpus::load(&corpus::dir().join("regressions"))?;
    say(&format!(
        "fuzzing: {} packets over {threads} threads, seed {seed:#x} (thread i: seed + i), {} corpus packets, {} regression cases",
        args.packets,
        corpus_packets.len(),
        regressions.len()
    ));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let mut opts = fuzz::Options::new(
                seed.wrapping_add(i),
                args.packets / threads + u64::from(i < args.packets % threads),
            );
            opts.corpus = corpus_packets.clone();
            let regressions = if i == 0 {
                regressions.clone()
            } else {
                Vec::new()
            };
            std::thread::spawn(move || -> Result<fuzz::Report> {
                let mut report = fuzz::run(&opts)?;
                if !regressions.is_empty() {
                    report.merge(fuzz::replay(&regressions, false)?);
                }
                report.seed = opts.seed;
                Ok(report)
            })
        })
        .collect();
    let mut total = fuzz::Report::default();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let report = h
            .join()
            .map_err(|_| anyhow::anyhow!("fuzz thread {i} panicked"))?
            .with_context(|| format!("fuzz thread {i}"))?;
        let thread_seed = report.seed;
        for f in &report.findings {
            let path = corpus::save_finding(&corpus::dir().join("regressions"), f, thread_seed)?;
            failures.push(format!(
                "{}: {} -> {}",
                f.program,
                f.message,
                path.display()
            ));
        }
        total.merge(report);
    }
    total.seed = seed;
    total.elapsed = started.elapsed();
    println!("{}", total.summary());
    if !failures.is_empty() || total.more_findings > 0 {
        bail!(
            "the oracle refused {} runs; regression cases written:\n{}",
            failures.len() as u64 + total.more_findings,
            failures.join("\n")
        );
    }
    say("no findings");
    Ok(())
}
