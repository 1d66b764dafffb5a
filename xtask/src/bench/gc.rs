//! Conntrack GC cost: the wall and CPU time of one pass of the agent's collector
//! (`lb_agent::sync::conntrack_gc::run::pass`) over a million conntrack entries, and per
//! entry.
//!
//! No lab: the real object is loaded (`lb_agent::datapath::loader::load`, as the agent loads
//! it) with its maps pinned in a private bpffs directory (`lb_lab::testing::PinDir`), the TCP table
//! sized to twice the entries (the agent sizes it from memory; half full is where the
//! collector starts running rounds back to back, `conntrack_gc::FULL_FILL`). Each round fills it through batch updates with
//! forward + reply pairs stamped relative to now, then times one pass, which must walk both
//! tables to their end (one round of the collector). The pass deletes the expired flows, so
//! the next round's fill puts them back.
//!
//! A full run times the collector built in release, as the agent is: it builds xtask in
//! release and runs the hidden `xtask bench gc-pass`, which prints its [`Measured`] as
//! JSON. `--quick`, a smoke test, times this (debug) build in-process.
//!
//! The mix, per ten flows: seven east-west (pod -> ClusterIP, established, idle up to 30 s),
//! two north-south masqueraded (external client -> NodePort, source translated to the
//! node's address and a port of 61000-65535, established), and one expired (half closed
//! with both FINs and idle past the 10 s close timeout, half SYN_SENT idle past 60 s).

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_agent::{
    datapath::{
        loader::{self, BpfLogLevel, Object},
        maps::batch::BatchMap,
    },
    sync::conntrack_gc::run as gc,
};
use lb_common::{
    addr_be,
    conntrack::{ct_flags, dir, seen, snat_ports},
    maps as names, proto, CtEntry, CtKey,
};
use serde::{Deserialize, Serialize};

use super::results::{Figure, Results, Settings};

/// Entries in the table when a pass is timed.
pub fn entries(quick: bool) -> usize {
    if quick {
        100_000
    } else {
        1_000_000
    }
}

fn rounds(quick: bool) -> usize {
    if quick {
        3
    } else {
        5
    }
}

/// Entries per batch update, as the collector's own batches.
const FILL_BATCH: usize = 4096;
/// A budget no pass at these sizes comes near: the pass must finish the round.
const BUDGET: Duration = Duration::from_secs(600);
const S: u64 = 1_000_000_000;
/// The node the north-south flows are masqueraded to.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);

/// `cargo xtask bench gc-pass`: the measurement alone, its [`Measured`] as JSON on stdout.
/// What [`run`] starts from a release build, so the collector is timed as the agent runs it.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Entries in the table (half forward, half reply).
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Passes timed, each after a fill.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// What the passes took, and what the last one did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Measured {
    table: u32,
    walls_ns: Vec<u64>,
    cpus_ns: Vec<u64>,
    fills_ns: Vec<u64>,
    seen: u64,
    expired: u64,
    orphans: u64,
    repaired: u64,
}

pub fn pass_command(args: &Args) -> Result<()> {
    let measured = measure(args.entries, args.rounds, &mut |msg| {
        eprintln!("bench: {msg}")
    })?;
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

pub fn run(settings: &Settings, results: &mut Results, status: &mut dyn FnMut(&str)) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        results.note("gc: not measured (loading the eBPF object needs root)");
        return Ok(());
    }
    let object = lb_ebpf_tests::privilege::ebpf_object();
    if !object.exists() {
        crate::build::run_build(&crate::build::BuildArgs::default())?;
    }
    let entries = entries(settings.quick);
    let rounds = rounds(settings.quick);
    // `--quick` (a smoke test) times this debug build; a full run a release build of the
    // same code, as the agent is built.
    let m = if settings.quick {
        measure(entries, rounds, status)?
    } else {
        release_measure(entries, rounds, status)?
    };
    let build = if settings.quick { "debug" } else { "release" };
    let ns = |v: &[u64]| -> Vec<Duration> { v.iter().map(|&n| Duration::from_nanos(n)).collect() };
    let (walls, cpus) = (ns(&m.walls_ns), ns(&m.cpus_ns));
    let size = (0, 0);
    results
        .figures
        .extend(Figure::durations("gc_pass", "wall", size, "ms", &walls));
    results
        .figures
        .extend(Figure::durations("gc_pass", "cpu", size, "ms", &cpus));
    let per_entry = |d: &[Duration]| -> Vec<Duration> {
        d.iter()
            .map(|t| *t / u32::try_from(entries).unwrap_or(u32::MAX))
            .collect()
    };
    for (subject, d) in [("wall", &walls), ("cpu", &cpus)] {
        results.figures.extend(Figure::durations(
            "gc_per_entry",
            subject,
            size,
            "ns",
            &per_entry(d),
        ));
    }
    let fill = super::stats::percentile(&ns(&m.fills_ns), 50.0).unwrap_or_default();
    results.note(format!(
        "gc: {entries} entries ({} flows: 70% east-west, 20% masqueraded north-south, 10% \
         expired) in a {}-entry {} table, {} passes, the collector in a {build} build; the last \
         pass read {} entries (the partners it deletes ahead of its walk it never reads), \
         deleted {} expired and {} orphans, repaired {}; filling took {:.0} ms (p50, batch \
         updates of {FILL_BATCH})",
        entries / 2,
        m.table,
        names::CONNTRACK_TCP,
        walls.len(),
        m.seen,
        m.expired,
        m.orphans,
        m.repaired,
        fill.as_secs_f64() * 1e3
    ));
    Ok(())
}

/// [`measure`] in `xtask bench gc-pass` built in release.
fn release_measure(
    entries: usize,
    rounds: usize,
    status: &mut dyn FnMut(&str),
) -> Result<Measured> {
    status("gc: building xtask in release (the collector as the agent is built)");
    let workspace = crate::build::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run::run(
        Command::new(cargo)
            .args(["build", "--release", "-p", "xtask"])
            .current_dir(&workspace),
    )
    .context("building xtask in release")?;
    status(&format!("gc: {rounds} passes over {entries} entries"));
    let out = Command::new(workspace.join("target/release/xtask"))
        .args(["bench", "gc-pass", "--entries"])
        .arg(entries.to_string())
        .arg("--rounds")
        .arg(rounds.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running xtask bench gc-pass")?;
    ensure!(out.status.success(), "xtask bench gc-pass failed");
    serde_json::from_slice(&out.stdout).context("xtask bench gc-pass's output")
}

/// Loads the object with a TCP table of twice `entries` in a private pin dir, then `rounds`
/// times: fills it with `entries` entries and times one pass.
fn measure(entries: usize, rounds: usize, status: &mut dyn FnMut(&str)) -> Result<Measured> {
    let object = lb_ebpf_tests::privilege::ebpf_object();
    let table = u32::try_from(2 * entries).context("table size")?;
    status(&format!(
        "gc: loading the object with a {table}-entry TCP table"
    ));
    let pins = lb_lab::testing::PinDir::new("bench-gc");
    // The object is only needed for its maps, which stay pinned once it is dropped.
    drop(
        loader::load(
            &Object::File(object.clone()),
            pins.path(),
            BpfLogLevel::Off,
            &[(names::CONNTRACK_TCP, table)],
        )
        .with_context(|| format!("loading {}", object.display()))?,
    );
    let map: BatchMap<CtKey, CtEntry> = BatchMap::open_pinned(pins.path(), names::CONNTRACK_TCP)?;
    ensure!(
        map.max_entries() == table,
        "{} has {} entries, not {table}",
        names::CONNTRACK_TCP,
        map.max_entries()
    );
    let mut m = Measured {
        table,
        walls_ns: Vec::new(),
        cpus_ns: Vec::new(),
        fills_ns: Vec::new(),
        seen: 0,
        expired: 0,
        orphans: 0,
        repaired: 0,
    };
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    for round in 0..rounds {
        status(&format!(
            "gc: pass {}/{rounds}: filling {entries} entries",
            round + 1
        ));
        let now = lb_agent::ctl::monotonic_ns().context("CLOCK_MONOTONIC")?;
        let (keys, values) = mix(entries / 2, now);
        let started = Instant::now();
        for (k, v) in keys.chunks(FILL_BATCH).zip(values.chunks(FILL_BATCH)) {
            map.update_batch(k, v)
                .with_context(|| format!("batch update of {}", names::CONNTRACK_TCP))?;
        }
        m.fills_ns.push(nanos(started.elapsed()));
        status(&format!("gc: pass {}/{rounds}", round + 1));
        let report = gc::pass(pins.path(), BUDGET).context("the GC pass")?;
        ensure!(
            report.round_complete,
            "the pass did not finish walking the tables in {BUDGET:?}"
        );
        // What it read, plus the partners it deleted ahead of its walk (never read): every
        // entry is either left in place or deleted.
        let kept: u64 = report.tables.iter().filter_map(|t| t.entries).sum();
        ensure!(
            kept + report.deleted() == keys.len() as u64,
            "the pass left {kept} and deleted {} entries of the {} written",
            report.deleted(),
            keys.len()
        );
        m.walls_ns.push(nanos(report.duration));
        m.cpus_ns.push(nanos(report.cpu));
        m.seen = report.seen();
        m.expired = report.tables.iter().map(|t| t.deleted_expired).sum();
        m.orphans = report.tables.iter().map(|t| t.deleted_orphan).sum();
        m.repaired = report.repaired();
    }
    Ok(m)
}

/// `flows` flows as the datapath leaves them at `now` (CLOCK_MONOTONIC ns): each one's
/// forward and reply entry, as keys and values for batch updates.
fn mix(flows: usize, now: u64) -> (Vec<CtKey>, Vec<CtEntry>) {
    let mut keys = Vec::with_capacity(2 * flows);
    let mut values = Vec::with_capacity(2 * flows);
    let established = seen::SYN | seen::REPLY;
    let closed = established | seen::FIN_FORWARD | seen::FIN_REPLY;
    let (mut east_west, mut north_south) = (0u32, 0u32);
    for i in 0..flows {
        // Idle times spread over 0..30 s, reproducibly.
        let idle = (i as u64).wrapping_mul(2_654_435_761) % (30 * S);
        let class = i % 10;
        let (key, entry) = if class < 2 {
            // Masqueraded: client 198.18.x.y -> node:30080, to backend 10.245.b:8080 from
            // the node's address and a port of the SNAT range; (backend, port) unique.
            let j = north_south;
            north_south += 1;
            let range = u32::from(snat_ports::MAX - snat_ports::MIN) + 1;
            let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + j / 30_000);
            let backend = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 1)) + j / range);
            let key = CtKey::new(
                addr_be(client),
                addr_be(NODE_IP),
                (32_768 + (j % 30_000) as u16).to_be(),
                30_080u16.to_be(),
                proto::TCP,
                dir::FORWARD,
            );
            let entry = CtEntry {
                created_ns: now.saturating_sub(idle + 60 * S),
                last_seen_ns: now.saturating_sub(idle),
                nat_addr: addr_be(backend),
                nat_port: 8080u16.to_be(),
                seen: established,
                flags: ct_flags::SNAT | ct_flags::NORTH_SOUTH,
                service_id: 1 + j % 1000,
                backend_id: 1 + j / range,
                snat_addr: addr_be(NODE_IP),
                snat_port: (snat_ports::MIN + (j % range) as u16).to_be(),
                ..Default::default()
            };
            (key, entry)
        } else {
            // East-west: pod 10.128.x.y:port -> ClusterIP 10.96.s:80, to a backend pod.
            let j = east_west;
            east_west += 1;
            let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + j / 28_000);
            let service = j % 10_000;
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + service);
            let backend = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 244, 0, 2)) + (service * 2 + j % 2) % 60_000,
            );
            let (seen, idle) = match (class, i % 20) {
                // Expired: closed past the 10 s close timeout, or SYN_SENT past 60 s.
                (9, 9) => (closed, 20 * S + idle),
                (9, _) => (seen::SYN, 70 * S + idle),
                _ => (established, idle),
            };
            let key = CtKey::new(
                addr_be(client),
                addr_be(vip),
                (32_768 + (j % 28_000) as u16).to_be(),
                80u16.to_be(),
                proto::TCP,
                dir::FORWARD,
            );
            let entry = CtEntry {
                created_ns: now.saturating_sub(idle + 60 * S),
                last_seen_ns: now.saturating_sub(idle),
                nat_addr: addr_be(backend),
                nat_port: 8080u16.to_be(),
                seen,
                service_id: 1 + service,
                backend_id: 1 + (service * 2 + j % 2) % 60_000,
                ..Default::default()
            };
            (key, entry)
        };
        keys.push(key);
        values.push(entry);
        keys.push(key.reply_of_forward(&entry));
        values.push(key.reply_entry(&entry));
    }
    (keys, values)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lb_agent::sync::conntrack_gc::{decide, partner_of, Decision};
    use lb_common::CtTimeouts;

    use super::*;

    #[test]
    fn the_mix_is_whole_flows_with_a_tenth_expired() {
        let now = 10_000 * S;
        let (keys, values) = mix(20_000, now);
        assert_eq!(keys.len(), 40_000);
        let table: HashMap<CtKey, CtEntry> = keys.iter().copied().zip(values).collect();
        assert_eq!(table.len(), keys.len(), "every key once");
        let t = CtTimeouts::default();
        let mut deleted = 0;
        for (k, v) in &table {
            let partner = partner_of(k, v).expect("a direction");
            let p = table.get(&partner).expect("both halves of every flow");
            match decide(k, v, Some(p), now, &t) {
                Decision::Keep => {}
                Decision::Delete { with, .. } => {
                    deleted += 1;
                    assert!(with.is_some(), "an expired flow goes whole");
                }
                Decision::Repair { .. } => panic!("no flow lacks its reply entry"),
            }
        }
        assert_eq!(deleted, keys.len() / 10);
        let snat = table
            .iter()
            .filter(|(k, v)| k.dir == dir::FORWARD && v.flags & ct_flags::SNAT != 0)
            .count();
        assert_eq!(snat, 20_000 / 5);
    }
}
