//! The lab's fabric without agents: pods reach each other across nodes over TCP and UDP, and
//! building and removing the lab leaves the root namespace as it was.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use lb_lab::{lab_lock, netns, root_or_skip, Binaries, Lab, ProbeError, UpOptions, ECHO_PORT};

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

    // Across nodes, TCP: the answer names the pod, and the server sees the client's own IP
    // (no NAT anywhere in the fabric).
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

    let report = lab.down().expect("lab comes down");
    assert_eq!(report.namespaces.len(), 14, "{report}");
    assert!(report.strangers.is_empty(), "{report}");
    assert!(netns::list_lab().unwrap().is_empty());
    assert_eq!(
        root_namespace_snapshot(),
        before,
        "the root namespace changed"
    );
}
