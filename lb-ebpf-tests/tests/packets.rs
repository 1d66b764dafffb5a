//! Packet tests: real packets through the real programs (BPF_PROG_TEST_RUN), checking the
//! verdict, every output byte that matters, the checksums and the conntrack entries.

use std::net::Ipv4Addr;

use lb_common::{
    conntrack::{dir, tcp_flags::*},
    proto::{TCP, UDP},
    AffinityEntry, AffinityKey, CtKey, CtState, Reason,
};
use lb_ebpf_tests::{
    packet::{assert_only_changed, check, sock},
    privilege::require_bpf,
    Datapath, PacketSpec, Program,
};

const PASS: i32 = -1; // TC_ACT_UNSPEC: carry on (tcx: next program, else pass)
const SHOT: i32 = 2;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: [u8; 4] = [10, 244, 1, 2];
const BACKEND_A: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
const BACKEND_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

// Offsets in an untagged Ethernet + 20-byte IPv4 packet.
const IP_CSUM: std::ops::Range<usize> = 24..26;
const IP_SRC: std::ops::Range<usize> = 26..30;
const IP_DST: std::ops::Range<usize> = 30..34;
const L4_SPORT: std::ops::Range<usize> = 34..36;
const L4_DPORT: std::ops::Range<usize> = 36..38;
const TCP_CSUM: std::ops::Range<usize> = 50..52;
const UDP_CSUM: std::ops::Range<usize> = 40..42;

fn be(ip: Ipv4Addr) -> u32 {
    lb_common::addr_be(ip)
}

fn forward_key(spec: &PacketSpec) -> CtKey {
    CtKey::new(
        be(*spec.src.ip()),
        be(*spec.dst.ip()),
        spec.src.port().to_be(),
        spec.dst.port().to_be(),
        spec.proto,
        dir::FORWARD,
    )
}

/// A datapath with one TCP and one UDP ClusterIP service on port 80 -> 8080, one backend.
fn one_backend() -> Option<Datapath> {
    let mut dp = Datapath::load().expect("load datapath");
    dp.set_hash_seed(0x5eed);
    dp.add_service(VIP, 80, TCP, &[(BACKEND_A, 8080)]);
    dp.add_service(VIP, 80, UDP, &[(BACKEND_A, 8080)]);
    Some(dp)
}

macro_rules! datapath_or_skip {
    ($name:expr) => {
        if !require_bpf($name) {
            return;
        }
    };
}

#[test]
fn syn_to_the_service_is_dnated_to_the_backend() {
    datapath_or_skip!("syn_to_the_service_is_dnated_to_the_backend");
    let mut dp = one_backend().unwrap();
    let syn = PacketSpec::tcp(sock(CLIENT, 40000), sock(VIP.octets(), 80), SYN);
    let input = syn.build();

    let run = dp.run(Program::FromPod, &input).unwrap();

    assert_eq!(run.retval, PASS);
    let out = check(&run.data);
    assert_eq!(out.src, syn.src, "source must be untouched (no SNAT)");
    assert_eq!(out.dst, sock(BACKEND_A.octets(), 8080));
    assert_only_changed(&input, &run.data, &[IP_CSUM, IP_DST, L4_DPORT, TCP_CSUM]);

    let fwd = dp
        .ct_get(&forward_key(&syn))
        .expect("forward conntrack entry");
    assert_eq!(fwd.nat_addr, be(BACKEND_A));
    assert_eq!(fwd.nat_port, 8080u16.to_be());
    assert_eq!(fwd.state(TCP), CtState::SynSent);
    let reply_key = CtKey::new(
        be(BACKEND_A),
        be(CLIENT.into()),
        8080u16.to_be(),
        40000u16.to_be(),
        TCP,
        dir::REPLY,
    );
    let rev = dp.ct_get(&reply_key).expect("reply conntrack entry");
    assert_eq!(rev.nat_addr, be(VIP));
    assert_eq!(rev.nat_port, 80u16.to_be());
    assert_eq!(rev.service_id, fwd.service_id);
    assert_eq!(dp.counter(Reason::NewFlow), 1);
}

#[test]
fn reply_gets_the_service_address_back_and_establishes_the_flow() {
    datapath_or_skip!("reply_gets_the_service_address_back_and_establishes_the_flow");
    let mut dp = one_backend().unwrap();
    let syn = PacketSpec::tcp(sock(CLIENT, 40001), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn.build()).unwrap();

    let syn_ack = PacketSpec::tcp(
        sock(BACKEND_A.octets(), 8080),
        sock(CLIENT, 40001),
        SYN | ACK,
    );
    let input = syn_ack.build();
    let run = dp.run(Program::ToPod, &input).unwrap();

    assert_eq!(run.retval, PASS);
    let out = check(&run.data);
    assert_eq!(
        out.src,
        sock(VIP.octets(), 80),
        "reply must come from the service"
    );
    assert_eq!(out.dst, sock(CLIENT, 40001));
    assert_only_changed(&input, &run.data, &[IP_CSUM, IP_SRC, L4_SPORT, TCP_CSUM]);
    assert_eq!(
        dp.ct_get(&forward_key(&syn)).unwrap().state(TCP),
        CtState::Established
    );
    assert_eq!(dp.counter(Reason::ReplyTranslated), 1);
}

#[test]
fn later_packets_follow_conntrack() {
    datapath_or_skip!("later_packets_follow_conntrack");
    let mut dp = one_backend().unwrap();
    let syn = PacketSpec::tcp(sock(CLIENT, 40002), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn.build()).unwrap();
    let data = PacketSpec {
        tcp_flags: ACK,
        ..syn.clone()
    }
    .payload(b"GET / HTTP/1.1\r\n\r\n");

    let run = dp.run(Program::FromPod, &data.build()).unwrap();

    let out = check(&run.data);
    assert_eq!(out.dst, sock(BACKEND_A.octets(), 8080));
    assert_eq!(out.payload, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(dp.counter(Reason::EstablishedFlow), 1);
    assert_eq!(dp.counter(Reason::NewFlow), 1);
}

#[test]
fn fin_from_both_sides_closes_and_rst_resets() {
    datapath_or_skip!("fin_from_both_sides_closes_and_rst_resets");
    let mut dp = one_backend().unwrap();
    let syn = PacketSpec::tcp(sock(CLIENT, 40003), sock(VIP.octets(), 80), SYN);
    let key = forward_key(&syn);
    dp.run(Program::FromPod, &syn.build()).unwrap();
    let backend = sock(BACKEND_A.octets(), 8080);
    let from_backend = |flags| PacketSpec::tcp(backend, syn.src, flags).build();
    dp.run(Program::ToPod, &from_backend(SYN | ACK)).unwrap();

    dp.run(
        Program::FromPod,
        &PacketSpec {
            tcp_flags: FIN | ACK,
            ..syn.clone()
        }
        .build(),
    )
    .unwrap();
    assert_eq!(dp.ct_get(&key).unwrap().state(TCP), CtState::HalfClosed);
    dp.run(Program::ToPod, &from_backend(FIN | ACK)).unwrap();
    assert_eq!(dp.ct_get(&key).unwrap().state(TCP), CtState::Closing);

    let syn2 = PacketSpec::tcp(sock(CLIENT, 40004), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn2.build()).unwrap();
    dp.run(
        Program::ToPod,
        &PacketSpec::tcp(backend, syn2.src, RST).build(),
    )
    .unwrap();
    assert_eq!(
        dp.ct_get(&forward_key(&syn2)).unwrap().state(TCP),
        CtState::Reset
    );
}

#[test]
fn a_new_syn_on_a_reset_tuple_starts_a_new_flow() {
    datapath_or_skip!("a_new_syn_on_a_reset_tuple_starts_a_new_flow");
    let mut dp = one_backend().unwrap();
    let syn = PacketSpec::tcp(sock(CLIENT, 40005), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn.build()).unwrap();
    dp.run(
        Program::FromPod,
        &PacketSpec {
            tcp_flags: RST,
            ..syn.clone()
        }
        .build(),
    )
    .unwrap();
    assert_eq!(
        dp.ct_get(&forward_key(&syn)).unwrap().state(TCP),
        CtState::Reset
    );

    let run = dp.run(Program::FromPod, &syn.build()).unwrap();

    assert_eq!(check(&run.data).dst, sock(BACKEND_A.octets(), 8080));
    assert_eq!(
        dp.ct_get(&forward_key(&syn)).unwrap().state(TCP),
        CtState::SynSent
    );
    assert_eq!(dp.counter(Reason::NewFlow), 2);
}

#[test]
fn udp_is_translated_both_ways() {
    datapath_or_skip!("udp_is_translated_both_ways");
    let mut dp = one_backend().unwrap();
    let req = PacketSpec::udp(sock(CLIENT, 53000), sock(VIP.octets(), 80)).payload(b"hostname");
    let input = req.build();

    let run = dp.run(Program::FromPod, &input).unwrap();
    assert_eq!(run.retval, PASS);
    let out = check(&run.data);
    assert_eq!(out.dst, sock(BACKEND_A.octets(), 8080));
    assert_eq!(out.src, req.src);
    assert_ne!(out.udp_checksum, Some(0));
    assert_only_changed(&input, &run.data, &[IP_CSUM, IP_DST, L4_DPORT, UDP_CSUM]);
    assert_eq!(
        dp.ct_get(&forward_key(&req)).unwrap().state(UDP),
        CtState::Udp
    );

    let resp = PacketSpec::udp(sock(BACKEND_A.octets(), 8080), req.src).payload(b"echo-1");
    let run = dp.run(Program::ToPod, &resp.build()).unwrap();
    let out = check(&run.data);
    assert_eq!(out.src, sock(VIP.octets(), 80));
    assert_eq!(out.dst, req.src);
    assert_eq!(out.payload, b"echo-1");
}

#[test]
fn udp_without_checksum_stays_without_checksum() {
    datapath_or_skip!("udp_without_checksum_stays_without_checksum");
    let mut dp = one_backend().unwrap();
    let mut req = PacketSpec::udp(sock(CLIENT, 53001), sock(VIP.octets(), 80)).payload(b"x");
    req.udp_no_checksum = true;

    let run = dp.run(Program::FromPod, &req.build()).unwrap();

    let out = check(&run.data);
    assert_eq!(out.dst, sock(BACKEND_A.octets(), 8080));
    assert_eq!(
        out.udp_checksum,
        Some(0),
        "a zero UDP checksum means none and must stay 0"
    );
}

#[test]
fn ip_options_shift_the_l4_header_and_are_handled() {
    datapath_or_skip!("ip_options_shift_the_l4_header_and_are_handled");
    let mut dp = one_backend().unwrap();
    let mut syn = PacketSpec::tcp(sock(CLIENT, 40006), sock(VIP.octets(), 80), SYN);
    syn.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6

    let run = dp.run(Program::FromPod, &syn.build()).unwrap();

    assert_eq!(check(&run.data).dst, sock(BACKEND_A.octets(), 8080));
}

#[test]
fn traffic_to_no_service_passes_unchanged() {
    datapath_or_skip!("traffic_to_no_service_passes_unchanged");
    let mut dp = one_backend().unwrap();
    for spec in [
        PacketSpec::tcp(sock(CLIENT, 40007), sock([10, 244, 2, 9], 80), SYN),
        PacketSpec::tcp(sock(CLIENT, 40007), sock(VIP.octets(), 81), SYN),
        PacketSpec::udp(sock(CLIENT, 40007), sock([10, 96, 0, 11], 80)),
    ] {
        let input = spec.build();
        for program in [Program::FromPod, Program::ToPod] {
            let run = dp.run(program, &input).unwrap();
            assert_eq!(run.retval, PASS, "{program:?} {spec:?}");
            assert_eq!(run.data, input, "{program:?} must not touch {spec:?}");
        }
    }
    assert_eq!(
        dp.ct_len(),
        0,
        "no conntrack entries for non-service traffic"
    );
}

/// The reply's bytes are checked in north_south.rs; here: the SYN never reaches anyone.
#[test]
fn a_service_without_backends_rejects_and_counts() {
    datapath_or_skip!("a_service_without_backends_rejects_and_counts");
    let mut dp = one_backend().unwrap();
    let empty = Ipv4Addr::new(10, 96, 0, 20);
    dp.add_service(empty, 80, TCP, &[]);

    let run = dp
        .run(
            Program::FromPod,
            &PacketSpec::tcp(sock(CLIENT, 40008), sock(empty.octets(), 80), SYN).build(),
        )
        .unwrap();

    assert_eq!(run.retval, 7, "an ICMP error redirected back to the client");
    assert_eq!(run.data[14 + 9], lb_common::proto::ICMP);
    assert_eq!(dp.counter(Reason::RejectNoBackend), 1);
    assert_eq!(
        dp.ct_len(),
        0,
        "a rejected connection leaves no conntrack entry"
    );
}

#[test]
fn new_flows_spread_over_all_backends() {
    datapath_or_skip!("new_flows_spread_over_all_backends");
    let mut dp = Datapath::load().unwrap();
    dp.set_hash_seed(0xfeed);
    dp.add_service(VIP, 80, TCP, &[(BACKEND_A, 8080), (BACKEND_B, 8080)]);
    let (mut a, mut b) = (0, 0);
    for port in 41000..41200 {
        let run = dp
            .run(
                Program::FromPod,
                &PacketSpec::tcp(sock(CLIENT, port), sock(VIP.octets(), 80), SYN).build(),
            )
            .unwrap();
        match *check(&run.data).dst.ip() {
            ip if ip == BACKEND_A => a += 1,
            ip if ip == BACKEND_B => b += 1,
            other => panic!("DNAT to unknown backend {other}"),
        }
    }
    assert!(a > 60 && b > 60, "uneven spread: {a} vs {b}");
}

/// The backend a SYN from `client:port` to the VIP was sent to.
fn backend_for(dp: &mut Datapath, client: [u8; 4], port: u16) -> Ipv4Addr {
    let syn = PacketSpec::tcp(sock(client, port), sock(VIP.octets(), 80), SYN).build();
    *check(&dp.run(Program::FromPod, &syn).unwrap().data)
        .dst
        .ip()
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend() {
    datapath_or_skip!("client_ip_affinity_pins_a_client_to_one_backend");
    let mut dp = Datapath::load().unwrap();
    dp.set_hash_seed(0xfeed);
    let backends = [(BACKEND_A, 8080), (BACKEND_B, 8080)];
    dp.add_service_with_affinity(VIP, 80, TCP, &backends, 10_800);

    let first = backend_for(&mut dp, CLIENT, 42000);
    for port in 42001..42100 {
        assert_eq!(
            backend_for(&mut dp, CLIENT, port),
            first,
            "port {port} left its backend"
        );
    }
    // Other clients still spread.
    let others: std::collections::BTreeSet<_> = (1..=40)
        .map(|i| backend_for(&mut dp, [10, 244, 2, i], 42000))
        .collect();
    assert_eq!(
        others.len(),
        2,
        "affinity must not pin everybody to one backend"
    );
}

#[test]
fn affinity_ends_when_it_times_out_or_the_backend_leaves() {
    datapath_or_skip!("affinity_ends_when_it_times_out_or_the_backend_leaves");
    let mut dp = Datapath::load().unwrap();
    let backends = [(BACKEND_A, 8080), (BACKEND_B, 8080)];
    let (service_id, ids) = dp.add_service_with_affinity(VIP, 80, TCP, &backends, 1);
    let key = AffinityKey {
        service_id,
        client_addr: be(CLIENT.into()),
    };
    // Pin the client to slot 2 (BACKEND_B) with a fresh stamp: it sticks.
    backend_for(&mut dp, CLIENT, 43000);
    let fresh = dp
        .affinity_get(&key)
        .expect("affinity entry after a new connection");
    dp.affinity_set(
        key,
        AffinityEntry {
            backend_id: ids[1],
            slot: 2,
            ..fresh
        },
    );
    assert_eq!(backend_for(&mut dp, CLIENT, 43001), BACKEND_B);

    // Stamped at boot, older than the 1 s timeout: chosen anew, and re-stamped.
    dp.affinity_set(
        key,
        AffinityEntry {
            last_used_ns: 0,
            backend_id: ids[1],
            slot: 2,
        },
    );
    backend_for(&mut dp, CLIENT, 43002);
    assert!(
        dp.affinity_get(&key).unwrap().last_used_ns > 0,
        "a new choice is recorded"
    );

    // The slot now holds another backend: BACKEND_B no longer serves the service here.
    dp.affinity_set(
        key,
        AffinityEntry {
            backend_id: ids[1],
            slot: 2,
            ..fresh
        },
    );
    dp.set_slot(service_id, 2, ids[0]);
    assert_eq!(backend_for(&mut dp, CLIENT, 43003), BACKEND_A);
}

#[test]
fn backend_counters_add_up_both_directions() {
    datapath_or_skip!("backend_counters_add_up_both_directions");
    let mut dp = Datapath::load().unwrap();
    let (_, ids) = dp.add_service_with_affinity(VIP, 80, TCP, &[(BACKEND_A, 8080)], 0);
    let syn = PacketSpec::tcp(sock(CLIENT, 44000), sock(VIP.octets(), 80), SYN).build();
    let syn_ack = PacketSpec::tcp(
        sock(BACKEND_A.octets(), 8080),
        sock(CLIENT, 44000),
        SYN | ACK,
    )
    .payload(b"hello")
    .build();
    dp.run(Program::FromPod, &syn).unwrap();
    dp.run(Program::ToPod, &syn_ack).unwrap();
    dp.run(Program::FromPod, &syn).unwrap();

    let stats = dp.backend_stats(ids[0]);
    assert_eq!(stats.packets, 3);
    assert_eq!(stats.bytes, (2 * syn.len() + syn_ack.len()) as u64);
}

#[test]
fn truncated_packets_pass_without_harm() {
    datapath_or_skip!("truncated_packets_pass_without_harm");
    let mut dp = one_backend().unwrap();
    let full = PacketSpec::tcp(sock(CLIENT, 40009), sock(VIP.octets(), 80), SYN).build();
    // The kernel refuses IPv4 test input shorter than Ethernet + a 20-byte IPv4 header, so
    // truncation is tested from there: 34..54 lacks the TCP header.
    for len in 34..full.len() {
        let cut = &full[..len];
        let run = dp.run(Program::FromPod, cut).unwrap();
        assert_eq!(run.retval, PASS, "truncated to {len}");
        assert_eq!(run.data, cut, "truncated to {len} must pass unchanged");
    }
    assert_eq!(dp.counter(Reason::PassMalformed), (full.len() - 34) as u64);
    assert_eq!(dp.ct_len(), 0);
}

#[test]
fn lying_ip_header_lengths_pass_without_harm() {
    datapath_or_skip!("lying_ip_header_lengths_pass_without_harm");
    let mut dp = one_backend().unwrap();
    let full = PacketSpec::tcp(sock(CLIENT, 40011), sock(VIP.octets(), 80), SYN).build();
    // IHL 15 claims 60 header bytes (the TCP header would start past the end); IHL 4 is
    // below the minimum; version 6 in an IPv4 frame is invalid.
    for vihl in [0x4f, 0x44, 0x45 | 0x20] {
        let mut pkt = full.clone();
        pkt[14] = vihl;
        let run = dp.run(Program::FromPod, &pkt).unwrap();
        assert_eq!(run.retval, PASS, "vihl {vihl:#x}");
        assert_eq!(run.data, pkt, "vihl {vihl:#x} must pass unchanged");
    }
    assert_eq!(dp.counter(Reason::PassMalformed), 3);
    assert_eq!(dp.ct_len(), 0);
}

#[test]
fn garbage_never_aborts_the_program() {
    datapath_or_skip!("garbage_never_aborts_the_program");
    let mut dp = one_backend().unwrap();
    // Deterministic pseudo-random bytes (xorshift), with the IPv4 ethertype forced on half
    // of them so the parser goes deep.
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..500 {
        // At least Ethernet + IPv4 header: the kernel refuses shorter IPv4 test input.
        let len = 34 + (next() % 100) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            pkt[12] = 0x08;
            pkt[13] = 0x00;
        }
        for program in [Program::FromPod, Program::ToPod] {
            let run = dp.run(program, &pkt).unwrap();
            assert!(
                run.retval == PASS || run.retval == SHOT,
                "verdict {}",
                run.retval
            );
        }
    }
    // Garbage never reaches a frontend (no service was hit), so nothing was tracked.
    assert_eq!(dp.ct_len(), 0);
}

#[test]
fn logging_is_gated_by_the_log_level() {
    datapath_or_skip!("logging_is_gated_by_the_log_level");
    let syn = PacketSpec::tcp(sock(CLIENT, 40010), sock(VIP.octets(), 80), SYN).build();
    for (level, expect_records) in [(0u8, false), (4u8, true)] {
        let mut dp = Datapath::load_with_log_level(level).unwrap();
        dp.add_service(VIP, 80, TCP, &[(BACKEND_A, 8080)]);
        let run = dp.run(Program::FromPod, &syn).unwrap();
        let out = check(&run.data);
        assert_eq!(out.dst, sock(BACKEND_A.octets(), 8080));
        // The reply path is the one that logs (see lb-ebpf/src/reply.rs).
        let synack = PacketSpec::tcp(out.dst, out.src, SYN | ACK).build();
        dp.run(Program::ToPod, &synack).unwrap();
        let records = dp.log_records();
        assert_eq!(
            records > 0,
            expect_records,
            "level {level}: {records} log records"
        );
    }
}

// Reply entries can outlive their flows (until the GC or a new flow takes their tuple), and
// another connection can later carry the same tuple. A reply is translated only while its
// flow's forward entry is alive and still owns it. (Fragments: see nat.rs.)

/// The reply entry of a non-masqueraded flow from `CLIENT:port` served by BACKEND_A:8080.
fn reply_key(port: u16) -> CtKey {
    CtKey::new(
        be(BACKEND_A),
        be(CLIENT.into()),
        8080u16.to_be(),
        port.to_be(),
        TCP,
        dir::REPLY,
    )
}

/// A packet from BACKEND_A:8080 to `CLIENT:port` with `flags`.
fn from_backend(port: u16, flags: u8) -> PacketSpec {
    PacketSpec::tcp(sock(BACKEND_A.octets(), 8080), sock(CLIENT, port), flags)
}

/// Opens `CLIENT:port` -> VIP:80 through `program` and has the backend answer it.
fn open_through_service(dp: &mut Datapath, port: u16) -> PacketSpec {
    let syn = PacketSpec::tcp(sock(CLIENT, port), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn.build()).unwrap();
    let run = dp
        .run(Program::ToPod, &from_backend(port, SYN | ACK).build())
        .unwrap();
    assert_eq!(check(&run.data).src, sock(VIP.octets(), 80));
    syn
}

/// The client's packet on `syn`'s tuple with `flags`.
fn from_client(syn: &PacketSpec, flags: u8) -> Vec<u8> {
    PacketSpec {
        tcp_flags: flags,
        ..syn.clone()
    }
    .build()
}

/// Ages the entry under `key` to stamp 0 (long before now), adding `seen` bits.
fn age(dp: &mut Datapath, key: &CtKey, seen: u8) {
    let entry = dp.ct_get(key).expect("conntrack entry to age");
    dp.ct_set(
        key,
        lb_common::CtEntry {
            last_seen_ns: 0,
            seen: entry.seen | seen,
            ..entry
        },
    );
}

/// Asserts that `program` lets `spec` through byte for byte.
fn assert_untranslated(dp: &mut Datapath, program: Program, spec: &PacketSpec) {
    let input = spec.build();
    let run = dp.run(program, &input).unwrap();
    assert_eq!(run.retval, PASS, "{program:?} {spec:?}");
    assert_eq!(run.data, input, "{program:?} must not translate {spec:?}");
}

/// Asserts that `program` gives `spec` the service's address as its source.
fn assert_from_service(dp: &mut Datapath, program: Program, spec: &PacketSpec) {
    let input = spec.build();
    let run = dp.run(program, &input).unwrap();
    assert_eq!(run.retval, PASS, "{program:?} {spec:?}");
    let out = check(&run.data);
    assert_eq!(out.src, sock(VIP.octets(), 80), "{program:?} {spec:?}");
    assert_eq!(out.dst, spec.dst);
    assert_only_changed(&input, &run.data, &[IP_CSUM, IP_SRC, L4_SPORT, TCP_CSUM]);
}

/// Stamps far enough in the past to expire any flow but an established one must be
/// possible: CLOCK_MONOTONIC (the datapath's clock) must be past them.
fn require_uptime_past_timeouts() {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    assert!(
        now.tv_sec() > 2 * lb_common::conntrack::timeout::UDP_S as i64,
        "the test ages entries to stamp 0 and needs the clock past the timeouts"
    );
}

#[test]
fn a_finished_flows_reply_entry_does_not_capture_a_direct_connection() {
    datapath_or_skip!("a_finished_flows_reply_entry_does_not_capture_a_direct_connection");
    let mut dp = one_backend().unwrap();
    // The reply is seen by lb_to_pod on the client's veth, or by lb_from_pod on the
    // backend's when both pods are on this node.
    for (port, program) in [(40020, Program::ToPod), (40021, Program::FromPod)] {
        let syn = open_through_service(&mut dp, port);
        dp.run(Program::FromPod, &from_client(&syn, FIN | ACK))
            .unwrap();
        dp.run(Program::ToPod, &from_backend(port, FIN | ACK).build())
            .unwrap();
        assert_eq!(
            dp.ct_get(&forward_key(&syn)).unwrap().state(TCP),
            CtState::Closing
        );

        // The client now connects to the backend directly from the same port.
        let direct = PacketSpec::tcp(sock(CLIENT, port), sock(BACKEND_A.octets(), 8080), SYN);
        assert_untranslated(&mut dp, Program::FromPod, &direct);
        assert_untranslated(&mut dp, program, &from_backend(port, SYN | ACK));
        assert!(
            dp.ct_get(&reply_key(port)).is_none(),
            "a reply entry whose tuple another connection took is dropped"
        );
        // The rest of the direct connection is left alone too, though the old flow's
        // forward entry still lives (late segments of it would still translate).
        assert_untranslated(
            &mut dp,
            program,
            &from_backend(port, ACK).payload(b"direct"),
        );
    }
    // Only the two flows' SYN-ACKs and FINs.
    assert_eq!(dp.counter(Reason::ReplyTranslated), 4);
}

#[test]
fn a_dead_flows_reply_entry_does_not_translate() {
    datapath_or_skip!("a_dead_flows_reply_entry_does_not_translate");
    require_uptime_past_timeouts();
    let mut dp = one_backend().unwrap();

    // The client's SYN went unanswered past the SYN timeout; the SYN-ACK answers another
    // connection.
    let syn = PacketSpec::tcp(sock(CLIENT, 40022), sock(VIP.octets(), 80), SYN);
    dp.run(Program::FromPod, &syn.build()).unwrap();
    age(&mut dp, &forward_key(&syn), 0);
    assert_untranslated(&mut dp, Program::ToPod, &from_backend(40022, SYN | ACK));
    assert!(dp.ct_get(&reply_key(40022)).is_none());

    // Established, then the forward entry was evicted; the reply entry has been idle.
    let syn = open_through_service(&mut dp, 40023);
    dp.ct_remove(&forward_key(&syn));
    age(&mut dp, &reply_key(40023), 0);
    assert_untranslated(
        &mut dp,
        Program::ToPod,
        &from_backend(40023, ACK).payload(b"x"),
    );
    assert!(dp.ct_get(&reply_key(40023)).is_none());

    // Closed (FIN both ways), and the close timeout has passed.
    let syn = open_through_service(&mut dp, 40024);
    age(
        &mut dp,
        &forward_key(&syn),
        lb_common::conntrack::seen::FIN_FORWARD | lb_common::conntrack::seen::FIN_REPLY,
    );
    age(&mut dp, &reply_key(40024), 0);
    assert_untranslated(&mut dp, Program::FromPod, &from_backend(40024, ACK));
}

#[test]
fn a_syn_ack_needs_a_syn_through_the_service() {
    datapath_or_skip!("a_syn_ack_needs_a_syn_through_the_service");
    let mut dp = one_backend().unwrap();
    // A flow picked up mid-stream (its first packet an ACK) that then went quiet: a
    // SYN-ACK that no SYN through the service asked for answers some other connection.
    let ack = PacketSpec::tcp(sock(CLIENT, 40025), sock(VIP.octets(), 80), ACK);
    dp.run(Program::FromPod, &ack.build()).unwrap();
    assert_eq!(
        dp.ct_get(&forward_key(&ack)).unwrap().state(TCP),
        CtState::Established
    );
    assert_untranslated(&mut dp, Program::ToPod, &from_backend(40025, SYN | ACK));

    // Once the client opens a connection on such a picked-up tuple, it is answered.
    let ack = PacketSpec::tcp(sock(CLIENT, 40026), sock(VIP.octets(), 80), ACK);
    dp.run(Program::FromPod, &ack.build()).unwrap();
    let syn = PacketSpec {
        tcp_flags: SYN,
        ..ack.clone()
    };
    dp.run(Program::FromPod, &syn.build()).unwrap();
    assert_eq!(
        dp.ct_get(&forward_key(&ack)).unwrap().state(TCP),
        CtState::SynSent
    );
    assert_from_service(&mut dp, Program::ToPod, &from_backend(40026, SYN | ACK));
    assert_eq!(
        dp.ct_get(&forward_key(&ack)).unwrap().state(TCP),
        CtState::Established
    );
}

#[test]
fn a_live_flows_replies_translate_whatever_their_gaps() {
    datapath_or_skip!("a_live_flows_replies_translate_whatever_their_gaps");
    require_uptime_past_timeouts();
    let mut dp = one_backend().unwrap();

    // A retransmitted SYN-ACK (the client's ACK was lost) still belongs to the flow.
    open_through_service(&mut dp, 40027);
    assert_from_service(&mut dp, Program::ToPod, &from_backend(40027, SYN | ACK));

    // The backend was silent for long (the client kept the flow alive): its reply entry's
    // stamp is stale, the forward entry is fresh.
    let syn = open_through_service(&mut dp, 40028);
    age(&mut dp, &reply_key(40028), 0);
    for program in [Program::ToPod, Program::FromPod] {
        assert_from_service(&mut dp, program, &from_backend(40028, ACK).payload(b"late"));
    }
    assert!(dp.ct_get(&reply_key(40028)).unwrap().last_seen_ns > 0);
    assert_eq!(
        dp.ct_get(&forward_key(&syn)).unwrap().state(TCP),
        CtState::Established
    );

    // UDP: replies silent for longer than the UDP timeout, the client's side alive.
    let req = PacketSpec::udp(sock(CLIENT, 53010), sock(VIP.octets(), 80)).payload(b"q");
    dp.run(Program::FromPod, &req.build()).unwrap();
    let udp_reply_key = CtKey {
        proto: UDP,
        ..reply_key(53010)
    };
    age(&mut dp, &udp_reply_key, 0);
    let resp = PacketSpec::udp(sock(BACKEND_A.octets(), 8080), req.src).payload(b"a");
    let run = dp.run(Program::ToPod, &resp.build()).unwrap();
    let out = check(&run.data);
    assert_eq!(out.src, sock(VIP.octets(), 80));
    assert_eq!(out.dst, req.src);
    assert_only_changed(
        &resp.build(),
        &run.data,
        &[IP_CSUM, IP_SRC, L4_SPORT, UDP_CSUM],
    );
}

#[test]
fn a_reopened_tuple_is_answered_through_its_new_flow() {
    datapath_or_skip!("a_reopened_tuple_is_answered_through_its_new_flow");
    let mut dp = one_backend().unwrap();
    let syn = open_through_service(&mut dp, 40029);
    dp.run(Program::FromPod, &from_client(&syn, RST)).unwrap();
    // The same client port opens the service again: a new flow, and its SYN-ACK is the
    // service's.
    dp.run(Program::FromPod, &syn.build()).unwrap();
    assert_from_service(&mut dp, Program::ToPod, &from_backend(40029, SYN | ACK));
    assert_eq!(dp.counter(Reason::NewFlow), 2);
}
