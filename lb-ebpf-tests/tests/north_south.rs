//! North-south packet tests: the uplink programs (tc and XDP), masquerade, traffic
//! policies, source ranges, rejects, hairpin and ICMP errors. Each test runs in a private
//! network namespace of its own thread (see `lb_ebpf_tests::testnet`), so the FIB lookups
//! that decide where a translated packet goes see the same routes everywhere, and the
//! output MACs can be checked too.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    conntrack::{ct_flags, dir, snat_ports, tcp_flags::*},
    frontend::{flags, scope},
    proto::{TCP, UDP},
    CtKey, FrontendKey, Reason,
};
use lb_ebpf_tests::{
    packet::{check, check_icmp, icmp_unreachable, Checked},
    privilege::require_bpf,
    testnet::{self, *},
    Datapath, PacketSpec, Program, Run,
};

const SHOT: i32 = 2;
const REDIRECT: i32 = 7;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 10);
const NODE_PORT: u16 = 30080;

macro_rules! setup_or_skip {
    ($name:expr) => {{
        if !require_bpf($name) {
            return;
        }
        let net = testnet::enter().expect("test namespace");
        let mut dp = Datapath::load().expect("load datapath");
        dp.set_config(testnet::node_config());
        (net, dp)
    }};
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn frontend(ip: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey::new(ip, port, proto)
}

fn macs(run: &Run) -> ([u8; 6], [u8; 6]) {
    let d: [u8; 6] = run.data[..6].try_into().unwrap();
    let s: [u8; 6] = run.data[6..12].try_into().unwrap();
    (d, s)
}

/// The translated packet, with valid checksums, and its masquerade port in range.
fn masqueraded(run: &Run, backend: SocketAddrV4) -> Checked {
    let out = check(&run.data);
    assert_eq!(out.dst, backend, "DNAT to the backend");
    assert_eq!(*out.src.ip(), NODE, "source masqueraded to the node");
    assert!(
        (snat_ports::MIN..=snat_ports::MAX).contains(&out.src.port()),
        "masquerade port {} outside the range",
        out.src.port()
    );
    out
}

#[test]
fn nodeport_from_outside_is_masqueraded_to_a_remote_backend_and_replies_return() {
    let (_net, mut dp) = setup_or_skip!("nodeport_from_outside_is_masqueraded");
    dp.add_frontend(
        frontend(NODE, NODE_PORT, TCP),
        flags::NODE_PORT,
        &[(REMOTE_POD, 8080)],
        0,
    );
    let syn = PacketSpec::tcp(sa(HOST, 40000), sa(NODE, NODE_PORT), SYN);

    let run = dp.run(Program::FromNet, &syn.build()).unwrap();

    assert_eq!(run.retval, REDIRECT, "forwarded by the datapath");
    let out = masqueraded(&run, sa(REMOTE_POD, 8080));
    assert_eq!(
        macs(&run),
        (OTHER_NODE_MAC, UPLINK_MAC),
        "next hop: the other node"
    );
    let fwd = dp
        .ct_get(&CtKey::new(
            lb_common::addr_be(HOST),
            lb_common::addr_be(NODE),
            40000u16.to_be(),
            NODE_PORT.to_be(),
            TCP,
            dir::FORWARD,
        ))
        .expect("forward entry");
    assert_eq!(fwd.flags & ct_flags::SNAT, ct_flags::SNAT);
    assert_eq!(fwd.flags & ct_flags::NORTH_SOUTH, ct_flags::NORTH_SOUTH);

    // The backend answers the node; the reply goes back to the client from the NodePort.
    let synack = PacketSpec::tcp(out.dst, out.src, SYN | ACK);
    let run = dp.run(Program::FromNet, &synack.build()).unwrap();
    assert_eq!(run.retval, REDIRECT);
    let back = check(&run.data);
    assert_eq!(back.src, sa(NODE, NODE_PORT));
    assert_eq!(back.dst, sa(HOST, 40000));
    assert_eq!(macs(&run), (HOST_MAC, UPLINK_MAC));
    assert_eq!(dp.counter(Reason::NewFlow), 1);
    assert_eq!(dp.counter(Reason::ReplyTranslated), 1);
}

#[test]
fn xdp_translates_and_transmits_what_goes_back_out_of_the_uplink() {
    let (net, mut dp) = setup_or_skip!("xdp_translates_and_transmits");
    dp.add_frontend(
        frontend(LB_IP, 80, UDP),
        flags::LOAD_BALANCER,
        &[(REMOTE_POD, 8080)],
        0,
    );
    dp.add_frontend(
        frontend(LB_IP, 81, UDP),
        flags::LOAD_BALANCER,
        &[(LOCAL_POD, 8080)],
        0,
    );
    let request = PacketSpec::udp(sa(HOST, 40001), sa(LB_IP, 80)).payload(b"ping");

    let run = dp
        .run_on(Program::Xdp, &request.build(), net.uplink_ifindex)
        .unwrap();

    assert_eq!(run.retval, XDP_TX);
    let out = masqueraded(&run, sa(REMOTE_POD, 8080));
    assert_eq!(out.payload, b"ping");
    assert_eq!(macs(&run), (OTHER_NODE_MAC, UPLINK_MAC));
    let reply = PacketSpec::udp(out.dst, out.src).payload(b"pong");
    let run = dp
        .run_on(Program::Xdp, &reply.build(), net.uplink_ifindex)
        .unwrap();
    assert_eq!(run.retval, XDP_TX);
    let back = check(&run.data);
    assert_eq!((back.src, back.dst), (sa(LB_IP, 80), sa(HOST, 40001)));
    assert_eq!(macs(&run), (HOST_MAC, UPLINK_MAC));
    assert_eq!(dp.counter(Reason::XdpTx), 2);

    // A backend on this node is tc's job: XDP passes the packet untouched.
    let local = PacketSpec::udp(sa(HOST, 40002), sa(LB_IP, 81)).build();
    let run = dp.run_on(Program::Xdp, &local, net.uplink_ifindex).unwrap();
    assert_eq!(run.retval, XDP_PASS);
    assert_eq!(run.data, local);
    assert_eq!(dp.counter(Reason::PassToTc), 1);
    let run = dp.run(Program::FromNet, &local).unwrap();
    assert_eq!(run.retval, REDIRECT);
    masqueraded(&run, sa(LOCAL_POD, 8080));
    assert_eq!(
        macs(&run),
        (LOCAL_POD_MAC, POD_VETH_MAC),
        "into the pod's veth"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_backend() {
    let (net, mut dp) = setup_or_skip!("external_traffic_policy_local");
    let local = frontend(LB_IP, 80, TCP);
    dp.add_frontend(
        local,
        flags::LOAD_BALANCER | flags::EXTERNAL_LOCAL,
        &[(LOCAL_POD, 8080)],
        0,
    );
    let syn = PacketSpec::tcp(sa(HOST, 40010), sa(LB_IP, 80), SYN);
    let run = dp.run(Program::FromNet, &syn.build()).unwrap();
    assert_eq!(run.retval, REDIRECT);
    let out = check(&run.data);
    assert_eq!(out.src, sa(HOST, 40010), "client address preserved");
    assert_eq!(out.dst, sa(LOCAL_POD, 8080));
    // The pod's answer leaves through its veth and gets the LB address back.
    let run = dp
        .run(
            Program::FromPod,
            &PacketSpec::tcp(out.dst, out.src, SYN | ACK).build(),
        )
        .unwrap();
    let back = check(&run.data);
    assert_eq!((back.src, back.dst), (sa(LB_IP, 80), sa(HOST, 40010)));

    // No local endpoint: external clients are dropped (not rejected), in XDP already...
    let none = frontend(LB_IP, 81, TCP);
    dp.add_frontend(none, flags::LOAD_BALANCER | flags::EXTERNAL_LOCAL, &[], 0);
    dp.add_frontend(
        FrontendKey {
            scope: scope::INTERNAL,
            ..none
        },
        flags::LOAD_BALANCER,
        &[(REMOTE_POD, 8080)],
        0,
    );
    let syn = PacketSpec::tcp(sa(HOST, 40011), sa(LB_IP, 81), SYN).build();
    let run = dp.run_on(Program::Xdp, &syn, net.uplink_ifindex).unwrap();
    let seen: Vec<_> = Reason::ALL
        .iter()
        .map(|r| (r.name(), dp.counter(*r)))
        .filter(|c| c.1 > 0)
        .collect();
    assert_eq!(run.retval, XDP_DROP, "{seen:?}");
    let run = dp.run(Program::FromNet, &syn).unwrap();
    assert_eq!(run.retval, SHOT);
    assert_eq!(dp.counter(Reason::DropNoLocalBackend), 2);
    // ...while clients inside the cluster use the twin with every endpoint.
    let from_pod = PacketSpec::tcp(sa(Ipv4Addr::new(10, 244, 0, 9), 40012), sa(LB_IP, 81), SYN);
    let run = dp.run(Program::FromPod, &from_pod.build()).unwrap();
    let out = check(&run.data);
    assert_eq!(out.dst, sa(REMOTE_POD, 8080));
    assert_eq!(
        *out.src.ip(),
        Ipv4Addr::new(10, 244, 0, 9),
        "pods are not masqueraded"
    );
}

#[test]
fn load_balancer_source_ranges_admit_only_listed_clients() {
    let (_net, mut dp) = setup_or_skip!("load_balancer_source_ranges");
    let (id, _) = dp.add_frontend(
        frontend(LB_IP, 80, TCP),
        flags::LOAD_BALANCER | flags::SOURCE_RANGES,
        &[(REMOTE_POD, 8080)],
        0,
    );
    dp.add_source_range(id, Ipv4Addr::new(172, 18, 0, 0), 30);
    let allowed = PacketSpec::tcp(sa(HOST, 40020), sa(LB_IP, 80), SYN);
    let run = dp.run(Program::FromNet, &allowed.build()).unwrap();
    assert_eq!(run.retval, REDIRECT);
    masqueraded(&run, sa(REMOTE_POD, 8080));

    let outsider = PacketSpec::tcp(sa(Ipv4Addr::new(172, 18, 0, 9), 40021), sa(LB_IP, 80), SYN);
    let run = dp.run(Program::FromNet, &outsider.build()).unwrap();
    assert_eq!(run.retval, SHOT);
    assert_eq!(dp.counter(Reason::DropSourceRange), 1);
}

#[test]
fn a_service_without_endpoints_rejects_with_icmp_port_unreachable() {
    let (_net, mut dp) = setup_or_skip!("a_service_without_endpoints_rejects");
    dp.add_frontend(frontend(VIP, 80, TCP), flags::CLUSTER_IP, &[], 0);
    dp.add_frontend(frontend(VIP, 80, UDP), flags::CLUSTER_IP, &[], 0);
    let client = sa(Ipv4Addr::new(10, 244, 0, 9), 40030);
    for spec in [
        PacketSpec::tcp(client, sa(VIP, 80), SYN),
        PacketSpec::udp(client, sa(VIP, 80)).payload(b"hello?"),
    ] {
        let input = spec.build();
        let run = dp.run(Program::FromPod, &input).unwrap();
        assert_eq!(
            run.retval, REDIRECT,
            "sent back out of the ingress interface"
        );
        let icmp = check_icmp(&run.data);
        assert_eq!(&run.data[..6], &input[6..12], "to the client's MAC");
        assert_eq!(&run.data[6..12], &input[..6], "from the MAC it sent to");
        assert_eq!((icmp.src, icmp.dst), (VIP, *client.ip()));
        assert_eq!((icmp.kind, icmp.code), (3, 3), "port unreachable");
        assert_eq!(
            icmp.quoted,
            input[14..14 + 28],
            "quotes the IP header and 8 bytes"
        );
    }
    assert_eq!(dp.counter(Reason::RejectNoBackend), 2);
    assert_eq!(dp.ct_len(), 0);
}

#[test]
fn hairpin_is_masqueraded_and_the_reply_returns_to_the_pod() {
    let (_net, mut dp) = setup_or_skip!("hairpin_is_masqueraded");
    dp.add_frontend(
        frontend(VIP, 80, TCP),
        flags::CLUSTER_IP,
        &[(LOCAL_POD, 8080)],
        0,
    );
    let syn = PacketSpec::tcp(sa(LOCAL_POD, 40040), sa(VIP, 80), SYN);

    let run = dp.run(Program::FromPod, &syn.build()).unwrap();

    assert_eq!(run.retval, REDIRECT);
    let out = masqueraded(&run, sa(LOCAL_POD, 8080));
    assert_eq!(macs(&run), (LOCAL_POD_MAC, POD_VETH_MAC));
    let run = dp
        .run(
            Program::FromPod,
            &PacketSpec::tcp(out.dst, out.src, SYN | ACK).build(),
        )
        .unwrap();
    assert_eq!(run.retval, REDIRECT);
    let back = check(&run.data);
    assert_eq!((back.src, back.dst), (sa(VIP, 80), sa(LOCAL_POD, 40040)));
}

#[test]
fn a_cluster_ip_reached_from_outside_the_cluster_is_masqueraded() {
    let (_net, mut dp) = setup_or_skip!("a_cluster_ip_reached_from_outside");
    dp.add_frontend(
        frontend(VIP, 80, TCP),
        flags::CLUSTER_IP,
        &[(REMOTE_POD, 8080)],
        0,
    );
    let run = dp
        .run(
            Program::FromNet,
            &PacketSpec::tcp(sa(HOST, 40050), sa(VIP, 80), SYN).build(),
        )
        .unwrap();
    assert_eq!(run.retval, REDIRECT);
    masqueraded(&run, sa(REMOTE_POD, 8080));
}

#[test]
fn icmp_errors_about_a_translated_flow_are_translated_back() {
    let (_net, mut dp) = setup_or_skip!("icmp_errors_are_translated_back");
    dp.add_frontend(
        frontend(VIP, 80, UDP),
        flags::CLUSTER_IP,
        &[(REMOTE_POD, 8080)],
        0,
    );
    let client = sa(Ipv4Addr::new(10, 244, 0, 9), 40060);
    let run = dp
        .run(
            Program::FromPod,
            &PacketSpec::udp(client, sa(VIP, 80)).payload(b"x").build(),
        )
        .unwrap();
    let sent = run.data.clone();
    // The backend has no socket: it answers with port-unreachable quoting what it got.
    let error = icmp_error(REMOTE_POD, *client.ip(), &sent[14..14 + 28]);

    let run = dp.run(Program::ToPod, &error).unwrap();

    let icmp = check_icmp(&run.data);
    assert_eq!(
        (icmp.src, icmp.dst),
        (VIP, *client.ip()),
        "from the service"
    );
    let quoted = etherparse::Ipv4Header::from_slice(&icmp.quoted).unwrap().0;
    assert_eq!(quoted.header_checksum, quoted.calc_header_checksum());
    assert_eq!(
        Ipv4Addr::from(quoted.destination),
        VIP,
        "quotes the service"
    );
    assert_eq!(&icmp.quoted[22..24], &80u16.to_be_bytes(), "and its port");
    assert_eq!(&icmp.quoted[20..22], &40060u16.to_be_bytes());
    assert_eq!(dp.counter(Reason::IcmpErrorTranslated), 1);
}

/// An Ethernet frame with an ICMP port-unreachable from `src` to `dst` quoting `quote`.
fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, quote: &[u8]) -> Vec<u8> {
    icmp_unreachable(src, dst, 3, 0, quote)
}
