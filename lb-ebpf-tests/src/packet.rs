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
        }
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
            64,
            IpNumber(self.proto),
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .expect("ipv4 header");
        ip.options = Ipv4Options::try_from(self.ip_options.as_slice()).expect("ip options");
        ip.identification = 0x1234;
        ip.dont_fragment = self.fragment.is_none();
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
    let (eth, rest) = Ethernet2Header::from_slice(bytes).expect("ethernet header");
    assert_eq!(eth.ether_type, EtherType::IPV4, "ethertype");
    let (ip, rest) = Ipv4Header::from_slice(rest).expect("ipv4 header");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum is wrong"
    );
    let l4_len = ip.total_len as usize - ip.header_len();
    let rest = &rest[..l4_len];
    let (src_ip, dst_ip) = (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination));
    match ip.protocol.0 {
        proto::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(rest).expect("tcp header");
            let expect = tcp
                .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                .expect("tcp checksum");
            assert_eq!(tcp.checksum, expect, "TCP checksum is wrong");
            Checked {
                src: SocketAddrV4::new(src_ip, tcp.source_port),
                dst: SocketAddrV4::new(dst_ip, tcp.destination_port),
                proto: proto::TCP,
                payload: payload.to_vec(),
                udp_checksum: None,
            }
        }
        proto::UDP => {
            let (udp, payload) = UdpHeader::from_slice(rest).expect("udp header");
            if udp.checksum != 0 {
                let expect = udp
                    .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                    .expect("udp checksum");
                assert_eq!(udp.checksum, expect, "UDP checksum is wrong");
            }
            Checked {
                src: SocketAddrV4::new(src_ip, udp.source_port),
                dst: SocketAddrV4::new(dst_ip, udp.destination_port),
                proto: proto::UDP,
                payload: payload.to_vec(),
                udp_checksum: Some(udp.checksum),
            }
        }
        other => panic!("unexpected IP protocol {other}"),
    }
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
