//! Conntrack and NAT under pressure, packet by packet: source-port allocation (the client's
//! port kept, retries, expired and closed flows' ports reused, exhaustion counted), tuple
//! clashes remapped, a lost reply entry rebuilt, a full table, TTL and MTU on the paths the
//! datapath forwards itself, checksums XDP cannot complete, fragments, ICMP errors about
//! replies, and backends that are the node itself.
//!
//! Each test runs in a private network namespace of its own thread (see
//! `lb_ebpf_tests::testnet`), so FIB lookups see the same routes everywhere.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    backend::flags::{HOST as ON_NODE, LOCAL},
    conntrack::{dir, tcp_flags::*},
    frontend::flags,
    maps,
    proto::{TCP, UDP},
    Config, CtEntry, CtKey, CtState, FrontendKey, Reason,
};
use lb_ebpf_tests::{
    packet::{check, check_icmp, fragments, icmp_unreachable, reassemble, ttl, Checked},
    privilege::require_bpf,
    testnet::{self, *},
    Datapath, PacketSpec, Program, Run,
};

const PASS: i32 = -1;
const SHOT: i32 = 2;
const REDIRECT: i32 = 7;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const NODE_PORT: u16 = 30080;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 10);
const POD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);

/// A datapath in a fresh test namespace, configured as the namespace's node, with
/// conntrack tables of `sizes` (TCP, other) entries.
macro_rules! setup_or_skip {
    ($name:expr) => {
        setup_or_skip!($name, 4096, 4096)
    };
    ($name:expr, $tcp:expr, $any:expr) => {{
        if !require_bpf($name) {
            return;
        }
        let net = testnet::enter().expect("test namespace");
        let mut dp = Datapath::load_with(
            0,
            &[(maps::CONNTRACK_TCP, $tcp), (maps::CONNTRACK_ANY, $any)],
        )
        .expect("load datapath");
        dp.set_config(testnet::node_config());
        (net, dp)
    }};
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn be(ip: Ipv4Addr) -> u32 {
    lb_common::addr_be(ip)
}

/// A NodePort (externalTrafficPolicy=Cluster, so masqueraded) to one backend.
fn node_port(dp: &mut Datapath, proto: u8, backend: SocketAddrV4) {
    dp.add_frontend(
        FrontendKey::new(NODE, NODE_PORT, proto),
        flags::NODE_PORT,
        &[(*backend.ip(), backend.port())],
        0,
    );
}

/// Masquerade ports `min..=max` only.
fn snat_range(dp: &mut Datapath, min: u16, max: u16) {
    let config = Config {
        snat_port_min: min,
        snat_port_max: max,
        ..dp.config()
    };
    dp.set_config(config);
}

/// CLOCK_MONOTONIC, the clock the datapath stamps entries with.
fn now_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Moves the flow of forward entry `key` back in time: last seen `ago_ns` before now, and
/// both its entries made before that, as they would be after that long.
fn quiet_for(dp: &mut Datapath, key: &CtKey, ago_ns: u64) {
    let then = now_ns().saturating_sub(ago_ns);
    let entry = dp.ct_get(key).expect("conntrack entry");
    let reply_key = key.reply_of_forward(&entry);
    dp.ct_set(
        key,
        CtEntry {
            last_seen_ns: then,
            created_ns: then,
            ..entry
        },
    );
    if let Some(reply) = dp.ct_get(&reply_key) {
        dp.ct_set(
            &reply_key,
            CtEntry {
                created_ns: then,
                ..reply
            },
        );
    }
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

/// Sends `spec` from outside to the NodePort and returns what left.
fn from_outside(dp: &mut Datapath, spec: &PacketSpec) -> Run {
    dp.run(Program::FromNet, &spec.build()).unwrap()
}

/// The masquerade port a forwarded packet left with.
fn masquerade_port(run: &Run, backend: SocketAddrV4) -> u16 {
    assert_eq!(run.retval, REDIRECT, "forwarded by the datapath");
    let out = check(&run.data);
    assert_eq!(out.dst, backend);
    assert_eq!(*out.src.ip(), NODE, "masqueraded to the node");
    out.src.port()
}

#[test]
fn masquerade_keeps_the_clients_port_when_it_is_in_the_range_and_free() {
    let (_net, mut dp) = setup_or_skip!("masquerade_keeps_the_clients_port");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, UDP, backend);

    let inside = PacketSpec::udp(sa(HOST, 62_000), sa(NODE, NODE_PORT));
    assert_eq!(
        masquerade_port(&from_outside(&mut dp, &inside), backend),
        62_000
    );
    // Outside the range, the port is one of the range's.
    let outside = PacketSpec::udp(sa(HOST, 40_000), sa(NODE, NODE_PORT));
    let port = masquerade_port(&from_outside(&mut dp, &outside), backend);
    assert!((61_000..=65_535).contains(&port), "{port}");
    // Taken by the first client: another client's 62000 gets another port.
    let other = PacketSpec::udp(
        sa(Ipv4Addr::new(172, 18, 0, 9), 62_000),
        sa(NODE, NODE_PORT),
    );
    let port = masquerade_port(&from_outside(&mut dp, &other), backend);
    assert_ne!(port, 62_000);
    assert_eq!(dp.counter(Reason::NewFlow), 3);
}

#[test]
fn ports_are_retried_until_every_port_of_the_range_is_taken() {
    let (_net, mut dp) = setup_or_skip!("ports_are_retried_until_the_range_is_full");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, UDP, backend);
    snat_range(&mut dp, 62_000, 62_015);

    let mut ports: Vec<u16> = (0..16)
        .map(|i| {
            let spec = PacketSpec::udp(sa(HOST, 40_000 + i), sa(NODE, NODE_PORT));
            masquerade_port(&from_outside(&mut dp, &spec), backend)
        })
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        (62_000..=62_015).collect::<Vec<_>>(),
        "every port, once"
    );

    // Seventeen flows, sixteen ports: the last one is refused and counted.
    let spec = PacketSpec::udp(sa(HOST, 40_016), sa(NODE, NODE_PORT));
    let run = from_outside(&mut dp, &spec);
    assert_eq!(run.retval, SHOT);
    assert_eq!(dp.counter(Reason::DropSnatExhausted), 1);
    assert_eq!(dp.ct_get(&forward_key(&spec)), None, "nothing half-made");
    // The same flows again are tracked, not allocated anew.
    let again = PacketSpec::udp(sa(HOST, 40_003), sa(NODE, NODE_PORT));
    masquerade_port(&from_outside(&mut dp, &again), backend);
    assert_eq!(dp.counter(Reason::EstablishedFlow), 1);
}

#[test]
fn an_expired_flow_gives_its_port_to_the_next_flow() {
    let (_net, mut dp) = setup_or_skip!("an_expired_flow_gives_its_port_to_the_next_flow");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, UDP, backend);
    snat_range(&mut dp, 62_000, 62_000);
    let a = PacketSpec::udp(sa(HOST, 40_000), sa(NODE, NODE_PORT));
    let b = PacketSpec::udp(sa(HOST, 40_001), sa(NODE, NODE_PORT));
    assert_eq!(masquerade_port(&from_outside(&mut dp, &a), backend), 62_000);
    assert_eq!(
        from_outside(&mut dp, &b).retval,
        SHOT,
        "the only port is taken"
    );

    // A's flow expires (UDP: 60 s idle); its entries are still there, but free.
    quiet_for(&mut dp, &forward_key(&a), 61_000_000_000);
    assert_eq!(masquerade_port(&from_outside(&mut dp, &b), backend), 62_000);
    // The port's reply entry is B's now: the backend's answer goes to B.
    let reply = PacketSpec::udp(backend, sa(NODE, 62_000)).payload(b"pong");
    let run = dp.run(Program::FromNet, &reply.build()).unwrap();
    assert_eq!(check(&run.data).dst, sa(HOST, 40_001));
    assert_eq!(dp.counter(Reason::DropSnatExhausted), 1);
}

#[test]
fn a_closed_flow_frees_its_port_once_it_has_been_quiet_a_second() {
    let (_net, mut dp) = setup_or_skip!("a_closed_flow_frees_its_port");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, TCP, backend);
    snat_range(&mut dp, 62_000, 62_000);
    let a = PacketSpec::tcp(sa(HOST, 40_000), sa(NODE, NODE_PORT), SYN);
    assert_eq!(masquerade_port(&from_outside(&mut dp, &a), backend), 62_000);
    let from_backend = |flags| PacketSpec::tcp(backend, sa(NODE, 62_000), flags).build();
    let from_client = |flags| {
        PacketSpec {
            tcp_flags: flags,
            ..a.clone()
        }
        .build()
    };
    dp.run(Program::FromNet, &from_backend(SYN | ACK)).unwrap();
    dp.run(Program::FromNet, &from_client(ACK)).unwrap();
    dp.run(Program::FromNet, &from_client(FIN | ACK)).unwrap();
    dp.run(Program::FromNet, &from_backend(FIN | ACK)).unwrap();
    let fwd = dp.ct_get(&forward_key(&a)).expect("forward entry");
    assert_eq!(fwd.state(TCP), CtState::Closing);

    // Just closed: its last ACK may still be on the way, so the port stays its own.
    let b = PacketSpec::tcp(sa(HOST, 40_001), sa(NODE, NODE_PORT), SYN);
    assert_eq!(from_outside(&mut dp, &b).retval, SHOT);
    // Quiet for a second: long before its 10-s close timeout, the port is free.
    quiet_for(&mut dp, &forward_key(&a), 1_100_000_000);
    assert_eq!(masquerade_port(&from_outside(&mut dp, &b), backend), 62_000);
}

#[test]
fn a_newer_tcp_timestamp_takes_a_closed_flows_port_at_once_and_an_older_one_does_not() {
    let (_net, mut dp) = setup_or_skip!("a_newer_tcp_timestamp_takes_a_closed_flows_port");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, TCP, backend);
    snat_range(&mut dp, 62_000, 62_000);
    // A flow the backend closed first: its TIME_WAIT remembers the client's last TSval.
    let a = PacketSpec::tcp(sa(HOST, 40_000), sa(NODE, NODE_PORT), SYN).tsval(5_000);
    assert_eq!(masquerade_port(&from_outside(&mut dp, &a), backend), 62_000);
    let from_backend = |flags| PacketSpec::tcp(backend, sa(NODE, 62_000), flags).build();
    let from_client = |flags, ts| {
        PacketSpec {
            tcp_flags: flags,
            ..a.clone()
        }
        .tsval(ts)
        .build()
    };
    dp.run(Program::FromNet, &from_backend(SYN | ACK)).unwrap();
    dp.run(Program::FromNet, &from_backend(FIN | ACK)).unwrap();
    dp.run(Program::FromNet, &from_client(FIN | ACK, 5_010))
        .unwrap();
    let fwd = dp.ct_get(&forward_key(&a)).expect("forward entry");
    assert_eq!(
        (fwd.state(TCP), fwd.client_tsval),
        (CtState::Closing, 5_010),
        "the client's last timestamp is kept"
    );

    // A few milliseconds later (past the takeover grace, far from a quiet second)...
    quiet_for(&mut dp, &forward_key(&a), 10_000_000);
    // another client connection, whose timestamps run behind: PAWS would refuse it.
    let behind = PacketSpec::tcp(sa(HOST, 40_001), sa(NODE, NODE_PORT), SYN).tsval(4_000);
    assert_eq!(from_outside(&mut dp, &behind).retval, SHOT);
    // One whose timestamps are ahead gets the port at once, long before a quiet second.
    let ahead = PacketSpec::tcp(sa(HOST, 40_002), sa(NODE, NODE_PORT), SYN).tsval(9_000);
    assert_eq!(
        masquerade_port(&from_outside(&mut dp, &ahead), backend),
        62_000
    );
    assert_eq!(dp.counter(Reason::DropSnatExhausted), 1);
}

#[test]
fn a_client_reopening_its_tuple_keeps_its_port() {
    let (_net, mut dp) = setup_or_skip!("a_client_reopening_its_tuple_keeps_its_port");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, TCP, backend);
    let syn = PacketSpec::tcp(sa(HOST, 40_000), sa(NODE, NODE_PORT), SYN);
    let first = masquerade_port(&from_outside(&mut dp, &syn), backend);
    let reset = PacketSpec {
        tcp_flags: RST,
        ..syn.clone()
    };
    from_outside(&mut dp, &reset);
    // At once, without waiting for the close timeout: the old flow was its own.
    assert_eq!(
        masquerade_port(&from_outside(&mut dp, &syn), backend),
        first
    );
    let entries = dp.ct_entries();
    assert_eq!(
        entries.len(),
        2,
        "one flow, no stale reply entry: {entries:?}"
    );
}

#[test]
fn a_dnat_onto_another_flows_tuple_remaps_the_source_port_and_both_flows_work() {
    let (_net, mut dp) = setup_or_skip!("a_dnat_clash_remaps_the_source_port");
    // Two services with one backend, and a client using one source port for both, as Linux
    // does for connections to different destinations.
    let backend = sa(REMOTE_POD, 8080);
    let shared = dp.add_backend(REMOTE_POD, 8080, TCP);
    for vip in [VIP, VIP2] {
        dp.add_frontend_with_ids(
            FrontendKey::new(vip, 80, TCP),
            flags::CLUSTER_IP,
            &[shared],
            0,
        );
    }
    let to = |vip| PacketSpec::tcp(sa(POD_CLIENT, 40_000), sa(vip, 80), SYN);

    let one = check(&dp.run(Program::FromPod, &to(VIP).build()).unwrap().data);
    let two = check(&dp.run(Program::FromPod, &to(VIP2).build()).unwrap().data);
    assert_eq!(one.src, sa(POD_CLIENT, 40_000), "the first keeps its port");
    assert_eq!(one.dst, backend);
    assert_eq!(*two.src.ip(), POD_CLIENT, "the second keeps its address");
    assert_ne!(
        two.src.port(),
        40_000,
        "but not its port: that tuple is taken"
    );
    assert_eq!(two.dst, backend);
    assert_eq!(dp.counter(Reason::PortRemapped), 1);

    // Each flow's replies come back from its own service to the client's real port.
    let answer = |port| PacketSpec::tcp(backend, sa(POD_CLIENT, port), SYN | ACK).build();
    let back1 = check(&dp.run(Program::ToPod, &answer(40_000)).unwrap().data);
    let back2 = check(
        &dp.run(Program::ToPod, &answer(two.src.port()))
            .unwrap()
            .data,
    );
    assert_eq!(
        (back1.src, back1.dst),
        (sa(VIP, 80), sa(POD_CLIENT, 40_000))
    );
    assert_eq!(
        (back2.src, back2.dst),
        (sa(VIP2, 80), sa(POD_CLIENT, 40_000))
    );
    // And the client's next packets keep their translations.
    let ack = |vip| {
        PacketSpec {
            tcp_flags: ACK,
            ..to(vip)
        }
        .build()
    };
    let again = check(&dp.run(Program::FromPod, &ack(VIP2)).unwrap().data);
    assert_eq!(again.src, two.src);
}

#[test]
fn a_live_flow_that_lost_its_reply_entry_gets_it_back() {
    let (_net, mut dp) = setup_or_skip!("a_live_flow_that_lost_its_reply_entry_gets_it_back");
    dp.add_frontend(
        FrontendKey::new(VIP, 53, UDP),
        flags::CLUSTER_IP,
        &[(LOCAL_POD, 5353)],
        0,
    );
    let query = PacketSpec::udp(sa(POD_CLIENT, 40_000), sa(VIP, 53)).payload(b"q");
    dp.run(Program::FromPod, &query.build()).unwrap();
    let fwd_key = forward_key(&query);
    let fwd = dp.ct_get(&fwd_key).expect("forward entry");
    let reply_key = fwd_key.reply_of_forward(&fwd);
    dp.ct_remove(&reply_key);

    // The check runs when the flow's stamp is refreshed, once a second.
    quiet_for(&mut dp, &fwd_key, 2_000_000_000);
    dp.run(Program::FromPod, &query.build()).unwrap();
    assert_eq!(dp.counter(Reason::CtRepaired), 1);
    let fwd = dp.ct_get(&fwd_key).expect("forward entry");
    assert_eq!(dp.ct_get(&reply_key), Some(fwd_key.reply_entry(&fwd)));
    let answer = PacketSpec::udp(sa(LOCAL_POD, 5353), sa(POD_CLIENT, 40_000)).payload(b"a");
    let back = check(&dp.run(Program::ToPod, &answer.build()).unwrap().data);
    assert_eq!(back.src, sa(VIP, 53));
}

#[test]
fn a_full_table_refuses_new_flows_counted_and_tcp_has_room_of_its_own() {
    // Room for 4 UDP flows (two entries each).
    let (_net, mut dp) = setup_or_skip!("a_full_table_refuses_new_flows", 64, 8);
    dp.add_frontend(
        FrontendKey::new(VIP, 80, UDP),
        flags::CLUSTER_IP,
        &[(LOCAL_POD, 8080)],
        0,
    );
    dp.add_frontend(
        FrontendKey::new(VIP, 80, TCP),
        flags::CLUSTER_IP,
        &[(LOCAL_POD, 8080)],
        0,
    );
    let udp = |port| PacketSpec::udp(sa(POD_CLIENT, port), sa(VIP, 80)).build();
    for port in 40_000..40_004 {
        assert_eq!(dp.run(Program::FromPod, &udp(port)).unwrap().retval, PASS);
    }
    let run = dp.run(Program::FromPod, &udp(40_004)).unwrap();
    assert_eq!(run.retval, SHOT, "refused, not passed untranslated");
    assert_eq!(dp.counter(Reason::DropCtFull), 1);
    // The live flows are untouched and still translate.
    let run = dp.run(Program::FromPod, &udp(40_000)).unwrap();
    assert_eq!(check(&run.data).dst, sa(LOCAL_POD, 8080));
    // TCP has a table of its own.
    let syn = PacketSpec::tcp(sa(POD_CLIENT, 40_010), sa(VIP, 80), SYN).build();
    let run = dp.run(Program::FromPod, &syn).unwrap();
    assert_eq!(check(&run.data).dst, sa(LOCAL_POD, 8080));
    assert_eq!(dp.counter(Reason::NewFlow), 5);
}

#[test]
fn packets_the_datapath_forwards_lose_one_ttl_and_a_last_hop_is_dropped() {
    let (_net, mut dp) = setup_or_skip!("packets_the_datapath_forwards_lose_one_ttl");
    node_port(&mut dp, UDP, sa(REMOTE_POD, 8080));
    let spec = PacketSpec::udp(sa(HOST, 40_000), sa(NODE, NODE_PORT)).payload(b"x");
    let run = from_outside(&mut dp, &spec);
    assert_eq!(run.retval, REDIRECT);
    check(&run.data);
    assert_eq!(ttl(&run.data), 63, "redirected: the datapath routed it");

    let last = PacketSpec {
        ttl: 1,
        ..spec.clone()
    };
    let last = PacketSpec {
        src: sa(HOST, 40_001),
        ..last
    };
    assert_eq!(from_outside(&mut dp, &last).retval, SHOT);
    assert_eq!(dp.counter(Reason::DropTtlExceeded), 1);

    // A pod's packet that the stack forwards keeps its TTL here: the stack takes one off.
    dp.add_frontend(
        FrontendKey::new(VIP, 80, UDP),
        flags::CLUSTER_IP,
        &[(REMOTE_POD, 8080)],
        0,
    );
    let pod = PacketSpec::udp(sa(POD_CLIENT, 40_000), sa(VIP, 80)).build();
    let run = dp.run(Program::FromPod, &pod).unwrap();
    assert_eq!((run.retval, ttl(&run.data)), (PASS, 64));
}

/// `spec` with its L4 checksum field holding the folded pseudo-header sum, as a
/// CHECKSUM_PARTIAL packet from a local sender carries it.
fn partial(spec: &PacketSpec) -> Vec<u8> {
    let mut frame = spec.build();
    let l4_len = (frame.len() - 34) as u32;
    let mut sum = 0u32;
    for w in frame[26..34].chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    sum += spec.proto as u32 + l4_len;
    let seed = lb_common::checksum::fold(sum);
    let at = if spec.proto == TCP { 34 + 16 } else { 34 + 6 };
    frame[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    frame
}

#[test]
fn xdp_sends_only_packets_whose_checksum_is_complete() {
    let (net, mut dp) = setup_or_skip!("xdp_sends_only_complete_checksums");
    for proto in [TCP, UDP] {
        dp.add_frontend(
            FrontendKey::new(LB_IP, 80, proto),
            flags::LOAD_BALANCER,
            &[(REMOTE_POD, 8080)],
            0,
        );
    }
    let xdp = |dp: &mut Datapath, frame: &[u8]| {
        dp.run_on(Program::Xdp, frame, net.uplink_ifindex).unwrap()
    };
    let tcp = PacketSpec::tcp(sa(HOST, 40_000), sa(LB_IP, 80), SYN).payload(b"data");
    let udp = PacketSpec::udp(sa(HOST, 40_001), sa(LB_IP, 80)).payload(b"data");

    // CHECKSUM_COMPLETE and CHECKSUM_UNNECESSARY packets carry their full checksum in the
    // field (a NIC verifies it, it does not change it): translated and sent, still valid.
    for spec in [&tcp, &udp] {
        let run = xdp(&mut dp, &spec.build());
        assert_eq!(run.retval, XDP_TX, "{spec:?}");
        let out = check(&run.data);
        assert_eq!(out.dst, sa(REMOTE_POD, 8080));
        assert_eq!(out.payload, b"data");
    }
    // UDP without a checksum stays without one.
    let none = PacketSpec {
        udp_no_checksum: true,
        src: sa(HOST, 40_002),
        ..udp.clone()
    };
    let run = xdp(&mut dp, &none.build());
    assert_eq!(run.retval, XDP_TX);
    assert_eq!(check(&run.data).udp_checksum, Some(0));

    // CHECKSUM_PARTIAL: only the pseudo-header sum is there; XDP leaves it to tc untouched.
    for spec in [&tcp, &udp] {
        let spec = PacketSpec {
            src: sa(HOST, spec.src.port() + 10),
            ..spec.clone()
        };
        let frame = partial(&spec);
        let run = xdp(&mut dp, &frame);
        assert_eq!(run.retval, XDP_PASS, "{spec:?}");
        assert_eq!(run.data, frame, "passed as it came");
    }
    assert_eq!(dp.counter(Reason::PassCsumPartial), 2);
    assert_eq!(dp.counter(Reason::XdpTx), 3);
}

#[test]
fn every_fragment_of_a_datagram_gets_its_translation_and_it_reassembles_valid() {
    let (_net, mut dp) = setup_or_skip!("every_fragment_of_a_datagram_gets_its_translation");
    dp.add_frontend(
        FrontendKey::new(VIP, 80, UDP),
        flags::CLUSTER_IP,
        &[(LOCAL_POD, 8080)],
        0,
    );
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let datagram = PacketSpec::udp(sa(POD_CLIENT, 40_000), sa(VIP, 80)).payload(&payload);
    let pieces = fragments(&datagram.build(), 1480);

    let out: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| {
            let run = dp.run(Program::FromPod, p).unwrap();
            assert_eq!(run.retval, PASS);
            run.data
        })
        .collect();
    let whole = check(&reassemble(&out));
    assert_eq!(
        (whole.src, whole.dst),
        (sa(POD_CLIENT, 40_000), sa(LOCAL_POD, 8080))
    );
    assert_eq!(
        whole.payload, payload,
        "the datagram arrives whole and valid"
    );
    assert_eq!(dp.counter(Reason::NewFlow), 1);
    assert_eq!(
        dp.counter(Reason::EstablishedFlow),
        1,
        "the second fragment"
    );

    // The backend's answer, fragmented too, comes back from the service.
    let answer = PacketSpec::udp(sa(LOCAL_POD, 8080), sa(POD_CLIENT, 40_000)).payload(&payload);
    let back: Vec<Vec<u8>> = fragments(&answer.build(), 1480)
        .iter()
        .map(|p| dp.run(Program::ToPod, p).unwrap().data)
        .collect();
    let whole = check(&reassemble(&back));
    assert_eq!(whole.src, sa(VIP, 80));
    assert_eq!(whole.payload, payload);

    // A later fragment whose first was never seen cannot be matched: passed, counted.
    let mut stray = PacketSpec::udp(sa(POD_CLIENT, 40_001), sa(VIP, 80)).payload(&payload);
    stray.fragment = Some((185, false));
    let frame = stray.build();
    let frame = [&frame[..18], &[0x99, 0x99], &frame[20..]].concat();
    let run = dp.run(Program::FromPod, &frame).unwrap();
    assert_eq!((run.retval, &run.data), (PASS, &frame));
    assert_eq!(dp.counter(Reason::PassFragUnknown), 1);
}

#[test]
fn an_icmp_error_about_a_reply_reaches_the_backend_translated() {
    let (_net, mut dp) = setup_or_skip!("an_icmp_error_about_a_reply_reaches_the_backend");
    let backend = sa(REMOTE_POD, 8080);
    node_port(&mut dp, UDP, backend);
    let request = PacketSpec::udp(sa(HOST, 40_000), sa(NODE, NODE_PORT)).payload(b"ping");
    let port = masquerade_port(&from_outside(&mut dp, &request), backend);
    let answer = PacketSpec::udp(backend, sa(NODE, port)).payload(b"pong");
    let run = dp.run(Program::FromNet, &answer.build()).unwrap();
    let seen_by_client = run.data.clone();
    assert_eq!(check(&seen_by_client).src, sa(NODE, NODE_PORT));

    // A router on the way back to the client needs the reply smaller; its error goes to
    // the NodePort address the reply came from, quoting the reply as it was.
    let router = Ipv4Addr::new(172, 18, 0, 99);
    let error = icmp_unreachable(router, NODE, 4, 1200, &seen_by_client[14..14 + 28]);
    let run = dp.run(Program::FromNet, &error).unwrap();
    assert_eq!(run.retval, REDIRECT, "on its way to the backend");
    let icmp = check_icmp(&run.data);
    assert_eq!((icmp.src, icmp.dst), (router, REMOTE_POD));
    assert_eq!((icmp.kind, icmp.code), (3, 4));
    assert_eq!(
        &icmp.rest_of_header[2..],
        &1200u16.to_be_bytes(),
        "the MTU stays"
    );
    let quoted = etherparse::Ipv4Header::from_slice(&icmp.quoted).unwrap().0;
    assert_eq!(quoted.header_checksum, quoted.calc_header_checksum());
    assert_eq!(
        (
            Ipv4Addr::from(quoted.source),
            Ipv4Addr::from(quoted.destination)
        ),
        (REMOTE_POD, NODE),
        "quotes the reply as the backend sent it"
    );
    assert_eq!(&icmp.quoted[20..22], &8080u16.to_be_bytes());
    assert_eq!(&icmp.quoted[22..24], &port.to_be_bytes());

    // The client itself refusing the reply: the error comes from the node, to the backend.
    let refused = icmp_unreachable(HOST, NODE, 3, 0, &seen_by_client[14..14 + 28]);
    let icmp = check_icmp(&dp.run(Program::FromNet, &refused).unwrap().data);
    assert_eq!((icmp.src, icmp.dst), (NODE, REMOTE_POD));
    assert_eq!(dp.counter(Reason::IcmpErrorTranslated), 2);
}

#[test]
fn a_packet_too_big_for_its_way_out_gets_frag_needed_when_it_may_not_be_fragmented() {
    let (_net, mut dp) = setup_or_skip!("a_packet_too_big_gets_frag_needed");
    let out = std::process::Command::new("ip")
        .args(["link", "set", "pod0", "mtu", "1000"])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node_port(&mut dp, UDP, sa(LOCAL_POD, 8080));
    let big = PacketSpec::udp(sa(HOST, 40_000), sa(NODE, NODE_PORT)).payload(&[1; 1200]);
    let input = big.build();

    let run = dp.run(Program::FromNet, &input).unwrap();
    assert_eq!(
        run.retval, REDIRECT,
        "answered back out of the ingress interface"
    );
    let icmp = check_icmp(&run.data);
    assert_eq!(
        (icmp.src, icmp.dst),
        (NODE, HOST),
        "from the node, as a router"
    );
    assert_eq!((icmp.kind, icmp.code), (3, 4), "fragmentation needed");
    assert_eq!(&icmp.rest_of_header[2..], &1000u16.to_be_bytes());
    assert_eq!(
        &icmp.quoted[..28],
        &input[14..42],
        "quotes what the client sent"
    );
    assert_eq!(dp.counter(Reason::RejectFragNeeded), 1);

    // Without DF the stack may fragment it: translated and handed to the stack.
    let may_fragment = PacketSpec {
        dont_fragment: Some(false),
        ..big
    };
    let run = dp.run(Program::FromNet, &may_fragment.build()).unwrap();
    assert_eq!(run.retval, PASS);
    assert_eq!(check(&run.data).dst, sa(LOCAL_POD, 8080));
    assert_eq!(dp.counter(Reason::PassMtu), 1);
}

#[test]
fn a_backend_that_is_the_node_itself_is_not_masqueraded_and_its_replies_leave_translated() {
    let (_net, mut dp) = setup_or_skip!("a_backend_that_is_the_node_itself");
    // A hostNetwork pod on this node, behind an externalTrafficPolicy=Cluster NodePort.
    let id = dp.add_backend_with_flags(NODE, 9090, TCP, LOCAL | ON_NODE);
    dp.add_frontend_with_ids(
        FrontendKey::new(NODE, NODE_PORT, TCP),
        flags::NODE_PORT,
        &[id],
        0,
    );
    let syn = PacketSpec::tcp(sa(HOST, 40_000), sa(NODE, NODE_PORT), SYN);

    let run = from_outside(&mut dp, &syn);
    assert_eq!(run.retval, PASS, "for the node's own stack");
    let out = check(&run.data);
    assert_eq!(
        (out.src, out.dst),
        (sa(HOST, 40_000), sa(NODE, 9090)),
        "client kept"
    );
    assert_eq!(dp.counter(Reason::PassNoRoute), 0);

    // The node's stack answers out of the uplink, where lb_to_net gives it the NodePort.
    let synack = PacketSpec::tcp(sa(NODE, 9090), sa(HOST, 40_000), SYN | ACK).build();
    let run = dp.run(Program::ToNet, &synack).unwrap();
    assert_eq!(run.retval, PASS);
    let back: Checked = check(&run.data);
    assert_eq!(
        (back.src, back.dst),
        (sa(NODE, NODE_PORT), sa(HOST, 40_000))
    );
    assert_eq!(dp.counter(Reason::ReplyTranslated), 1);

    // What the node forwards for others is not looked at.
    let other = PacketSpec::tcp(sa(REMOTE_POD, 8080), sa(HOST, 40_000), SYN | ACK).build();
    let run = dp.run(Program::ToNet, &other).unwrap();
    assert_eq!((run.retval, &run.data), (PASS, &other));
}
