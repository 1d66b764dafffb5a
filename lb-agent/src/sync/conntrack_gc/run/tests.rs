//! Root-only tests: real conntrack tables of the datapath's types, pinned and filled as the
//! datapath fills them, collected by real passes.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, PerCpuValues};
use lb_common::{
    addr_be,
    conntrack::{ct_flags, dir, seen},
    proto,
};

use super::*;
use crate::testing::{require_root, PinDir};

const S: u64 = 1_000_000_000;

/// Short timeouts, so that the flows below can be aged with the real clock (the machine
/// may have been up for minutes only).
const TIMEOUTS: CtTimeouts = CtTimeouts {
    syn_sent_s: 20,
    established_s: 30,
    half_closed_s: 25,
    closing_s: 5,
    reset_s: 5,
    udp_s: 10,
};

type Entries = BTreeMap<CtKey, CtEntry>;

/// The maps a pass reads, pinned under `dir` as the datapath's object makes them
/// (preallocated hashes), with [`TIMEOUTS`] in the config.
fn pin_tables(dir: &Path, tcp_max: u32, any_max: u32) {
    for (name, max) in [
        (names::CONNTRACK_TCP, tcp_max),
        (names::CONNTRACK_ANY, any_max),
    ] {
        HashMap::<MapData, CtKey, CtEntry>::create(max, 0)
            .expect("create table")
            .pin(dir.join(name))
            .expect("pin table");
    }
    let mut config = Array::<MapData, Config>::create(1, 0).expect("create config");
    config
        .set(
            0,
            Config {
                ct_timeouts: TIMEOUTS,
                ..Default::default()
            },
            0,
        )
        .expect("set config");
    config.pin(dir.join(names::CONFIG)).expect("pin config");
    PerCpuArray::<MapData, u64>::create(lb_common::maps::COUNTERS_MAX, 0)
        .expect("create counters")
        .pin(dir.join(names::COUNTERS))
        .expect("pin counters");
}

fn table(dir: &Path, name: &'static str) -> BatchMap<CtKey, CtEntry> {
    BatchMap::open_pinned(dir, name).expect("open table")
}

fn fill(dir: &Path, entries: &Entries) {
    for name in names::CONNTRACK {
        let (keys, values): (Vec<CtKey>, Vec<CtEntry>) = entries
            .iter()
            .filter(|(k, _)| names::conntrack_table(k.proto) == name)
            .map(|(k, v)| (*k, *v))
            .unzip();
        assert_eq!(
            table(dir, name).update_batch(&keys, &values).expect("fill"),
            keys.len()
        );
    }
}

fn read_all(dir: &Path) -> Entries {
    let mut all = Entries::new();
    for name in names::CONNTRACK {
        let map = table(dir, name);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::START;
        loop {
            let walk = map
                .lookup_batch(&mut cursor, 4096, &mut keys, &mut values)
                .expect("read");
            all.extend(keys.iter().copied().zip(values.iter().copied()));
            if walk == Walk::End {
                break;
            }
        }
    }
    all
}

fn ip(a: [u8; 4]) -> u32 {
    addr_be(Ipv4Addr::from(a))
}

/// What the tables should hold, and what a pass should report, for [`mix`].
#[derive(Debug, Default)]
struct Expected {
    left: Entries,
    tcp_expired: u64,
    tcp_orphan: u64,
    any_expired: u64,
    tcp_repaired: u64,
    any_repaired: u64,
}

/// `n` flows (n a multiple of 12) of twelve kinds, stamped relative to `now`, and what a
/// collection must leave of them.
fn mix(n: u32, now: u64) -> (Entries, Expected) {
    const ESTABLISHED: u8 = seen::SYN | seen::REPLY;
    const CLOSED: u8 = ESTABLISHED | seen::FIN_FORWARD | seen::FIN_REPLY;
    let mut put = Entries::new();
    let mut want = Expected::default();
    for i in 0..n {
        let kind = i % 12;
        let client = ip([10, 1, (i >> 8) as u8, i as u8]);
        let p = if matches!(kind, 4 | 5 | 11) {
            proto::UDP
        } else {
            proto::TCP
        };
        let key = CtKey::new(
            client,
            ip([10, 96, 0, 10]),
            40_000u16.to_be(),
            80u16.to_be(),
            p,
            dir::FORWARD,
        );
        let at = |idle_ms: u64| now - idle_ms * S / 1000;
        let fwd = |seen: u8, idle_ms: u64| CtEntry {
            created_ns: at(idle_ms + 60_000),
            last_seen_ns: at(idle_ms),
            nat_addr: ip([10, 244, 2, (i % 250) as u8 + 1]),
            nat_port: 8080u16.to_be(),
            seen,
            service_id: 1,
            backend_id: 1 + i % 250,
            ..Default::default()
        };
        // Both halves of a flow, put in the tables; kept or not.
        let flow = |f: CtEntry, keep: bool, put: &mut Entries, want: &mut Expected| {
            let (rk, r) = (key.reply_of_forward(&f), key.reply_entry(&f));
            put.insert(key, f);
            put.insert(rk, r);
            if keep {
                want.left.insert(key, f);
                want.left.insert(rk, r);
            }
        };
        match kind {
            // Live: established, closed inside its close timeout, UDP.
            0 => flow(fwd(ESTABLISHED, 10_000), true, &mut put, &mut want),
            2 => flow(fwd(CLOSED, 2_000), true, &mut put, &mut want),
            4 => flow(fwd(0, 3_000), true, &mut put, &mut want),
            // Expired: established, closed, UDP.
            1 | 3 | 5 => {
                let f = match kind {
                    1 => fwd(ESTABLISHED, 40_000),
                    3 => fwd(CLOSED, 8_000),
                    _ => fwd(0, 15_000),
                };
                flow(f, false, &mut put, &mut want);
                if p == proto::TCP {
                    want.tcp_expired += 2;
                } else {
                    want.any_expired += 2;
                }
            }
            // A reply entry alone, just written (a flow being created) or long orphaned.
            6 | 7 => {
                let f = fwd(ESTABLISHED, 0);
                let rk = key.reply_of_forward(&f);
                let mut r = key.reply_entry(&f);
                r.created_ns = if kind == 6 { at(200) } else { at(5_000) };
                put.insert(rk, r);
                if kind == 6 {
                    want.left.insert(rk, r);
                } else {
                    want.tcp_orphan += 1;
                }
            }
            // A live flow that lost its reply entry (TCP), or a masqueraded UDP one.
            8 | 11 => {
                let mut f = fwd(ESTABLISHED, 1_000);
                if kind == 11 {
                    f.seen = 0;
                    f.flags = ct_flags::SNAT | ct_flags::NORTH_SOUTH;
                    f.snat_addr = ip([172, 18, 0, 2]);
                    f.snat_port = (61_000 + (i / 12) as u16).to_be();
                    want.any_repaired += 1;
                } else {
                    want.tcp_repaired += 1;
                }
                put.insert(key, f);
                want.left.insert(key, f);
                want.left
                    .insert(key.reply_of_forward(&f), key.reply_entry(&f));
            }
            // A reopened tuple now served by another backend: the old reply entry is
            // nobody's.
            9 => {
                let old = fwd(CLOSED, 20_000);
                let mut old_reply = key.reply_entry(&old);
                old_reply.created_ns = at(80_000);
                put.insert(key.reply_of_forward(&old), old_reply);
                let new = CtEntry {
                    nat_addr: ip([10, 244, 3, (i % 250) as u8 + 1]),
                    ..fwd(seen::SYN, 500)
                };
                flow(new, true, &mut put, &mut want);
                want.tcp_orphan += 1;
            }
            // An expired closed flow whose reply tuple a live flow to another service (same
            // client port, same backend) has claimed: only the old forward entry goes.
            10 => {
                let old = fwd(CLOSED, 8_000);
                put.insert(key, old);
                let other = CtKey {
                    daddr: ip([10, 96, 0, 99]),
                    ..key
                };
                let live = fwd(ESTABLISHED, 1_000);
                let (rk, r) = (other.reply_of_forward(&live), other.reply_entry(&live));
                assert_eq!(rk, key.reply_of_forward(&old));
                for (k, v) in [(other, live), (rk, r)] {
                    put.insert(k, v);
                    want.left.insert(k, v);
                }
                want.tcp_expired += 1;
            }
            _ => unreachable!(),
        }
    }
    (put, want)
}

fn now() -> u64 {
    monotonic_ns().expect("clock")
}

#[test]
fn a_pass_deletes_dead_flows_and_orphans_and_repairs_live_flows() {
    if !require_root("collecting real conntrack tables") {
        return;
    }
    let pins = PinDir::new("gc-pass");
    pin_tables(pins.path(), 65_536, 16_384);
    let (put, want) = mix(12_000, now());
    fill(pins.path(), &put);

    let mut gc = Collector::open(pins.path()).expect("open");
    let report = gc.pass(Duration::from_secs(30)).expect("pass");
    assert!(report.round_complete, "{report:?}");
    let [tcp, any] = [&report.tables[0], &report.tables[1]];
    assert_eq!(
        (tcp.name, tcp.max_entries, any.name),
        (names::CONNTRACK_TCP, 65_536, names::CONNTRACK_ANY)
    );
    assert_eq!(
        (tcp.deleted_expired, tcp.deleted_orphan, tcp.repaired),
        (want.tcp_expired, want.tcp_orphan, want.tcp_repaired)
    );
    assert_eq!(
        (any.deleted_expired, any.deleted_orphan, any.repaired),
        (want.any_expired, 0, want.any_repaired)
    );
    // Repaired entries stand elsewhere in the table: the walk may or may not meet them.
    let left = read_all(pins.path());
    let tcp_left = left.keys().filter(|k| k.proto == proto::TCP).count() as u64;
    let entries = tcp.entries.expect("finished");
    assert!(
        (tcp_left - want.tcp_repaired..=tcp_left).contains(&entries),
        "{entries} of {tcp_left}"
    );

    // Exactly what must remain, repaired reply entries included.
    let missing: Vec<_> = want.left.keys().filter(|k| !left.contains_key(k)).collect();
    let extra: Vec<_> = left.keys().filter(|k| !want.left.contains_key(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {} (first {:?}), extra {} (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    assert_eq!(left, want.left);

    // The next pass finds nothing to do, and counts what it leaves exactly.
    let again = gc.pass(Duration::from_secs(30)).expect("second pass");
    assert_eq!((again.deleted(), again.repaired()), (0, 0), "{again:?}");
    assert_eq!(again.tables[0].entries, Some(tcp_left));
    assert_eq!(again.seen(), left.len() as u64);
    assert!(again.cpu > Duration::ZERO);
}

#[test]
fn bounded_passes_resume_where_they_stopped() {
    if !require_root("collecting real conntrack tables") {
        return;
    }
    let pins = PinDir::new("gc-resume");
    pin_tables(pins.path(), 65_536, 16_384);
    let (put, want) = mix(12_000, now());
    fill(pins.path(), &put);

    // No budget: each pass reads one batch of each unfinished table and stops.
    let mut gc = Collector::open(pins.path()).expect("open").with_batch(512);
    let mut passes = 0;
    let (mut expired, mut orphan, mut repaired) = (0, 0, 0);
    loop {
        let report = gc.pass(Duration::ZERO).expect("pass");
        passes += 1;
        for t in &report.tables {
            expired += t.deleted_expired;
            orphan += t.deleted_orphan;
            repaired += t.repaired;
        }
        if report.round_complete {
            assert_eq!(
                report.tables[0].walk_deleted,
                want.tcp_expired + want.tcp_orphan
            );
            break;
        }
        assert!(passes < 1_000, "the walk does not advance");
    }
    assert!(passes > 10, "{passes} passes");
    assert_eq!(expired, want.tcp_expired + want.any_expired);
    assert_eq!(orphan, want.tcp_orphan);
    assert_eq!(repaired, want.tcp_repaired + want.any_repaired);
    assert_eq!(read_all(pins.path()), want.left);

    // The next pass starts a new round from the first bucket.
    let next = gc.pass(Duration::ZERO).expect("pass");
    assert!(!next.round_complete);
    assert!(next
        .tables
        .iter()
        .all(|t| t.walk_deleted == 0 && t.seen > 0));
}

#[test]
fn an_entry_that_changed_since_it_was_read_is_not_deleted() {
    if !require_root("collecting real conntrack tables") {
        return;
    }
    let pins = PinDir::new("gc-confirm");
    pin_tables(pins.path(), 1024, 1024);
    let (put, _) = mix(12, now());
    fill(pins.path(), &put);
    let mut gc = Collector::open(pins.path()).expect("open");
    let (&k1, &e1) = put
        .iter()
        .find(|(k, _)| k.proto == proto::TCP)
        .expect("tcp");
    let (&k2, &e2) = put
        .iter()
        .filter(|(k, _)| k.proto == proto::TCP)
        .nth(1)
        .expect("tcp");
    let doomed = |key, entry| Doomed {
        key,
        entry,
        reason: DeleteReason::Expired,
        in_chunk: true,
    };
    // A packet stamped k2 after the walk read it; a flush deleted a third key first.
    let stamped = CtEntry {
        last_seen_ns: e2.last_seen_ns + S,
        ..e2
    };
    let gone = CtKey { sport: 1, ..k1 };
    gc.scratch.doomed = vec![
        doomed(k1, e1),
        doomed(k2, stamped),
        doomed(gone, e1),
        doomed(k1, e1),
    ];
    let mut report = TableReport::default();
    let in_chunk =
        delete_confirmed(&mut gc.tables[0], &mut gc.scratch, &mut report).expect("delete");
    assert_eq!((in_chunk, report.deleted_expired), (1, 1));
    let map = table(pins.path(), names::CONNTRACK_TCP);
    assert_eq!(map.lookup(&k1).expect("lookup"), None);
    assert_eq!(map.lookup(&k2).expect("lookup"), Some(e2));
}

#[test]
fn the_runner_collects_at_once_and_again_when_the_datapath_drops_for_room() {
    if !require_root("running the conntrack GC on real tables") {
        return;
    }
    let pins = PinDir::new("gc-runner");
    pin_tables(pins.path(), 4096, 1024);
    let (put, want) = mix(1_200, now());
    fill(pins.path(), &put);
    let metrics = Metrics::new(None);
    let counts = Arc::new(EntryCounts::default());
    let options = GcOptions {
        // Fixed and long: only the datapath's signal can bring the second pass.
        interval: IntervalPolicy::from_flags(Duration::from_secs(3600), IntervalPolicy::MAX),
        ..Default::default()
    };
    let runs = |m: &Metrics| {
        let text = m.encode().expect("encode");
        crate::serve::metrics::sample(&text, "lb_conntrack_gc_runs_total", "")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let wait_for = |n: u64| {
        let until = Instant::now() + Duration::from_secs(10);
        while runs(&metrics) < n {
            assert!(Instant::now() < until, "no pass {n}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    let handle = spawn(pins.path(), options, metrics.clone(), counts.clone()).expect("spawn");
    wait_for(1);
    let left = read_all(pins.path());
    assert_eq!(left, want.left);
    let counted: BTreeMap<_, _> = counts.get().into_iter().collect();
    assert_eq!(counted.len(), 2, "{counted:?}");
    let text = metrics.encode().expect("encode");
    assert_eq!(
        crate::serve::metrics::sample(&text, "lb_conntrack_gc_interval_seconds", ""),
        Some("3600.0")
    );
    assert_eq!(
        crate::serve::metrics::sample(
            &text,
            "lb_conntrack_gc_deleted_total",
            "table=\"LB_CT4_TCP\",reason=\"orphan\""
        ),
        Some(want.tcp_orphan.to_string().as_str())
    );

    // The datapath refuses a flow for want of room: the collector runs within a poll.
    let mut counters: PerCpuArray<MapData, u64> = typed(
        names::COUNTERS,
        open_pinned(pins.path(), names::COUNTERS).expect("open"),
    )
    .expect("counters");
    let cpus = aya::util::nr_cpus().expect("cpus");
    let mut one = vec![0u64; cpus];
    one[0] = 1;
    counters
        .set(
            Reason::DropCtFull as u32,
            PerCpuValues::try_from(one).expect("values"),
            0,
        )
        .expect("bump");
    wait_for(2);
    let stopping = Instant::now();
    drop(handle);
    assert!(stopping.elapsed() < Duration::from_secs(3));
    assert_eq!(runs(&metrics), 2);
}

/// A pass over a million entries: `cargo test -p lb-agent --release -- --ignored
/// million --nocapture` prints its time. Not a test of speed (timings belong in the bench).
#[test]
#[ignore = "a measurement: fills 1M conntrack entries"]
fn a_pass_over_a_million_entries() {
    if !require_root("collecting real conntrack tables") {
        return;
    }
    let pins = PinDir::new("gc-million");
    // Room for 1M entries at under half full, as the agent sizes the tables.
    pin_tables(pins.path(), 1 << 21, 1024);
    let now = now();
    let mut keys = Vec::with_capacity(1 << 20);
    let mut values = Vec::with_capacity(1 << 20);
    // 500 000 TCP flows, one in ten expired.
    for i in 0..500_000u32 {
        let key = CtKey::new(
            ip([10, 1, 0, 0]) | (i >> 8 & 0xff) << 16 | (i & 0xff) << 24,
            ip([10, 96, (i >> 16) as u8, 10]),
            40_000u16.to_be(),
            80u16.to_be(),
            proto::TCP,
            dir::FORWARD,
        );
        let idle = if i % 10 == 0 { 40 * S } else { S };
        let fwd = CtEntry {
            created_ns: now - 60 * S,
            last_seen_ns: now - idle,
            nat_addr: ip([10, 244, 2, (i % 250) as u8 + 1]),
            nat_port: 8080u16.to_be(),
            seen: seen::SYN | seen::REPLY,
            ..Default::default()
        };
        keys.push(key);
        values.push(fwd);
        keys.push(key.reply_of_forward(&fwd));
        values.push(key.reply_entry(&fwd));
    }
    let map = table(pins.path(), names::CONNTRACK_TCP);
    let started = Instant::now();
    assert_eq!(map.update_batch(&keys, &values).expect("fill"), 1_000_000);
    println!("filled 1M entries in {:?}", started.elapsed());

    // What the walk alone costs: the rest of a pass is one partner lookup per entry.
    let started = Instant::now();
    let read = read_all(pins.path()).len();
    println!(
        "batch walk alone: {read} entries in {:?}",
        started.elapsed()
    );

    let mut gc = Collector::open(pins.path()).expect("open");
    for label in ["10 % expired", "all live"] {
        let report = gc.pass(Duration::from_secs(60)).expect("pass");
        assert!(report.round_complete);
        println!(
            "{label}: seen {} deleted {} in {:?} (cpu {:?})",
            report.seen(),
            report.deleted(),
            report.duration,
            report.cpu
        );
    }
}
