//! What an operator sees, in the lab with agents on the kube source: bad objects from the API
//! are skipped and counted while everything else keeps being served, /healthz answers as
//! kube-proxy's does, and `lbctl` reads the same state the agent wants (`lbctl diff` finds no
//! difference against the real agent); `lbctl services` groups an externalTrafficPolicy=Local
//! NodePort's frontends into one port with one backend set, filters with `--service`, and
//! `--skipped` lists the bad objects with the agent's reasons.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use lb_lab::{
    apiserver::Method,
    netns,
    testing::{lab_lock, root_or_skip},
    AgentSource, Binaries, Lab, UpOptions,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

fn service(name: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  selector: {{app: echo, node: worker2}}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: http}}]
"
    )
}

fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > DEADLINE => panic!("{what}: still failing: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn reachable(lab: &Lab, ip: Ipv4Addr) -> Result<(), String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, 80));
    lab.probe_tcp("lbk-worker-client", addr, "/hostname")
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `GET path` on the agent of node worker, from inside its namespace: (status line, body).
fn agent_get(port: u16, path: &str) -> (String, String) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = netns::run_in("lbk-worker", || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .expect("enter lbk-worker")
    .expect("connect to the agent");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn bad_objects_are_skipped_and_counted_and_lbctl_agrees_with_the_agent() {
    if !root_or_skip("operations lab test") {
        return;
    }
    let _lock = lab_lock();
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab")));
    let lab = Lab::up(
        &bins,
        UpOptions {
            agent_source: AgentSource::Kube,
            ..UpOptions::default()
        },
    )
    .expect("bringing the lab up")
    .down_on_drop();

    let good = Ipv4Addr::new(10, 96, 3, 1);
    lab.apply_yaml("ops-good", &service("ops-good", good))
        .unwrap();
    eventually("the first good service", || reachable(&lab, good));

    // Stored as given, past the API server's validation, as a buggy controller could.
    let bad = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "bad-ip", "namespace": "default"},
         "spec": {"clusterIP": "10.96.999.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "bad-port", "namespace": "default"},
         "spec": {"clusterIP": "10.96.3.9", "ports": [{"name": "http", "port": 70000, "protocol": "TCP"}]}},
    ]});
    lab.apiserver_client()
        .request(Method::PUT, "/lab/objects", Some(&bad))
        .expect("storing bad objects");
    let after = Ipv4Addr::new(10, 96, 3, 2);
    lab.apply_yaml("ops-after", &service("ops-after", after))
        .unwrap();
    eventually("a good service applied after the bad ones", || {
        reachable(&lab, after)
    });
    reachable(&lab, good).expect("the first service still served");

    let invalid: f64 = agent_get(10249, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with("lb_invalid_objects_total{") && l.contains("kind=\"Service\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(invalid >= 2.0, "bad services counted {invalid} times");

    let (status, body) = agent_get(10256, "/healthz");
    assert!(status.contains("200"), "healthz: {status} {body}");
    assert!(body.contains("lastUpdated"), "healthz body: {body}");

    let lbctl = |args: &[&str]| {
        let pin = lab.pin_dir("worker");
        let mut argv = vec![
            bins.lbctl.display().to_string(),
            "--pin-dir".into(),
            pin.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        lab.exec("lbk-worker", &argv).expect("running lbctl")
    };
    let diff = lbctl(&["diff"]);
    let out = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.status.success(),
        "lbctl diff found differences:\n{out}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(out.contains("no differences"), "{out}");

    let services = lbctl(&["services"]);
    let out = String::from_utf8_lossy(&services.stdout);
    assert!(out.contains("default/ops-good\n  port http\n"), "{out}");
    assert!(
        !out.contains("bad-ip") && !out.contains("bad-port"),
        "{out}"
    );

    // An externalTrafficPolicy=Local NodePort with its endpoints on worker: a ClusterIP and,
    // per node address and 127.0.0.1, a NodePort with its internal twin, all one port of
    // one service with one backend set.
    lab.apply_yaml("ops-local", OPS_LOCAL).unwrap();
    let mut grouped = serde_json::Value::Null;
    eventually("ops-local programmed with its endpoints", || {
        let run = lbctl(&["services", "--service", "default/ops-local", "-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&run.stdout).map_err(|e| format!("{e}: {run:?}"))?;
        let port = &v["services"][0]["ports"][0];
        let frontends = port["frontends"].as_array().map_or(0, Vec::len);
        let backends = port["backend_sets"][0]["backends"]
            .as_array()
            .map_or(0, Vec::len);
        grouped = v.clone();
        (frontends >= 5 && backends > 0)
            .then_some(())
            .ok_or(format!("{frontends} frontends, {backends} backends: {v}"))
    });
    assert_eq!(
        grouped["services"].as_array().map(Vec::len),
        Some(1),
        "{grouped}"
    );
    let port = &grouped["services"][0]["ports"][0];
    assert_eq!(grouped["services"][0]["service"], "default/ops-local");
    assert_eq!(port["port"], "http");
    assert_eq!(
        port["backend_sets"].as_array().map(Vec::len),
        Some(1),
        "one backend set: {port}"
    );
    let frontends = port["frontends"].as_array().expect("frontends");
    let ids: std::collections::BTreeSet<u64> = frontends
        .iter()
        .filter_map(|f| f["service_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), frontends.len(), "one service id per frontend");
    let has = |kind: &str, scope: &str, flag: Option<&str>| {
        frontends.iter().any(|f| {
            f["type"][0] == kind
                && f["scope"] == scope
                && flag.is_none_or(|fl| {
                    f["flags"]
                        .as_array()
                        .expect("flags")
                        .iter()
                        .any(|x| x == fl)
                })
        })
    };
    assert!(has("ClusterIP", "external", None), "{port}");
    assert!(has("NodePort", "external", Some("ExternalLocal")), "{port}");
    assert!(has("NodePort", "internal", None), "{port}");
    for b in port["backend_sets"][0]["backends"]
        .as_array()
        .expect("backends")
    {
        assert_eq!(b["state"], "ready", "{b}");
        assert!(
            b["flags"]
                .as_array()
                .expect("flags")
                .iter()
                .any(|f| f == "local"),
            "{b}"
        );
    }
    let run = lbctl(&["services", "--service", "default/ops-local"]);
    let out = String::from_utf8_lossy(&run.stdout);
    println!("lbctl services --service default/ops-local:\n{out}");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(out.matches("default/ops-local").count(), 1, "{out}");
    assert_eq!(out.matches("  port http\n").count(), 1, "{out}");
    assert!(
        out.contains("    Backends #1:\n") && !out.contains("Backends #2"),
        "{out}"
    );
    assert!(!out.contains("ops-good"), "{out}");
    let wide = lbctl(&["services", "--service", "default/ops-local", "-o", "wide"]);
    assert!(
        String::from_utf8_lossy(&wide.stdout).contains("SERVICE-ID"),
        "{wide:?}"
    );

    let run = lbctl(&["services", "--service", "default/ops-nope"]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no service default/ops-nope"),
        "{run:?}"
    );

    // What is not programmed, with the model's reasons, from the agent's /state.
    let run = lbctl(&["services", "--skipped"]);
    let out = String::from_utf8_lossy(&run.stdout);
    println!("lbctl services --skipped:\n{out}");
    assert!(run.status.success(), "{run:?}");
    let line = |object: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{object}  ")))
            .unwrap_or_else(|| panic!("{object} not listed:\n{out}"))
            .to_owned()
    };
    assert!(
        line("Service default/bad-ip").contains("bad_address"),
        "{out}"
    );
    assert!(
        line("Service default/bad-port port http").contains("port 70000 is outside 1..=65535"),
        "{out}"
    );
    let run = lbctl(&[
        "services",
        "--skipped",
        "--service",
        "default/bad-port",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("--skipped -o json");
    let skipped = v["skipped"].as_array().expect("skipped");
    assert!(!skipped.is_empty(), "{v}");
    assert!(
        skipped.iter().all(|s| s["object"]
            .as_str()
            .is_some_and(|o| o.starts_with("Service default/bad-port"))),
        "{v}"
    );
    assert_eq!(skipped[0]["reason"], "bad_port", "{v}");
    assert_eq!(v["node"], "worker");
}

const OPS_LOCAL: &str = "apiVersion: v1
kind: Service
metadata: {name: ops-local, namespace: default}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.3.3
  selector: {app: echo, node: worker}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30333}]
";
