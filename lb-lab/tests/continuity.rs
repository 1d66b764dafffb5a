//! Continuity in the lab: live TCP and UDP flows through a ClusterIP survive the agent being
//! killed, restarted, upgraded to another eBPF object, and the API server going away; the
//! changes made meanwhile are applied once the agent (or the API server) is back.

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

const DEADLINE: Duration = Duration::from_secs(20);
/// One exchange per flow every 20 ms: a gap of a few packets would show as a failure.
const INTERVAL: Duration = Duration::from_millis(20);
/// The client pod (on node worker, whose agent is restarted) and its service's backends,
/// on worker2: replies cross nodes and come back through worker's reverse translation.
const CLIENT_NS: &str = "lbk-worker-client";

fn service(name: &str, ip: Ipv4Addr, selector: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {ip}
  selector: {{{selector}}}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
  - name: udp
    port: 80
    protocol: UDP
    targetPort: udp
"
    )
}

fn vip(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, 80))
}

fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) -> Result<(), Failed> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > DEADLINE => {
                return Err(format!("{what}: still failing after {DEADLINE:?}: {e}").into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn reachable(lab: &Lab, ip: Ipv4Addr) -> Result<(), String> {
    lab.probe_tcp(CLIENT_NS, vip(ip), "/hostname")
        .map(drop)
        .map_err(|e| format!("{ip}: {e}"))
}

fn unreachable(lab: &Lab, ip: Ipv4Addr) -> Result<(), String> {
    let mut req = lb_lab::ProbeRequest::tcp(vip(ip), "/hostname");
    req.timeout = Duration::from_millis(300);
    match lab.probe(CLIENT_NS, &req) {
        Ok(name) => Err(format!("{ip} still answered by {name}")),
        Err(_) => Ok(()),
    }
}

/// Starts a TCP and a UDP flow to `ip` and waits until both are exchanging.
fn flows(ip: Ipv4Addr, udp_port: u16) -> Result<[Flow; 2], Failed> {
    let tcp = Flow::tcp(CLIENT_NS, vip(ip), INTERVAL)?;
    let udp = Flow::udp(CLIENT_NS, vip(ip), udp_port, INTERVAL)?;
    let start = Instant::now();
    while tcp.answered() < 10 || udp.answered() < 10 {
        if start.elapsed() > DEADLINE {
            return Err("flows did not start".into());
        }
        std::thread::sleep(INTERVAL);
    }
    Ok([tcp, udp])
}

/// Lets the flows run a little longer, then checks that nothing was lost on either.
fn finish(flows: [Flow; 2]) -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(500));
    let [tcp, udp] = flows;
    let reports: [(&str, FlowReport); 2] = [("TCP", tcp.stop()), ("UDP", udp.stop())];
    for (proto, r) in &reports {
        if !r.is_lossless() {
            return Err(format!(
                "{proto} flow: {} answered, backends {:?}, failures {:?}",
                r.answered,
                r.backends,
                &r.failures[..r.failures.len().min(5)]
            )
            .into());
        }
    }
    println!(
        "flows lossless: TCP {} and UDP {} exchanges",
        reports[0].1.answered, reports[1].1.answered
    );
    Ok(())
}

fn agent_kill_9_and_restart_lose_nothing(lab: &Lab) -> Result<(), Failed> {
    let live = Ipv4Addr::new(10, 96, 2, 1);
    let changed = Ipv4Addr::new(10, 96, 2, 2);
    lab.apply_yaml(
        "cont-live",
        &service("cont-live", live, "app: echo, node: worker2"),
    )?;
    eventually("the live service", || reachable(lab, live))?;
    let flows = flows(live, 45001)?;

    lab.kill_agent("worker")?;
    // Changed while no agent runs on worker: applied only when it is back.
    lab.apply_yaml(
        "cont-changed",
        &service("cont-changed", changed, "app: echo"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    unreachable(lab, changed)?;
    lab.start_agent("worker", &[])?;
    eventually("the change made while the agent was down", || {
        reachable(lab, changed)
    })?;
    finish(flows)
}

fn a_new_ebpf_object_replaces_the_old_one_under_live_flows(lab: &Lab) -> Result<(), Failed> {
    let live = Ipv4Addr::new(10, 96, 2, 3);
    lab.apply_yaml(
        "cont-upgrade",
        &service("cont-upgrade", live, "app: echo, node: worker2"),
    )?;
    eventually("the live service", || reachable(lab, live))?;
    let before = lab.datapath_program_ids("worker")?;
    let flows = flows(live, 45002)?;

    // Another copy of the object: the agent loads it as a new program and swaps every
    // pinned link over to it.
    let upgrade = lab.state_dir().join("lb-ebpf-upgrade.o");
    std::fs::copy(&lab.binaries().bpf_object, &upgrade)?;
    lab.kill_agent("worker")?;
    lab.start_agent(
        "worker",
        &["--bpf-object".into(), upgrade.display().to_string()],
    )?;
    let after = lab.datapath_program_ids("worker")?;
    if after.len() != before.len() || after.iter().any(|id| before.contains(id)) {
        return Err(format!("programs not replaced one for one: {before:?} -> {after:?}").into());
    }
    finish(flows)
}

fn api_server_outage_keeps_serving_and_resyncs_after(lab: &Lab) -> Result<(), Failed> {
    let live = Ipv4Addr::new(10, 96, 2, 4);
    let added = Ipv4Addr::new(10, 96, 2, 5);
    lab.apply_yaml(
        "cont-outage",
        &service("cont-outage", live, "app: echo, node: worker2"),
    )?;
    eventually("the live service", || reachable(lab, live))?;
    let flows = flows(live, 45003)?;

    lab.apiserver_stop()?;
    std::thread::sleep(Duration::from_secs(2));
    // New connections, not only the flows, keep working on the last state.
    reachable(lab, live)?;
    lab.apiserver_cont()?;
    // A change the agents learn only by resyncing after a restart of the API server.
    lab.apiserver_restart()?;
    lab.apply_yaml("cont-added", &service("cont-added", added, "app: echo"))?;
    eventually("the change made after the outage", || reachable(lab, added))?;
    lab.delete_yaml("cont-added")?;
    eventually("the deletion made after the outage", || {
        unreachable(lab, added)
    })?;
    finish(flows)
}

/// The API server stopped for `LB_OUTAGE_SECONDS` (60), then its watches cut every two
/// seconds while services change: the flows never notice, new connections work throughout,
/// and every change made while the watches kept breaking is applied.
fn a_minute_without_api_server_and_cut_watches_keep_serving(lab: &Lab) -> Result<(), Failed> {
    let outage = Duration::from_secs(
        std::env::var("LB_OUTAGE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let live = Ipv4Addr::new(10, 96, 2, 6);
    lab.apply_yaml(
        "cont-long-outage",
        &service("cont-long-outage", live, "app: echo, node: worker2"),
    )?;
    eventually("the live service", || reachable(lab, live))?;
    let flows = flows(live, 45004)?;

    lab.apiserver_stop()?;
    let stopped = Instant::now();
    let mut probes = 0;
    while stopped.elapsed() < outage {
        reachable(lab, live)
            .map_err(|e| format!("{e} after {:?} without API server", stopped.elapsed()))?;
        probes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.apiserver_cont()?;
    println!("API server stopped for {outage:?}: {probes} new connections all served");

    let mut cut = 0;
    for i in 0..10u8 {
        cut += lab.apiserver_drop_watches()?;
        let ip = Ipv4Addr::new(10, 96, 2, 20 + i);
        lab.apply_yaml(
            &format!("cont-cut-{i}"),
            &service(&format!("cont-cut-{i}"), ip, "app: echo"),
        )?;
        reachable(lab, live)?;
        std::thread::sleep(Duration::from_secs(2));
    }
    for i in 0..10u8 {
        let ip = Ipv4Addr::new(10, 96, 2, 20 + i);
        eventually("a change made while watches were cut", || {
            reachable(lab, ip)
        })?;
        lab.delete_yaml(&format!("cont-cut-{i}"))?;
    }
    println!("{cut} watches cut while 10 services were added: all applied");
    finish(flows)
}

const SCENARIOS: [(&str, Scenario); 4] = [
    (
        "agent_kill_9_and_restart_lose_nothing",
        agent_kill_9_and_restart_lose_nothing,
    ),
    (
        "a_new_ebpf_object_replaces_the_old_one_under_live_flows",
        a_new_ebpf_object_replaces_the_old_one_under_live_flows,
    ),
    (
        "api_server_outage_keeps_serving_and_resyncs_after",
        api_server_outage_keeps_serving_and_resyncs_after,
    ),
    (
        "a_minute_without_api_server_and_cut_watches_keep_serving",
        a_minute_without_api_server_and_cut_watches_keep_serving,
    ),
];

fn main() {
    lb_lab::scenarios::run(
        "continuity lab tests",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions {
            agent_source: AgentSource::Kube,
            ..UpOptions::default()
        },
        |_| {},
        &SCENARIOS,
    )
}
