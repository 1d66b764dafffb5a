//! Load from the host (`lbk-host`, the external client at 172.18.0.1) through the lab's
//! masqueraded NodePort (`bench-np`, externalTrafficPolicy=Cluster, entered on worker2,
//! which holds none of its backends): every connection is source-translated to worker2's
//! address and forwarded to control-plane or worker, as a NodePort is used from outside a
//! Kind cluster. The `masq-conn-rate` and `sustained` parts.
//!
//! The clients are `lb_lab::load::short_tcp` (connect, `GET /hostname`, read to the server's
//! close; each failure counted by its cause), run in slices one after the other until the
//! time is up, so a run of any length is counted the same way and each slice's rate shows
//! a dip (a port range or table running out) that a whole-run mean would hide.
//!
//! `direct` is not measured here: the host has no route to pod IPs (as a Kind host has
//! none), and routing it through a node would be another path (one forwarding hop, no
//! translation), not the floor of this one.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_lab::load::LoadReport;

use super::{
    lab_modes::{LabBench, NODE_PORT_ENTRY},
    results::{Mode, Settings},
};

/// The external client's namespace.
pub const HOST_NS: &str = lb_lab::plan::HOST_NS;
/// The modes that carry NodePort traffic from the host.
pub const MODES: [Mode; 3] = [Mode::Ebpf, Mode::Iptables, Mode::Nftables];

/// Why `direct` has no figures in these parts (for the report's notes).
pub const NO_DIRECT: &str = "masq-conn-rate and sustained: no `direct` figures: the host \
    (lbk-host) has no route to pod IPs, as a Kind host has none; a route through a node would \
    measure another path (one forwarding hop, no translation), not the floor of this one";

/// How long one sustained run lasts: a minute, or a few seconds for `--quick`.
pub fn sustained_for(quick: bool) -> Duration {
    Duration::from_secs(if quick { 3 } else { 60 })
}

/// Client threads of the sustained run: enough to keep every core busy with the clients,
/// the nodes' softirqs and the echo servers (twice the cores, at least 4).
pub fn sustained_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .saturating_mul(2)
        .max(4)
}

/// The size the sustained part runs at: the largest at which every baseline asked for
/// (iptables, nftables) runs too, else the smallest.
pub fn sustained_size(settings: &Settings) -> Option<(usize, usize)> {
    let sizes = settings.sizes();
    sizes
        .iter()
        .copied()
        .filter(|&size| {
            [Mode::Iptables, Mode::Nftables]
                .into_iter()
                .all(|m| !settings.has_mode(m) || settings.runs(m, size))
        })
        .max()
        .or_else(|| sizes.first().copied())
}

/// What one timed run from the host did.
pub struct Run {
    /// Every exchange of the run, merged (`elapsed` is the whole run).
    pub report: LoadReport,
    /// Successful exchanges a second in each slice.
    pub slices: Vec<f64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.report.rate()
    }

    /// The slowest slice's rate.
    pub fn slowest(&self) -> f64 {
        self.slices.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The median slice's rate.
    pub fn median_slice(&self) -> f64 {
        let mut sorted = self.slices.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Short connections from the host to `target` by `threads` threads for `duration`, in
/// slices of about `slice` each (the next slice's count is what the last one's rate fills
/// `slice` with).
pub fn short_tcp_for(
    target: SocketAddr,
    threads: usize,
    duration: Duration,
    slice: Duration,
) -> Result<Run> {
    let threads = threads.max(1) as u64;
    let started = Instant::now();
    let mut report = LoadReport::default();
    let mut slices = Vec::new();
    let mut n = threads * 20;
    while started.elapsed() < duration {
        let r = lb_lab::load::short_tcp(HOST_NS, target, n, threads)
            .with_context(|| format!("connections from {HOST_NS} to {target}"))?;
        slices.push(r.rate());
        // The last slice only fills what is left of the run.
        let next = slice.min(duration.saturating_sub(started.elapsed()));
        n = ((r.rate() * next.as_secs_f64()) as u64).clamp(threads, 1_000_000);
        report.merge(r);
    }
    report.elapsed = started.elapsed();
    Ok(Run { report, slices })
}

/// One exchange from the host to `target`: whether it was answered, and why not.
pub fn reachable(target: SocketAddr) -> Result<(bool, String)> {
    let r = lb_lab::load::short_tcp(HOST_NS, target, 1, 1)?;
    Ok((r.ok == 1, r.to_string()))
}

/// Kernel counters that name why a connection failed or had to retransmit, per namespace
/// on the path (host, nodes, the backends' pods), and the datapath's drops and rejects on
/// the entry node in `ebpf` mode.
pub struct Counters(BTreeMap<String, u64>);

/// TcpExt / Tcp counters worth a note when they move (a lost or refused SYN, a full accept
/// queue, a timestamp check failing on a reused tuple, a reset).
const TCP_COUNTERS: [&str; 12] = [
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPSynRetrans",
    "TcpExt.TCPTimeouts",
    "TcpExt.PAWSActive",
    "TcpExt.PAWSEstab",
    "TcpExt.TCPTimeWaitOverflow",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPBacklogDrop",
    "Tcp.AttemptFails",
    "Tcp.OutRsts",
    "Tcp.InErrs",
];
/// `/proc/net/stat/nf_conntrack` columns that count lost or refused packets.
const CT_COUNTERS: [&str; 5] = ["invalid", "insert_failed", "drop", "early_drop", "clashres"];

impl Counters {
    /// Reads them now. Namespaces that cannot be read are left out.
    pub fn read(bench: &LabBench, mode: Mode) -> Counters {
        let mut all = BTreeMap::new();
        let mut namespaces = vec![("host".to_string(), HOST_NS.to_string())];
        for node in bench.lab.nodes() {
            namespaces.push((node.name.clone(), node.ns.clone()));
        }
        for pod in bench.node_port_backend_pods() {
            if let Some(p) = bench.lab.pod(&pod) {
                namespaces.push((pod.clone(), p.ns.clone()));
            }
        }
        for (name, ns) in namespaces {
            let files = lb_lab::netns::run_in(&ns, || {
                [
                    "/proc/thread-self/net/netstat",
                    "/proc/thread-self/net/snmp",
                    "/proc/thread-self/net/stat/nf_conntrack",
                ]
                .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            });
            let Ok([netstat, snmp, ct]) = files else {
                continue;
            };
            for (k, v) in proc_pairs(&netstat).into_iter().chain(proc_pairs(&snmp)) {
                if TCP_COUNTERS.contains(&k.as_str()) {
                    all.insert(format!("{name} {k}"), v);
                }
            }
            for (k, v) in conntrack_stats(&ct) {
                if CT_COUNTERS.contains(&k.as_str()) {
                    all.insert(format!("{name} conntrack.{k}"), v);
                }
            }
        }
        if mode == Mode::Ebpf {
            if let Ok(out) = bench.lab.lbctl(NODE_PORT_ENTRY, &["stats", "-o", "json"]) {
                for (k, v) in datapath_drops(&out) {
                    all.insert(format!("{NODE_PORT_ENTRY} datapath.{k}"), v);
                }
            }
        }
        Counters(all)
    }

    /// What moved since `before`, as text for a note.
    pub fn moved_since(&self, before: &Counters) -> String {
        let moved: Vec<String> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.0.get(k).copied().unwrap_or(0));
                (d > 0).then(|| format!("{k} +{d}"))
            })
            .collect();
        if moved.is_empty() {
            "none moved".into()
        } else {
            moved.join(", ")
        }
    }
}

/// `Prefix: names...` / `Prefix: values...` line pairs (`/proc/net/netstat`, `snmp`), as
/// `Prefix.Name` -> value.
fn proc_pairs(text: &str) -> Vec<(String, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut n = names.split_whitespace();
        let mut v = values.split_whitespace();
        let (Some(prefix), Some(_)) = (n.next(), v.next()) else {
            continue;
        };
        let prefix = prefix.trim_end_matches(':');
        for (name, value) in n.zip(v) {
            if let Ok(value) = value.parse() {
                out.push((format!("{prefix}.{name}"), value));
            }
        }
    }
    out
}

/// `/proc/net/stat/nf_conntrack`: a header of names, then one line of hex values per CPU;
/// each column summed over the CPUs.
fn conntrack_stats(text: &str) -> Vec<(String, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums = vec![0u64; names.len()];
    for line in lines {
        for (sum, v) in sums.iter_mut().zip(line.split_whitespace()) {
            *sum += u64::from_str_radix(v, 16).unwrap_or(0);
        }
    }
    names.into_iter().map(str::to_string).zip(sums).collect()
}

/// The datapath's dropped and rejected packets by reason, from `lbctl stats -o json`.
fn datapath_drops(json: &str) -> Vec<(String, u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| matches!(g["kind"].as_str(), Some("dropped" | "rejected")))
        .flat_map(|g| g["reasons"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["reason"].as_str()?.to_string(), r["packets"].as_u64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Part, BASELINE_MAX_CHAINS};

    fn settings(services: Vec<usize>, endpoints: Vec<usize>, modes: Vec<Mode>) -> Settings {
        Settings {
            quick: false,
            services,
            endpoints,
            modes,
            parts: Part::ALL.to_vec(),
            baseline_max_chains: BASELINE_MAX_CHAINS,
        }
    }

    #[test]
    fn sustained_runs_at_the_largest_size_the_baselines_load() {
        let full = settings(
            vec![100, 1000, 10_000, 30_000],
            vec![2, 10],
            Mode::ALL.to_vec(),
        );
        assert_eq!(sustained_size(&full), Some((10_000, 2)));
        let ebpf_only = settings(vec![100, 30_000], vec![2], vec![Mode::Ebpf]);
        assert_eq!(sustained_size(&ebpf_only), Some((30_000, 2)));
        let too_big = settings(vec![30_000], vec![10], Mode::ALL.to_vec());
        assert_eq!(sustained_size(&too_big), Some((30_000, 10)));
    }

    #[test]
    fn kernel_counters_are_read_by_name() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 7\n\
                       IpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(
            proc_pairs(netstat),
            vec![
                ("TcpExt.SyncookiesSent".to_string(), 0),
                ("TcpExt.ListenOverflows".to_string(), 7),
                ("IpExt.InNoRoutes".to_string(), 3),
            ]
        );
        let ct = "entries  clashres invalid drop\n00000005  00000001 0000000a 00000000\n\
                  00000005  00000002 00000001 00000000\n";
        let sums: BTreeMap<String, u64> = conntrack_stats(ct).into_iter().collect();
        assert_eq!(sums["invalid"], 11);
        assert_eq!(sums["clashres"], 3);
        let json = r#"{"groups":[{"kind":"translated","packets":9,"reasons":[{"reason":"new_flow","packets":9}]},
            {"kind":"dropped","packets":2,"reasons":[{"reason":"drop_ct_full","packets":2}]}]}"#;
        assert_eq!(datapath_drops(json), vec![("drop_ct_full".to_string(), 2)]);
        let before = Counters(BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 5)]));
        let after = Counters(BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 8)]));
        assert_eq!(after.moved_since(&before), "b +3");
        assert_eq!(before.moved_since(&before), "none moved");
    }

    #[test]
    fn quick_sustained_runs_are_seconds_long() {
        assert!(sustained_for(true) <= Duration::from_secs(5));
        assert_eq!(sustained_for(false), Duration::from_secs(60));
        assert!(sustained_threads() >= 4);
    }
}
