//! Turns map contents into the tables `lbctl` prints. Pure: the caller reads the maps and
//! the clock.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    addr_from_be, backend, conntrack::dir, frontend, proto, reason::Kind, CtEntry, CtKey, Reason,
};

use super::{pinned::Contents, table::Table};

/// Every table of `lbctl maps dump`, separated by blank lines.
pub fn dump(contents: &Contents, counters: &[u64], now_ns: u64) -> String {
    [
        frontends(contents),
        slots(contents),
        backends(contents),
        conntrack(contents, now_ns),
        self::counters(counters),
    ]
    .iter()
    .map(Table::to_string)
    .collect::<Vec<_>>()
    .join("\n")
}

/// `address:port/PROTO` from network-order fields.
fn endpoint(addr: u32, port: u16, protocol: Option<u8>) -> String {
    let base = format!("{}:{}", addr_from_be(addr), u16::from_be(port));
    match protocol {
        Some(p) => format!("{base}/{}", proto::name(p)),
        None => base,
    }
}

fn joined(names: impl Iterator<Item = &'static str>) -> String {
    let s = names.collect::<Vec<_>>().join(",");
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

pub fn frontends(c: &Contents) -> Table {
    let mut t = Table::new("FRONTENDS", &["ADDRESS", "SERVICE", "BACKENDS", "FLAGS"]);
    let mut rows = c.frontends.clone();
    rows.sort_by_key(|(k, _)| (k.ip(), k.port_host(), k.proto, k.scope));
    for (k, f) in rows {
        t.row(vec![
            endpoint(k.addr, k.port, Some(k.proto)),
            f.service_id.to_string(),
            f.backend_count.to_string(),
            joined(frontend::flags::names(f.flags)),
        ]);
    }
    t
}

/// One row per service: its backend ids in slot order.
pub fn slots(c: &Contents) -> Table {
    let mut t = Table::new(
        "BACKEND SLOTS",
        &["SERVICE", "SLOTS", "BACKEND IDS (slot 1..n)"],
    );
    let mut by_service: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
    for (k, id) in &c.slots {
        by_service
            .entry(k.service_id)
            .or_default()
            .insert(k.slot, *id);
    }
    for (service, slots) in by_service {
        // Slots are 1..=n outside an update; say so when they are not.
        let contiguous = slots.keys().copied().eq(1..=slots.len() as u32);
        let mut ids = slots
            .values()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        if !contiguous {
            ids.push_str(&format!(" (slots {:?})", slots.keys().collect::<Vec<_>>()));
        }
        t.row(vec![service.to_string(), slots.len().to_string(), ids]);
    }
    t
}

pub fn backend_flag_names(flags: u8) -> impl Iterator<Item = &'static str> {
    [
        (backend::flags::TERMINATING, "terminating"),
        (backend::flags::LOCAL, "local"),
    ]
    .into_iter()
    .filter(move |(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
}

pub fn backends(c: &Contents) -> Table {
    let mut t = Table::new("BACKENDS", &["ID", "ADDRESS", "FLAGS"]);
    let mut rows = c.backends.clone();
    rows.sort_by_key(|(id, _)| *id);
    for (id, b) in rows {
        t.row(vec![
            id.to_string(),
            endpoint(b.addr, b.port, Some(b.proto)),
            joined(backend_flag_names(b.flags)),
        ]);
    }
    t
}

/// Flows grouped as forward entry then reply entry. A reply entry carries no state of its
/// own: its row shows the state and idle time of its flow's forward entry.
pub fn conntrack(c: &Contents, now_ns: u64) -> Table {
    let mut t = Table::new(
        "CONNTRACK",
        &[
            "DIR",
            "FLOW",
            "TRANSLATION",
            "SERVICE",
            "BACKEND",
            "STATE",
            "AGE",
            "IDLE",
        ],
    );
    let entries: HashMap<CtKey, CtEntry> = c.conntrack.iter().copied().collect();
    let forward_of = |k: &CtKey, e: &CtEntry| {
        if k.dir == dir::REPLY {
            k.forward_of_reply(e)
        } else {
            *k
        }
    };
    let mut rows = c.conntrack.clone();
    rows.sort_by_key(|(k, e)| (forward_of(k, e), k.dir));
    for (k, e) in rows {
        let flow = format!(
            "{} -> {}",
            endpoint(k.saddr, k.sport, None),
            endpoint(k.daddr, k.dport, Some(k.proto))
        );
        let (direction, translation, state_entry) = match k.dir {
            dir::FORWARD => (
                "forward",
                format!("dst {}", endpoint(e.nat_addr, e.nat_port, None)),
                Some(e),
            ),
            dir::REPLY => (
                "reply",
                format!("src {}", endpoint(e.nat_addr, e.nat_port, None)),
                entries.get(&forward_of(&k, &e)).copied(),
            ),
            _ => ("?", "-".into(), None),
        };
        let (state, idle) = match state_entry {
            Some(s) => {
                let mut state = s.state(k.proto).name().to_owned();
                if s.is_expired(k.proto, now_ns) {
                    state.push_str(" (expired)");
                }
                (state, human_duration(now_ns.saturating_sub(s.last_seen_ns)))
            }
            None => ("-".into(), "-".into()),
        };
        t.row(vec![
            direction.into(),
            flow,
            translation,
            e.service_id.to_string(),
            e.backend_id.to_string(),
            state,
            human_duration(now_ns.saturating_sub(e.created_ns)),
            idle,
        ]);
    }
    t
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Translated => "translated",
        Kind::Passed => "passed",
        Kind::Dropped => "dropped",
    }
}

/// Non-zero counters by reason. Indices this build does not know (a newer datapath) are
/// still shown, by number.
pub fn counters(values: &[u64]) -> Table {
    let mut t = Table::new("COUNTERS", &["REASON", "KIND", "PACKETS"]);
    for (i, &n) in (0u32..).zip(values) {
        if n == 0 {
            continue;
        }
        let (name, kind) = match Reason::from_index(i) {
            Some(r) => (r.name().to_owned(), kind_name(r.kind())),
            None => (format!("reason_{i}"), "?"),
        };
        t.row(vec![name, kind.into(), n.to_string()]);
    }
    t
}

/// A compact duration: `42s`, `3m07s`, `5h02m`, `2d04h`.
pub fn human_duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{conntrack::seen, Backend, BackendSlotKey, Frontend, FrontendKey};

    const S: u64 = 1_000_000_000;

    fn sample() -> Contents {
        let vip = FrontendKey::new([10, 96, 0, 10].into(), 80, proto::TCP);
        let b1 = Backend::new([10, 244, 1, 2].into(), 8080, proto::TCP);
        let mut b2 = Backend::new([10, 244, 2, 2].into(), 8080, proto::TCP);
        b2.flags = backend::flags::TERMINATING | backend::flags::LOCAL;
        let client = lb_common::addr_be([10, 244, 1, 5].into());
        let fwd_key = CtKey::new(
            client,
            vip.addr,
            40000u16.to_be(),
            vip.port,
            proto::TCP,
            dir::FORWARD,
        );
        let fwd = CtEntry {
            created_ns: 100 * S,
            last_seen_ns: 190 * S,
            nat_addr: b1.addr,
            nat_port: b1.port,
            seen: seen::SYN | seen::REPLY,
            _pad: 0,
            service_id: 1,
            backend_id: 1,
        };
        let reply_key = CtKey::new(
            b1.addr,
            client,
            b1.port,
            40000u16.to_be(),
            proto::TCP,
            dir::REPLY,
        );
        let reply = CtEntry {
            nat_addr: vip.addr,
            nat_port: vip.port,
            seen: 0,
            ..fwd
        };
        Contents {
            frontends: vec![(
                vip,
                Frontend {
                    service_id: 1,
                    backend_count: 2,
                    flags: frontend::flags::CLUSTER_IP,
                    ..Default::default()
                },
            )],
            slots: vec![
                (
                    BackendSlotKey {
                        service_id: 1,
                        slot: 2,
                    },
                    2,
                ),
                (
                    BackendSlotKey {
                        service_id: 1,
                        slot: 1,
                    },
                    1,
                ),
            ],
            backends: vec![(2, b2), (1, b1)],
            // Reply first: rendering puts each flow's forward entry first anyway.
            conntrack: vec![(reply_key, reply), (fwd_key, fwd)],
        }
    }

    #[test]
    fn the_dump_shows_every_table() {
        let out = dump(&sample(), &[5, 0, 4, 0, 0, 1], 200 * S);
        let expected = "\
FRONTENDS (1)
ADDRESS            SERVICE  BACKENDS  FLAGS
10.96.0.10:80/TCP  1        2         ClusterIP

BACKEND SLOTS (1)
SERVICE  SLOTS  BACKEND IDS (slot 1..n)
1        2      1 2

BACKENDS (2)
ID  ADDRESS              FLAGS
1   10.244.1.2:8080/TCP  -
2   10.244.2.2:8080/TCP  terminating,local

CONNTRACK (2)
DIR      FLOW                                     TRANSLATION          SERVICE  BACKEND  STATE        AGE    IDLE
forward  10.244.1.5:40000 -> 10.96.0.10:80/TCP    dst 10.244.1.2:8080  1        1        ESTABLISHED  1m40s  10s
reply    10.244.1.2:8080 -> 10.244.1.5:40000/TCP  src 10.96.0.10:80    1        1        ESTABLISHED  1m40s  10s

COUNTERS (3)
REASON            KIND        PACKETS
new_flow          translated  5
reply_translated  translated  4
drop_no_backend   dropped     1
";
        assert_eq!(out, expected);
    }

    #[test]
    fn a_reply_without_its_forward_entry_has_no_state() {
        let mut c = sample();
        c.conntrack.retain(|(k, _)| k.dir == dir::REPLY);
        let t = conntrack(&c, 200 * S).to_string();
        let row: Vec<_> = t
            .lines()
            .nth(2)
            .expect("one row")
            .split_whitespace()
            .collect();
        assert_eq!(row[row.len() - 3..], ["-", "1m40s", "-"], "{t}");
    }

    #[test]
    fn idle_flows_past_their_timeout_are_marked_expired() {
        let t = conntrack(&sample(), 190 * S + 86_401 * S).to_string();
        assert!(t.contains("ESTABLISHED (expired)"), "{t}");
    }

    #[test]
    fn slots_with_gaps_are_pointed_out() {
        let mut c = sample();
        c.slots.push((
            BackendSlotKey {
                service_id: 1,
                slot: 4,
            },
            3,
        ));
        assert!(slots(&c).to_string().contains("1 2 3 (slots [1, 2, 4])"));
    }

    #[test]
    fn unknown_counter_indices_are_shown_by_number() {
        let mut values = vec![0; 12];
        values[11] = 7;
        assert!(counters(&values).to_string().contains("reason_11  ?     7"));
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59 * S), "59s");
        assert_eq!(human_duration(61 * S), "1m01s");
        assert_eq!(human_duration(3_660 * S), "1h01m");
        assert_eq!(human_duration(90_000 * S), "1d01h");
    }
}
