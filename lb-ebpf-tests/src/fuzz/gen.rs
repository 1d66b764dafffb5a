//! The structure-aware generator: a packet is first a [`Spec`] (Ethernet, an optional VLAN
//! tag, an IP header, an L4 message), built into valid bytes with etherparse, and then
//! possibly mutated at the fields the datapath parses ([`mutate`]).
//!
//! The IP layer is one variant of [`Ip`]: IPv6 (another issue) adds a variant and its
//! builder, and the rest (L4, ICMP quotes, mutations by [`Layout`]) stays as it is.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{IpNumber, Ipv4Header, Ipv4Options, TcpHeader, UdpHeader};
use lb_common::{checksum, proto};

use super::rng::Rng;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
/// BPF_PROG_TEST_RUN refuses data shorter than an Ethernet header (EINVAL before any
/// program runs), so truncation stops there.
pub const MIN_LEN: usize = 14;
/// And data longer than a page less the skb's head- and tailroom; the generator stays far
/// below.
pub const MAX_LEN: usize = 3000;

/// A packet to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// An 802.1Q tag (TCI) before the IP ethertype.
    pub vlan: Option<u16>,
    pub ip: Ip,
    pub l4: L4,
}

/// The network layer, one variant per address family.
#[derive(Clone, Debug)]
pub enum Ip {
    V4(V4),
}

#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    /// Fragment offset (8-byte units) and more-fragments; the payload is the part of the
    /// L4 datagram at that offset (first `first_len` bytes for a first fragment).
    pub fragment: Option<(u16, bool)>,
    /// IP options (a multiple of 4 bytes, at most 40).
    pub options: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// Raw TCP options (a multiple of 4 bytes, at most 40).
        options: Vec<u8>,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        no_checksum: bool,
    },
    /// An ICMP message: type, code, the 4 header bytes after the checksum, and the body
    /// (for an error, the quoted packet from its IP header on).
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    /// Any other IP protocol.
    Other { proto: u8, payload: Vec<u8> },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } => proto::ICMP,
            L4::Other { proto, .. } => *proto,
        }
    }
}

/// Where the built packet's headers are, for the mutators.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    /// The packet carries the L4 header (not a later fragment).
    pub has_l4: bool,
}

impl Layout {
    /// Offset of the L4 checksum field, if the protocol has one the datapath rewrites.
    pub fn l4_csum(&self) -> Option<usize> {
        match self.proto {
            proto::TCP => Some(self.l4 + 16),
            proto::UDP => Some(self.l4 + 6),
            proto::ICMP => Some(self.l4 + 2),
            _ => None,
        }
    }
}

/// A TCP or UDP segment (header and payload) with a correct checksum between `src` and
/// `dst`; ICMP and other protocols need no pseudo-header.
pub fn l4_bytes(l4: &L4, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            options,
            payload,
        } => {
            let mut tcp = TcpHeader::new(*sport, *dport, 0x1000_0000, 64240);
            tcp.fin = flags & 0x01 != 0;
            tcp.syn = flags & 0x02 != 0;
            tcp.rst = flags & 0x04 != 0;
            tcp.psh = flags & 0x08 != 0;
            tcp.ack = flags & 0x10 != 0;
            tcp.urg = flags & 0x20 != 0;
            tcp.ece = flags & 0x40 != 0;
            tcp.cwr = flags & 0x80 != 0;
            if tcp.ack {
                tcp.acknowledgment_number = 0x2000_0000;
            }
            tcp.set_options_raw(options).expect("tcp options");
            tcp.checksum = tcp
                .calc_checksum_ipv4_raw(src, dst, payload)
                .expect("tcp checksum");
            tcp.write(&mut out).expect("write tcp");
            out.extend_from_slice(payload);
        }
        L4::Udp {
            sport,
            dport,
            payload,
            no_checksum,
        } => {
            let mut udp = UdpHeader {
                source_port: *sport,
                destination_port: *dport,
                length: (8 + payload.len()) as u16,
                checksum: 0,
            };
            if !no_checksum {
                udp.checksum = udp
                    .calc_checksum_ipv4_raw(src, dst, payload)
                    .expect("udp checksum");
            }
            udp.write(&mut out).expect("write udp");
            out.extend_from_slice(payload);
        }
        L4::Icmp {
            kind,
            code,
            rest,
            body,
        } => {
            out.extend_from_slice(&[*kind, *code, 0, 0]);
            out.extend_from_slice(rest);
            out.extend_from_slice(body);
            let sum = checksum::checksum(&out);
            out[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        L4::Other { payload, .. } => out.extend_from_slice(payload),
    }
    out
}

/// Builds the packet. A fragment carries its slice of the datagram; `first_len` is the
/// first fragment's payload (rounded down to 8 bytes).
pub fn build(spec: &Spec) -> (Vec<u8>, Layout) {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&spec.dst_mac);
    out.extend_from_slice(&spec.src_mac);
    if let Some(tci) = spec.vlan {
        out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    let Ip::V4(v4) = &spec.ip;
    out.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let l3 = out.len();
    let datagram = l4_bytes(&spec.l4, v4.src.octets(), v4.dst.octets());
    let (payload, has_l4) = match v4.fragment {
        None => (datagram, true),
        Some((0, _)) => {
            // A first fragment: the L4 header and at least one 8-byte block more.
            let cut = (datagram.len() / 2).max(24) / 8 * 8;
            (datagram[..cut.min(datagram.len())].to_vec(), true)
        }
        Some((offset, _)) => {
            let at = offset as usize * 8;
            let rest = datagram.get(at..).unwrap_or(&[]).to_vec();
            (
                if rest.is_empty() {
                    vec![0xab; 16]
                } else {
                    rest
                },
                false,
            )
        }
    };
    let mut ip = Ipv4Header::new(
        payload.len() as u16,
        v4.ttl,
        IpNumber(spec.l4.proto()),
        v4.src.octets(),
        v4.dst.octets(),
    )
    .expect("ipv4 header");
    ip.options = Ipv4Options::try_from(v4.options.as_slice()).expect("ip options");
    ip.identification = v4.id;
    ip.dont_fragment = v4.df;
    if let Some((offset, more)) = v4.fragment {
        ip.fragment_offset = offset.try_into().expect("fragment offset");
        ip.more_fragments = more;
    }
    ip.total_len = (ip.header_len() + payload.len()) as u16;
    ip.header_checksum = ip.calc_header_checksum();
    ip.write(&mut out).expect("write ip");
    let l4 = out.len();
    out.extend_from_slice(&payload);
    out.truncate(MAX_LEN);
    (
        out,
        Layout {
            l3,
            l4,
            proto: spec.l4.proto(),
            has_l4,
        },
    )
}

/// The IP header and first 8 bytes of L4 of a packet `src` -> `dst`, as an ICMP error
/// quotes it (RFC 792), built from a real packet so its checksums are right.
pub fn quote(proto: u8, src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let l4 = match proto {
        proto::TCP => L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags,
            options: Vec::new(),
            payload: Vec::new(),
        },
        _ => L4::Udp {
            sport: src.port(),
            dport: dst.port(),
            payload: b"quoted".to_vec(),
            no_checksum: false,
        },
    };
    let spec = Spec {
        dst_mac: [0; 6],
        src_mac: [0; 6],
        vlan: None,
        ip: Ip::V4(V4 {
            src: *src.ip(),
            dst: *dst.ip(),
            ttl: 63,
            id: 0x4242,
            df: true,
            fragment: None,
            options: Vec::new(),
        }),
        l4,
    };
    let (bytes, layout) = build(&spec);
    bytes[layout.l3..(layout.l4 + 8).min(bytes.len())].to_vec()
}

/// TCP flag combinations: the ones stacks send, and nonsense.
pub fn tcp_flags(rng: &mut Rng) -> u8 {
    const COMMON: [u8; 12] = [
        0x02, // SYN
        0x12, // SYN ACK
        0x10, // ACK
        0x18, // PSH ACK
        0x11, // FIN ACK
        0x04, // RST
        0x14, // RST ACK
        0x01, // FIN
        0x00, // none
        0x03, // SYN FIN
        0x06, // SYN RST
        0xff, // everything
    ];
    if rng.chance(80) {
        *rng.pick(&COMMON)
    } else {
        rng.u8()
    }
}

/// TCP option layouts: none, the ones the datapath reads the timestamp from, and others.
pub fn tcp_options(rng: &mut Rng, flags: u8) -> Vec<u8> {
    let ts = rng.u32().to_be_bytes();
    match rng.below(6) {
        0 | 1 => Vec::new(),
        2 if flags & 0x12 == 0x02 => {
            // Linux's SYN: MSS, SACK_OK, TS, NOP, WSCALE.
            let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
            o.extend_from_slice(&ts);
            o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
            o
        }
        2 | 3 => {
            let mut o = vec![1, 1, 8, 10];
            o.extend_from_slice(&ts);
            o.extend_from_slice(&[0, 0, 0, 1]);
            o
        }
        4 => {
            let mut o = vec![8, 10];
            o.extend_from_slice(&ts);
            o.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
            o
        }
        _ => {
            let n = rng.range(1, 10) * 4;
            rng.bytes(n)
        }
    }
}

/// IP options: padding, record-route, timestamps, garbage.
pub fn ip_options(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => vec![1, 1, 1, 0],
        1 => vec![7, 7, 4, 0, 0, 0, 0, 0],
        2 => vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        _ => {
            let n = rng.range(1, 10) * 4;
            rng.bytes(n)
        }
    }
}

/// A payload: mostly small, sometimes larger than the 1500-byte MTU of the test node's
/// interfaces (the frag-needed and pass-mtu paths).
pub fn payload(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(10) {
        0..=5 => rng.below(64),
        6..=7 => rng.below(600),
        _ => rng.range(1400, 2200),
    };
    rng.bytes(n)
}

/// The mutations, each aimed at a field the datapath reads; the IP checksum is fixed up
/// afterwards half of the time, so a mutation also reaches the code behind a valid header.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, layout: &Layout) {
    let l3 = layout.l3;
    let rounds = rng.range(1, 3);
    let mut header_touched = false;
    for _ in 0..rounds {
        if bytes.len() <= l3 + 20 {
            break;
        }
        match rng.below(16) {
            // Version and IHL.
            0 => {
                bytes[l3] = (bytes[l3] & 0x0f) | (rng.below(16) as u8) << 4;
                header_touched = true;
            }
            1 => {
                bytes[l3] = (bytes[l3] & 0xf0) | rng.below(16) as u8;
                header_touched = true;
            }
            // Total length: zero, below the header, short, long, maximal.
            2 => {
                let len = u16::from_be_bytes([bytes[l3 + 2], bytes[l3 + 3]]);
                let new = match rng.below(6) {
                    0 => 0,
                    1 => rng.below(20) as u16,
                    2 => len.saturating_sub(rng.range(1, 40) as u16),
                    3 => len.saturating_add(rng.range(1, 400) as u16),
                    4 => 0xffff,
                    _ => rng.u16(),
                };
                bytes[l3 + 2..l3 + 4].copy_from_slice(&new.to_be_bytes());
                header_touched = true;
            }
            // Fragment bits and offset.
            3 => {
                let v = match rng.below(4) {
                    0 => 0x2000,                   // MF
                    1 => rng.range(1, 200) as u16, // an offset
                    2 => 0x4000,                   // DF
                    _ => rng.u16(),
                };
                bytes[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
                header_touched = true;
            }
            // TTL, protocol.
            4 => {
                bytes[l3 + 8] = *rng.pick(&[0, 1, 2, 255]);
                header_touched = true;
            }
            5 => {
                bytes[l3 + 9] = *rng.pick(&[1, 6, 17, 0, 47, 132, 255]);
                header_touched = true;
            }
            // A bad IP checksum.
            6 => {
                bytes[l3 + 10] ^= rng.u8() | 1;
                return;
            }
            // A bad L4 checksum, or one that holds only the pseudo-header sum (what a
            // CHECKSUM_PARTIAL sender leaves there).
            7 => {
                if let Some(at) = layout.l4_csum().filter(|at| at + 2 <= bytes.len()) {
                    if rng.chance(50) {
                        bytes[at] ^= rng.u8() | 1;
                    } else {
                        let seed = pseudo_sum(bytes, layout);
                        bytes[at..at + 2].copy_from_slice(&seed.to_be_bytes());
                    }
                }
            }
            // UDP length, TCP data offset.
            8 => {
                if layout.has_l4 && layout.l4 + 14 <= bytes.len() {
                    match layout.proto {
                        proto::UDP => {
                            let v = rng.u16();
                            bytes[layout.l4 + 4..layout.l4 + 6].copy_from_slice(&v.to_be_bytes());
                        }
                        proto::TCP => bytes[layout.l4 + 12] = rng.u8(),
                        _ => bytes[layout.l4] = rng.u8(),
                    }
                }
            }
            // Bit flips and random bytes anywhere.
            9 | 10 => {
                for _ in 0..rng.range(1, 4) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                header_touched = true;
            }
            11 => {
                let at = rng.below(bytes.len());
                bytes[at] = rng.u8();
                header_touched = true;
            }
            // Trailing garbage past the IP length.
            12 => {
                let extra = rng.range(1, 64);
                bytes.extend(rng.bytes(extra));
            }
            // The ethertype.
            13 => {
                let t = *rng.pick(&[0x86dd_u16, 0x0806, ETH_P_8021Q, 0x88a8, 0x0000]);
                bytes[l3 - 2..l3].copy_from_slice(&t.to_be_bytes());
            }
            // Truncation, anywhere from the Ethernet header on.
            _ => {
                let len = rng.range(MIN_LEN, bytes.len());
                bytes.truncate(len);
                return;
            }
        }
    }
    if header_touched && rng.chance(50) {
        fix_ip_checksum(bytes, l3);
    }
}

/// Recomputes the IPv4 header checksum over the header the IHL gives, if it is there.
pub fn fix_ip_checksum(bytes: &mut [u8], l3: usize) {
    let ihl = (bytes[l3] & 0x0f) as usize * 4;
    if ihl < 20 || l3 + ihl > bytes.len() {
        return;
    }
    bytes[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(&bytes[l3..l3 + ihl]);
    bytes[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

/// The folded pseudo-header sum of an IPv4 packet, as a CHECKSUM_PARTIAL sender leaves it
/// in the L4 checksum field.
pub fn pseudo_sum(bytes: &[u8], layout: &Layout) -> u16 {
    let l3 = layout.l3;
    let tot = u16::from_be_bytes([bytes[l3 + 2], bytes[l3 + 3]]) as usize;
    let l4_len = tot.saturating_sub(layout.l4 - l3) as u16;
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&bytes[l3 + 12..l3 + 20]);
    pseudo[9] = layout.proto;
    pseudo[10..].copy_from_slice(&l4_len.to_be_bytes());
    checksum::fold(checksum::sum_be(&pseudo, 0))
}
