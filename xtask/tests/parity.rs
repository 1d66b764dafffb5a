//! `lbctl parity` against real agents: the lab's Services of every kind, kube-proxy's
//! rulesets for them from the bench's generators (built from the objects the lab's API
//! server stored), loaded into a throwaway namespace and read back as a node prints them
//! (`iptables-save -t nat`, `nft list ruleset`), compared by the real `lbctl` with a node's
//! pinned maps: no difference; then one endpoint changed in kube-proxy's ruleset, and
//! exactly that service port differs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_lab::{
    testing::{lab_lock, require, root_or_skip},
    AgentSource, Binaries, Lab, UpOptions,
};
use xtask::kube_proxy::{
    apply::{self, ThrowawayNetns},
    iptables, nftables, BenchEndpoint, BenchService, Cidr, Protocol, ProxyConfig,
};

const NODE: &str = "worker";
const DEADLINE: Duration = Duration::from_secs(30);

/// ClusterIP (TCP and UDP), NodePort with affinity, LoadBalancer with
/// externalTrafficPolicy=Local and source ranges, an external IP, and a ClusterIP without
/// endpoints.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: parity-cip, namespace: default}
spec:
  clusterIP: 10.96.70.1
  selector: {app: echo}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http}
  - {name: udp, port: 80, protocol: UDP, targetPort: udp}
---
apiVersion: v1
kind: Service
metadata: {name: parity-np, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.70.2
  selector: {app: echo, node: worker2}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30701}
---
apiVersion: v1
kind: Service
metadata: {name: parity-lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.70.3
  externalTrafficPolicy: Local
  healthCheckNodePort: 30799
  loadBalancerSourceRanges: [172.18.0.1/32, 192.0.2.0/24]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30702}
status:
  loadBalancer:
    ingress:
    - ip: 172.18.255.70
---
apiVersion: v1
kind: Service
metadata: {name: parity-ext, namespace: default}
spec:
  clusterIP: 10.96.70.4
  externalIPs: [203.0.113.70]
  selector: {app: echo, node: control-plane}
  ports:
  - {name: http, port: 8080, protocol: TCP, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: parity-empty, namespace: default}
spec:
  clusterIP: 10.96.70.5
  selector: {app: nobody}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: http}
";

/// `lbctl` and `lb-lab` as `cargo xtask build` (or `cargo xtask test`, via LB_BIN_DIR) left
/// them.
fn binaries() -> Binaries {
    let dir = std::env::var_os("LB_BIN_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
        PathBuf::from,
    );
    Binaries::beside(&dir.join("lb-lab"))
}

/// The Services and EndpointSlices of namespace `default`, as the API server holds them.
fn api_objects(lab: &Lab) -> (Vec<Service>, Vec<EndpointSlice>) {
    fn items<T: serde::de::DeserializeOwned>(lab: &Lab, path: &str) -> Vec<T> {
        let list = lab.apiserver_client().get(path).expect("listing");
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| serde_json::from_value(v.clone()).expect("a typed object"))
            .collect()
    }
    (
        items(lab, "/api/v1/namespaces/default/services"),
        items(
            lab,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        ),
    )
}

/// The generators' input from the API objects: one [`BenchService`] per service port, its
/// endpoints the ready ones of its slices, `local` on `node`.
fn bench_services(services: &[Service], slices: &[EndpointSlice], node: &str) -> Vec<BenchService> {
    let mut out = Vec::new();
    for svc in services {
        let name = svc.metadata.name.clone().unwrap();
        let namespace = svc.metadata.namespace.clone().unwrap();
        let spec = svc.spec.clone().unwrap();
        let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let external = type_ == "NodePort" || type_ == "LoadBalancer";
        let lb = type_ == "LoadBalancer";
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("IPv4");
        for port in spec.ports.clone().unwrap_or_default() {
            let protocol = match port.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            let mut b = BenchService::cluster_ip(
                &namespace,
                &name,
                port.name.as_deref().unwrap_or(""),
                protocol,
                ip(spec.cluster_ip.as_deref().unwrap()),
                u16::try_from(port.port).unwrap(),
            );
            b.node_port = port
                .node_port
                .filter(|_| external)
                .map(|p| u16::try_from(p).unwrap());
            b.external_ips = spec.external_ips.iter().flatten().map(|s| ip(s)).collect();
            if lb {
                b.lb_ips = svc
                    .status
                    .iter()
                    .flat_map(|s| s.load_balancer.iter())
                    .flat_map(|l| l.ingress.iter().flatten())
                    .filter_map(|i| i.ip.as_deref().map(ip))
                    .collect();
                b.lb_source_ranges = spec
                    .load_balancer_source_ranges
                    .iter()
                    .flatten()
                    .map(|c| {
                        let (a, p) = c.split_once('/').unwrap();
                        Cidr::new(ip(a), p.parse().unwrap()).unwrap()
                    })
                    .collect();
            }
            b.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
            b.health_check_node_port = spec
                .health_check_node_port
                .map(|p| u16::try_from(p).unwrap());
            if spec.session_affinity.as_deref() == Some("ClientIP") {
                b.affinity_timeout_s = Some(
                    spec.session_affinity_config
                        .as_ref()
                        .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
                        .map_or(10_800, |t| u32::try_from(t).unwrap()),
                );
            }
            for slice in slices.iter().filter(|s| {
                s.metadata.namespace.as_deref() == Some(&namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&name)
            }) {
                let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                    p.name == port.name
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol_name(protocol)
                }) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        b.endpoints.push(BenchEndpoint {
                            ip: ip(addr),
                            port: u16::try_from(slice_port.port.unwrap()).unwrap(),
                            local: ep.node_name.as_deref() == Some(node),
                        });
                    }
                }
            }
            out.push(b);
        }
    }
    out
}

/// This test's service ports.
fn ours(services: &[BenchService]) -> impl Iterator<Item = &BenchService> {
    services.iter().filter(|s| s.name.starts_with("parity-"))
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// kube-proxy's two rulesets for `services`, as the node would print them.
fn readbacks(
    ns: &ThrowawayNetns,
    services: &[BenchService],
    cfg: &ProxyConfig,
) -> (String, String) {
    apply::iptables_restore(&ns.0, &iptables::restore_input(services, cfg)).expect("restore");
    let nat = apply::iptables_save_table(&ns.0, "nat").expect("iptables-save -t nat");
    apply::clear_iptables(&ns.0).expect("clear iptables");
    apply::apply_nftables(&ns.0, &nftables::ruleset(services, cfg)).expect("nft -f");
    let nft = apply::nft_list_ruleset(&ns.0).expect("nft list ruleset");
    apply::remove_nftables(&ns.0).expect("nft delete table");
    (nat, nft)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn lbctl(bins: &Binaries, pin_dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(&bins.lbctl)
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("running lbctl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn lbctl_parity_finds_no_difference_then_exactly_the_changed_endpoint() {
    if !root_or_skip("lbctl parity lab test") {
        return;
    }
    let bins = binaries();
    if !require(
        "lbctl parity lab test",
        bins.lbctl.exists() && bins.lab.exists(),
        &format!(
            "no {} or {}: run `cargo xtask build` first",
            bins.lbctl.display(),
            bins.lab.display()
        ),
    ) {
        return;
    }
    let _lock = lab_lock();
    let lab = Lab::up(
        &bins,
        UpOptions {
            agent_source: AgentSource::Kube,
            ..UpOptions::default()
        },
    )
    .expect("bringing the lab up")
    .down_on_drop();
    lab.apply_yaml("parity", SERVICES)
        .expect("applying services");
    let node = lab.node(NODE).expect("node").clone();
    // The API server's EndpointSlice controller fills the slices after the Services.
    let start = Instant::now();
    let services = loop {
        let (svcs, slices) = api_objects(&lab);
        // Every Service the API holds (`default/kubernetes` too), as kube-proxy would.
        let services = bench_services(&svcs, &slices, NODE);
        let with_endpoints = ours(&services).filter(|s| !s.endpoints.is_empty()).count();
        if with_endpoints == 5 || start.elapsed() > DEADLINE {
            break services;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ours(&services).count(), 6, "{services:#?}");
    assert_eq!(
        ours(&services).filter(|s| !s.endpoints.is_empty()).count(),
        5,
        "{services:#?}"
    );
    assert!(services.iter().any(|s| s.endpoints.iter().any(|e| e.local)));
    let cfg = ProxyConfig::lab_node(node.ip);
    let ns = ThrowawayNetns::create("parity").expect("netns");
    let dir = TempDir::new();
    let dir = dir.path();
    let pin = lab.pin_dir(NODE);
    let (nat, nft) = readbacks(&ns, &services, &cfg);
    let nat_file = dir.join("iptables-save-nat");
    let nft_file = dir.join("nft-list-ruleset");
    std::fs::write(&nat_file, &nat).unwrap();
    std::fs::write(&nft_file, &nft).unwrap();

    // The agent programs what the API server holds within a few seconds.
    for (flag, file) in [
        ("--from-iptables-save", &nat_file),
        ("--from-nft", &nft_file),
    ] {
        let start = Instant::now();
        let run = loop {
            let run = lbctl(&bins, &pin, &["parity", flag, file.to_str().unwrap()]);
            if run.code == Some(0) || start.elapsed() > DEADLINE {
                break run;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(
            run.code,
            Some(0),
            "lbctl parity {flag}:\n{}{}",
            run.stdout,
            run.stderr
        );
        println!("lbctl parity {flag}:\n{}", run.stdout);
        let all = format!("{n} service ports: {n} match, 0 differ", n = services.len());
        assert!(run.stdout.contains(&all), "{}", run.stdout);
    }

    // One endpoint of one service port moves in kube-proxy's ruleset.
    let mut changed = services.clone();
    let target = changed
        .iter_mut()
        .find(|s| s.name == "parity-cip" && s.port_name == "http")
        .expect("parity-cip:http");
    let moved = target.endpoints[0].ip;
    target.endpoints[0].ip = Ipv4Addr::new(10, 244, 9, 9);
    let (nat, nft) = readbacks(&ns, &changed, &cfg);
    std::fs::write(&nat_file, &nat).unwrap();
    std::fs::write(&nft_file, &nft).unwrap();
    for (flag, file) in [
        ("--from-iptables-save", &nat_file),
        ("--from-nft", &nft_file),
    ] {
        let run = lbctl(
            &bins,
            &pin,
            &["parity", flag, file.to_str().unwrap(), "-o", "json"],
        );
        assert_eq!(run.code, Some(1), "{flag}:\n{}{}", run.stdout, run.stderr);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        let differing: Vec<&serde_json::Value> = report["service_ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "DIFF")
            .collect();
        assert_eq!(differing.len(), 1, "{flag}: {}", run.stdout);
        assert_eq!(differing[0]["service"], "default/parity-cip:http");
        let fields: Vec<&str> = differing[0]["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["differences"].as_array().unwrap())
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["endpoints"], "{flag}: {}", run.stdout);
        assert_eq!(report["summary"]["differing"], 1);
        assert_eq!(report["summary"]["not_understood"], 0);
        let table = lbctl(&bins, &pin, &["parity", flag, file.to_str().unwrap()]);
        assert_eq!(table.code, Some(1));
        assert!(table.stdout.contains("10.244.9.9:8080"), "{}", table.stdout);
        assert!(
            table.stdout.contains(&format!("{moved}:8080")),
            "{}",
            table.stdout
        );
        println!("lbctl parity {flag} after the change:\n{}", table.stdout);
    }

    // A file that is not a ruleset: exit 2, naming the line.
    std::fs::write(
        &nat_file,
        "*nat\n-A KUBE-SERVICES -m comment --comment \"open\nCOMMIT\n",
    )
    .unwrap();
    let run = lbctl(
        &bins,
        &pin,
        &["parity", "--from-iptables-save", nat_file.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);
}

/// A fresh directory for the ruleset files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-parity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
