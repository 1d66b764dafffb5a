//! `cargo xtask test`: every test there is, with the BPF and lab tests really running where
//! privileges allow (and required to, under CI=true).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{
    build::{run_build, BuildArgs},
    run::{run, say},
};

#[derive(clap::Args, Clone, Default)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn run_tests(args: &TestArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let artifacts = run_build(&BuildArgs::default())?;
    crate::toolchain::ensure_lab_tools()?;
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        say("CI=true: tests that need root, BPF or network namespaces must run, not skip");
    }
    say("running host unit tests, BPF packet tests (BPF_PROG_TEST_RUN) and lab tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        // Every test binary runs even after a failure, so one run shows every failure.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--no-fail-fast",
        ])
        .args(&args.cargo_args)
        .current_dir(&artifacts.workspace)
        .env("LB_EBPF_OBJECT", &artifacts.ebpf_object)
        .env("LB_BIN_DIR", &artifacts.bin_dir))
    .context("tests failed")?;
    bench_smoke()?;
    say(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// `cargo xtask bench --quick` as a smoke test of the harness (it needs the lab, so root).
fn bench_smoke() -> Result<()> {
    if !lb_lab::testing::is_root() {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the bench smoke test must run as root (CI=true, so not skipping)"
        );
        say("skipped the bench smoke test: must run as root (it builds the lab)");
        return Ok(());
    }
    say("bench smoke test: cargo xtask bench --quick");
    crate::bench::smoke().context("bench smoke test failed")
}
