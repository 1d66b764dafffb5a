//! North-south traffic in the lab, end to end: the host namespace (`lbk-host`, 172.18.0.1) is
//! the external client and reaches LoadBalancer IPs, external IPs, NodePorts and ClusterIPs
//! through routes to a chosen node, as in Kind; pods and the nodes' own processes (run in each
//! node's cgroup, under the socket-level LB) are the internal clients. Pods are probed
//! in-process (a thread in no lab cgroup, so the tc programs translate) and, in one
//! scenario, by a process in the pod's cgroup (the socket-level LB translates, as in Kind).
//!
//! One lab serves every scenario; each scenario has services of its own. The host's routes
//! are set up once, before the scenarios run.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    probe::{ProbeError, ProbeRequest},
    scenarios::{Failed, Scenario},
    Binaries, Lab, Offloads, UpOptions,
};
use serde_json::Value;

/// How long an agent may take to program a change.
const SYNC_DEADLINE: Duration = Duration::from_secs(15);
/// How long a request that must get no answer is given.
const SILENCE: Duration = Duration::from_millis(1500);

const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

// ETP=Local LoadBalancer with its pods on worker; LOCAL_LB_VIA_POD is routed from the host
// via worker, LOCAL_LB_VIA_OTHER via worker2.
const LOCAL_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 1);
const LOCAL_LB_VIA_POD: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 1);
const LOCAL_LB_VIA_OTHER: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 2);
const LOCAL_NODE_PORT: u16 = 30401;
const LOCAL_HEALTH_PORT: u16 = 30499;
// ETP=Cluster LoadBalancer with its pods on worker; routed via worker and via worker2. Its
// ClusterIP is routed from the host via worker2 (a ClusterIP reached from outside).
const CLUSTER_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 2);
const CLUSTER_LB_VIA_POD: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 11);
const CLUSTER_LB_VIA_OTHER: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 12);
// NodePort over every echo pod.
const NODEPORT_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 3);
const NODE_PORT: u16 = 30403;
// ClusterIP with an external IP, routed from the host via worker2; pods on worker.
const EXTERNAL_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 4);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
// ClusterIP over worker's echo pods, which call themselves through it.
const HAIRPIN_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 5);
// NodePort without endpoints.
const EMPTY_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 6);
const EMPTY_NODE_PORT: u16 = 30406;
// LoadBalancers with loadBalancerSourceRanges that admit the host and that do not; both
// routed via worker.
const ALLOW_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 7);
const ALLOW_LB: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 21);
const DENY_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 8);
const DENY_LB: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 22);

// UDP NodePort whose pods (on worker) have no listener on the target port: their kernels
// answer ICMP port-unreachable, which must reach the client translated.
const CLOSED_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 9);
const CLOSED_NODE_PORT: u16 = 30409;
const CLOSED_SVC_YAML: &str = "apiVersion: v1
kind: Service
metadata:
  name: ns-closed
  namespace: default
spec:
  type: NodePort
  clusterIP: 10.96.40.9
  selector: {app: echo, node: worker}
  ports:
  - name: closed
    port: 80
    protocol: UDP
    targetPort: 9999
    nodePort: 30409
";

/// Every service's port: TCP and UDP 80, to the echo server's named ports.
struct Svc {
    name: &'static str,
    kind: &'static str,
    cluster_ip: Ipv4Addr,
    selector: &'static str,
    /// TCP's node port; UDP's is the next one (the lab's API server, unlike Kubernetes,
    /// refuses one number for both protocols).
    node_port: Option<u16>,
    extra_spec: String,
    lb_ips: Vec<Ipv4Addr>,
}

impl Svc {
    fn yaml(&self) -> String {
        let node_port = |offset| {
            self.node_port
                .map(|p| format!("\n    nodePort: {}", p + offset))
                .unwrap_or_default()
        };
        let status = if self.lb_ips.is_empty() {
            String::new()
        } else {
            let ips: String = self
                .lb_ips
                .iter()
                .map(|ip| format!("\n    - ip: {ip}"))
                .collect();
            format!("status:\n  loadBalancer:\n    ingress:{ips}\n")
        };
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: {kind}
  clusterIP: {ip}
  selector: {{{selector}}}
{extra}  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http{tcp_node_port}
  - name: udp
    port: 80
    protocol: UDP
    targetPort: udp{udp_node_port}
{status}",
            name = self.name,
            kind = self.kind,
            ip = self.cluster_ip,
            selector = self.selector,
            extra = self.extra_spec,
            tcp_node_port = node_port(0),
            udp_node_port = node_port(1),
        )
    }
}

fn services() -> Vec<Svc> {
    let svc = |name, kind, cluster_ip, selector| Svc {
        name,
        kind,
        cluster_ip,
        selector,
        node_port: None,
        extra_spec: String::new(),
        lb_ips: Vec::new(),
    };
    let on_worker = "app: echo, node: worker";
    vec![
        Svc {
            extra_spec: format!(
                "  externalTrafficPolicy: Local\n  healthCheckNodePort: {LOCAL_HEALTH_PORT}\n"
            ),
            lb_ips: vec![LOCAL_LB_VIA_POD, LOCAL_LB_VIA_OTHER],
            node_port: Some(LOCAL_NODE_PORT),
            ..svc("ns-local", "LoadBalancer", LOCAL_SVC, on_worker)
        },
        Svc {
            extra_spec: "  externalTrafficPolicy: Cluster\n".into(),
            lb_ips: vec![CLUSTER_LB_VIA_POD, CLUSTER_LB_VIA_OTHER],
            ..svc("ns-cluster", "LoadBalancer", CLUSTER_SVC, on_worker)
        },
        Svc {
            node_port: Some(NODE_PORT),
            ..svc("ns-nodeport", "NodePort", NODEPORT_SVC, "app: echo")
        },
        Svc {
            extra_spec: format!("  externalIPs: [{EXTERNAL_IP}]\n"),
            ..svc("ns-external", "ClusterIP", EXTERNAL_SVC, on_worker)
        },
        svc("ns-hairpin", "ClusterIP", HAIRPIN_SVC, on_worker),
        Svc {
            node_port: Some(EMPTY_NODE_PORT),
            ..svc("ns-empty", "NodePort", EMPTY_SVC, "app: nobody")
        },
        Svc {
            extra_spec: format!("  loadBalancerSourceRanges: [{HOST_IP}/32]\n"),
            lb_ips: vec![ALLOW_LB],
            ..svc("ns-allow", "LoadBalancer", ALLOW_SVC, on_worker)
        },
        Svc {
            extra_spec: "  loadBalancerSourceRanges: [10.0.0.0/8]\n".into(),
            lb_ips: vec![DENY_LB],
            ..svc("ns-deny", "LoadBalancer", DENY_SVC, on_worker)
        },
    ]
}

/// (destination, node) of every route the host gets.
const HOST_ROUTES: [(Ipv4Addr, &str); 8] = [
    (LOCAL_LB_VIA_POD, "worker"),
    (LOCAL_LB_VIA_OTHER, "worker2"),
    (CLUSTER_LB_VIA_POD, "worker"),
    (CLUSTER_LB_VIA_OTHER, "worker2"),
    (CLUSTER_SVC, "worker2"),
    (EXTERNAL_IP, "worker2"),
    (ALLOW_LB, "worker"),
    (DENY_LB, "worker"),
];

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Where the UDP port of the service port `tcp` is: the same address, except for node ports,
/// where UDP has the next port.
fn udp_twin(tcp: SocketAddr) -> SocketAddr {
    let mut udp = tcp;
    if tcp.port() >= 30000 {
        udp.set_port(tcp.port() + 1);
    }
    udp
}

fn node_ip(lab: &Lab, node: &str) -> Ipv4Addr {
    lab.node(node).expect("lab node").ip
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

/// Who makes a request: a namespace probed in-process (the host, a pod: no socket LB sees
/// it), a process of a node (in its cgroup) or a process of a pod (in its pod cgroup).
#[derive(Clone, Copy)]
enum From<'a> {
    Ns(&'a str),
    Node(&'a str),
    PodProcess(&'a str),
}

impl std::fmt::Display for From<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Ns(ns) => write!(f, "{ns}"),
            From::Node(node) => write!(f, "a process of node {node}"),
            From::PodProcess(pod) => write!(f, "a process of pod {pod}"),
        }
    }
}

fn request(lab: &Lab, from: From, req: &ProbeRequest) -> Result<String, ProbeError> {
    match from {
        From::Ns(ns) => lab.probe(ns, req),
        From::Node(node) => lab.probe_from_node(node, req),
        From::PodProcess(pod) => lab.probe_from_pod_process(pod, req),
    }
}

fn tcp(lab: &Lab, from: From, to: SocketAddr, path: &str) -> Result<String, String> {
    request(lab, from, &ProbeRequest::tcp(to, path))
        .map_err(|e| format!("TCP {from} -> {to}{path}: {e}"))
}

/// `msg` to the UDP port of service port `to` (see [`udp_twin`]).
fn udp(lab: &Lab, from: From, to: SocketAddr, msg: &str) -> Result<String, String> {
    let to = udp_twin(to);
    request(lab, from, &ProbeRequest::udp(to, msg))
        .map_err(|e| format!("UDP {from} -> {to} {msg:?}: {e}"))
}

/// The IP of an echoed `ip:port`.
fn ip_of(echoed: &str) -> &str {
    echoed.rsplit_once(':').map_or(echoed, |(ip, _)| ip)
}

/// The address the backend saw, over TCP and UDP (once the service answers), must be `want`.
fn check_client_ip(lab: &Lab, from: From, to: SocketAddr, want: Ipv4Addr) -> Result<(), Failed> {
    let seen_tcp = eventually("TCP /clientip", || tcp(lab, from, to, "/clientip"))?;
    let seen_udp = eventually("UDP clientip", || udp(lab, from, to, "clientip"))?;
    for (proto, seen) in [("TCP", seen_tcp), ("UDP", seen_udp)] {
        println!("{proto} {from} -> {to}: the backend saw {seen}");
        if ip_of(&seen) != want.to_string() {
            return Err(
                format!("{proto} {from} -> {to}: backend saw {seen}, expected {want}").into(),
            );
        }
    }
    Ok(())
}

/// TCP and UDP from `from` to `to` are answered by one of `node`'s echo pods.
fn check_served_by(
    lab: &Lab,
    from: From,
    to: SocketAddr,
    node: Option<&str>,
) -> Result<(), Failed> {
    let expected: Vec<String> = lab
        .pods()
        .iter()
        .filter(|p| p.labels["app"] == "echo" && node.is_none_or(|n| p.node == n))
        .map(|p| p.name.clone())
        .collect();
    let by_tcp = eventually("TCP", || tcp(lab, from, to, "/hostname"))?;
    let by_udp = eventually("UDP", || udp(lab, from, to, "hostname"))?;
    for (proto, by) in [("TCP", by_tcp), ("UDP", by_udp)] {
        if !expected.contains(&by) {
            return Err(format!(
                "{proto} {from} -> {to}: answered by {by}, expected one of {expected:?}"
            )
            .into());
        }
    }
    Ok(())
}

/// A request that must get no answer at all within [`SILENCE`].
fn check_times_out(lab: &Lab, from: From, req: ProbeRequest) -> Result<(), Failed> {
    let req = req.with_timeout(SILENCE);
    match request(lab, from, &req) {
        Err(ProbeError::TimedOut(_)) => Ok(()),
        Ok(answer) => Err(format!(
            "{from} -> {}: answered {answer:?}, expected no answer",
            req.addr
        )
        .into()),
        Err(e) => Err(format!("{from} -> {}: {e}, expected no answer", req.addr).into()),
    }
}

/// A request that must be refused (TCP RST, ICMP port-unreachable, or connect() refused).
fn check_refused(lab: &Lab, from: From, req: &ProbeRequest) -> Result<(), String> {
    match request(lab, from, req) {
        Err(ProbeError::Refused) => Ok(()),
        Ok(answer) => Err(format!(
            "{from} -> {}: answered {answer:?}, expected refused",
            req.addr
        )),
        Err(e) => Err(format!("{from} -> {}: {e}, expected refused", req.addr)),
    }
}

/// Datapath counter `reason` on node `node` (`lbctl stats`), summed over its groups.
fn counter(lab: &Lab, node: &str, reason: &str) -> Result<u64, String> {
    lab.datapath_counter(node, reason)
        .map_err(|e| format!("{e:#}"))
}

const HOST: From = From::Ns("lbk-host");

fn seed_local_lb_via_the_pods_node_keeps_the_client_ip(lab: &Lab) -> Result<(), Failed> {
    check_client_ip(lab, HOST, at(LOCAL_LB_VIA_POD, 80), HOST_IP)
}

fn seed_local_lb_via_a_node_without_the_pod_times_out(lab: &Lab) -> Result<(), Failed> {
    // Programmed first (the route via worker answers), so the silence below is the policy's.
    eventually("the Local LB IP via worker", || {
        tcp(lab, HOST, at(LOCAL_LB_VIA_POD, 80), "/hostname")
    })?;
    let before = counter(lab, "worker2", "drop_no_local_backend")?;
    check_times_out(
        lab,
        HOST,
        ProbeRequest::tcp(at(LOCAL_LB_VIA_OTHER, 80), "/hostname"),
    )?;
    check_times_out(
        lab,
        HOST,
        ProbeRequest::udp(at(LOCAL_LB_VIA_OTHER, 80), "hostname"),
    )?;
    let after = counter(lab, "worker2", "drop_no_local_backend")?;
    if after <= before {
        return Err(
            format!("worker2 counted no drop_no_local_backend ({before} -> {after})").into(),
        );
    }
    Ok(())
}

fn seed_cluster_lb_works_via_either_node_and_masquerades(lab: &Lab) -> Result<(), Failed> {
    for (lb, node) in [
        (CLUSTER_LB_VIA_POD, "worker"),
        (CLUSTER_LB_VIA_OTHER, "worker2"),
    ] {
        check_served_by(lab, HOST, at(lb, 80), Some("worker"))?;
        // externalTrafficPolicy=Cluster masquerades to the node the client went through.
        check_client_ip(lab, HOST, at(lb, 80), node_ip(lab, node))?;
    }
    Ok(())
}

fn seed_node_without_pods_reaches_lb_and_cluster_ip(lab: &Lab) -> Result<(), Failed> {
    // control-plane holds none of these services' pods.
    let cp = From::Node("control-plane");
    for to in [
        at(LOCAL_LB_VIA_POD, 80),
        at(LOCAL_SVC, 80),
        at(CLUSTER_LB_VIA_OTHER, 80),
        at(CLUSTER_SVC, 80),
    ] {
        check_served_by(lab, cp, to, Some("worker"))?;
    }
    Ok(())
}

fn nodeport_on_every_node_ip_from_the_host(lab: &Lab) -> Result<(), Failed> {
    for node in lab.nodes() {
        check_served_by(lab, HOST, at(node.ip, NODE_PORT), None)?;
    }
    Ok(())
}

fn nodeport_on_localhost_from_a_node_process(lab: &Lab) -> Result<(), Failed> {
    for node in ["worker2", "control-plane"] {
        check_served_by(
            lab,
            From::Node(node),
            at(Ipv4Addr::LOCALHOST, NODE_PORT),
            None,
        )?;
    }
    Ok(())
}

fn nodeport_service_has_its_cluster_ip(lab: &Lab) -> Result<(), Failed> {
    check_served_by(
        lab,
        From::Ns("lbk-worker2-client"),
        at(NODEPORT_SVC, 80),
        None,
    )?;
    check_served_by(lab, From::Node("worker"), at(NODEPORT_SVC, 80), None)
}

fn external_ips_are_served(lab: &Lab) -> Result<(), Failed> {
    check_served_by(lab, HOST, at(EXTERNAL_IP, 80), Some("worker"))?;
    check_served_by(
        lab,
        From::Ns("lbk-worker2-client"),
        at(EXTERNAL_IP, 80),
        Some("worker"),
    )
}

fn local_policy_still_serves_pods_and_node_processes(lab: &Lab) -> Result<(), Failed> {
    // worker2 has no local endpoint: external traffic through it is dropped (seed above),
    // internal traffic from its pods and its own processes is not.
    for from in [From::Ns("lbk-worker2-client"), From::Node("worker2")] {
        for to in [
            at(LOCAL_LB_VIA_OTHER, 80),
            at(LOCAL_SVC, 80),
            at(node_ip(lab, "worker2"), LOCAL_NODE_PORT),
        ] {
            check_served_by(lab, from, to, Some("worker"))?;
        }
    }
    // A pod keeps its own address (it is inside the cluster).
    let pod = lab.pod("worker2-client").expect("client pod").ip;
    check_client_ip(lab, From::Ns("lbk-worker2-client"), at(LOCAL_SVC, 80), pod)
}

fn health_check_node_port_reports_local_endpoints(lab: &Lab) -> Result<(), Failed> {
    let body = eventually("health check on worker", || {
        tcp(
            lab,
            HOST,
            at(node_ip(lab, "worker"), LOCAL_HEALTH_PORT),
            "/",
        )
    })?;
    println!("worker:{LOCAL_HEALTH_PORT} answered 200 {body}");
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{body:?}: {e}"))?;
    if json["localEndpoints"] != 2 {
        return Err(format!("worker reports {body}, expected localEndpoints 2").into());
    }
    let other = at(node_ip(lab, "worker2"), LOCAL_HEALTH_PORT);
    match lab.probe_tcp("lbk-host", other, "/") {
        Err(ProbeError::Http(status)) if status.starts_with("503") => Ok(()),
        other_result => {
            Err(format!("worker2:{LOCAL_HEALTH_PORT}: {other_result:?}, expected HTTP 503").into())
        }
    }
}

fn cluster_ip_from_outside_the_cluster_is_masqueraded(lab: &Lab) -> Result<(), Failed> {
    // Host -> ClusterIP via worker2; the pods are on worker.
    check_client_ip(lab, HOST, at(CLUSTER_SVC, 80), node_ip(lab, "worker2"))
}

fn hairpin_pod_reaches_itself_through_its_service(lab: &Lab) -> Result<(), Failed> {
    let me = lab.pod("worker-echo-1").expect("echo pod");
    let from = From::Ns("lbk-worker-echo-1");
    // Two backends: keep asking until the pod itself answers.
    let seen = eventually("the pod answering itself", || {
        for _ in 0..20 {
            let answer = tcp(lab, from, at(HAIRPIN_SVC, 80), "/")?;
            if let Some(seen) = answer.strip_prefix("worker-echo-1 ") {
                return Ok(seen.to_string());
            }
        }
        Err("worker-echo-1 never answered itself".into())
    })?;
    println!("hairpin: worker-echo-1 saw itself as {seen}");
    let want = node_ip(lab, "worker").to_string();
    if ip_of(&seen) != want {
        return Err(format!("hairpin: the backend saw {seen}, expected the masqueraded {want} (its own {} would not reply through the service)", me.ip).into());
    }
    Ok(())
}

fn no_endpoints_is_refused_at_once(lab: &Lab) -> Result<(), Failed> {
    let vip = at(EMPTY_SVC, 80);
    let worker = node_ip(lab, "worker");
    let node_port = at(worker, EMPTY_NODE_PORT);
    let cases = [
        (From::Ns("lbk-worker-client"), vip, "worker"),
        (HOST, node_port, "worker"),
        (From::Node("worker2"), vip, "worker2"),
    ];
    for (from, to, node) in cases {
        for req in [
            ProbeRequest::tcp(to, "/"),
            ProbeRequest::udp(udp_twin(to), "hostname"),
        ] {
            let before = counter(lab, node, "reject_no_backend")?;
            // The service may still be on its way into the maps: then the client sees
            // something else (no route, silence), so retry until the reject is counted.
            eventually("a counted reject", || {
                check_refused(lab, from, &req)?;
                let after = counter(lab, node, "reject_no_backend")?;
                (after > before).then_some(()).ok_or(format!(
                    "{from} -> {} refused, but {node} counted no reject_no_backend ({before} -> {after})",
                    req.addr
                ))
            })?;
        }
    }
    Ok(())
}

/// A backend's ICMP port-unreachable names the backend's address inside: only if it is
/// translated back to the service address does the client's connected UDP socket match it
/// and see ECONNREFUSED (otherwise it waits in silence).
fn icmp_errors_from_backends_reach_the_client(lab: &Lab) -> Result<(), Failed> {
    let worker2 = node_ip(lab, "worker2");
    let cases = [
        // Pod to ClusterIP across nodes: translated back by lb_to_pod on worker2.
        (
            From::Ns("lbk-worker2-client"),
            at(CLOSED_SVC, 80),
            "worker2",
        ),
        // Host to NodePort via worker2, masqueraded to worker's pods: translated back by
        // lb_from_net on worker2, addressed to the host again.
        (HOST, at(worker2, CLOSED_NODE_PORT), "worker2"),
    ];
    for (from, to, node) in cases {
        let req = ProbeRequest::udp(to, "hostname");
        let before = counter(lab, node, "icmp_error_translated")?;
        // Kernels rate-limit ICMP errors (one a second per peer, with a burst): retry.
        eventually("a translated port-unreachable", || {
            check_refused(lab, from, &req)?;
            let after = counter(lab, node, "icmp_error_translated")?;
            (after > before).then_some(()).ok_or(format!(
                "{from} -> {to} refused, but {node} counted no icmp_error_translated ({before} -> {after})"
            ))
        })?;
        println!("{from} -> {to}: the backend's port-unreachable arrived as ECONNREFUSED");
    }
    Ok(())
}

fn source_ranges_admit_listed_clients_and_count_the_rest(lab: &Lab) -> Result<(), Failed> {
    check_served_by(lab, HOST, at(ALLOW_LB, 80), Some("worker"))?;
    // Its twin outside the allowed range answers once programmed... and is dropped here:
    // make sure the frontend exists before reading silence as the range check.
    eventually("ns-deny programmed", || {
        let services = lab
            .lbctl("worker", &["services", "-o", "json"])
            .map_err(|e| e.to_string())?;
        services
            .contains(&DENY_LB.to_string())
            .then_some(())
            .ok_or_else(|| "no frontend for the denied LB IP yet".to_string())
    })?;
    let before = counter(lab, "worker", "drop_source_range")?;
    check_times_out(lab, HOST, ProbeRequest::tcp(at(DENY_LB, 80), "/hostname"))?;
    check_times_out(lab, HOST, ProbeRequest::udp(at(DENY_LB, 80), "hostname"))?;
    let after = counter(lab, "worker", "drop_source_range")?;
    println!("worker drop_source_range: {before} -> {after}");
    if after < before + 2 {
        return Err(format!(
            "drop_source_range went {before} -> {after}, expected at least 2 more"
        )
        .into());
    }
    Ok(())
}

fn getpeername_shows_the_service_address(lab: &Lab) -> Result<(), Failed> {
    for to in [
        at(CLUSTER_SVC, 80),
        at(Ipv4Addr::LOCALHOST, NODE_PORT),
        at(LOCAL_LB_VIA_POD, 80),
    ] {
        for req in [
            ProbeRequest::tcp(to, "/hostname"),
            ProbeRequest::udp(udp_twin(to), "hostname"),
        ] {
            let (peer, by) = eventually("a node process's request", || {
                lab.probe_peer_from_node("worker2", &req)
                    .map_err(|e| e.to_string())
            })?;
            println!(
                "worker2 process -> {}: answered by {by}, getpeername {peer}",
                req.addr
            );
            if peer != req.addr {
                return Err(
                    format!("getpeername after connecting to {} gave {peer}", req.addr).into(),
                );
            }
        }
    }
    Ok(())
}

fn pod_processes_are_under_their_nodes_socket_lb(lab: &Lab) -> Result<(), Failed> {
    // As in Kind, where the agent's cgroup programs sit at the node's cgroup root and kubelet
    // puts pods below it: a pod's own process (not an in-process probe thread) is translated
    // at connect()/sendmsg(), so its packets leave the pod already addressed to the backend.
    let pod = "worker2-client";
    let me = From::PodProcess(pod);
    let before = counter(lab, "worker2", "sock_translated")?;
    check_served_by(lab, me, at(CLUSTER_SVC, 80), Some("worker"))?;
    for req in [
        ProbeRequest::tcp(at(CLUSTER_SVC, 80), "/hostname"),
        ProbeRequest::udp(at(CLUSTER_SVC, 80), "hostname"),
    ] {
        let (peer, by) = lab
            .probe_peer_from_pod_process(pod, &req)
            .map_err(|e| format!("{me} -> {}: {e}", req.addr))?;
        println!("{me} -> {}: answered by {by}, getpeername {peer}", req.addr);
        if peer != req.addr {
            return Err(format!("getpeername after connecting to {} gave {peer}", req.addr).into());
        }
    }
    let after = counter(lab, "worker2", "sock_translated")?;
    println!("worker2 sock_translated: {before} -> {after}");
    if after < before + 4 {
        return Err(format!(
            "worker2 translated {} of the pod process's 4 sockets ({before} -> {after})",
            after - before
        )
        .into());
    }
    // Inside the cluster: the backend sees the pod's own address.
    let ip = lab.pod(pod).expect("client pod").ip;
    check_client_ip(lab, me, at(CLUSTER_SVC, 80), ip)
}

fn xdp_runs_on_every_uplink(lab: &Lab) -> Result<(), Failed> {
    for node in lab.nodes() {
        let stats: Value = serde_json::from_str(&lab.lbctl(&node.name, &["stats", "-o", "json"])?)?;
        let a = &stats["attachments"];
        println!(
            "node {}: lb_xdp {} on {}, uplink {}, socket LB programs {}",
            node.name, a["xdp_mode"], a["xdp_interface"], a["uplink"], a["socket_programs"]
        );
        if !a["xdp_mode"].is_string() {
            return Err(format!("node {}: no XDP attachment: {a}", node.name).into());
        }
        if a["socket_programs"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("node {}: no socket programs: {a}", node.name).into());
        }
    }
    // ETP=Cluster through worker2 to pods on worker goes straight back out of worker2's
    // uplink: XDP can finish it, but only for packets whose checksum is complete. The host
    // is a sender on this machine, as the Docker host is for Kind's nodes: with the veth
    // defaults (tx checksum offload on) its packets are CHECKSUM_PARTIAL, and lb_xdp leaves
    // those to tc (pass_csum_partial), which finishes them just as well.
    let to = at(CLUSTER_LB_VIA_OTHER, 80);
    if lab.offloads() == Offloads::Kind {
        let before = counter(lab, "worker2", "pass_csum_partial")?;
        check_served_by(lab, HOST, to, Some("worker"))?;
        let after = counter(lab, "worker2", "pass_csum_partial")?;
        println!("worker2 pass_csum_partial (the host's own packets): {before} -> {after}");
        if after <= before {
            return Err(format!(
                "worker2's lb_xdp passed none of the host's CHECKSUM_PARTIAL packets to tc \
                 ({before} -> {after})"
            )
            .into());
        }
    }
    // A client beyond a NIC hands the node full checksums: the host stands for one by
    // computing its own (tx off on its eth0, given back afterwards); the nodes keep theirs.
    let _full = FullChecksumsFromHost::set(lab, lab.offloads())?;
    let before = counter(lab, "worker2", "xdp_tx")?;
    check_served_by(lab, HOST, to, Some("worker"))?;
    let after = counter(lab, "worker2", "xdp_tx")?;
    println!("worker2 xdp_tx (full checksums from the host): {before} -> {after}");
    if after <= before {
        return Err(format!("worker2 counted no xdp_tx ({before} -> {after})").into());
    }
    Ok(())
}

/// Transmit checksum offload off on the host's `eth0` while it lives, so that the host sends
/// complete checksums as a client beyond a NIC would; back to the veth default when dropped.
/// A no-op on a lab brought up with `--offloads off`, where that is the host's setting.
struct FullChecksumsFromHost<'a>(Option<&'a Lab>);

impl<'a> FullChecksumsFromHost<'a> {
    fn set(lab: &'a Lab, offloads: Offloads) -> Result<Self, Failed> {
        if offloads == Offloads::Off {
            return Ok(Self(None));
        }
        host_tx_checksums(lab, "off")?;
        Ok(Self(Some(lab)))
    }
}

impl Drop for FullChecksumsFromHost<'_> {
    fn drop(&mut self) {
        if let Some(lab) = self.0 {
            if let Err(e) = host_tx_checksums(lab, "on") {
                eprintln!("giving the host back its tx checksum offload: {e:?}");
            }
        }
    }
}

/// `ethtool -K eth0 tx <on|off>` in the host's namespace.
fn host_tx_checksums(lab: &Lab, state: &str) -> Result<(), Failed> {
    let out = lab.exec("lbk-host", &["ethtool", "-K", "eth0", "tx", state])?;
    if !out.status.success() {
        return Err(format!(
            "ethtool -K eth0 tx {state} in lbk-host: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

const SCENARIOS: [(&str, Scenario); 18] = [
    (
        "seed_local_lb_via_the_pods_node_keeps_the_client_ip",
        seed_local_lb_via_the_pods_node_keeps_the_client_ip,
    ),
    (
        "seed_local_lb_via_a_node_without_the_pod_times_out",
        seed_local_lb_via_a_node_without_the_pod_times_out,
    ),
    (
        "seed_cluster_lb_works_via_either_node_and_masquerades",
        seed_cluster_lb_works_via_either_node_and_masquerades,
    ),
    (
        "seed_node_without_pods_reaches_lb_and_cluster_ip",
        seed_node_without_pods_reaches_lb_and_cluster_ip,
    ),
    (
        "nodeport_on_every_node_ip_from_the_host",
        nodeport_on_every_node_ip_from_the_host,
    ),
    (
        "nodeport_on_localhost_from_a_node_process",
        nodeport_on_localhost_from_a_node_process,
    ),
    (
        "nodeport_service_has_its_cluster_ip",
        nodeport_service_has_its_cluster_ip,
    ),
    ("external_ips_are_served", external_ips_are_served),
    (
        "local_policy_still_serves_pods_and_node_processes",
        local_policy_still_serves_pods_and_node_processes,
    ),
    (
        "health_check_node_port_reports_local_endpoints",
        health_check_node_port_reports_local_endpoints,
    ),
    (
        "cluster_ip_from_outside_the_cluster_is_masqueraded",
        cluster_ip_from_outside_the_cluster_is_masqueraded,
    ),
    (
        "hairpin_pod_reaches_itself_through_its_service",
        hairpin_pod_reaches_itself_through_its_service,
    ),
    (
        "no_endpoints_is_refused_at_once",
        no_endpoints_is_refused_at_once,
    ),
    (
        "icmp_errors_from_backends_reach_the_client",
        icmp_errors_from_backends_reach_the_client,
    ),
    (
        "source_ranges_admit_listed_clients_and_count_the_rest",
        source_ranges_admit_listed_clients_and_count_the_rest,
    ),
    (
        "getpeername_shows_the_service_address",
        getpeername_shows_the_service_address,
    ),
    (
        "pod_processes_are_under_their_nodes_socket_lb",
        pod_processes_are_under_their_nodes_socket_lb,
    ),
    ("xdp_runs_on_every_uplink", xdp_runs_on_every_uplink),
];

fn main() {
    lb_lab::scenarios::run(
        "north-south lab tests",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions::default(),
        |lab| {
            for svc in services() {
                lab.apply_yaml(svc.name, &svc.yaml())
                    .expect("applying a service");
            }
            lab.apply_yaml("ns-closed", CLOSED_SVC_YAML)
                .expect("applying a service");
            for (dest, node) in HOST_ROUTES {
                lab.route_from_host(&dest.to_string(), node)
                    .expect("routing from the host");
            }
        },
        &SCENARIOS,
    )
}
