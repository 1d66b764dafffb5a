//! ClusterIP in the lab, end to end: real agents program real tc programs on the nodes, and
//! pods make real TCP and UDP requests to service addresses.
//!
//! One lab serves every scenario (bringing it up takes seconds); each scenario has services of
//! its own so they cannot disturb each other.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    probe::{ProbeError, ProbeRequest},
    scenarios::{Failed, Scenario},
    Binaries, Lab, UpOptions,
};

/// How long an agent may take to program a change.
const SYNC_DEADLINE: Duration = Duration::from_secs(15);

fn service(name: &str, ip: &str, selector: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
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

const NODE_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 1);
const ALL_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 2);
const SHRINK_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 3);
const DELETE_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 4);

fn vip(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, 80))
}

/// Retries `f` until it succeeds or the deadline passes; the last error explains a failure.
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
    lab.probe_tcp(&format!("lbk-{from}"), to, path)
        .map_err(|e| format!("TCP {from} -> {to}{path}: {e}"))
}

fn udp(lab: &Lab, from: &str, to: SocketAddr, msg: &str) -> Result<String, String> {
    lab.probe_udp(&format!("lbk-{from}"), to, msg, None)
        .map_err(|e| format!("UDP {from} -> {to} {msg:?}: {e}"))
}

fn pods_of(lab: &Lab, node: &str) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.node == node && p.labels.get("app").map(String::as_str) == Some("echo"))
        .map(|p| p.name.clone())
        .collect()
}

fn check_reaches(lab: &Lab, from: &str, backends_node: &str) -> Result<(), Failed> {
    let expected = pods_of(lab, backends_node);
    let name = eventually("TCP to the ClusterIP", || {
        tcp(lab, from, vip(NODE_SVC), "/hostname")
    })?;
    if !expected.contains(&name) {
        return Err(format!("TCP answered by {name}, expected one of {expected:?}").into());
    }
    let name = eventually("UDP to the ClusterIP", || {
        udp(lab, from, vip(NODE_SVC), "hostname")
    })?;
    if !expected.contains(&name) {
        return Err(format!("UDP answered by {name}, expected one of {expected:?}").into());
    }
    Ok(())
}

fn same_node_pod_reaches_cluster_ip(lab: &Lab) -> Result<(), Failed> {
    check_reaches(lab, "worker-client", "worker")
}

fn cross_node_pods_reach_cluster_ip(lab: &Lab) -> Result<(), Failed> {
    check_reaches(lab, "worker2-client", "worker")?;
    check_reaches(lab, "control-plane-client", "worker")
}

fn backend_sees_the_client_pod_ip(lab: &Lab) -> Result<(), Failed> {
    for from in ["worker-client", "worker2-client"] {
        let client_ip = lab.pod(from).expect("client pod").ip;
        for (proto, seen) in [
            (
                "TCP",
                eventually("TCP /clientip", || {
                    tcp(lab, from, vip(NODE_SVC), "/clientip")
                })?,
            ),
            (
                "UDP",
                eventually("UDP clientip", || udp(lab, from, vip(NODE_SVC), "clientip"))?,
            ),
        ] {
            let ip = seen.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(&seen);
            if ip != client_ip.to_string() {
                return Err(
                    format!("{proto} from {from}: backend saw {seen}, not {client_ip}").into(),
                );
            }
        }
    }
    Ok(())
}

fn requests_spread_over_all_backends(lab: &Lab) -> Result<(), Failed> {
    let mut expected: Vec<String> = ["control-plane", "worker", "worker2"]
        .iter()
        .flat_map(|n| pods_of(lab, n))
        .collect();
    expected.sort();
    let mut seen = std::collections::BTreeSet::new();
    eventually("every backend answering", || {
        for _ in 0..30 {
            seen.insert(tcp(lab, "worker-client", vip(ALL_SVC), "/hostname")?);
            seen.insert(udp(lab, "worker2-client", vip(ALL_SVC), "hostname")?);
        }
        let got: Vec<String> = seen.iter().cloned().collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!("answered by {got:?}, expected {expected:?}"))
        }
    })
}

fn removing_an_endpoint_moves_new_connections(lab: &Lab) -> Result<(), Failed> {
    let [keep, remove] = <[String; 2]>::try_from(pods_of(lab, "worker2")).expect("two echo pods");
    // First both answer.
    let mut seen = std::collections::BTreeSet::new();
    eventually("both backends answering", || {
        seen.insert(tcp(lab, "worker-client", vip(SHRINK_SVC), "/hostname")?);
        (seen.len() == 2)
            .then_some(())
            .ok_or(format!("only {seen:?} so far"))
    })?;
    lab.set_pod_ready(&remove, false)?;
    let result = eventually("new connections avoiding the unready pod", || {
        for _ in 0..20 {
            let name = tcp(lab, "worker-client", vip(SHRINK_SVC), "/hostname")?;
            let udp_name = udp(lab, "worker-client", vip(SHRINK_SVC), "hostname")?;
            if name != keep || udp_name != keep {
                return Err(format!(
                    "answered by {name} / {udp_name}, expected only {keep}"
                ));
            }
        }
        Ok(())
    });
    lab.set_pod_ready(&remove, true)?;
    result
}

fn deleting_the_service_stops_translation(lab: &Lab) -> Result<(), Failed> {
    eventually("service answering before delete", || {
        tcp(lab, "worker-client", vip(DELETE_SVC), "/hostname")
    })?;
    lab.delete_yaml("svc-delete")?;
    let quick = |addr| {
        let mut req = ProbeRequest::tcp(addr, "/hostname");
        req.timeout = Duration::from_millis(500);
        req
    };
    eventually("the deleted service to stop answering", || {
        match lab.probe("lbk-worker-client", &quick(vip(DELETE_SVC))) {
            Ok(name) => Err(format!("still answered by {name}")),
            Err(
                ProbeError::TimedOut(_)
                | ProbeError::Refused
                | ProbeError::NoRoute
                | ProbeError::NetworkUnreachable,
            ) => Ok(()),
            Err(e) => Err(format!("unexpected failure {e}")),
        }
    })?;
    // Others are unaffected.
    tcp(lab, "worker-client", vip(NODE_SVC), "/hostname")?;
    Ok(())
}

const SCENARIOS: [(&str, Scenario); 6] = [
    (
        "clusterip_from_a_same_node_pod",
        same_node_pod_reaches_cluster_ip,
    ),
    (
        "clusterip_from_cross_node_pods",
        cross_node_pods_reach_cluster_ip,
    ),
    (
        "backend_sees_the_client_pod_ip",
        backend_sees_the_client_pod_ip,
    ),
    (
        "requests_spread_over_all_backends",
        requests_spread_over_all_backends,
    ),
    (
        "removing_an_endpoint_moves_new_connections",
        removing_an_endpoint_moves_new_connections,
    ),
    (
        "deleting_the_service_stops_translation",
        deleting_the_service_stops_translation,
    ),
];

fn main() {
    lb_lab::scenarios::run(
        "ClusterIP lab tests",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions::default(),
        |lab| {
            for (name, ip, selector) in [
                ("svc-node", NODE_SVC, "app: echo, node: worker"),
                ("svc-all", ALL_SVC, "app: echo"),
                ("svc-shrink", SHRINK_SVC, "app: echo, node: worker2"),
                ("svc-delete", DELETE_SVC, "app: echo, node: control-plane"),
            ] {
                lab.apply_yaml(name, &service(name, &ip.to_string(), selector))
                    .expect("applying a service");
            }
        },
        &SCENARIOS,
    )
}
