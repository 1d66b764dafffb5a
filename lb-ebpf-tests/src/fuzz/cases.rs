//! What to send: packets of the node's live flows in every direction and at every hook,
//! new flows to its frontends, ICMP errors quoting real and bogus flows, random and non-IP
//! frames, and corpus packets — then, often, mutated.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::proto::{ICMP, TCP, UDP};

use super::{
    gen::{self, Ip, Spec, L4, V4},
    node::{Flow, Node},
    rng::Rng,
};
use crate::testnet;

/// Where a generated packet came from, for the histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Flow,
    NewFlow,
    IcmpError,
    Random,
    NonIp,
    Corpus,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Flow,
        Kind::NewFlow,
        Kind::IcmpError,
        Kind::Random,
        Kind::NonIp,
        Kind::Corpus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Flow => "live flow",
            Kind::NewFlow => "new flow",
            Kind::IcmpError => "icmp error",
            Kind::Random => "random",
            Kind::NonIp => "non-ip",
            Kind::Corpus => "corpus",
        }
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// One packet: its bytes, what it was, and whether it was mutated.
pub fn next(rng: &mut Rng, node: &Node, corpus: &[Vec<u8>]) -> (Vec<u8>, Kind, bool) {
    let roll = rng.below(100);
    let kind = match roll {
        0..=34 if !node.flows.is_empty() => Kind::Flow,
        0..=54 => Kind::NewFlow,
        55..=71 => Kind::IcmpError,
        72..=81 => Kind::Random,
        82..=85 => Kind::NonIp,
        _ if !corpus.is_empty() => Kind::Corpus,
        _ => Kind::Random,
    };
    if kind == Kind::NonIp {
        return (non_ip(rng), kind, false);
    }
    if kind == Kind::Corpus {
        let mut bytes = rng.pick(corpus).clone();
        let layout = layout_of(&bytes);
        if let Some(layout) = layout {
            gen::mutate(rng, &mut bytes, &layout);
        } else {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
        }
        return (bytes, kind, true);
    }
    let spec = match kind {
        Kind::Flow => flow_packet(rng, node),
        Kind::NewFlow => new_flow(rng, node),
        Kind::IcmpError => icmp_error(rng, node),
        _ => random(rng, node),
    };
    let (mut bytes, layout) = gen::build(&spec);
    let mutated = rng.chance(45);
    if mutated {
        gen::mutate(rng, &mut bytes, &layout);
    }
    (bytes, kind, mutated)
}

/// The layout of an Ethernet + IPv4 frame, read from its bytes (for corpus packets).
pub fn layout_of(b: &[u8]) -> Option<gen::Layout> {
    if b.len() < 34 || b[12..14] != [8, 0] {
        return None;
    }
    let ihl = (b[14] & 0x0f) as usize * 4;
    let later = u16::from_be_bytes([b[20], b[21]]) & 0x1fff != 0;
    Some(gen::Layout {
        l3: 14,
        l4: 14 + ihl.max(20),
        proto: b[23],
        has_l4: !later,
    })
}

fn base(rng: &mut Rng, src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Spec {
    let fragment = match rng.below(20) {
        0 => Some((0, true)),
        1 => Some((rng.range(1, 8) as u16, rng.chance(50))),
        _ => None,
    };
    Spec {
        dst_mac: testnet::UPLINK_MAC,
        src_mac: testnet::HOST_MAC,
        vlan: rng.chance(3).then(|| rng.u16() & 0x0fff),
        ip: Ip::V4(V4 {
            src,
            dst,
            ttl: match rng.below(20) {
                0 => 0,
                1 => 1,
                2 => 2,
                _ => 64,
            },
            id: rng.u16(),
            df: fragment.is_none() && rng.chance(70),
            fragment,
            options: if rng.chance(8) {
                gen::ip_options(rng)
            } else {
                Vec::new()
            },
        }),
        l4,
    }
}

fn transport(rng: &mut Rng, proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> L4 {
    if proto == TCP {
        let flags = gen::tcp_flags(rng);
        L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags,
            options: gen::tcp_options(rng, flags),
            payload: if rng.chance(60) {
                Vec::new()
            } else {
                gen::payload(rng)
            },
        }
    } else {
        L4::Udp {
            sport: src.port(),
            dport: dst.port(),
            payload: gen::payload(rng),
            no_checksum: rng.chance(10),
        }
    }
}

/// A flow's four views: what the client sends, what the backend receives, what the backend
/// answers, and what the client gets back.
fn view(rng: &mut Rng, f: &Flow) -> (SocketAddrV4, SocketAddrV4) {
    match rng.below(4) {
        0 | 1 => (f.client, f.service),
        2 => (f.backend, f.inner_src),
        _ => {
            if rng.chance(50) {
                (f.inner_src, f.backend)
            } else {
                (f.service, f.client)
            }
        }
    }
}

fn flow_packet(rng: &mut Rng, node: &Node) -> Spec {
    let f = *rng.pick(&node.flows);
    let (src, dst) = view(rng, &f);
    let l4 = transport(rng, f.proto, src, dst);
    base(rng, *src.ip(), *dst.ip(), l4)
}

fn client(rng: &mut Rng, node: &Node) -> Ipv4Addr {
    if rng.chance(85) {
        *rng.pick(&node.clients)
    } else {
        Ipv4Addr::from(rng.u32())
    }
}

fn port(rng: &mut Rng) -> u16 {
    match rng.below(4) {
        0 => rng.range(61000, 65535) as u16,
        1 => *rng.pick(&[0, 1, 53, 80, 65535]),
        _ => rng.range(1024, 60999) as u16,
    }
}

fn new_flow(rng: &mut Rng, node: &Node) -> Spec {
    let svc = rng.pick(&node.services).key;
    let mut dst = sa(svc.ip(), svc.port_host());
    let mut proto = svc.proto;
    if rng.chance(10) {
        dst.set_port(dst.port().wrapping_add(1));
    }
    if rng.chance(5) {
        proto = if proto == TCP { UDP } else { TCP };
    }
    let src = sa(client(rng, node), port(rng));
    let l4 = transport(rng, proto, src, dst);
    base(rng, *src.ip(), *dst.ip(), l4)
}

/// An ICMP error quoting a real flow in one of its views (or a bogus tuple), from a router
/// or from the flow's own ends, to either end.
fn icmp_error(rng: &mut Rng, node: &Node) -> Spec {
    let (proto, qsrc, qdst) = if !node.flows.is_empty() && rng.chance(70) {
        let f = *rng.pick(&node.flows);
        let (s, d) = view(rng, &f);
        (f.proto, s, d)
    } else {
        let proto = if rng.chance(50) { TCP } else { UDP };
        (
            proto,
            sa(client(rng, node), port(rng)),
            sa(client(rng, node), port(rng)),
        )
    };
    let mut body = gen::quote(proto, qsrc, qdst, 0x02);
    match rng.below(10) {
        0 => body.truncate(rng.below(body.len())),
        1 => {
            let at = rng.below(body.len());
            body[at] = rng.u8();
        }
        2 => body[0] = 0x46,
        3 => body[9] = ICMP,
        4 => body.extend(rng.some_bytes(64)),
        _ => {}
    }
    let (kind, code) = match rng.below(8) {
        0 => (11, 0),
        1 => (12, 0),
        2 => (rng.u8(), rng.u8()),
        3 => (3, 3),
        _ => (3, 4),
    };
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&1400u16.to_be_bytes());
    // The error goes to the quoted packet's sender, from its destination or a router.
    let from = match rng.below(3) {
        0 => *qdst.ip(),
        1 => Ipv4Addr::new(172, 18, 0, 254),
        _ => client(rng, node),
    };
    let to = if rng.chance(85) {
        *qsrc.ip()
    } else {
        client(rng, node)
    };
    let l4 = L4::Icmp {
        kind,
        code,
        rest,
        body,
    };
    base(rng, from, to, l4)
}

fn random(rng: &mut Rng, node: &Node) -> Spec {
    let src = sa(client(rng, node), port(rng));
    let dst = sa(client(rng, node), port(rng));
    let l4 = match rng.below(5) {
        0 => L4::Icmp {
            kind: *rng.pick(&[0, 8, 3, 11, 5]),
            code: rng.u8() % 16,
            rest: [rng.u8(), rng.u8(), rng.u8(), rng.u8()],
            body: rng.some_bytes(80),
        },
        1 => L4::Other {
            proto: *rng.pick(&[0, 2, 47, 50, 132, 255]),
            payload: rng.some_bytes(80),
        },
        2 => transport(rng, UDP, src, dst),
        _ => transport(rng, TCP, src, dst),
    };
    base(rng, *src.ip(), *dst.ip(), l4)
}

/// Frames that are not IPv4 for the datapath: ARP, IPv6, a double tag, garbage.
fn non_ip(rng: &mut Rng) -> Vec<u8> {
    let mut f = testnet::UPLINK_MAC.to_vec();
    f.extend_from_slice(&testnet::HOST_MAC);
    let ethertype = *rng.pick(&[0x0806u16, 0x86dd, 0x88a8, 0x8100, 0x0000, 0xffff]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    let n = rng.below(120);
    f.extend(rng.bytes(n));
    f
}
