//! `lab status`: what exists and runs right now, read from the system rather than assumed.

use std::fmt::Write as _;

use crate::bpffs;
use crate::control_plane::ControlPlane;
use crate::manifests::Store;
use crate::netns;
use crate::plan::{Plan, BRIDGE, NET_NS};
use crate::pod_state::PodStates;
use crate::process;
use crate::state::StateDir;
use crate::topology::Offloads;
use crate::Binaries;

/// A human-readable report of the lab: namespaces with their IPv4 addresses, the processes
/// the lab started (alive or not), agent readiness, pod states and applied manifests.
pub fn report(bins: &Binaries) -> String {
    let plan = Plan::kind();
    let state = StateDir::new(&bins.state_dir);
    let existing = match netns::list_lab() {
        Ok(names) => names,
        Err(e) => return format!("lab: cannot list network namespaces: {e}\n"),
    };
    let mut out = String::new();
    let expected = plan.namespaces();
    let present = expected.iter().filter(|ns| existing.contains(ns)).count();
    let verdict = match present {
        0 => "down",
        n if n == expected.len() => "up",
        _ => "partly up (run `cargo xtask lab down`, then `up`)",
    };
    let _ = writeln!(
        out,
        "lab: {verdict} ({present}/{} namespaces)",
        expected.len()
    );
    let _ = writeln!(out, "state: {}", state.root().display());
    for stray in existing.iter().filter(|ns| !expected.contains(ns)) {
        let _ = writeln!(out, "unexpected namespace: {stray}");
    }
    if present == 0 && process::read_pid_dir(&state.pids()).map_or(true, |p| p.is_empty()) {
        return out;
    }
    if let Some(offloads) = std::fs::read_to_string(state.offloads())
        .ok()
        .and_then(|name| Offloads::from_name(name.trim()))
    {
        let _ = writeln!(
            out,
            "offloads: {} ({})",
            offloads.name(),
            offloads.describe()
        );
    }

    let control_plane = ControlPlane {
        bins,
        state: &state,
        plan: &plan,
    };
    // In kube mode the API server holds pod states; pods.json is the file mode's.
    let kube = control_plane.is_started();
    let pod_states = if kube {
        control_plane.pod_states().unwrap_or_default()
    } else {
        PodStates::load(&state.pod_states()).unwrap_or_default()
    };
    let width = expected.iter().map(String::len).max().unwrap_or(0);
    let _ = writeln!(out);
    for ns in &expected {
        let addrs = if !existing.contains(ns) {
            "MISSING".to_string()
        } else if ns == NET_NS {
            bridge_ports()
        } else {
            addresses(ns)
        };
        let mut extra = String::new();
        if let Some(node) = plan.nodes.iter().find(|n| &n.ns == ns) {
            let pid = process::read_pid_file(&state.agent_pid(&node.name))
                .ok()
                .flatten();
            extra = match pid {
                None => "agent: not started".to_string(),
                Some(r) => format!(
                    "agent: pid {} {}, {}",
                    r.pid,
                    alive(r),
                    if state.ready_file(&node.name).exists() {
                        "ready"
                    } else {
                        "not ready"
                    }
                ),
            };
            if bpffs::pin_dir(&node.name).exists() {
                let _ = write!(extra, ", pins in {}", bpffs::pin_dir(&node.name).display());
            }
        } else if let Some(pod) = plan.pods.iter().find(|p| &p.ns == ns) {
            let pid = process::read_pid_file(&state.echo_pid(&pod.name))
                .ok()
                .flatten();
            let s = pod_states.get(&pod.name);
            extra = format!(
                "echo: {}; ready={} terminating={}",
                pid.map_or("not started".to_string(), |r| format!(
                    "pid {} {}",
                    r.pid,
                    alive(r)
                )),
                s.ready,
                s.terminating
            );
        }
        let _ = writeln!(out, "{ns:width$}  {addrs}");
        if !extra.is_empty() {
            let _ = writeln!(out, "{:width$}  {extra}", "");
        }
    }

    let store = Store {
        state: &state,
        pods: &plan.pods,
    };
    match store.names() {
        Ok(names) if names.is_empty() => {
            let _ = writeln!(out, "\nmanifests: none applied");
        }
        Ok(names) if kube => {
            let _ = writeln!(
                out,
                "\napplied through the API server: {}",
                names.join(", ")
            );
        }
        Ok(names) => {
            let _ = writeln!(
                out,
                "\nmanifests ({}): {}",
                state.manifests().display(),
                names.join(", ")
            );
        }
        Err(e) => {
            let _ = writeln!(out, "\nmanifests: {e:#}");
        }
    }
    out.push_str(&control_plane.report());
    out
}

fn alive(record: process::PidRecord) -> &'static str {
    if process::is_alive(record) {
        "running"
    } else {
        "DEAD"
    }
}

/// The bridge and the ports enslaved to it.
fn bridge_ports() -> String {
    match crate::cmd::ip(&["-n", NET_NS, "-o", "link", "show", "master", BRIDGE]) {
        Ok(text) => {
            let ports: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .map(|name| name.trim_end_matches(':').split('@').next().unwrap_or(name))
                .collect();
            format!("bridge {BRIDGE}, ports: {}", ports.join(" "))
        }
        Err(e) => format!("({e})"),
    }
}

/// `dev address` pairs of every non-loopback IPv4 address in namespace `ns`.
fn addresses(ns: &str) -> String {
    match crate::cmd::ip(&["-n", ns, "-o", "-4", "addr", "show"]) {
        Ok(text) => {
            let pairs: Vec<String> = text
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let inet = f.iter().position(|w| *w == "inet")?;
                    let dev = *f.get(1)?;
                    let addr = f.get(inet + 1)?;
                    (dev != "lo").then(|| format!("{dev} {addr}"))
                })
                .collect();
            if pairs.is_empty() {
                "(no IPv4 addresses)".to_string()
            } else {
                pairs.join(", ")
            }
        }
        Err(e) => format!("({e})"),
    }
}
