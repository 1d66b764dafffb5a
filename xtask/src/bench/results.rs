//! What a bench run is asked to do ([`Settings`]) and what it collects ([`Results`]): the one
//! contract between the measurements and the report.
//!
//! Every measurement appends [`Figure`]s; the report (Markdown, PNG plots, raw JSON) is built
//! from them alone, so a figure that is not here is not reported.

use std::time::Duration;

use serde::Serialize;

/// What runs on the lab's nodes while a measurement runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Our agent and datapath.
    Ebpf,
    /// No agent: kube-proxy's iptables ruleset, written by our generator, applied with
    /// `iptables-restore --noflush`.
    Iptables,
    /// No agent: kube-proxy's nftables ruleset (verdict maps, numgen), applied with `nft -f`.
    Nftables,
    /// Nothing: clients address backend pod IPs; the floor of the topology.
    Direct,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Ebpf, Mode::Iptables, Mode::Nftables, Mode::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Direct => "direct",
        }
    }
}

/// One part of the bench; `--only` picks some.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// First-packet latency: TCP connect time to random services, pod to pod across nodes.
    Connect,
    /// New connections per second with short request/response exchanges.
    ConnRate,
    /// New connections per second from the host through a masqueraded NodePort
    /// (externalTrafficPolicy=Cluster, entered on a node without a backend), and their
    /// failures.
    MasqConnRate,
    /// Established throughput (iperf3) and request/response latency through a ClusterIP.
    Throughput,
    /// CPU time per million packets of a UDP stream at a fixed offered rate.
    Cpu,
    /// Programming: N services from empty, and endpoint change until traffic follows;
    /// against iptables-restore and nft doing the same change as kube-proxy does it.
    Programming,
    /// ns/packet of each program via BPF_PROG_TEST_RUN, next to a floor program.
    Datapath,
    /// Agent RSS and BPF map memory for each N; 100k services load at all.
    Memory,
    /// Connections at the highest rate the machine holds, for a minute per mode, through
    /// the masqueraded NodePort: conn/s over rounds and every failure.
    Sustained,
    /// Wall and CPU time of one conntrack GC pass over a million entries.
    Gc,
}

impl Part {
    pub const ALL: [Part; 10] = [
        Part::Datapath,
        Part::Memory,
        Part::Gc,
        Part::Programming,
        Part::Connect,
        Part::ConnRate,
        Part::MasqConnRate,
        Part::Throughput,
        Part::Cpu,
        Part::Sustained,
    ];
}

/// What the run was asked for, resolved from the command line.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Small N and few samples: a smoke test of the harness (under 5 minutes).
    pub quick: bool,
    /// Service counts to measure at.
    pub services: Vec<usize>,
    /// Endpoints per service.
    pub endpoints: Vec<usize>,
    pub modes: Vec<Mode>,
    pub parts: Vec<Part>,
    /// The largest kube-proxy ruleset (in chains) the baselines load; see
    /// [`Settings::runs`].
    pub baseline_max_chains: usize,
}

/// What `--baseline-max-chains` defaults to: 10 000 services × 2 endpoints. On this kind of
/// machine `iptables-restore` (nf_tables backend) took 157–278 s and `nft -f` 77–79 s to load that
/// from empty, and a ruleset three times larger did not finish in 5 minutes.
pub const BASELINE_MAX_CHAINS: usize = 33_000;

impl Settings {
    pub fn has_mode(&self, mode: Mode) -> bool {
        self.modes.contains(&mode)
    }

    /// Whether `mode` is measured at `size`: always for `ebpf` and `direct`; for the
    /// baselines only while kube-proxy's ruleset (a chain per service and one per endpoint)
    /// stays within [`Settings::baseline_max_chains`], as loading it takes kube-proxy's tools
    /// superlinear time.
    pub fn runs(&self, mode: Mode, size: (usize, usize)) -> bool {
        self.has_mode(mode)
            && match mode {
                Mode::Iptables | Mode::Nftables => {
                    baseline_chains(size) <= self.baseline_max_chains
                }
                Mode::Ebpf | Mode::Direct => true,
            }
    }

    /// Every (services, endpoints) pair, smallest first.
    pub fn sizes(&self) -> Vec<(usize, usize)> {
        let mut sizes: Vec<(usize, usize)> = self
            .services
            .iter()
            .flat_map(|&n| self.endpoints.iter().map(move |&e| (n, e)))
            .collect();
        sizes.sort_unstable();
        sizes
    }
}

/// The chains kube-proxy's ruleset has for `size`: one per service and one per endpoint.
pub fn baseline_chains((services, endpoints): (usize, usize)) -> usize {
    services * (endpoints + 1)
}

/// One measured figure: a summary of samples of one metric for one subject at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Which measurement, e.g. `connect_latency`, `conn_rate`, `masq_conn_rate`,
    /// `masq_failures`, `throughput`, `rr_latency`, `cpu_per_mpkt`, `sustained_conn_rate`,
    /// `sustained_failures`, `program_full`, `endpoint_change`, `ns_per_packet`,
    /// `agent_rss`, `map_memory`, `gc_pass`, `gc_per_entry`.
    pub metric: String,
    /// What was measured: a mode name (`ebpf`, `iptables`, ...), for per-packet cost a
    /// program and case such as `lb_from_pod/established` or `floor`, for the GC `wall` or
    /// `cpu`.
    pub subject: String,
    /// The size loaded (N services × E endpoints); 0 × 0 for figures of no size (the GC).
    pub services: usize,
    pub endpoints: usize,
    /// The unit of `p01`, `p50` and `p99`, e.g. `us`, `ms`, `conn/s`, `Gbit/s`, `ns`, `MiB`.
    pub unit: String,
    /// How many samples the summary is over (1 for a single reading).
    pub samples: usize,
    pub p01: Option<f64>,
    pub p50: f64,
    pub p99: Option<f64>,
}

impl Figure {
    /// A single reading (memory, a rate over a whole run).
    pub fn single(metric: &str, subject: &str, size: (usize, usize), unit: &str, v: f64) -> Self {
        Self {
            metric: metric.into(),
            subject: subject.into(),
            services: size.0,
            endpoints: size.1,
            unit: unit.into(),
            samples: 1,
            p01: None,
            p50: v,
            p99: None,
        }
    }

    /// p01/p50/p99 of durations, in `unit` (`ns`, `us` or `ms`); `None` without samples.
    pub fn durations(
        metric: &str,
        subject: &str,
        size: (usize, usize),
        unit: &str,
        samples: &[Duration],
    ) -> Option<Self> {
        let scale = match unit {
            "ns" => 1e9,
            "us" => 1e6,
            "ms" => 1e3,
            "s" => 1.0,
            other => panic!("not a time unit: {other}"),
        };
        let at = |p| super::stats::percentile(samples, p).map(|d| d.as_secs_f64() * scale);
        Some(Self {
            metric: metric.into(),
            subject: subject.into(),
            services: size.0,
            endpoints: size.1,
            unit: unit.into(),
            samples: samples.len(),
            p01: at(1.0),
            p50: at(50.0)?,
            p99: at(99.0),
        })
    }
}

/// Everything a run collected.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub figures: Vec<Figure>,
    /// Plain-language notes for the report: what could not be measured and why, and any
    /// caveat a reader needs (e.g. "XDP ran in generic mode").
    pub notes: Vec<String>,
}

impl Results {
    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The figure for `metric` × `subject` × size, if measured.
    pub fn find(&self, metric: &str, subject: &str, size: (usize, usize)) -> Option<&Figure> {
        self.figures.iter().find(|f| {
            f.metric == metric && f.subject == subject && (f.services, f.endpoints) == size
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_summarise_in_the_unit_asked() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let f = Figure::durations("connect_latency", "ebpf", (100, 2), "us", &samples).unwrap();
        assert_eq!(f.samples, 100);
        assert_eq!(f.p01, Some(1.0));
        assert_eq!(f.p50, 50.0);
        assert_eq!(f.p99, Some(99.0));
        assert!(Figure::durations("x", "ebpf", (1, 1), "us", &[]).is_none());
    }

    #[test]
    fn sizes_cover_every_pair_smallest_first() {
        let s = Settings {
            quick: false,
            services: vec![1000, 100],
            endpoints: vec![10, 2],
            modes: Mode::ALL.to_vec(),
            parts: Part::ALL.to_vec(),
            baseline_max_chains: BASELINE_MAX_CHAINS,
        };
        assert!(s.runs(Mode::Iptables, (10_000, 2)));
        assert!(!s.runs(Mode::Nftables, (10_000, 10)));
        assert!(s.runs(Mode::Ebpf, (100_000, 10)));
        assert_eq!(s.sizes(), vec![(100, 2), (100, 10), (1000, 2), (1000, 10)]);
    }
}
