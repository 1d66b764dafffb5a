//! The lab's fabric without agents: pods reach each other across nodes over TCP and UDP, the
//! nodes are set up as Kind's are (veth offloads, kindnet's masquerade, pods in pod cgroups),
//! and building and removing the lab leaves the root namespace as it was.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lb_lab::state::StateDir;
use lb_lab::{
    lab_lock, netns, process, root_or_skip, Binaries, Lab, Offloads, ProbeError, UpOptions,
    ECHO_PORT,
};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// `args` in namespace `ns` (and its cgroup), which must succeed; its stdout.
fn run_in(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let out = lab.exec(ns, args).expect("command runs");
    assert!(out.status.success(), "{args:?} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each node as Kind leaves it: `eth0` with the veth defaults and kindnet's masquerade in the
/// nat table, nothing more.
fn check_nodes_are_set_up_as_kind_does(lab: &Lab) {
    assert_eq!(lab.offloads(), Offloads::Kind);
    for node in lab.nodes() {
        let features = run_in(lab, &node.ns, &["ethtool", "-k", "eth0"]);
        for on in ["tx-checksumming: on", "tx-tcp-segmentation: on"] {
            assert!(
                features.lines().any(|l| l.trim() == on),
                "{}: no `{on}` in\n{features}",
                node.name
            );
        }
        let nat = run_in(lab, &node.ns, &["iptables-save", "-t", "nat"]);
        let rules: Vec<&str> = nat.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules.len(), 3, "{}: {nat}", node.name);
        assert!(
            rules[0].starts_with("-A POSTROUTING -m addrtype ! --dst-type LOCAL ")
                && rules[0].ends_with("-j KIND-MASQ-AGENT"),
            "{}: {nat}",
            node.name
        );
        assert!(
            rules[1].starts_with("-A KIND-MASQ-AGENT -d 10.244.0.0/16 ")
                && rules[1].ends_with("-j RETURN"),
            "{}: {nat}",
            node.name
        );
        assert!(
            rules[2].starts_with("-A KIND-MASQ-AGENT ") && rules[2].ends_with("-j MASQUERADE"),
            "{}: {nat}",
            node.name
        );
    }
}

/// Every echo server runs in its pod's cgroup, and so does a command run in a pod's namespace.
fn check_pods_run_in_pod_cgroups(lab: &Lab) {
    let state = StateDir::new(lab.state_dir());
    for pod in lab.pods() {
        let dir = lab.pod_cgroup(&pod.name).unwrap();
        let echo = process::read_pid_file(&state.echo_pid(&pod.name))
            .unwrap()
            .expect("echo server recorded");
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.split_whitespace().any(|p| p == echo.pid.to_string()),
            "echo server {} of {} not in {}: {procs:?}",
            echo.pid,
            pod.name,
            dir.display()
        );
    }
    let seen = run_in(lab, "worker-client", &["cat", "/proc/self/cgroup"]);
    assert!(
        seen.lines()
            .any(|l| l == "0::/lbk-worker/kubepods/worker-client"),
        "{seen}"
    );
}

/// A pod's connection to the host leaves its node masqueraded (kindnet); the host sees the
/// node's address.
fn check_kindnet_masquerades_what_leaves_the_pod_subnet(lab: &Lab) {
    let listener = netns::run_in("lbk-host", || TcpListener::bind((HOST_IP, 0)))
        .unwrap()
        .unwrap();
    let to = listener.local_addr().unwrap();
    let client = lab.pod("worker-client").unwrap();
    let _stream = netns::run_in(&client.ns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .unwrap()
    .expect("worker-client reaches the host");
    let (_, seen) = listener.accept().unwrap();
    assert_eq!(
        seen.ip(),
        lab.node("worker").unwrap().ip,
        "the host saw {seen}"
    );
}

fn root_namespace_snapshot() -> String {
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    format!("{}\n{}", run(&["-o", "link"]), run(&["route"]))
}

#[test]
fn fabric_carries_pod_traffic_across_nodes_and_leaves_the_root_namespace_alone() {
    if !root_or_skip("lab fabric test") {
        return;
    }
    let _lock = lab_lock();
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab")));
    let before = root_namespace_snapshot();

    let lab = Lab::up(
        &bins,
        UpOptions {
            no_agents: true,
            ..UpOptions::default()
        },
    )
    .expect("lab comes up")
    .down_on_drop();
    assert_eq!(
        netns::list_lab().unwrap().len(),
        lab.plan().namespaces().len()
    );

    let at = |pod: &str| SocketAddr::from((lab.pod(pod).unwrap().ip, ECHO_PORT));

    check_nodes_are_set_up_as_kind_does(&lab);
    check_pods_run_in_pod_cgroups(&lab);
    check_kindnet_masquerades_what_leaves_the_pod_subnet(&lab);

    // Across nodes, TCP: the answer names the pod, and the server sees the client's own IP
    // (kindnet never masquerades towards the pod subnet).
    let name = lab
        .probe_tcp("worker-client", at("control-plane-echo-1"), "/hostname")
        .unwrap();
    assert_eq!(name, "control-plane-echo-1");
    let seen = lab
        .probe_tcp("worker-client", at("worker2-echo-2"), "/clientip")
        .unwrap();
    let client_ip = lab.pod("worker-client").unwrap().ip;
    assert!(
        seen.starts_with(&format!("{client_ip}:")),
        "server saw {seen}"
    );

    // Across nodes, UDP, from a chosen source port.
    let seen = lab
        .probe_udp(
            "lbk-worker2-client",
            at("worker-echo-1"),
            "clientip",
            Some(40123),
        )
        .unwrap();
    let client_ip = lab.pod("worker2-client").unwrap().ip;
    assert_eq!(seen, format!("{client_ip}:40123"));
    let name = lab
        .probe_udp(
            "control-plane-client",
            at("worker2-echo-1"),
            "hostname",
            None,
        )
        .unwrap();
    assert_eq!(name, "worker2-echo-1");

    // Same node, and from every client to every echo pod.
    for client in lab.pods().iter().filter(|p| p.labels["app"] == "client") {
        for echo in lab.pods().iter().filter(|p| p.labels["app"] == "echo") {
            let answer = lab
                .probe_tcp(&client.ns, (echo.ip, ECHO_PORT), "/")
                .unwrap();
            assert_eq!(
                answer.split(' ').next(),
                Some(echo.name.as_str()),
                "{} -> {}",
                client.name,
                echo.name
            );
        }
    }

    // A port nobody listens on is refused, not silently dropped.
    let closed = SocketAddr::from((lab.pod("worker-echo-1").unwrap().ip, 9));
    assert!(matches!(
        lab.probe_tcp("worker-client", closed, "/"),
        Err(ProbeError::Refused)
    ));

    // Nodes reach each other over the "kind" network; exec runs in the namespace.
    let out = lab
        .exec("worker", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("172.18.0.3/16"));
    let ping = lab.exec("lbk-host", &["ping", "-c1", "-W2", "172.18.0.4"]);
    if let Ok(out) = ping {
        // ping may be missing; when present it must work.
        assert!(out.status.success(), "host cannot ping worker2: {out:?}");
    }

    let pod_cgroup = lab.pod_cgroup("worker-echo-1").unwrap();
    let report = lab.down().expect("lab comes down");
    // Pods' cgroups before their node's: 9 pods, 3 kubepods, 3 nodes.
    assert_eq!(report.cgroups.len(), 15, "{report}");
    let at_of = |dir: &Path| report.cgroups.iter().position(|c| c == dir).unwrap();
    assert!(at_of(&pod_cgroup) < at_of(pod_cgroup.parent().unwrap()));
    assert!(!pod_cgroup.exists());
    assert_eq!(report.namespaces.len(), 14, "{report}");
    assert!(report.strangers.is_empty(), "{report}");
    assert!(netns::list_lab().unwrap().is_empty());
    assert_eq!(
        root_namespace_snapshot(),
        before,
        "the root namespace changed"
    );
}
