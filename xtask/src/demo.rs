//! `cargo xtask demo`: the simulated Kind cluster with ClusterIP services, exercised from pods
//! on every node, then what the datapath holds.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_lab::{testing::lab_lock, Lab, UpOptions};

use crate::{
    build::{run_build, BuildArgs},
    run::{run, say},
};

#[derive(clap::Args, Clone, Default)]
pub struct DemoArgs {
    /// Leave the lab up afterwards (`cargo xtask lab down` removes it).
    #[arg(long)]
    pub keep: bool,
}

const EXAMPLES: &str = "deploy/examples/echo-services.yaml";

/// (label, TCP address, UDP address) of each example service port.
const TARGETS: [(&str, &str, &str); 2] = [
    ("echo (all nodes)", "10.96.0.10:80", "10.96.0.10:53"),
    (
        "echo-worker (node worker)",
        "10.96.0.20:8000",
        "10.96.0.20:8000",
    ),
];

pub fn run_demo(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let artifacts = run_build(&BuildArgs::default())?;
    crate::toolchain::ensure_lab_tools()?;
    let bins = artifacts.lab_binaries();
    let _lock = lab_lock();
    say("bringing up the lab: 3 nodes, 9 pods, one lb-agent per node");
    // Torn down on any error or panic below, unless --keep.
    let lab = Lab::up(&bins, UpOptions::default())?.down_on_drop();
    let yaml = std::fs::read_to_string(artifacts.workspace.join(EXAMPLES))
        .with_context(|| format!("reading {EXAMPLES}"))?;
    say(&format!("applying {EXAMPLES}"));
    lab.apply_yaml("examples", &yaml)?;

    let failures = exercise(&lab)?;

    say("what the datapath on node worker holds (lbctl maps dump)");
    run(Command::new(&bins.lbctl)
        .arg("--pin-dir")
        .arg(lab.pin_dir("worker"))
        .args(["maps", "dump"]))?;

    if args.keep {
        lab.keep();
        say("lab left up: `cargo xtask lab status`, `cargo xtask lab down`");
    } else {
        say("tearing the lab down (--keep leaves it up)");
        print!("{}", lab.down()?);
    }
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    say(&format!("demo passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// Requests from every node's client pod to every service, over TCP and UDP; prints who
/// answered and which client address the backend saw. Returns the number of failures.
fn exercise(lab: &Lab) -> Result<usize> {
    // The agents program new services within milliseconds; the first request may still race
    // the file watcher, so it is retried for a few seconds.
    wait_until_served(lab, "lbk-worker-client", TARGETS[0].1.parse()?)?;
    println!(
        "\n{:<22} {:<27} {:<5} {:<22} client seen by backend",
        "from pod", "service", "proto", "answered by"
    );
    let mut failures = 0;
    for client in lab.pods().iter().filter(|p| p.role == "client") {
        for (label, tcp, udp) in TARGETS {
            for (proto, result) in [
                (
                    "TCP",
                    lab.probe_tcp(&client.ns, tcp.parse::<SocketAddr>()?, "/"),
                ),
                (
                    "UDP",
                    lab.probe_udp(&client.ns, udp.parse::<SocketAddr>()?, "", None),
                ),
            ] {
                let (by, seen) = match result {
                    Ok(answer) => {
                        let (name, seen) = answer.trim().split_once(' ').unwrap_or((&answer, "?"));
                        (name.to_string(), seen.to_string())
                    }
                    Err(e) => {
                        failures += 1;
                        (format!("FAILED: {e}"), String::new())
                    }
                };
                println!(
                    "{:<22} {:<27} {:<5} {:<22} {}",
                    client.name, label, proto, by, seen
                );
            }
        }
    }
    println!();
    Ok(failures)
}

fn wait_until_served(lab: &Lab, from: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match lab.probe_tcp(from, addr, "/hostname") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("{addr} not served after 15 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
