//! The agent runs as the DaemonSet runs it, uid 0 with only the capabilities of
//! deploy/lb-agent.yaml (the lab's default), and serves traffic so; without any one of them
//! it names the missing one and exits before it loads or attaches anything; lbctl without
//! CAP_BPF says what it needs.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use lb_lab::{
    daemonset,
    probe::ProbeRequest,
    scenarios::{Failed, Scenario},
    Binaries, Lab, UpOptions,
};

const HOST_NS: &str = "lbk-host";
const WORKER2: &str = "worker2";
const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 61, 1);
const NODE_PORT: u16 = 30611;

/// Capability numbers (linux/capability.h), by Kubernetes' names.
fn number(name: &str) -> Result<u32, Failed> {
    Ok(match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => return Err(format!("no number known for capability {other}").into()),
    })
}

fn cap_eff(pid: u32) -> Result<u64, Failed> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff in /proc/<pid>/status")?;
    Ok(u64::from_str_radix(hex.trim(), 16).map_err(|e| e.to_string())?)
}

fn manifest_caps() -> Result<Vec<String>, Failed> {
    Ok(daemonset::agent_capabilities()?)
}

/// The NodePort answers (once the node has synced it, within 10 s), then 10 times in a row.
fn served(lab: &Lab) -> Result<(), Failed> {
    let to = SocketAddr::V4(SocketAddrV4::new(WORKER2_IP, NODE_PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab
        .probe(HOST_NS, &ProbeRequest::tcp(to, "/hostname"))
        .is_err()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..10 {
        lab.probe(HOST_NS, &ProbeRequest::tcp(to, "/hostname"))
            .map_err(|e| format!("NodePort via worker2 (masqueraded, forwarded): {e}"))?;
    }
    Ok(())
}

/// Programs on worker2's pod interfaces, XDP on its uplink and pinned objects: all that a
/// started datapath leaves behind.
fn attached(lab: &Lab) -> Result<Vec<String>, Failed> {
    let mut found = Vec::new();
    let ids = lab.datapath_program_ids(WORKER2)?;
    if !ids.is_empty() {
        found.push(format!("tcx programs {ids:?} on pod interfaces"));
    }
    let link = lab.exec("lbk-worker2", &["ip", "-d", "link", "show", "eth0"])?;
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    if link.contains("xdp") {
        found.push(format!("XDP on eth0: {link}"));
    }
    let pins = lab.pin_dir(WORKER2);
    if let Ok(entries) = fs::read_dir(&pins) {
        let names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() {
            found.push(format!("pinned in {}: {names:?}", pins.display()));
        }
    }
    Ok(found)
}

fn agents_run_with_only_the_daemonsets_capabilities(lab: &Lab) -> Result<(), Failed> {
    let caps = manifest_caps()?;
    let want = caps
        .iter()
        .map(|c| number(c))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .fold(0u64, |set, n| set | 1 << n);
    for node in lab.nodes() {
        let pid = lab.agent_pid(&node.name)?;
        let eff = cap_eff(pid)?;
        if eff != want {
            return Err(format!(
                "the agent of {} runs with CapEff {eff:#x}, not the DaemonSet's {caps:?} ({want:#x})",
                node.name
            )
            .into());
        }
    }
    served(lab)
}

fn each_missing_capability_is_named_and_nothing_is_attached(lab: &Lab) -> Result<(), Failed> {
    let caps = manifest_caps()?;
    // A node with no datapath: its agent gone, and its pins with it (the links detach once
    // nothing holds them).
    lab.kill_agent(WORKER2)?;
    fs::remove_dir_all(lab.pin_dir(WORKER2)).map_err(|e| e.to_string())?;
    // The kernel frees an unpinned link from a work queue, so detaching takes a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = attached(lab)?;
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = attached(lab)?;
    }
    if !left.is_empty() {
        return Err(format!("worker2 still has a datapath after unpinning: {left:?}").into());
    }
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let Some(log) =
            lab.try_agent_with_capabilities(WORKER2, &fewer, Duration::from_secs(20))?
        else {
            return Err(format!("the agent got ready without CAP_{dropped}").into());
        };
        if !log.contains(&format!("lacks CAP_{dropped}")) {
            return Err(format!("without CAP_{dropped} the agent said:\n{log}").into());
        }
        let left = attached(lab)?;
        if !left.is_empty() {
            return Err(format!("without CAP_{dropped}, half a datapath: {left:?}").into());
        }
    }
    // With all of them again, the node serves as before.
    if let Some(log) = lab.try_agent_with_capabilities(WORKER2, &caps, Duration::from_secs(30))? {
        return Err(format!("the agent exited with every capability:\n{log}").into());
    }
    served(lab)
}

fn lbctl_without_cap_bpf_says_what_it_needs(lab: &Lab) -> Result<(), Failed> {
    let out = Command::new("setpriv")
        .args(daemonset::setpriv_args(&["NET_ADMIN".to_string()]))
        .arg(&lab.binaries().lbctl)
        .arg("--pin-dir")
        .arg(lab.pin_dir(WORKER2))
        .arg("stats")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("needs CAP_BPF") {
        return Err(format!("lbctl without CAP_BPF: {} {stderr}", out.status).into());
    }
    Ok(())
}

const SCENARIOS: [(&str, Scenario); 3] = [
    (
        "agents_run_with_only_the_daemonsets_capabilities",
        agents_run_with_only_the_daemonsets_capabilities,
    ),
    (
        "lbctl_without_cap_bpf_says_what_it_needs",
        lbctl_without_cap_bpf_says_what_it_needs,
    ),
    (
        "each_missing_capability_is_named_and_nothing_is_attached",
        each_missing_capability_is_named_and_nothing_is_attached,
    ),
];

fn main() {
    lb_lab::scenarios::run(
        "least privilege",
        Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))),
        UpOptions::default(),
        |lab| {
            let echo1 = lab.pod("worker-echo-1").expect("pod").ip;
            let yaml = format!(
                "apiVersion: v1
kind: Service
metadata: {{name: caps, namespace: default}}
spec:
  type: NodePort
  clusterIP: {SVC}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {NODE_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: caps-manual
  namespace: default
  labels: {{kubernetes.io/service-name: caps}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- addresses: [{echo1}]
  nodeName: worker
  conditions: {{ready: true}}
"
            );
            lab.apply_yaml("caps", &yaml).expect("applying the service");
        },
        &SCENARIOS,
    )
}
