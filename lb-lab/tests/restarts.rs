//! `kill -9` at random points of big syncs, many times in a row, under live flows.
//!
//! `LB_RESTART_SERVICES` services (1000 by default; the 10 000 with
//! `LB_RESTART_SERVICES=10000`) are programmed on node worker. Each of `LB_RESTART_ROUNDS`
//! rounds (20) kills worker's agent, changes a tenth of the services while it is down (so
//! the next start has real writes to make), starts it and kills it again at a random moment
//! of that sync, then starts it once more and waits until it is ready: its maps must then
//! equal the desired state (`lbctl diff` empty).
//!
//! Meanwhile long-lived flows run through worker: TCP and UDP from a pod to a ClusterIP,
//! and TCP and UDP from the host to a masqueraded NodePort and to an LB IP. None may lose an
//! exchange or move to another backend.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    flow::{Flow, FlowReport},
    scenarios::{Failed, Scenario},
    AgentSource, Binaries, Lab, UpOptions,
};

const NODE: &str = "worker";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const CLIENT_NS: &str = "lbk-worker-client";
const HOST_NS: &str = "lbk-host";
const LIVE: Ipv4Addr = Ipv4Addr::new(10, 96, 3, 1);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 63);
const NODE_PORT: u16 = 30631;
/// One exchange per flow every 20 ms: a gap of a few packets shows as a failure.
const INTERVAL: Duration = Duration::from_millis(20);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Service `i` of the bulk: a ClusterIP from 10.96.100.1 on, selecting the echo pods of one node
/// (`generation` picks which, so a change moves its backends).
fn bulk(i: usize, generation: usize) -> String {
    let nodes = ["control-plane", "worker2"];
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: bulk-{i}, namespace: default}}
spec:
  clusterIP: 10.96.{}.{}
  selector: {{app: echo, node: {}}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http}}
---
",
        100 + i / 250,
        i % 250 + 1,
        nodes[(i + generation) % 2]
    )
}

fn apply_bulk(lab: &Lab, range: std::ops::Range<usize>, generation: usize) -> Result<(), Failed> {
    let yaml: String = range.clone().map(|i| bulk(i, generation)).collect();
    lab.apply_yaml(&format!("bulk-{}-{}", range.start, range.end), &yaml)
        .map_err(|e| format!("{e:#}"))?;
    Ok(())
}

fn lbctl_diff(lab: &Lab) -> Result<(bool, String), Failed> {
    let argv = [
        lab.binaries().lbctl.display().to_string(),
        "--pin-dir".into(),
        lab.pin_dir(NODE).display().to_string(),
        "diff".into(),
    ];
    let out = lab.exec(&format!("lbk-{NODE}"), &argv)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// A small xorshift, seeded from the clock and printed, for the kill points.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kill_9_at_random_points_of_big_syncs_loses_no_flow(lab: &Lab) -> Result<(), Failed> {
    let services = env("LB_RESTART_SERVICES", 1000);
    let rounds = env("LB_RESTART_ROUNDS", 20);
    let started = Instant::now();
    apply_bulk(lab, 0..services, 0)?;
    // Ready and converged with every service, before the flows start.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (same, out) = lbctl_diff(lab)?;
        if same {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{services} services not programmed in 120 s:\n{out}").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "restarts: {services} services programmed on {NODE} in {:.1?}",
        started.elapsed()
    );
    let flows = [
        (
            "pod -> ClusterIP TCP",
            Flow::tcp(CLIENT_NS, at(LIVE, 80), INTERVAL)?,
        ),
        (
            "pod -> ClusterIP UDP",
            Flow::udp(CLIENT_NS, at(LIVE, 80), 46001, INTERVAL)?,
        ),
        (
            "host -> NodePort TCP",
            Flow::tcp(HOST_NS, at(NODE_IP, NODE_PORT), INTERVAL)?,
        ),
        (
            "host -> NodePort UDP",
            Flow::udp(HOST_NS, at(NODE_IP, NODE_PORT + 1), 46002, INTERVAL)?,
        ),
        (
            "host -> LB IP TCP",
            Flow::tcp(HOST_NS, at(LB_IP, 80), INTERVAL)?,
        ),
        (
            "host -> LB IP UDP",
            Flow::udp(HOST_NS, at(LB_IP, 80), 46003, INTERVAL)?,
        ),
    ];
    let wait = Instant::now();
    while flows.iter().any(|(_, f)| f.answered() < 10) {
        if wait.elapsed() > Duration::from_secs(20) {
            return Err("the flows did not start".into());
        }
        std::thread::sleep(INTERVAL);
    }

    let seed = started.elapsed().as_nanos() as u64 | 1;
    println!("restarts: kill points seeded with {seed:#x}");
    let mut rng = Rng(seed);
    // How long a start takes to sync, measured as we go: the kill points spread over it.
    let mut sync_ms = 2000u64;
    let chunk = (services / 10).max(1);
    for round in 0..rounds {
        lab.kill_agent(NODE)?;
        let first = (round * chunk) % services;
        apply_bulk(lab, first..(first + chunk).min(services), round + 1)?;
        let kill_at = Duration::from_millis(rng.below(sync_ms));
        lab.spawn_agent_unready(NODE, &[])?;
        std::thread::sleep(kill_at);
        lab.kill_agent(NODE)?;
        let restart = Instant::now();
        lab.start_agent(NODE, &[])?;
        sync_ms = (restart.elapsed().as_millis() as u64).max(200);
        let (same, out) = lbctl_diff(lab)?;
        if !same {
            return Err(format!(
                "round {round} (killed {kill_at:?} into a sync): the maps differ from the desired state:\n{out}"
            )
            .into());
        }
        println!(
            "restarts: round {round}: killed {kill_at:.0?} into the sync, restarted and converged in {:.0?}",
            restart.elapsed()
        );
    }

    std::thread::sleep(Duration::from_millis(500));
    let mut lost = Vec::new();
    for (what, flow) in flows {
        let r: FlowReport = flow.stop();
        println!(
            "restarts: {what}: {} exchanges, backends {:?}, {} failures",
            r.answered,
            r.backends,
            r.failures.len()
        );
        if !r.is_lossless() {
            lost.push(format!(
                "{what}: {} answered, backends {:?}, failures {:?}",
                r.answered,
                r.backends,
                &r.failures[..r.failures.len().min(5)]
            ));
        }
    }
    if lost.is_empty() {
        Ok(())
    } else {
        Err(lost.join("\n").into())
    }
}

const SCENARIOS: [(&str, Scenario); 1] = [(
    "kill_9_at_random_points_of_big_syncs_loses_no_flow",
    kill_9_at_random_points_of_big_syncs_loses_no_flow,
)];

fn main() {
    lb_lab::scenarios::run(
        "restarts under big syncs",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions {
            agent_source: AgentSource::Kube,
            ..UpOptions::default()
        },
        |lab| {
            // Backends on worker2 only: every flow crosses worker, whose agent is killed.
            let yaml = format!(
                "apiVersion: v1
kind: Service
metadata: {{name: restarts-live, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: {LIVE}
  selector: {{app: echo, node: worker2}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http, nodePort: {NODE_PORT}}}
  - {{name: udp, port: 80, protocol: UDP, targetPort: udp, nodePort: {}}}
status:
  loadBalancer:
    ingress:
    - ip: {LB_IP}
",
                NODE_PORT + 1
            );
            lab.apply_yaml("restarts-live", &yaml)
                .expect("applying the live service");
            lab.route_from_host(&LB_IP.to_string(), NODE)
                .expect("routing the LB IP via worker");
        },
        &SCENARIOS,
    )
}
