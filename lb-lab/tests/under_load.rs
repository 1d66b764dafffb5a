//! Conntrack and NAT under real load in the Kind-like lab (offloads as Docker sets them,
//! kindnet's masquerade): tens of thousands of connections through a masqueraded NodePort,
//! thousands held open beside them, source-port clashes, checksums on every path with the
//! kernel completing them, backends that are the node itself, datagrams larger than the MTU,
//! and ICMP errors about replies. Every failure is counted; the goal is zero.
//!
//! The external client is `lbk-host`, which reaches worker2's address directly; pods are
//! probed in-process (the tc path).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    load::{self, Held, LoadReport},
    netns,
    probe::ProbeRequest,
    process::{self, DaemonSpec},
    scenarios::{Failed, Scenario},
    Binaries, Lab, UpOptions,
};
use serde_json::Value;

/// How long an agent may take to program a change.
const SYNC_DEADLINE: Duration = Duration::from_secs(15);
const HOST_NS: &str = "lbk-host";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
const WORKER_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);

// One backend, worker-echo-1, behind an ETP=Cluster NodePort reached via worker2: every
// connection is masqueraded to worker2 and forwarded to worker.
const ONE_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 1);
const ONE_NODE_PORT: u16 = 30501;
// Two ClusterIPs over that one backend (source-port clashes).
const CLASH_A: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 2);
const CLASH_B: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 3);
// A hundred ClusterIPs over worker's two echo pods: 10.96.51.0..99.
const MANY: usize = 100;
// A hostNetwork backend: a server in worker's own namespace on HOST_PORT, behind NodePorts
// with each traffic policy and LoadBalancer IPs routed to worker.
const HOST_PORT: u16 = 9090;
const HOSTNET_CLUSTER_NP: u16 = 30511;
const HOSTNET_LOCAL_NP: u16 = 30513;
const HOSTNET_CLUSTER_LB: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 51);
const HOSTNET_LOCAL_LB: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 52);
// Every kind of service over worker's pods, for the checksum sweep.
const SWEEP_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 20);
const SWEEP_NODE_PORT: u16 = 30521;
const SWEEP_LB: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 53);

/// A selectorless Service of `kind` with TCP and UDP port 80 (UDP's node port is the TCP
/// one + 1), and the EndpointSlice that gives it `endpoints` (address, node) on `target`.
fn manual_service(
    name: &str,
    kind: &str,
    ip: Ipv4Addr,
    node_port: Option<u16>,
    extra: &str,
    target: u16,
    endpoints: &[(Ipv4Addr, &str)],
) -> String {
    let np = |offset: u16| {
        node_port
            .map(|p| format!("\n    nodePort: {}", p + offset))
            .unwrap_or_default()
    };
    let eps: String = endpoints
        .iter()
        .map(|(ip, node)| {
            format!("\n- addresses: [{ip}]\n  nodeName: {node}\n  conditions: {{ready: true}}")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {kind}
  clusterIP: {ip}
{extra}  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: {target}{tcp_np}
  - name: udp
    port: 80
    protocol: UDP
    targetPort: {target}{udp_np}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-manual
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: http, port: {target}, protocol: TCP}}
- {{name: udp, port: {target}, protocol: UDP}}
endpoints:{eps}
",
        tcp_np = np(0),
        udp_np = np(1),
    )
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn pod_ip(lab: &Lab, pod: &str) -> Ipv4Addr {
    lab.pod(pod).expect("pod in the plan").ip
}

/// Retries `f` until it succeeds or the deadline passes.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> Result<T, Failed> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > SYNC_DEADLINE => {
                return Err(format!("{what}: still failing after {SYNC_DEADLINE:?}: {e}").into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn tcp(lab: &Lab, from: &str, to: SocketAddr, path: &str) -> Result<String, String> {
    lab.probe(from, &ProbeRequest::tcp(to, path))
        .map_err(|e| format!("TCP {from} -> {to}{path}: {e}"))
}

fn udp(lab: &Lab, from: &str, to: SocketAddr, msg: &str) -> Result<String, String> {
    lab.probe(from, &ProbeRequest::udp(to, msg))
        .map_err(|e| format!("UDP {from} -> {to}: {e}"))
}

/// The datapath counter `reason` on `node`.
fn counter(lab: &Lab, node: &str, reason: &str) -> Result<u64, Failed> {
    Ok(lab.datapath_counter(node, reason)?)
}

/// Counters that must not move under load, read before and compared after.
struct Watch<'a> {
    lab: &'a Lab,
    node: &'a str,
    before: Vec<(&'static str, u64)>,
}

const MUST_NOT_GROW: [&str; 5] = [
    "drop_snat_exhausted",
    "drop_ct_full",
    "drop_ct_insert",
    "drop_rewrite",
    "pass_no_route",
];

impl<'a> Watch<'a> {
    fn start(lab: &'a Lab, node: &'a str) -> Result<Self, Failed> {
        let before = MUST_NOT_GROW
            .iter()
            .map(|r| Ok((*r, counter(lab, node, r)?)))
            .collect::<Result<_, Failed>>()?;
        Ok(Self { lab, node, before })
    }

    fn check(&self) -> Result<(), Failed> {
        for (reason, before) in &self.before {
            let now = counter(self.lab, self.node, reason)?;
            if now != *before {
                return Err(format!("{} counted {reason}: {before} -> {now}", self.node).into());
            }
        }
        Ok(())
    }
}

fn must_be_clean(what: &str, report: &LoadReport) -> Result<(), Failed> {
    println!("{what}: {report}");
    if report.failed() != 0 {
        return Err(format!("{what}: {report}").into());
    }
    Ok(())
}

fn sequential_connections_through_a_masqueraded_node_port_all_succeed(
    lab: &Lab,
) -> Result<(), Failed> {
    let to = at(WORKER2_IP, ONE_NODE_PORT);
    eventually("the NodePort", || tcp(lab, HOST_NS, to, "/hostname"))?;
    let watch = Watch::start(lab, "worker2")?;
    // 20 000 connections one after the other: at this rate the 4536 masquerade ports are
    // each used several times, so closed flows must give theirs back.
    let mut report = LoadReport::default();
    for chunk in 0..20 {
        let part = load::short_tcp(HOST_NS, to, 1000, 1)?;
        let exhausted = counter(lab, "worker2", "drop_snat_exhausted")?;
        println!("chunk {chunk}: {part}; drop_snat_exhausted {exhausted}");
        report.elapsed += part.elapsed;
        report.merge(part);
    }
    must_be_clean("20000 sequential connections", &report)?;
    watch.check()?;
    let flows = lab.lbctl("worker2", &["conntrack", "list", "-o", "json"])?;
    let flows: Value = serde_json::from_str(&flows).map_err(|e| e.to_string())?;
    println!(
        "worker2 tracks {} flows after the run",
        flows["flows"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

fn long_lived_flows_survive_beside_short_ones(lab: &Lab) -> Result<(), Failed> {
    load::raise_fd_limit()?;
    let to = at(WORKER2_IP, ONE_NODE_PORT);
    let watch = Watch::start(lab, "worker2")?;
    let mut held = Held::open(HOST_NS, &[to], 2000, None)?;
    if !held.open_failures.is_empty() || held.len() != 2000 {
        return Err(format!("opened {} of 2000: {:?}", held.len(), held.open_failures).into());
    }
    must_be_clean("2000 long-lived flows, first exchange", &held.exchange(1))?;
    let short = load::short_tcp(HOST_NS, to, 20_000, 4)?;
    must_be_clean("20000 short connections beside them", &short)?;
    must_be_clean("2000 long-lived flows, after", &held.exchange(2))?;
    watch.check()
}

fn two_connections_from_one_port_to_two_services_with_one_backend_both_work(
    lab: &Lab,
) -> Result<(), Failed> {
    let targets = [at(CLASH_A, 80), at(CLASH_B, 80)];
    for t in targets {
        eventually("the clash services", || {
            tcp(lab, "lbk-worker2-client", t, "/hostname")
        })?;
    }
    let before = counter(lab, "worker2", "port_remapped")?;
    // Both from port 45000: after DNAT both would be client:45000 -> backend:8080.
    let mut held = Held::open("lbk-worker2-client", &targets, 2, Some(45_000))?;
    if held.len() != 2 {
        return Err(format!("opened {} of 2: {:?}", held.len(), held.open_failures).into());
    }
    for seq in 1..=20 {
        must_be_clean(
            &format!("both connections, exchange {seq}"),
            &held.exchange(seq),
        )?;
    }
    let after = counter(lab, "worker2", "port_remapped")?;
    println!("worker2 port_remapped: {before} -> {after}");
    if after <= before {
        return Err("the second connection's source port was not remapped".into());
    }
    Ok(())
}

fn a_thousand_connections_to_a_hundred_services_over_two_backends(lab: &Lab) -> Result<(), Failed> {
    load::raise_fd_limit()?;
    let targets: Vec<SocketAddr> = (0..MANY)
        .map(|i| at(Ipv4Addr::new(10, 96, 51, i as u8), 80))
        .collect();
    eventually("the last of the hundred services", || {
        tcp(lab, "lbk-worker2-client", targets[MANY - 1], "/hostname")
    })?;
    let watch = Watch::start(lab, "worker2")?;
    let before = counter(lab, "worker2", "port_remapped")?;
    let mut held = Held::open("lbk-worker2-client", &targets, 1000, None)?;
    if held.len() != 1000 {
        return Err(format!("opened {} of 1000: {:?}", held.len(), held.open_failures).into());
    }
    for seq in 1..=3 {
        must_be_clean(
            &format!("1000 connections, exchange {seq}"),
            &held.exchange(seq),
        )?;
    }
    let mut ports = held.local_ports();
    let distinct = {
        ports.sort();
        ports.dedup();
        ports.len()
    };
    println!(
        "1000 connections from {distinct} local ports; worker2 port_remapped +{}",
        counter(lab, "worker2", "port_remapped")? - before
    );
    watch.check()
}

/// A process of `node` (a hostNetwork pod) serving the echo protocol on [`HOST_PORT`].
struct HostNetworkServer(Vec<process::PidRecord>);

impl HostNetworkServer {
    fn start(lab: &Lab, node: &str) -> Result<Self, Failed> {
        let dir = lab.state_dir();
        let spec = DaemonSpec {
            ns: format!("lbk-{node}"),
            cgroup: Some(lab.node_cgroup(node)?),
            program: lab.binaries().lab.clone(),
            args: vec![
                "echo".into(),
                "--name".into(),
                format!("{node}-host").into(),
                "--port".into(),
                HOST_PORT.to_string().into(),
            ],
            log: dir.join(format!("{node}-host-echo.log")),
            pid_file: dir.join(format!("{node}-host-echo.pid")),
        };
        Ok(Self(vec![process::spawn(&spec)?]))
    }
}

impl Drop for HostNetworkServer {
    fn drop(&mut self) {
        process::stop(&self.0, Duration::from_secs(2));
    }
}

fn a_hostnetwork_backend_serves_node_ports_and_lb_ips_under_both_policies(
    lab: &Lab,
) -> Result<(), Failed> {
    let _server = HostNetworkServer::start(lab, "worker")?;
    let want = "worker-host";
    let answered_tcp = |from: &str, to: SocketAddr| -> Result<(), Failed> {
        let name = eventually(&format!("{from} -> {to}"), || {
            tcp(lab, from, to, "/hostname")
        })?;
        if name != want {
            return Err(format!("{from} -> {to} answered by {name}, not {want}").into());
        }
        Ok(())
    };
    let answered = |from: &str, to: SocketAddr| -> Result<(), Failed> {
        answered_tcp(from, to)?;
        // A NodePort's UDP twin is the next node port; a service port's is the same.
        let udp_port = if to.port() == 80 { 80 } else { to.port() + 1 };
        let name = eventually(&format!("UDP {from} -> {to}"), || {
            udp(lab, from, at(*to.ip_v4(), udp_port), "hostname")
        })?;
        if name != want {
            return Err(format!("UDP {from} -> {to} answered by {name}").into());
        }
        Ok(())
    };
    // From outside, through the backend's own node (no masquerade: it answers itself, and
    // lb_to_net translates its replies) and through another node (masqueraded there).
    for np in [HOSTNET_CLUSTER_NP, HOSTNET_LOCAL_NP] {
        answered(HOST_NS, at(WORKER_IP, np))?;
    }
    answered(HOST_NS, at(WORKER2_IP, HOSTNET_CLUSTER_NP))?;
    for lb in [HOSTNET_CLUSTER_LB, HOSTNET_LOCAL_LB] {
        answered(HOST_NS, at(lb, 80))?;
    }
    // The client address is kept when the backend is on the entry node.
    let seen = tcp(lab, HOST_NS, at(WORKER_IP, HOSTNET_CLUSTER_NP), "/clientip")?;
    if !seen.starts_with(&format!("{HOST_IP}:")) {
        return Err(format!("the hostNetwork backend saw {seen}, not the client").into());
    }
    // From pods, on another node and on the backend's. On its own node, only TCP: a UDP
    // server bound to 0.0.0.0 answers a local pod from the address of the pod's veth
    // (10.244.1.1, the route's source), not the one it was asked on, which no proxy can
    // match to the request (kube-proxy's conntrack neither); TCP answers from the
    // connection's own address.
    for np in [HOSTNET_CLUSTER_NP, HOSTNET_LOCAL_NP] {
        answered("lbk-worker2-client", at(WORKER_IP, np))?;
        answered_tcp("lbk-worker-client", at(WORKER_IP, np))?;
    }
    Ok(())
}

/// Transmit checksum offload set to `state` on the node-side veths of `node`'s pods, so the
/// kernel completes (and the pods verify) every checksum on the way in.
fn pod_veths_tx(lab: &Lab, node: &str, state: &str) -> Result<(), Failed> {
    for pod in lab.pods().iter().filter(|p| p.node == node) {
        let out = lab.exec(
            &format!("lbk-{node}"),
            &["ethtool", "-K", &pod.veth, "tx", state],
        )?;
        if !out.status.success() {
            return Err(format!(
                "ethtool -K {} tx {state}: {}",
                pod.veth,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}

/// Gives worker's pod veths their offload back when dropped.
struct VethsCompleteChecksums<'a>(&'a Lab);

impl Drop for VethsCompleteChecksums<'_> {
    fn drop(&mut self) {
        if let Err(e) = pod_veths_tx(self.0, "worker", "on") {
            eprintln!("restoring worker's pod veths: {e:?}");
        }
    }
}

/// The checksum errors every lab namespace has counted, summed (TCP, UDP).
fn checksum_errors(lab: &Lab) -> Result<Vec<(String, u64, u64)>, Failed> {
    let mut all = vec![HOST_NS.to_string()];
    all.extend(lab.nodes().iter().map(|n| n.ns.clone()));
    all.extend(lab.pods().iter().map(|p| p.ns.clone()));
    all.into_iter()
        .map(|ns| {
            let (tcp, udp) = load::checksum_errors(&ns)?;
            Ok((ns, tcp, udp))
        })
        .collect()
}

fn no_path_leaves_a_checksum_error(lab: &Lab) -> Result<(), Failed> {
    let _restore = VethsCompleteChecksums(lab);
    pod_veths_tx(lab, "worker", "off")?;
    let before = checksum_errors(lab)?;
    let targets = [
        // Through a node without the backend: lb_xdp (or tc, for CHECKSUM_PARTIAL) and
        // masquerade; through the backend's node; a LoadBalancer IP; the ClusterIP from
        // outside (masqueraded) and from pods on both nodes.
        (HOST_NS, at(WORKER2_IP, SWEEP_NODE_PORT)),
        (HOST_NS, at(WORKER_IP, SWEEP_NODE_PORT)),
        (HOST_NS, at(SWEEP_LB, 80)),
        (HOST_NS, at(SWEEP_SVC, 80)),
        ("lbk-worker2-client", at(SWEEP_SVC, 80)),
        ("lbk-worker-client", at(SWEEP_SVC, 80)),
        ("lbk-worker2-client", at(WORKER_IP, SWEEP_NODE_PORT)),
    ];
    let mut failures = Vec::new();
    for (from, to) in targets {
        eventually(&format!("{from} -> {to}"), || {
            tcp(lab, from, to, "/hostname")
        })?;
        let report = load::short_tcp(from, to, 100, 2)?;
        if report.failed() != 0 {
            failures.push(format!("TCP {from} -> {to}: {report}"));
        }
        let udp_to = at(
            *to.ip_v4(),
            if to.port() == 80 { 80 } else { to.port() + 1 },
        );
        for i in 0..100 {
            if let Err(e) = udp(lab, from, udp_to, &format!("seq {i}")) {
                failures.push(e);
            }
        }
    }
    let after = checksum_errors(lab)?;
    for ((ns, t0, u0), (_, t1, u1)) in before.iter().zip(&after) {
        if t1 != t0 || u1 != u0 {
            failures.push(format!(
                "{ns} counted checksum errors: TCP {t0} -> {t1}, UDP {u0} -> {u1}"
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}

/// Sends `len` bytes in one datagram from `ns` to `to` and waits for the answer.
fn big_datagram(ns: &str, to: SocketAddr, len: usize) -> Result<String, Failed> {
    let answer = netns::run_in(ns, || -> std::io::Result<String> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut payload = b"seq big ".to_vec();
        payload.resize(len, b'x');
        socket.send(&payload)?;
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?;
    Ok(answer?)
}

fn a_datagram_larger_than_the_mtu_arrives_whole(lab: &Lab) -> Result<(), Failed> {
    // The pods' kernels only deliver a datagram once every fragment arrived and the UDP
    // checksum over all of it holds: an answer is the proof.
    for (from, to) in [
        (HOST_NS, at(WORKER2_IP, ONE_NODE_PORT + 1)),
        ("lbk-worker2-client", at(ONE_SVC, 80)),
        ("lbk-worker-client", at(ONE_SVC, 80)),
    ] {
        eventually(&format!("UDP {from} -> {to}"), || {
            udp(lab, from, to, "hostname")
        })?;
        for i in 0..5 {
            let answer = big_datagram(from, to, 3000)
                .map_err(|e| format!("3000-byte datagram {i} {from} -> {to}: {e:?}"))?;
            if !answer.contains("seq big") {
                return Err(format!("{from} -> {to}: answered {answer:?}").into());
            }
        }
    }
    Ok(())
}

/// An IPv4 header for a quote: `src` -> `dst`, protocol UDP, with its checksum.
fn quoted_header(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![
        0x45, 0, 0, 36, 0x12, 0x34, 0x40, 0, 63, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 16, 0, 0]);
    h
}

/// Sends an ICMP fragmentation-needed (next-hop MTU `mtu`) from namespace `ns` to `to`,
/// quoting `quote`, through a raw socket (the kernel adds the IP header).
fn send_frag_needed(ns: &str, to: Ipv4Addr, mtu: u16, quote: &[u8]) -> Result<(), Failed> {
    let mut msg = vec![3, 4, 0, 0, 0, 0, 0, 0];
    msg[6..8].copy_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(quote);
    let sum = internet_checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    netns::run_in(ns, || -> std::io::Result<()> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        raw.send_to(&msg, &SockAddr::from(SocketAddr::from((to, 0))))?;
        Ok(())
    })??;
    Ok(())
}

/// The MTU `ns`'s kernel now uses towards `dst` (a path-MTU exception), if any.
fn cached_mtu(lab: &Lab, ns: &str, dst: Ipv4Addr) -> Result<Option<u32>, Failed> {
    let out = lab.exec(ns, &["ip", "route", "get", &dst.to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok()))
}

fn frag_needed_about_a_reply_reaches_the_backend_translated(lab: &Lab) -> Result<(), Failed> {
    let backend = "lbk-worker-echo-1";
    let _ = lab.exec(backend, &["ip", "route", "flush", "cache"]);
    let to = at(WORKER2_IP, ONE_NODE_PORT + 1);
    let client_port = 41_234;
    eventually("UDP through the NodePort", || {
        lab.probe(
            HOST_NS,
            &ProbeRequest::udp(to, "hostname").from_port(Some(client_port)),
        )
        .map_err(|e| e.to_string())
    })?;
    // A router on the way back to the client needs the replies smaller: its error goes to
    // the address the replies come from (the NodePort), quoting a reply as it was sent.
    let quote = quoted_header(WORKER2_IP, HOST_IP, ONE_NODE_PORT + 1, client_port);
    let before = counter(lab, "worker2", "icmp_error_translated")?;
    send_frag_needed(HOST_NS, WORKER2_IP, 1200, &quote)?;
    // The backend's kernel matched the translated quote to its socket and now sends to the
    // node it knows the client by with the smaller MTU.
    eventually(
        "the backend's path MTU towards worker2",
        || match cached_mtu(lab, backend, WORKER2_IP).map_err(|e| format!("{e:?}"))? {
            Some(1200) => Ok(()),
            other => Err(format!("mtu towards worker2 is {other:?}")),
        },
    )?;
    let after = counter(lab, "worker2", "icmp_error_translated")?;
    let _ = lab.exec(backend, &["ip", "route", "flush", "cache"]);
    if after <= before {
        return Err("worker2 counted no translated ICMP error".into());
    }
    Ok(())
}

const SCENARIOS: [(&str, Scenario); 8] = [
    (
        "sequential_connections_through_a_masqueraded_node_port_all_succeed",
        sequential_connections_through_a_masqueraded_node_port_all_succeed,
    ),
    (
        "long_lived_flows_survive_beside_short_ones",
        long_lived_flows_survive_beside_short_ones,
    ),
    (
        "two_connections_from_one_port_to_two_services_with_one_backend_both_work",
        two_connections_from_one_port_to_two_services_with_one_backend_both_work,
    ),
    (
        "a_thousand_connections_to_a_hundred_services_over_two_backends",
        a_thousand_connections_to_a_hundred_services_over_two_backends,
    ),
    (
        "a_hostnetwork_backend_serves_node_ports_and_lb_ips_under_both_policies",
        a_hostnetwork_backend_serves_node_ports_and_lb_ips_under_both_policies,
    ),
    (
        "no_path_leaves_a_checksum_error",
        no_path_leaves_a_checksum_error,
    ),
    (
        "a_datagram_larger_than_the_mtu_arrives_whole",
        a_datagram_larger_than_the_mtu_arrives_whole,
    ),
    (
        "frag_needed_about_a_reply_reaches_the_backend_translated",
        frag_needed_about_a_reply_reaches_the_backend_translated,
    ),
];

fn setup(lab: &Lab) {
    let echo1 = pod_ip(lab, "worker-echo-1");
    let apply = |name: &str, yaml: String| {
        lab.apply_yaml(name, &yaml)
            .unwrap_or_else(|e| panic!("applying {name}: {e:#}"))
    };
    apply(
        "load-one",
        manual_service(
            "load-one",
            "NodePort",
            ONE_SVC,
            Some(ONE_NODE_PORT),
            "",
            8080,
            &[(echo1, "worker")],
        ),
    );
    for (name, ip) in [("load-clash-a", CLASH_A), ("load-clash-b", CLASH_B)] {
        apply(
            name,
            manual_service(name, "ClusterIP", ip, None, "", 8080, &[(echo1, "worker")]),
        );
    }
    let many: String = (0..MANY)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Service
metadata: {{name: load-many-{i}, namespace: default}}
spec:
  clusterIP: 10.96.51.{i}
  selector: {{app: echo, node: worker}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http}}
---
"
            )
        })
        .collect();
    apply("load-many", many);
    for (name, np, lb, policy) in [
        (
            "load-hostnet-cluster",
            HOSTNET_CLUSTER_NP,
            HOSTNET_CLUSTER_LB,
            "Cluster",
        ),
        (
            "load-hostnet-local",
            HOSTNET_LOCAL_NP,
            HOSTNET_LOCAL_LB,
            "Local",
        ),
    ] {
        let ip = Ipv4Addr::new(10, 96, 50, if policy == "Local" { 12 } else { 11 });
        let mut yaml = manual_service(
            name,
            "LoadBalancer",
            ip,
            Some(np),
            &format!("  externalTrafficPolicy: {policy}\n"),
            HOST_PORT,
            &[(WORKER_IP, "worker")],
        );
        yaml = yaml.replacen(
            "---\n",
            &format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {lb}\n---\n"),
            1,
        );
        apply(name, yaml);
        lab.route_from_host(&lb.to_string(), "worker")
            .expect("route to the LoadBalancer IP");
    }
    let sweep = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: load-sweep, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: {SWEEP_SVC}
  selector: {{app: echo, node: worker}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http, nodePort: {SWEEP_NODE_PORT}}}
  - {{name: udp, port: 80, protocol: UDP, targetPort: udp, nodePort: {}}}
status:
  loadBalancer:
    ingress:
    - ip: {SWEEP_LB}
",
        SWEEP_NODE_PORT + 1
    );
    apply("load-sweep", sweep);
    lab.route_from_host(&SWEEP_LB.to_string(), "worker2")
        .expect("route to the sweep's LoadBalancer IP");
    lab.route_from_host(&SWEEP_SVC.to_string(), "worker2")
        .expect("route to the sweep's ClusterIP");
}

fn main() {
    lb_lab::scenarios::run(
        "conntrack and NAT under load",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions::default(),
        setup,
        &SCENARIOS,
    )
}

trait V4 {
    fn ip_v4(&self) -> &Ipv4Addr;
}

impl V4 for SocketAddr {
    fn ip_v4(&self) -> &Ipv4Addr {
        match self {
            SocketAddr::V4(a) => a.ip(),
            SocketAddr::V6(_) => unreachable!("the lab is IPv4"),
        }
    }
}

/// RFC 1071's checksum of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
