//! Building test packets and checking what the datapath made of them, with etherparse: an
//! independent implementation of the headers and checksums.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv4Options, TcpHeader, UdpHeader,
};
use lb_common::{conntrack::tcp_flags, proto};

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A TCP or UDP packet to build.
#[derive(Clone, Debug)]
pub struct PacketSpec {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// IPv4 option bytes (a multiple of 4), to exercise IHL > 5.
    pub ip_options: Vec<u8>,
    /// Send UDP with checksum 0 ("no checksum").
    pub udp_no_checksum: bool,
    /// Fragment offset in 8-byte units and the more-fragments bit.
    pub fragment: Option<(u16, bool)>,
    pub ttl: u8,
    /// Don't Fragment; by default set unless the packet is a fragment.
    pub dont_fragment: Option<bool>,
    /// TCP: a timestamp option with this TSval, laid out as Linux does (`MSS SACK_OK TS
    /// NOP WSCALE` on a SYN, `NOP NOP TS` otherwise).
    pub tsval: Option<u32>,
}

pub fn sock(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

impl PacketSpec {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            src,
            dst,
            proto: proto::TCP,
            tcp_flags: flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            udp_no_checksum: false,
            fragment: None,
            ttl: 64,
            dont_fragment: None,
            tsval: None,
        }
    }

    /// With a TCP timestamp option carrying `tsval`.
    pub fn tsval(mut self, tsval: u32) -> Self {
        self.tsval = Some(tsval);
        self
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            proto: proto::UDP,
            tcp_flags: 0,
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The packet the other side would send back.
    pub fn reply(&self, flags: u8) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            tcp_flags: flags,
            ..self.clone()
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if self.proto == proto::TCP {
            let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), 1000, 64240);
            tcp.syn = self.tcp_flags & tcp_flags::SYN != 0;
            tcp.ack = self.tcp_flags & tcp_flags::ACK != 0;
            tcp.fin = self.tcp_flags & tcp_flags::FIN != 0;
            tcp.rst = self.tcp_flags & tcp_flags::RST != 0;
            if tcp.ack {
                tcp.acknowledgment_number = 5000;
            }
            if let Some(ts) = self.tsval {
                use etherparse::TcpOptionElement::*;
                let options: &[_] = if tcp.syn && !tcp.ack {
                    &[
                        MaximumSegmentSize(1460),
                        SelectiveAcknowledgementPermitted,
                        Timestamp(ts, 0),
                        Noop,
                        WindowScale(7),
                    ]
                } else {
                    &[Noop, Noop, Timestamp(ts, 77)]
                };
                tcp.set_options(options).expect("tcp options");
            }
            tcp.checksum = tcp
                .calc_checksum_ipv4_raw(
                    self.src.ip().octets(),
                    self.dst.ip().octets(),
                    &self.payload,
                )
                .expect("tcp checksum");
            tcp.write(&mut l4).expect("write tcp");
        } else {
            let mut udp = UdpHeader::without_ipv4_checksum(
                self.src.port(),
                self.dst.port(),
                self.payload.len(),
            )
            .expect("udp header");
            if !self.udp_no_checksum {
                udp.checksum = udp
                    .calc_checksum_ipv4_raw(
                        self.src.ip().octets(),
                        self.dst.ip().octets(),
                        &self.payload,
                    )
                    .expect("udp checksum");
            }
            udp.write(&mut l4).expect("write udp");
        }
        l4.extend_from_slice(&self.payload);

        let mut ip = Ipv4Header::new(
            l4.len() as u16,
            self.ttl,
            IpNumber(self.proto),
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .expect("ipv4 header");
        ip.options = Ipv4Options::try_from(self.ip_options.as_slice()).expect("ip options");
        ip.identification = 0x1234;
        ip.dont_fragment = self.dont_fragment.unwrap_or(self.fragment.is_none());
        if let Some((offset, more)) = self.fragment {
            ip.fragment_offset = offset.try_into().expect("fragment offset");
            ip.more_fragments = more;
        }
        ip.total_len = (ip.header_len() + l4.len()) as u16;
        ip.header_checksum = ip.calc_header_checksum();

        let mut out = Vec::new();
        Ethernet2Header {
            source: POD_MAC,
            destination: NODE_MAC,
            ether_type: EtherType::IPV4,
        }
        .write(&mut out)
        .expect("write eth");
        ip.write(&mut out).expect("write ip");
        out.extend_from_slice(&l4);
        out
    }
}

/// A packet that parsed and whose IPv4 and L4 checksums verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub payload: Vec<u8>,
    /// The UDP checksum field as sent (0 = none).
    pub udp_checksum: Option<u16>,
}

/// Parses `bytes` and verifies the IPv4 header checksum and the TCP/UDP checksum against a
/// full recomputation. Panics with a description of the first thing that is wrong.
pub fn check(bytes: &[u8]) -> Checked {
    verify(bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`check`], returning what is wrong instead of panicking (for the fuzzer, whose packets
/// may be anything).
pub fn verify(bytes: &[u8]) -> Result<Checked, String> {
    let (eth, rest) =
        Ethernet2Header::from_slice(bytes).map_err(|e| format!("ethernet header: {e}"))?;
    if eth.ether_type != EtherType::IPV4 {
        return Err(format!("ethertype {:?}", eth.ether_type));
    }
    let (ip, rest) = Ipv4Header::from_slice(rest).map_err(|e| format!("ipv4 header: {e}"))?;
    if ip.header_checksum != ip.calc_header_checksum() {
        return Err("IPv4 header checksum is wrong".into());
    }
    let l4_len = (ip.total_len as usize)
        .checked_sub(ip.header_len())
        .filter(|n| *n <= rest.len())
        .ok_or("IPv4 total length does not fit the packet")?;
    let rest = &rest[..l4_len];
    let (src_ip, dst_ip) = (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination));
    match ip.protocol.0 {
        proto::TCP => {
            let (tcp, payload) =
                TcpHeader::from_slice(rest).map_err(|e| format!("tcp header: {e}"))?;
            let expect = tcp
                .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                .map_err(|e| format!("tcp checksum: {e}"))?;
            if tcp.checksum != expect {
                return Err("TCP checksum is wrong".into());
            }
            Ok(Checked {
                src: SocketAddrV4::new(src_ip, tcp.source_port),
                dst: SocketAddrV4::new(dst_ip, tcp.destination_port),
                proto: proto::TCP,
                payload: payload.to_vec(),
                udp_checksum: None,
            })
        }
        proto::UDP => {
            let (udp, payload) =
                UdpHeader::from_slice(rest).map_err(|e| format!("udp header: {e}"))?;
            if udp.checksum != 0 {
                let expect = udp
                    .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                    .map_err(|e| format!("udp checksum: {e}"))?;
                if udp.checksum != expect {
                    return Err("UDP checksum is wrong".into());
                }
            }
            Ok(Checked {
                src: SocketAddrV4::new(src_ip, udp.source_port),
                dst: SocketAddrV4::new(dst_ip, udp.destination_port),
                proto: proto::UDP,
                payload: payload.to_vec(),
                udp_checksum: Some(udp.checksum),
            })
        }
        other => Err(format!("unexpected IP protocol {other}")),
    }
}

/// The packet's TTL.
pub fn ttl(bytes: &[u8]) -> u8 {
    bytes[14 + 8]
}

/// Splits `frame` (Ethernet + IPv4 without options + L4 datagram) into IPv4 fragments whose
/// payloads are `first` bytes (a multiple of 8) and then the rest, as a router would; each
/// fragment gets its own valid IP checksum.
pub fn fragments(frame: &[u8], first: usize) -> Vec<Vec<u8>> {
    assert_eq!(first % 8, 0, "fragment payloads are multiples of 8 bytes");
    let (eth, ip_and_more) = frame.split_at(14);
    let (ip, rest) = Ipv4Header::from_slice(ip_and_more).expect("ipv4 header");
    let datagram = &rest[..ip.total_len as usize - ip.header_len()];
    let mut out = Vec::new();
    for (i, piece) in [&datagram[..first], &datagram[first..]].iter().enumerate() {
        let mut h = ip.clone();
        h.dont_fragment = false;
        h.more_fragments = i == 0;
        h.fragment_offset = ((i * first / 8) as u16).try_into().expect("offset");
        h.total_len = (h.header_len() + piece.len()) as u16;
        h.header_checksum = h.calc_header_checksum();
        let mut f = eth.to_vec();
        h.write(&mut f).expect("write ip");
        f.extend_from_slice(piece);
        out.push(f);
    }
    out
}

/// Reassembles the fragments [`fragments`] made (after the datapath rewrote them) into one
/// frame, checking that every fragment carries the same addresses and a valid IP checksum.
pub fn reassemble(pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut datagram = Vec::new();
    let mut header: Option<Ipv4Header> = None;
    for p in pieces {
        let (ip, rest) = Ipv4Header::from_slice(&p[14..]).expect("ipv4 header");
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "fragment IP checksum"
        );
        if let Some(h) = &header {
            assert_eq!(
                (h.source, h.destination),
                (ip.source, ip.destination),
                "fragments differ"
            );
        }
        datagram.extend_from_slice(&rest[..ip.total_len as usize - ip.header_len()]);
        header.get_or_insert(ip);
    }
    let mut h = header.expect("at least one fragment");
    h.more_fragments = false;
    h.fragment_offset = 0u16.try_into().expect("offset");
    h.total_len = (h.header_len() + datagram.len()) as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut f = pieces[0][..14].to_vec();
    h.write(&mut f).expect("write ip");
    f.extend_from_slice(&datagram);
    f
}

/// An ICMP message, as [`check_icmp`] found it.
pub struct Icmp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub kind: u8,
    pub code: u8,
    /// Bytes 4..8 of the ICMP header (the next-hop MTU of a fragmentation-needed).
    pub rest_of_header: [u8; 4],
    pub quoted: Vec<u8>,
}

/// Parses an ICMP message, checking the IP and ICMP checksums.
pub fn check_icmp(bytes: &[u8]) -> Icmp {
    let (ip, rest) = Ipv4Header::from_slice(&bytes[14..]).expect("ipv4 header");
    assert_eq!(ip.protocol.0, proto::ICMP);
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    let msg = &rest[..ip.total_len as usize - ip.header_len()];
    assert_eq!(lb_common::checksum::checksum(msg), 0, "ICMP checksum");
    Icmp {
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        kind: msg[0],
        code: msg[1],
        rest_of_header: msg[4..8].try_into().expect("4 bytes"),
        quoted: msg[8..].to_vec(),
    }
}

/// An Ethernet frame with an ICMP destination-unreachable (`code`, next-hop MTU `mtu`) from
/// `src` to `dst` quoting `quote`.
pub fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, code: u8, mtu: u16, quote: &[u8]) -> Vec<u8> {
    let mut msg = vec![3, code, 0, 0, 0, 0, 0, 0];
    msg[6..8].copy_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(quote);
    let sum = lb_common::checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = Ipv4Header::new(
        msg.len() as u16,
        64,
        IpNumber(proto::ICMP),
        src.octets(),
        dst.octets(),
    )
    .expect("ipv4 header");
    ip.header_checksum = ip.calc_header_checksum();
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    ip.write(&mut frame).expect("write ip");
    frame.extend_from_slice(&msg);
    frame
}

/// Asserts that `out` equals `input` except in the byte ranges listed (which the datapath
/// is allowed to rewrite).
pub fn assert_only_changed(input: &[u8], out: &[u8], allowed: &[std::ops::Range<usize>]) {
    assert_eq!(input.len(), out.len(), "packet length changed");
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !allowed.iter().any(|r| r.contains(&i)) {
            panic!("byte {i} changed from {a:#04x} to {b:#04x} outside the rewritten fields");
        }
    }
}
