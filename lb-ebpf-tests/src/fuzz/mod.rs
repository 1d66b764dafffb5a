//! The datapath fuzzer: generated and mutated packets through every packet program with
//! BPF_PROG_TEST_RUN, on a node whose maps hold services, backends and live conntrack and
//! SNAT entries, each run checked by an oracle ([`oracle`]) and the tables walked for
//! invariants ([`invariants`]) after every batch.
//!
//! The packet programs are `lb_from_pod`, `lb_to_pod`, `lb_from_net`, `lb_to_net` and
//! `lb_xdp`; every packet goes through all five, in that order, on the same maps. The
//! cgroup socket programs take no packets and are not fuzzed here.
//!
//! Layout: [`rng`] (seeded PRNG), [`gen`] (packet model, builder, mutators), [`cases`]
//! (what to send), [`node`] (the node's services and flows), [`oracle`], [`invariants`],
//! [`corpus`] (the seed corpus and regression files under `lb-ebpf-tests/fuzz/`).

pub mod cases;
pub mod corpus;
pub mod gen;
pub mod invariants;
pub mod node;
pub mod oracle;
pub mod rng;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_common::{maps, Reason};

use crate::{testnet, Datapath, Program};
use node::Node;
use rng::Rng;

/// The programs every packet goes through, in order.
pub const PROGRAMS: [Program; 5] = [
    Program::FromPod,
    Program::ToPod,
    Program::FromNet,
    Program::ToNet,
    Program::Xdp,
];

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Generated packets (each runs through every program).
    pub packets: u64,
    /// Packets between two table walks; every other walk also empties conntrack and opens
    /// the node's flows again, alternating the masquerade port range between the default
    /// and a small one (so both a sweep and exhaustion happen).
    pub batch: u64,
    /// Conntrack table sizes (small, so the tables do fill up within a batch).
    pub ct_tcp: u32,
    pub ct_any: u32,
    /// Corpus packets, used as mutation bases.
    pub corpus: Vec<Vec<u8>>,
    /// Stop at this many findings.
    pub max_findings: usize,
}

impl Options {
    pub fn new(seed: u64, packets: u64) -> Self {
        Self {
            seed,
            packets,
            batch: 20_000,
            ct_tcp: 4096,
            ct_any: 2048,
            corpus: Vec::new(),
            max_findings: 20,
        }
    }
}

/// Something the oracle refused.
#[derive(Clone, Debug)]
pub struct Finding {
    pub program: &'static str,
    pub message: String,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub retval: i32,
    pub reasons: Vec<&'static str>,
    /// Packet number within its run (with the seed, enough to reproduce it).
    pub packet: u64,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub packets: u64,
    pub runs: u64,
    pub mutated: u64,
    pub elapsed: Duration,
    /// (program, verdict) -> runs.
    pub verdicts: BTreeMap<(&'static str, i32), u64>,
    /// reason index -> times counted.
    pub reasons: BTreeMap<u32, u64>,
    pub kinds: BTreeMap<&'static str, u64>,
    pub walks: u64,
    pub max_entries: usize,
    pub orphans: usize,
    pub findings: Vec<Finding>,
    /// Findings beyond the ones kept.
    pub more_findings: u64,
    /// Runs BPF_PROG_TEST_RUN refused before any program ran (see [`refused_by_kernel`]).
    pub refused: u64,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.packets += other.packets;
        self.runs += other.runs;
        self.mutated += other.mutated;
        self.elapsed = self.elapsed.max(other.elapsed);
        for (k, v) in other.verdicts {
            *self.verdicts.entry(k).or_default() += v;
        }
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        for (k, v) in other.kinds {
            *self.kinds.entry(k).or_default() += v;
        }
        self.walks += other.walks;
        self.max_entries = self.max_entries.max(other.max_entries);
        self.orphans += other.orphans;
        self.findings.extend(other.findings);
        self.more_findings += other.more_findings;
        self.refused += other.refused;
    }

    /// Times `reason` was counted.
    pub fn count(&self, reason: Reason) -> u64 {
        self.reasons.get(&(reason as u32)).copied().unwrap_or(0)
    }

    /// The histograms, for people.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        s += &format!(
            "seed {:#x}: {} packets ({} mutated), {} program runs in {:.1} s: {:.0} packets/s, {:.0} runs/s\n",
            self.seed,
            self.packets,
            self.mutated,
            self.runs,
            secs,
            self.packets as f64 / secs,
            self.runs as f64 / secs
        );
        s += &format!(
            "runs the kernel refused to start (tc, IP frames shorter than their IP header): {}\n",
            self.refused
        );
        s += &format!(
            "table walks: {}, most entries at a walk: {}, orphan reply entries seen: {}\n",
            self.walks, self.max_entries, self.orphans
        );
        s += "packets by kind:\n";
        for (k, v) in &self.kinds {
            s += &format!("  {k:<12} {v}\n");
        }
        s += "verdicts:\n";
        for ((p, v), n) in &self.verdicts {
            s += &format!("  {p:<12} {:<9} {n}\n", verdict_name(p, *v));
        }
        s += "reasons:\n";
        for (r, n) in &self.reasons {
            let name = Reason::from_index(*r).map(|r| r.name()).unwrap_or("?");
            s += &format!("  {name:<22} {n}\n");
        }
        s += &format!(
            "findings: {}\n",
            self.findings.len() as u64 + self.more_findings
        );
        for f in &self.findings {
            s += &format!(
                "  packet {} {}: {} (verdict {}, reasons {:?})\n    {}\n",
                f.packet,
                f.program,
                f.message,
                f.retval,
                f.reasons,
                corpus::hex(&f.input)
            );
        }
        s
    }
}

pub fn verdict_name(program: &str, v: i32) -> &'static str {
    if program == Program::Xdp.name() {
        match v {
            0 => "aborted",
            1 => "drop",
            2 => "pass",
            3 => "tx",
            4 => "redirect",
            _ => "?",
        }
    } else {
        match v {
            -1 => "unspec",
            0 => "ok",
            2 => "shot",
            7 => "redirect",
            _ => "?",
        }
    }
}

/// BPF_PROG_TEST_RUN builds a tc program's skb only from an IPv4 (IPv6) frame that holds
/// an IPv4 (IPv6) header: it fails with EINVAL otherwise, before any program runs. Runts
/// that a real tc hook would see cannot be handed to the tc programs this way; XDP takes
/// them (and the parser is shared).
pub fn refused_by_kernel(program: Program, bytes: &[u8]) -> bool {
    let l3 = bytes.len().saturating_sub(14);
    program != Program::Xdp
        && match bytes.get(12..14) {
            Some([0x08, 0x00]) => l3 < 20,
            Some([0x86, 0xdd]) => l3 < 40,
            _ => false,
        }
}

/// A datapath in the calling thread's own test namespace, with the node programmed.
pub struct Fuzzer {
    pub dp: Datapath,
    pub node: Node,
    _net: testnet::TestNet,
    counters: Vec<u64>,
    pub report: Report,
    max_findings: usize,
}

impl Fuzzer {
    /// Enters a new network namespace (this thread's), loads the object and programs the
    /// node. Needs root.
    pub fn new(ct_tcp: u32, ct_any: u32, max_findings: usize) -> Result<Self> {
        let net = testnet::enter().context("test namespace")?;
        node::add_routes()?;
        let mut dp = Datapath::load_with(
            0,
            &[(maps::CONNTRACK_TCP, ct_tcp), (maps::CONNTRACK_ANY, ct_any)],
        )
        .context("loading the datapath")?;
        let mut node = Node::program(&mut dp, net.uplink_ifindex);
        node.open_flows(&mut dp)
            .context("opening the node's flows")?;
        let counters = dp.counters()?;
        Ok(Self {
            dp,
            node,
            _net: net,
            counters,
            report: Report::default(),
            max_findings,
        })
    }

    /// Runs `bytes` through every packet program and checks each run.
    pub fn packet(&mut self, bytes: &[u8], packet: u64) -> Result<()> {
        for program in PROGRAMS {
            self.one(program, bytes, packet)?;
        }
        self.report.packets += 1;
        Ok(())
    }

    /// Runs `bytes` through `program` once and checks the run.
    pub fn one(&mut self, program: Program, bytes: &[u8], packet: u64) -> Result<()> {
        let run = self.node.run(&mut self.dp, program, bytes);
        self.report.runs += 1;
        let run = match run {
            Ok(run) => run,
            Err(_) if refused_by_kernel(program, bytes) => {
                self.report.refused += 1;
                return Ok(());
            }
            Err(e) => {
                self.found(
                    program,
                    format!("BPF_PROG_TEST_RUN failed: {e:#}"),
                    bytes,
                    &[],
                    0,
                    &[],
                    packet,
                );
                return Ok(());
            }
        };
        let now = self.dp.counters()?;
        let delta: Vec<u64> = now
            .iter()
            .zip(&self.counters)
            .map(|(a, b)| a.wrapping_sub(*b))
            .collect();
        self.counters = now;
        *self
            .report
            .verdicts
            .entry((program.name(), run.retval))
            .or_default() += 1;
        for (i, d) in delta.iter().enumerate() {
            if *d != 0 {
                *self.report.reasons.entry(i as u32).or_default() += d;
            }
        }
        let verdict = oracle::counted(&delta).and_then(|reasons| {
            let outcome = oracle::classify(program, run.retval, &reasons, bytes)?;
            if program == Program::ToNet
                && outcome != oracle::Outcome::Untouched
                && bytes.get(26..30) != Some(&self.node.config.node_addr.to_ne_bytes()[..])
            {
                return Err("lb_to_net acted on a packet not from the node's address".into());
            }
            oracle::check_bytes(outcome, program, bytes, &run, &self.node)?;
            oracle::check_mapping(outcome, bytes, &run, &mut self.dp, &self.node)?;
            Ok(reasons)
        });
        if let Err(message) = verdict {
            let reasons: Vec<Reason> = delta
                .iter()
                .enumerate()
                .filter(|(_, d)| **d != 0)
                .filter_map(|(i, _)| Reason::from_index(i as u32))
                .collect();
            self.found(
                program, message, bytes, &run.data, run.retval, &reasons, packet,
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn found(
        &mut self,
        program: Program,
        message: String,
        input: &[u8],
        output: &[u8],
        retval: i32,
        reasons: &[Reason],
        packet: u64,
    ) {
        if self.report.findings.len() >= self.max_findings {
            self.report.more_findings += 1;
            return;
        }
        self.report.findings.push(Finding {
            program: program.name(),
            message,
            input: input.to_vec(),
            output: output.to_vec(),
            retval,
            reasons: oracle::names(reasons),
            packet,
        });
    }

    /// Walks the tables; violations become findings (against the packet that ended the
    /// batch: the batch's seed and packet range reproduce it).
    pub fn walk(&mut self, packet: u64) {
        let w = invariants::walk(&mut self.dp, &self.node);
        self.report.walks += 1;
        self.report.max_entries = self.report.max_entries.max(w.entries);
        self.report.orphans += w.orphans;
        for v in w.violations.into_iter().take(5) {
            self.found(
                Program::FromPod,
                format!("table invariant: {v}"),
                &[],
                &[],
                0,
                &[],
                packet,
            );
        }
    }
}

/// A fuzzing run in the calling thread (which it moves into a network namespace of its
/// own).
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let mut fz = Fuzzer::new(opts.ct_tcp, opts.ct_any, opts.max_findings)?;
    fz.report.seed = opts.seed;
    let mut rng = Rng::new(opts.seed);
    let mut epoch = 0u64;
    for i in 0..opts.packets {
        if i > 0 && i % opts.batch == 0 {
            fz.walk(i);
            epoch += 1;
            if epoch.is_multiple_of(2) {
                // Both ranges: the default's random tries, and 32 ports swept (and
                // exhausted by the flood of new flows to one backend).
                let range = if epoch % 4 == 2 {
                    (61000, 61031)
                } else {
                    (0, 0)
                };
                fz.node.set_snat_range(&mut fz.dp, range);
                fz.node.open_flows(&mut fz.dp)?;
                fz.counters = fz.dp.counters()?;
            }
        }
        let (bytes, kind, mutated) = cases::next(&mut rng, &fz.node, &opts.corpus);
        *fz.report.kinds.entry(kind.name()).or_default() += 1;
        fz.report.mutated += mutated as u64;
        fz.packet(&bytes, i)?;
        if fz.report.findings.len() >= opts.max_findings {
            break;
        }
    }
    fz.walk(opts.packets);
    fz.report.elapsed = started.elapsed();
    Ok(fz.report)
}

/// Replays `packets` (name, bytes) through every program on a freshly opened node, and
/// with `truncate` also every truncation of each from the Ethernet header on.
pub fn replay(packets: &[(String, Vec<u8>)], truncate: bool) -> Result<Report> {
    let started = Instant::now();
    let opts = Options::new(0, 0);
    let mut fz = Fuzzer::new(opts.ct_tcp, opts.ct_any, 50)?;
    for (i, (_, bytes)) in packets.iter().enumerate() {
        fz.packet(bytes, i as u64)?;
        if truncate {
            for len in gen::MIN_LEN..bytes.len() {
                fz.packet(&bytes[..len], i as u64)?;
            }
        }
    }
    fz.walk(packets.len() as u64);
    fz.report.elapsed = started.elapsed();
    Ok(fz.report)
}
