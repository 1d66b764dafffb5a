//! The collector's decisions and interval, on the host.

use std::net::Ipv4Addr;

use lb_common::{
    addr_be,
    conntrack::{ct_flags, seen, timeout},
    proto,
};

use super::*;

const S: u64 = 1_000_000_000;
/// "Now" in the tests: far enough from 0 that every age below is representable.
const NOW: u64 = 1_000_000 * S;

fn ip(a: [u8; 4]) -> u32 {
    addr_be(Ipv4Addr::from(a))
}

fn port(p: u16) -> u16 {
    p.to_be()
}

const ESTABLISHED: u8 = seen::SYN | seen::REPLY;
const CLOSED: u8 = ESTABLISHED | seen::FIN_FORWARD | seen::FIN_REPLY;

/// Client 10.244.1.2:40000 -> service 10.96.0.10:80, to backend 10.244.2.3:8080, last seen
/// `idle` ago, created a minute before that.
fn flow(proto: u8, seen: u8, idle: u64) -> (CtKey, CtEntry) {
    let key = CtKey::new(
        ip([10, 244, 1, 2]),
        ip([10, 96, 0, 10]),
        port(40_000),
        port(80),
        proto,
        dir::FORWARD,
    );
    let entry = CtEntry {
        created_ns: NOW - idle - 60 * S,
        last_seen_ns: NOW - idle,
        nat_addr: ip([10, 244, 2, 3]),
        nat_port: port(8080),
        seen,
        service_id: 7,
        backend_id: 3,
        ..Default::default()
    };
    (key, entry)
}

/// The reply half of a forward entry, as the datapath writes it.
fn reply_of(key: &CtKey, fwd: &CtEntry) -> (CtKey, CtEntry) {
    (key.reply_of_forward(fwd), key.reply_entry(fwd))
}

fn t() -> CtTimeouts {
    CtTimeouts::default()
}

fn delete(reason: DeleteReason, with: Option<(CtKey, CtEntry)>) -> Decision {
    Decision::Delete { reason, with }
}

/// Both halves' decisions for a flow whose two entries are both present.
fn both(key: &CtKey, fwd: &CtEntry, t: &CtTimeouts) -> (Decision, Decision) {
    let (rkey, reply) = reply_of(key, fwd);
    assert_eq!(partner_of(key, fwd), Some(rkey));
    assert_eq!(partner_of(&rkey, &reply), Some(*key));
    (
        decide(key, fwd, Some(&reply), NOW, t),
        decide(&rkey, &reply, Some(fwd), NOW, t),
    )
}

#[test]
fn a_live_flow_keeps_both_entries() {
    for (p, s, idle) in [
        (proto::TCP, ESTABLISHED, 3_600 * S),
        (proto::TCP, seen::SYN, 30 * S),
        (proto::TCP, ESTABLISHED | seen::FIN_FORWARD, 1_800 * S),
        (proto::TCP, 0, 80_000 * S),
        (proto::UDP, 0, 59 * S),
        (proto::TCP, ESTABLISHED, 0),
    ] {
        let (key, fwd) = flow(p, s, idle);
        assert_eq!(
            both(&key, &fwd, &t()),
            (Decision::Keep, Decision::Keep),
            "proto {p} seen {s:#x} idle {}s",
            idle / S
        );
    }
}

#[test]
fn an_expired_flow_goes_whole_from_either_half() {
    for (p, s, idle) in [
        (
            proto::TCP,
            ESTABLISHED,
            (timeout::ESTABLISHED_S as u64 + 1) * S,
        ),
        (proto::TCP, seen::SYN, 61 * S),
        (proto::TCP, ESTABLISHED | seen::FIN_REPLY, 3_601 * S),
        (proto::TCP, CLOSED, 11 * S),
        (proto::TCP, ESTABLISHED | seen::RST, 11 * S),
        (proto::UDP, 0, 61 * S),
        (proto::ICMP, seen::REPLY, 61 * S),
    ] {
        let (key, fwd) = flow(p, s, idle);
        let (rkey, reply) = reply_of(&key, &fwd);
        assert_eq!(
            both(&key, &fwd, &t()),
            (
                delete(DeleteReason::Expired, Some((rkey, reply))),
                delete(DeleteReason::Expired, Some((key, fwd))),
            ),
            "proto {p} seen {s:#x} idle {}s",
            idle / S
        );
    }
}

#[test]
fn a_closed_flow_stays_for_its_close_timeout() {
    // Late segments of a finished connection still translate until the close timeout ends.
    let (key, fwd) = flow(proto::TCP, CLOSED, 9 * S);
    assert_eq!(both(&key, &fwd, &t()), (Decision::Keep, Decision::Keep));
    let (key, fwd) = flow(proto::TCP, ESTABLISHED | seen::RST, 9 * S);
    assert_eq!(both(&key, &fwd, &t()), (Decision::Keep, Decision::Keep));
}

#[test]
fn the_datapaths_configured_timeouts_decide() {
    let short = CtTimeouts {
        udp_s: 5,
        established_s: 100,
        ..Default::default()
    };
    let (key, fwd) = flow(proto::UDP, 0, 6 * S);
    assert!(matches!(
        both(&key, &fwd, &short).0,
        Decision::Delete {
            reason: DeleteReason::Expired,
            ..
        }
    ));
    assert_eq!(both(&key, &fwd, &t()), (Decision::Keep, Decision::Keep));
    let (key, fwd) = flow(proto::TCP, ESTABLISHED, 101 * S);
    assert!(matches!(
        both(&key, &fwd, &short).1,
        Decision::Delete { .. }
    ));
    // Zero fields are the defaults, as in the datapath.
    let (key, fwd) = flow(proto::TCP, seen::SYN, 61 * S);
    assert!(matches!(
        both(&key, &fwd, &short).0,
        Decision::Delete { .. }
    ));
}

#[test]
fn a_clock_behind_the_stamp_is_not_expiry() {
    // Another CPU stamped the entry after this pass read the clock.
    let (key, mut fwd) = flow(proto::UDP, 0, 0);
    fwd.last_seen_ns = NOW + 5 * S;
    assert_eq!(both(&key, &fwd, &t()), (Decision::Keep, Decision::Keep));
}

#[test]
fn an_orphan_reply_goes_once_past_the_grace() {
    let (key, fwd) = flow(proto::TCP, ESTABLISHED, 0);
    let (rkey, mut reply) = reply_of(&key, &fwd);
    // The datapath writes the reply entry first: without a forward entry it is a flow
    // being created for its first second.
    reply.created_ns = NOW - S / 2;
    assert_eq!(decide(&rkey, &reply, None, NOW, &t()), Decision::Keep);
    reply.created_ns = NOW - ORPHAN_GRACE_NS;
    assert_eq!(
        decide(&rkey, &reply, None, NOW, &t()),
        delete(DeleteReason::Orphan, None)
    );
    // Its own age counts, not the last packet's: a repaired entry carries the flow's.
    reply.last_seen_ns = NOW;
    assert_eq!(
        decide(&rkey, &reply, None, NOW, &t()),
        delete(DeleteReason::Orphan, None)
    );
}

#[test]
fn a_reply_of_a_reopened_tuple_belongs_to_nobody() {
    // The client reopened its tuple and the new flow went to another backend: the old
    // reply entry (old backend -> client) is no longer the forward entry's.
    let (key, old) = flow(proto::TCP, CLOSED, 20 * S);
    let (rkey, reply) = reply_of(&key, &old);
    let new = CtEntry {
        nat_addr: ip([10, 244, 3, 9]),
        last_seen_ns: NOW,
        seen: seen::SYN,
        ..old
    };
    assert_eq!(
        decide(&rkey, &reply, Some(&new), NOW, &t()),
        delete(DeleteReason::Orphan, None)
    );
    // A source-translated flow that moved to another port: the same.
    let remapped = CtEntry {
        flags: ct_flags::SNAT | ct_flags::PORT_REMAP,
        snat_addr: key.saddr,
        snat_port: port(61_500),
        ..new
    };
    assert_eq!(
        decide(&rkey, &reply, Some(&remapped), NOW, &t()),
        delete(DeleteReason::Orphan, None)
    );
    // Not while it is young: the datapath writes the new flow's reply entry before it
    // overwrites the old forward entry, and this may be that moment.
    let young = CtEntry {
        created_ns: NOW - S / 10,
        ..reply
    };
    assert_eq!(decide(&rkey, &young, Some(&new), NOW, &t()), Decision::Keep);
    // Nor does an expired forward entry take a young reply entry with it.
    let (_, expired) = flow(proto::TCP, ESTABLISHED, 90_000 * S);
    assert_eq!(
        decide(&key, &expired, Some(&young), NOW, &t()),
        delete(DeleteReason::Expired, None)
    );
    assert_eq!(
        decide(&rkey, &young, Some(&expired), NOW, &t()),
        Decision::Keep
    );
}

#[test]
fn an_expired_flow_leaves_a_reply_tuple_another_flow_claimed() {
    // A closed flow released its reply tuple a quiet second after closing, and a new flow
    // from the same client port to another service with the same backend claimed it. The
    // old forward entry expires later and must not take the new flow's reply entry along.
    let (key, old) = flow(proto::TCP, CLOSED, 11 * S);
    let (rkey, _) = reply_of(&key, &old);
    let other_fwd = CtKey {
        daddr: ip([10, 96, 0, 99]),
        ..key
    };
    let claimed = CtEntry {
        created_ns: NOW - 5 * S,
        ..other_fwd.reply_entry(&old)
    };
    assert_eq!(rkey.forward_of_reply(&claimed), other_fwd);
    assert_eq!(
        decide(&key, &old, Some(&claimed), NOW, &t()),
        delete(DeleteReason::Expired, None)
    );
    // And the new flow's reply entry, judged from its own forward entry, stays.
    let (_, live) = flow(proto::TCP, ESTABLISHED, 0);
    assert_eq!(
        decide(&rkey, &claimed, Some(&live), NOW, &t()),
        Decision::Keep
    );
}

#[test]
fn a_live_flow_without_its_reply_entry_gets_it_back() {
    let (key, fwd) = flow(proto::TCP, ESTABLISHED, 5 * S);
    let (rkey, reply) = reply_of(&key, &fwd);
    assert_eq!(
        decide(&key, &fwd, None, NOW, &t()),
        Decision::Repair {
            key: rkey,
            entry: reply
        }
    );
    // Masqueraded: the reply comes back to the node's port and must restore the client's.
    let (key, mut fwd) = flow(proto::UDP, 0, 5 * S);
    fwd.flags = ct_flags::SNAT | ct_flags::NORTH_SOUTH;
    fwd.snat_addr = ip([172, 18, 0, 2]);
    fwd.snat_port = port(61_000);
    let Decision::Repair { key: rkey, entry } = decide(&key, &fwd, None, NOW, &t()) else {
        panic!("no repair");
    };
    assert_eq!((rkey.daddr, rkey.dport), (fwd.snat_addr, fwd.snat_port));
    assert_eq!((entry.snat_addr, entry.snat_port), (key.saddr, key.sport));
    assert_eq!((entry.nat_addr, entry.nat_port), (key.daddr, key.dport));
    assert_eq!(rkey.forward_of_reply(&entry), key);
    // The repaired entry is its flow's again.
    assert_eq!(decide(&rkey, &entry, Some(&fwd), NOW, &t()), Decision::Keep);
}

#[test]
fn a_closing_flow_without_its_reply_entry_is_left_alone() {
    // The datapath dropped it on purpose (the client reopened the tuple), or the flow is
    // finishing anyway.
    for s in [CLOSED, ESTABLISHED | seen::RST] {
        let (key, fwd) = flow(proto::TCP, s, 2 * S);
        assert_eq!(decide(&key, &fwd, None, NOW, &t()), Decision::Keep);
    }
    // An expired one simply goes.
    let (key, fwd) = flow(proto::TCP, CLOSED, 12 * S);
    assert_eq!(
        decide(&key, &fwd, None, NOW, &t()),
        delete(DeleteReason::Expired, None)
    );
}

#[test]
fn entries_of_no_known_direction_are_left_alone() {
    let (mut key, fwd) = flow(proto::UDP, 0, 1_000 * S);
    key.dir = 7;
    assert_eq!(partner_of(&key, &fwd), None);
    assert_eq!(decide(&key, &fwd, None, NOW, &t()), Decision::Keep);
}

#[test]
fn the_interval_shrinks_when_much_is_deleted_and_grows_when_little_is() {
    let (min, max) = (IntervalPolicy::MIN, IntervalPolicy::MAX);
    let secs = Duration::from_secs;
    assert_eq!(next_interval(secs(10), 0.5, min, max), secs(5));
    assert_eq!(next_interval(secs(100), 0.3, min, max), secs(70));
    // At most ten times shorter, never below the minimum.
    assert_eq!(next_interval(secs(100), 0.99, min, max), secs(10));
    assert_eq!(next_interval(secs(2), 0.9, min, max), secs(1));
    // 5 % .. 25 %: unchanged.
    assert_eq!(next_interval(secs(10), 0.1, min, max), secs(10));
    assert_eq!(next_interval(secs(10), 0.25, min, max), secs(10));
    assert_eq!(next_interval(secs(10), 0.05, min, max), secs(10));
    // Below 5 %, nothing at all included: 1.5 times longer, up to the maximum.
    assert_eq!(next_interval(secs(10), 0.01, min, max), secs(15));
    assert_eq!(next_interval(secs(10), 0.0, min, max), secs(15));
    assert_eq!(next_interval(secs(250), 0.0, min, max), max);
    assert_eq!(next_interval(secs(40), 0.0, min, secs(45)), secs(45));
}

#[test]
fn quiet_rounds_stretch_the_interval_to_its_maximum() {
    let mut i = Interval::new(IntervalPolicy::default());
    assert_eq!(i.current(), Duration::from_secs(10));
    let waits: Vec<u64> = (0..12)
        .map(|_| i.after_round(0.0, 0.01, None).as_secs())
        .collect();
    assert_eq!(
        waits,
        [15, 23, 35, 53, 80, 120, 180, 270, 300, 300, 300, 300]
    );
    // A busy round brings it down again.
    assert_eq!(i.after_round(0.8, 0.01, None), Duration::from_secs(60));
}

#[test]
fn a_table_more_than_half_full_is_collected_again_at_once_while_it_yields_deletions() {
    let mut i = Interval::new(IntervalPolicy::default());
    assert_eq!(i.after_round(0.01, 0.6, None), IntervalPolicy::MIN);
    // The adaptive value still moves, and is back once the table has room.
    assert_eq!(i.current(), Duration::from_secs(15));
    assert_eq!(i.after_round(0.0, 0.5, None), Duration::from_secs(23));
    // A table full of live flows is not walked every second for nothing.
    assert_eq!(i.after_round(0.0, 0.9, None), Duration::from_secs(35));
}

#[test]
fn a_round_woken_early_counts_its_deletions_over_a_full_interval() {
    // 6 % deleted two seconds into a ten-second interval is 30 % an interval.
    let mut i = Interval::new(IntervalPolicy::default());
    assert_eq!(
        i.after_round(0.06, 0.1, Some(Duration::from_secs(2))),
        Duration::from_secs(7)
    );
    // A late round (a long pass) is not scaled down.
    let mut i = Interval::new(IntervalPolicy::default());
    assert_eq!(
        i.after_round(0.06, 0.1, Some(Duration::from_secs(30))),
        Duration::from_secs(10)
    );
}

#[test]
fn a_fixed_interval_stays_fixed_and_flags_are_bounded() {
    let p = IntervalPolicy::from_flags(Duration::from_secs(30), IntervalPolicy::MAX);
    let mut i = Interval::new(p);
    assert_eq!(i.current(), Duration::from_secs(30));
    assert_eq!(i.after_round(0.9, 0.9, None), Duration::from_secs(30));
    assert_eq!(i.after_round(0.0, 0.0, None), Duration::from_secs(30));
    // A maximum below the start caps the start; a zero maximum is the minimum.
    let p = IntervalPolicy::from_flags(Duration::ZERO, Duration::from_secs(4));
    assert_eq!(
        (p.fixed, p.start, p.max),
        (None, Duration::from_secs(4), Duration::from_secs(4))
    );
    let p = IntervalPolicy::from_flags(Duration::ZERO, Duration::ZERO);
    assert_eq!((p.start, p.max), (IntervalPolicy::MIN, IntervalPolicy::MIN));
}

#[test]
fn reports_sum_tables_and_take_the_worst_one() {
    let report = PassReport {
        tables: vec![
            TableReport {
                name: "A",
                max_entries: 100,
                seen: 50,
                deleted_expired: 10,
                deleted_orphan: 2,
                repaired: 1,
                finished: true,
                entries: Some(38),
                walk_deleted: 30,
            },
            TableReport {
                name: "B",
                max_entries: 10,
                seen: 8,
                deleted_orphan: 1,
                entries: Some(7),
                walk_deleted: 1,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        (report.seen(), report.deleted(), report.repaired()),
        (58, 13, 1)
    );
    assert!((report.delete_ratio() - 0.3).abs() < 1e-9);
    assert!((report.max_fill() - 0.7).abs() < 1e-9);

    let counts = EntryCounts::default();
    counts.set("A", 1);
    counts.set("B", 2);
    counts.set("A", 3);
    assert_eq!(counts.get(), [("A", 3), ("B", 2)]);
}

#[test]
fn only_both_halves_of_one_live_flow_vouch_for_each_other() {
    let (key, fwd) = flow(proto::TCP, ESTABLISHED, 5 * S);
    let (rkey, reply) = reply_of(&key, &fwd);
    assert!(live_pair(&key, &fwd, &rkey, &reply, NOW, &t()));
    assert!(live_pair(&rkey, &reply, &key, &fwd, NOW, &t()));
    // Whenever a pair vouches, the other half's own decision is indeed Keep.
    assert_eq!(both(&key, &fwd, &t()), (Decision::Keep, Decision::Keep));

    // Expired: neither half vouches.
    let (key, old) = flow(proto::UDP, 0, 61 * S);
    let (rkey, reply) = reply_of(&key, &old);
    assert!(!live_pair(&key, &old, &rkey, &reply, NOW, &t()));
    assert!(!live_pair(&rkey, &reply, &key, &old, NOW, &t()));
    // A reply tuple another flow claimed, or a forward entry that moved on.
    let (key, fwd) = flow(proto::TCP, ESTABLISHED, 0);
    let (rkey, reply) = reply_of(&key, &fwd);
    let other = CtKey {
        daddr: ip([10, 96, 0, 99]),
        ..key
    };
    assert!(!live_pair(
        &key,
        &fwd,
        &rkey,
        &other.reply_entry(&fwd),
        NOW,
        &t()
    ));
    let moved = CtEntry {
        nat_addr: ip([10, 244, 3, 9]),
        ..fwd
    };
    assert!(!live_pair(&rkey, &reply, &key, &moved, NOW, &t()));
}
