//! `cargo xtask demo`: the simulated Kind cluster with ClusterIP, NodePort and LoadBalancer
//! services, exercised from pods on every node, from the host (the external client, through
//! a route to a node, as in Kind) and from a node's own process (socket-level LB), then what
//! the datapath holds.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_lab::{probe::ProbeRequest, testing::lab_lock, Lab, ProbeError, UpOptions};

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

/// A NodePort service over every echo pod and an externalTrafficPolicy=Local LoadBalancer
/// over worker's, with the ingress IP a cloud controller or MetalLB would have set.
const NORTH_SOUTH: &str = "apiVersion: v1
kind: Service
metadata: {name: echo-nodeport, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  selector: {app: echo}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30080}
  - {name: udp, port: 80, protocol: UDP, targetPort: udp, nodePort: 30081}
---
apiVersion: v1
kind: Service
metadata: {name: echo-lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalTrafficPolicy: Local
  selector: {app: echo, node: worker}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30090}
  - {name: udp, port: 80, protocol: UDP, targetPort: udp, nodePort: 30091}
status:
  loadBalancer:
    ingress:
    - ip: 172.18.255.200
";
/// The LoadBalancer IP, routed from the host via node worker (which holds its pods).
const LB_IP: &str = "172.18.255.200";

/// Who asks, in the north-south table.
#[derive(Clone, Copy)]
enum Client {
    /// The host namespace (the external client).
    Host,
    /// A process of node control-plane (no pods of echo-lb there), in its cgroup.
    Node,
}

/// (client, label, TCP address, UDP address) of each north-south request.
const NORTH_SOUTH_TARGETS: [(Client, &str, &str, &str); 7] = [
    (
        Client::Host,
        "NodePort control-plane",
        "172.18.0.2:30080",
        "172.18.0.2:30081",
    ),
    (
        Client::Host,
        "NodePort worker",
        "172.18.0.3:30080",
        "172.18.0.3:30081",
    ),
    (
        Client::Host,
        "NodePort worker2",
        "172.18.0.4:30080",
        "172.18.0.4:30081",
    ),
    (
        Client::Host,
        "LB IP via worker",
        "172.18.255.200:80",
        "172.18.255.200:80",
    ),
    (
        Client::Node,
        "ClusterIP of NodePort",
        "10.96.0.30:80",
        "10.96.0.30:80",
    ),
    (
        Client::Node,
        "NodePort on 127.0.0.1",
        "127.0.0.1:30080",
        "127.0.0.1:30081",
    ),
    (
        Client::Node,
        "LB IP",
        "172.18.255.200:80",
        "172.18.255.200:80",
    ),
];

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

    let mut failures = exercise(&lab)?;

    say("applying a NodePort and a LoadBalancer service; routing the LB IP from the host via worker");
    lab.apply_yaml("north-south", NORTH_SOUTH)?;
    lab.route_from_host(LB_IP, "worker")?;
    failures += exercise_north_south(&lab)?;

    say("the services node worker serves (lbctl services)");
    run(Command::new(&bins.lbctl)
        .arg("--pin-dir")
        .arg(lab.pin_dir("worker"))
        .arg("services"))?;
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

/// Requests from the host (through its route to a node) and from a process of node
/// control-plane, over TCP and UDP; prints who answered and which client address the
/// backend saw. Returns the number of failures.
fn exercise_north_south(lab: &Lab) -> Result<usize> {
    // Every node's agent programs the new services on its own: wait for each of them.
    for node in lab.nodes() {
        wait_until_served(lab, "lbk-host", SocketAddr::new(node.ip.into(), 30080))?;
    }
    println!(
        "\n{:<26} {:<24} {:<22} {:<5} {:<22} client seen by backend",
        "from", "to", "address", "proto", "answered by"
    );
    let mut failures = 0;
    for (client, label, tcp, udp) in NORTH_SOUTH_TARGETS {
        for (proto, req) in [
            ("TCP", ProbeRequest::tcp(tcp.parse()?, "/")),
            ("UDP", ProbeRequest::udp(udp.parse()?, "")),
        ] {
            let (from, result): (&str, Result<String, ProbeError>) = match client {
                Client::Host => ("host (172.18.0.1)", lab.probe("lbk-host", &req)),
                Client::Node => (
                    "process on control-plane",
                    lab.probe_from_node("control-plane", &req),
                ),
            };
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
                "{from:<26} {label:<24} {:<22} {proto:<5} {by:<22} {seen}",
                req.addr
            );
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
