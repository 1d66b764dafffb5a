//! The conntrack lifecycle in the lab: the agent's GC removes the entries of closed and idle
//! flows within their timeout and one GC interval and never touches live ones, and a full
//! table refuses new flows (counted) while established TCP streams carry on.
//!
//! The agents run with short timeouts, a fixed GC interval and a small table for UDP, so
//! that the test sees an hour's worth of churn in seconds: the mechanisms are the same as at
//! the defaults (those are in the packet tests and the unit tests of the GC).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    flow::Flow,
    load, netns,
    probe::ProbeRequest,
    scenarios::{Failed, Scenario},
    Binaries, Lab, UpOptions,
};
use serde_json::Value;

const HOST_NS: &str = "lbk-host";
const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 60, 1);
const NODE_PORT: u16 = 30601;
/// The agents' settings: what "closed" and "idle" mean here, and how often the GC runs.
const UDP_TIMEOUT_S: u64 = 4;
const CLOSE_TIMEOUT_S: u64 = 2;
const GC_INTERVAL_S: u64 = 2;
/// The UDP table's entries (two per flow).
const ANY_TABLE: u64 = 4096;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The flows worker2 tracks, as `lbctl conntrack list` shows them.
fn flows(lab: &Lab) -> Result<Vec<Value>, Failed> {
    let out = lab.lbctl("worker2", &["conntrack", "list", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(v["flows"].as_array().cloned().unwrap_or_default())
}

/// Client ports of worker2's tracked flows from the host.
fn host_ports(lab: &Lab) -> Result<BTreeSet<u64>, Failed> {
    Ok(flows(lab)?
        .iter()
        .filter(|f| f["client"] == "172.18.0.1")
        .filter_map(|f| f["client_port"].as_u64())
        .collect())
}

fn counter(lab: &Lab, node: &str, reason: &str) -> Result<u64, Failed> {
    Ok(lab.datapath_counter(node, reason)?)
}

fn wait_served(lab: &Lab) -> Result<(), Failed> {
    let start = Instant::now();
    loop {
        let tcp = lab.probe(
            HOST_NS,
            &ProbeRequest::tcp(at(WORKER2_IP, NODE_PORT), "/hostname"),
        );
        let udp = lab.probe(
            HOST_NS,
            &ProbeRequest::udp(at(WORKER2_IP, NODE_PORT + 1), "x"),
        );
        if tcp.is_ok() && udp.is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(15) {
            return Err(format!("the NodePort is not served: {tcp:?} {udp:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn closed_and_idle_flows_are_collected_and_live_ones_never_touched(
    lab: &Lab,
) -> Result<(), Failed> {
    wait_served(lab)?;
    // Live: a TCP stream and a UDP exchange every 300 ms, from fixed ports.
    let live_tcp = Flow::tcp(
        HOST_NS,
        at(WORKER2_IP, NODE_PORT),
        Duration::from_millis(300),
    )?;
    let live_udp = Flow::udp(
        HOST_NS,
        at(WORKER2_IP, NODE_PORT + 1),
        43_210,
        Duration::from_millis(300),
    )?;
    // Closed: 200 finished TCP connections. Idle: 200 one-shot UDP exchanges.
    let closed = load::short_tcp(HOST_NS, at(WORKER2_IP, NODE_PORT), 200, 2)?;
    if closed.failed() != 0 {
        return Err(format!("short connections: {closed}").into());
    }
    for i in 0..200u16 {
        lab.probe(
            HOST_NS,
            &ProbeRequest::udp(at(WORKER2_IP, NODE_PORT + 1), "x").from_port(Some(44_000 + i)),
        )
        .map_err(|e| format!("UDP from port {}: {e}", 44_000 + i))?;
    }
    let tracked = host_ports(lab)?.len();
    println!("worker2 tracks {tracked} flows from the host after the burst");
    if tracked < 200 {
        return Err(format!("only {tracked} flows tracked: the burst was not seen").into());
    }
    // Their timeout plus one GC interval, plus a second for the clock's tick and a pass.
    let bound = Duration::from_secs(UDP_TIMEOUT_S.max(CLOSE_TIMEOUT_S) + GC_INTERVAL_S + 2);
    let start = Instant::now();
    let left = loop {
        let left = host_ports(lab)?;
        if left.len() <= 2 || start.elapsed() > bound + Duration::from_secs(10) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let took = start.elapsed();
    let tcp_report = live_tcp.stop();
    let udp_report = live_udp.stop();
    println!(
        "collected in {took:.1?} (bound {bound:?}); left {left:?}; live TCP {} answered, UDP {}",
        tcp_report.answered, udp_report.answered
    );
    if !tcp_report.is_lossless() || !udp_report.is_lossless() {
        return Err(format!(
            "a live flow was disturbed: TCP {:?}, UDP {:?}",
            tcp_report.failures, udp_report.failures
        )
        .into());
    }
    if left.len() > 2 || !left.contains(&43_210) {
        return Err(format!("after {took:?}: still tracked {left:?}").into());
    }
    if took > bound {
        return Err(format!("collected only after {took:?}, more than {bound:?}").into());
    }
    Ok(())
}

/// Sends `n` UDP datagrams to `to` from `ns`, each from another made-up source address, as
/// a flood of new flows (an IP_HDRINCL raw socket writes the headers itself).
fn flood_from_random_sources(ns: &str, to: SocketAddrV4, n: u32) -> Result<(), Failed> {
    netns::run_in(ns, || -> std::io::Result<()> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
        raw.set_header_included_v4(true)?;
        let dst = SockAddr::from(SocketAddr::V4(to));
        for i in 0..n {
            // 198.18.0.0/15, the benchmarking range: nobody's real address.
            let src = Ipv4Addr::new(198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            raw.send_to(&udp_packet(src, 40_000, to, b"flood"), &dst)?;
        }
        Ok(())
    })??;
    Ok(())
}

/// An IPv4/UDP packet with valid checksums.
fn udp_packet(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = checksum(&udp, sum_of(&pseudo));
    udp[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    ip.extend_from_slice(&udp);
    ip
}

fn sum_of(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_of(data);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn a_full_udp_table_refuses_new_flows_while_tcp_streams_on(lab: &Lab) -> Result<(), Failed> {
    wait_served(lab)?;
    let stream = Flow::tcp(
        HOST_NS,
        at(WORKER2_IP, NODE_PORT),
        Duration::from_millis(100),
    )?;
    let full_before = counter(lab, "worker2", "drop_ct_full")?;
    // Three times what the table holds.
    let n = (3 * ANY_TABLE / 2) as u32;
    flood_from_random_sources(HOST_NS, SocketAddrV4::new(WORKER2_IP, NODE_PORT + 1), n)?;
    std::thread::sleep(Duration::from_secs(1));
    let refused = counter(lab, "worker2", "drop_ct_full")? - full_before;
    let tracked = flows(lab)?
        .iter()
        .filter(|f| f["protocol"] == "UDP")
        .count() as u64;
    println!("{n} new UDP flows: {tracked} tracked, {refused} refused (drop_ct_full)");
    // Every flood packet was tracked or refused and counted: none vanished.
    if refused == 0 || tracked + refused < u64::from(n) - 16 {
        return Err(
            format!("{n} new flows: {tracked} tracked, {refused} counted as refused").into(),
        );
    }
    // Once the flood's flows idle out, the GC makes room and new flows are served again.
    let start = Instant::now();
    while lab
        .probe(
            HOST_NS,
            &ProbeRequest::udp(at(WORKER2_IP, NODE_PORT + 1), "x"),
        )
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(UDP_TIMEOUT_S + 3 * GC_INTERVAL_S + 10) {
            return Err("the UDP table never made room again".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("UDP served again {:.1?} after the flood", start.elapsed());
    let report = stream.stop();
    println!(
        "the TCP stream: {} answered during the flood",
        report.answered
    );
    if !report.is_lossless() {
        return Err(format!("the TCP stream was disturbed: {:?}", report.failures).into());
    }
    Ok(())
}

const SCENARIOS: [(&str, Scenario); 2] = [
    (
        "closed_and_idle_flows_are_collected_and_live_ones_never_touched",
        closed_and_idle_flows_are_collected_and_live_ones_never_touched,
    ),
    (
        "a_full_udp_table_refuses_new_flows_while_tcp_streams_on",
        a_full_udp_table_refuses_new_flows_while_tcp_streams_on,
    ),
];

fn main() {
    let opts = UpOptions {
        agent_args: [
            "--conntrack-udp-timeout",
            &format!("{UDP_TIMEOUT_S}s"),
            "--conntrack-tcp-timeout-close",
            &format!("{CLOSE_TIMEOUT_S}s"),
            "--conntrack-gc-interval",
            &format!("{GC_INTERVAL_S}s"),
            "--conntrack-any-max",
            &ANY_TABLE.to_string(),
        ]
        .map(str::to_string)
        .to_vec(),
        ..UpOptions::default()
    };
    lb_lab::scenarios::run(
        "conntrack GC and a full table",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        opts,
        |lab| {
            let echo1 = lab.pod("worker-echo-1").expect("pod").ip;
            let yaml = format!(
                "apiVersion: v1
kind: Service
metadata: {{name: gc-one, namespace: default}}
spec:
  type: NodePort
  clusterIP: {SVC}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {NODE_PORT}}}
  - {{name: udp, port: 80, protocol: UDP, targetPort: 8080, nodePort: {}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: gc-one-manual
  namespace: default
  labels: {{kubernetes.io/service-name: gc-one}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: udp, port: 8080, protocol: UDP}}
endpoints:
- addresses: [{echo1}]
  nodeName: worker
  conditions: {{ready: true}}
",
                NODE_PORT + 1
            );
            lab.apply_yaml("gc-one", &yaml)
                .expect("applying the service");
        },
        &SCENARIOS,
    )
}
