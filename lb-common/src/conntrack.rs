//! Connection tracking: keys, entries, the TCP state machine and its timeouts.
//!
//! A translated flow has two entries in one LRU map:
//! - `FORWARD`, keyed by the client's tuple (client -> service address), holds the chosen
//!   backend and the flow's state. Both directions update it.
//! - `REPLY`, keyed by the tuple replies carry (backend -> client), holds the service address
//!   to restore as the reply's source.
//!
//! The state is a pure function of the flags seen so far, so it lives here and is tested on
//! the host; the datapath only ORs in flags and stamps `last_seen_ns`.

use crate::user_pod;

/// Flow tuple as a packet carries it. 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`dir`] of the entry.
    pub dir: u8,
    pub _pad: [u8; 2],
}

pub mod dir {
    pub const FORWARD: u8 = 0;
    pub const REPLY: u8 = 1;
}

impl CtKey {
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            dir,
            _pad: [0; 2],
        }
    }

    /// The forward key of the flow a reply entry belongs to: the reply's destination is the
    /// client (or, for a masqueraded flow, the address the entry keeps for the client), and
    /// the entry remembers the service address the client used.
    pub const fn forward_of_reply(&self, entry: &CtEntry) -> Self {
        let (client, client_port) = if entry.flags & ct_flags::SNAT != 0 {
            (entry.snat_addr, entry.snat_port)
        } else {
            (self.daddr, self.dport)
        };
        Self::new(
            client,
            entry.nat_addr,
            client_port,
            entry.nat_port,
            self.proto,
            dir::FORWARD,
        )
    }
}

/// A conntrack entry. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the flow was first seen.
    pub created_ns: u64,
    /// Forward: bpf_ktime_get_ns() of the latest packet in either direction, restamped once
    /// it is a second stale (not on every packet). Reply: when the reply direction last
    /// passed its news on to the forward entry.
    pub last_seen_ns: u64,
    /// Forward: the backend address. Reply: the service address. Network byte order.
    pub nat_addr: u32,
    /// Forward: the backend port. Reply: the service port. Network byte order.
    pub nat_port: u16,
    /// [`seen`] bits. Reply entries: the bits already passed on to the forward entry.
    pub seen: u8,
    /// [`ct_flags`] bits.
    pub flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// With [`ct_flags::SNAT`]. Forward: the source address the packet gets (the node's).
    /// Reply: the client's own address, restored as the reply's destination. Network order.
    pub snat_addr: u32,
    /// With [`ct_flags::SNAT`]: the source port to write (forward) or restore (reply).
    pub snat_port: u16,
    pub _pad: [u8; 2],
}

/// What a flow's translation involves besides DNAT.
pub mod ct_flags {
    /// The source is translated too (masquerade: external traffic under
    /// externalTrafficPolicy=Cluster, off-cluster clients of a ClusterIP, hairpin).
    pub const SNAT: u8 = 1 << 0;
    /// The flow entered the node from its uplink (north-south) rather than from a pod.
    pub const NORTH_SOUTH: u8 = 1 << 1;
    /// The client reached its own pod through the service (hairpin).
    pub const HAIRPIN: u8 = 1 << 2;

    /// Names of the set bits, for display.
    pub fn names(flags: u8) -> impl Iterator<Item = &'static str> {
        [
            (SNAT, "snat"),
            (NORTH_SOUTH, "north-south"),
            (HAIRPIN, "hairpin"),
        ]
        .into_iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
    }
}

/// Source ports the datapath gives masqueraded flows: above Linux's default ephemeral range
/// (32768..=60999, the node's own connections) and the NodePort range (30000..=32767), so a
/// masqueraded flow never collides with either. Per backend address and port, so 4535
/// concurrent masqueraded flows per backend.
pub mod snat_ports {
    pub const MIN: u16 = 61_000;
    pub const MAX: u16 = 65_535;
    /// Candidate ports tried before a new flow is refused.
    pub const TRIES: u32 = 8;
}

/// What a flow has shown so far. The state follows from these bits.
pub mod seen {
    /// A packet went from the backend back to the client.
    pub const REPLY: u8 = 1 << 0;
    /// The client sent a FIN.
    pub const FIN_FORWARD: u8 = 1 << 1;
    /// The backend sent a FIN.
    pub const FIN_REPLY: u8 = 1 << 2;
    /// Either side sent a RST.
    pub const RST: u8 = 1 << 3;
    /// The client sent a bare SYN: the connection was opened through this entry, not
    /// picked up mid-stream. A SYN-ACK is translated only on a flow that shows it.
    pub const SYN: u8 = 1 << 4;
}

/// TCP header flag bits, as in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Conntrack state, derived from [`seen`] bits and the protocol.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// TCP: the client sent SYN, no reply yet.
    SynSent = 1,
    /// TCP: both sides have spoken.
    Established = 2,
    /// TCP: one side sent FIN; the other may still send for a long time (CLOSE_WAIT).
    HalfClosed = 3,
    /// TCP: both sides sent FIN.
    Closing = 4,
    /// TCP: a RST was seen.
    Reset = 5,
    /// UDP (any non-TCP): no handshake, one idle timeout.
    Udp = 6,
}

/// Timeouts, in seconds. Kubernetes' expectations (service-proxy-behaviour.md) with the
/// peers' values where Kubernetes sets none:
/// - SYN 60 s (Cilium): a client that never hears back stops holding a slot within a minute.
/// - Established 86400 s: kube-proxy sets nf_conntrack_tcp_timeout_established to a day.
/// - Half-closed 3600 s: kube-proxy's CLOSE_WAIT timeout; one side can keep sending.
/// - Closing and reset 10 s (Cilium's close timeout): late segments still translate.
/// - UDP 60 s (Cilium and Calico).
pub mod timeout {
    pub const SYN_SENT_S: u64 = 60;
    pub const ESTABLISHED_S: u64 = 86_400;
    pub const HALF_CLOSED_S: u64 = 3_600;
    pub const CLOSING_S: u64 = 10;
    pub const RESET_S: u64 = 10;
    pub const UDP_S: u64 = 60;
}

const NS_PER_S: u64 = 1_000_000_000;

impl CtState {
    /// The state of a flow of protocol `proto` that has shown `seen`.
    #[inline(always)]
    pub const fn from_seen(proto: u8, seen: u8) -> Self {
        if proto != crate::proto::TCP {
            CtState::Udp
        } else if seen & seen::RST != 0 {
            CtState::Reset
        } else if seen & seen::FIN_FORWARD != 0 && seen & seen::FIN_REPLY != 0 {
            CtState::Closing
        } else if seen & (seen::FIN_FORWARD | seen::FIN_REPLY) != 0 {
            CtState::HalfClosed
        } else if seen & seen::REPLY != 0 || seen & seen::SYN == 0 {
            // A flow picked up mid-stream (first packet not a SYN, e.g. after the entry was
            // evicted) is treated as established, as netfilter's tcp_loose does.
            CtState::Established
        } else {
            CtState::SynSent
        }
    }

    #[inline(always)]
    pub const fn timeout_ns(self) -> u64 {
        let s = match self {
            CtState::SynSent => timeout::SYN_SENT_S,
            CtState::Established => timeout::ESTABLISHED_S,
            CtState::HalfClosed => timeout::HALF_CLOSED_S,
            CtState::Closing => timeout::CLOSING_S,
            CtState::Reset => timeout::RESET_S,
            CtState::Udp => timeout::UDP_S,
        };
        s * NS_PER_S
    }

    pub const fn name(self) -> &'static str {
        match self {
            CtState::SynSent => "SYN_SENT",
            CtState::Established => "ESTABLISHED",
            CtState::HalfClosed => "HALF_CLOSED",
            CtState::Closing => "CLOSING",
            CtState::Reset => "RESET",
            CtState::Udp => "UDP",
        }
    }
}

/// The [`seen`] bits a TCP packet with header flags `flags` adds, in direction `dir`.
#[inline(always)]
pub const fn seen_bits(flags: u8, dir: u8) -> u8 {
    let mut bits = 0;
    if flags & tcp_flags::RST != 0 {
        bits |= seen::RST;
    }
    if flags & tcp_flags::FIN != 0 {
        bits |= if dir == dir::FORWARD {
            seen::FIN_FORWARD
        } else {
            seen::FIN_REPLY
        };
    }
    if dir == dir::REPLY {
        bits |= seen::REPLY;
    } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
        // Also when a SYN reuses a live entry picked up mid-stream: the backend's SYN-ACK
        // will answer it, and `awaits_syn_ack` asks for this bit.
        bits |= seen::SYN;
    }
    bits
}

/// Which conntrack directions a packet can belong to, from its TCP flags alone. A bare SYN
/// opens a connection, so it is never a reply; a SYN-ACK answers one, so it is never the
/// opener's (forward) direction. Every other packet may be either.
///
/// Why it matters: a new flow's tuple hashes to conntrack buckets no packet has touched
/// yet, and on the real path each of those lookups is a cache (and TLB) miss; skipping the
/// lookup that cannot match saves one per program on both handshake packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directions {
    pub forward: bool,
    pub reply: bool,
}

#[inline(always)]
pub const fn directions(proto: u8, flags: u8) -> Directions {
    let syn = proto == crate::proto::TCP && flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    Directions {
        forward: !syn || !ack,
        reply: !syn || ack,
    }
}

/// True when a new connection reuses the tuple of a finished one (a fresh SYN after FIN or
/// RST): the old entry must not steer it, so a backend is chosen anew.
#[inline(always)]
pub const fn is_reopen(proto: u8, seen: u8, flags: u8) -> bool {
    proto == crate::proto::TCP
        && flags & tcp_flags::SYN != 0
        && flags & tcp_flags::ACK == 0
        && seen & (seen::RST | seen::FIN_FORWARD | seen::FIN_REPLY) != 0
}

/// True for a TCP SYN-ACK: a reply that (re)opens a connection.
#[inline(always)]
pub const fn is_syn_ack(proto: u8, flags: u8) -> bool {
    proto == crate::proto::TCP && flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK != 0
}

/// True when a flow whose forward entry has shown `seen` may be answered by a SYN-ACK: the
/// client opened it with a SYN through this entry and neither side has finished it.
///
/// Why it matters: a reply entry outlives its flow (until LRU eviction), and a later,
/// unrelated connection can carry its tuple, e.g. the same client connecting to the backend
/// directly from a reused source port. That connection's SYN never went through the
/// service's forward entry, so a SYN-ACK checked against it is refused instead of being
/// rewritten to come from the service (which would make the client's connect fail).
#[inline(always)]
pub const fn awaits_syn_ack(seen: u8) -> bool {
    seen & seen::SYN != 0 && seen & (seen::RST | seen::FIN_FORWARD | seen::FIN_REPLY) == 0
}

impl CtEntry {
    #[inline(always)]
    pub const fn state(&self, proto: u8) -> CtState {
        CtState::from_seen(proto, self.seen)
    }

    /// True when the flow has been idle longer than its state allows at `now_ns`.
    #[inline(always)]
    pub const fn is_expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.state(proto).timeout_ns()
    }
}

user_pod!(CtKey, CtEntry);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TCP, UDP};
    use core::mem::{offset_of, size_of};

    #[test]
    fn key_and_entry_layouts_are_fixed() {
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, sport), 8);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(size_of::<CtEntry>(), 40);
        assert_eq!(offset_of!(CtEntry, nat_addr), 16);
        assert_eq!(offset_of!(CtEntry, flags), 23);
        assert_eq!(offset_of!(CtEntry, service_id), 24);
        assert_eq!(offset_of!(CtEntry, snat_addr), 32);
        assert_eq!(offset_of!(CtEntry, snat_port), 36);
    }

    #[test]
    fn tcp_handshake_moves_from_syn_sent_to_established() {
        let mut s = seen::SYN;
        assert_eq!(CtState::from_seen(TCP, s), CtState::SynSent);
        s |= seen_bits(tcp_flags::SYN | tcp_flags::ACK, dir::REPLY);
        assert_eq!(CtState::from_seen(TCP, s), CtState::Established);
    }

    #[test]
    fn one_fin_half_closes_and_two_close() {
        let mut s = seen::SYN | seen::REPLY;
        s |= seen_bits(tcp_flags::FIN | tcp_flags::ACK, dir::FORWARD);
        assert_eq!(CtState::from_seen(TCP, s), CtState::HalfClosed);
        s |= seen_bits(tcp_flags::FIN | tcp_flags::ACK, dir::REPLY);
        assert_eq!(CtState::from_seen(TCP, s), CtState::Closing);
    }

    #[test]
    fn rst_from_either_side_resets() {
        for d in [dir::FORWARD, dir::REPLY] {
            let s = seen::SYN | seen::REPLY | seen_bits(tcp_flags::RST, d);
            assert_eq!(CtState::from_seen(TCP, s), CtState::Reset);
        }
    }

    #[test]
    fn mid_stream_pickup_counts_as_established() {
        assert_eq!(CtState::from_seen(TCP, 0), CtState::Established);
    }

    #[test]
    fn udp_has_one_state_whatever_was_seen() {
        assert_eq!(CtState::from_seen(UDP, 0), CtState::Udp);
        assert_eq!(
            CtState::from_seen(UDP, seen::REPLY | seen::RST),
            CtState::Udp
        );
    }

    #[test]
    fn timeouts_follow_kube_proxy_and_peers() {
        assert_eq!(CtState::SynSent.timeout_ns(), 60 * NS_PER_S);
        assert_eq!(CtState::Established.timeout_ns(), 86_400 * NS_PER_S);
        assert_eq!(CtState::HalfClosed.timeout_ns(), 3_600 * NS_PER_S);
        assert_eq!(CtState::Closing.timeout_ns(), 10 * NS_PER_S);
        assert_eq!(CtState::Udp.timeout_ns(), 60 * NS_PER_S);
    }

    #[test]
    fn expiry_uses_the_current_state_timeout() {
        let e = CtEntry {
            last_seen_ns: 100 * NS_PER_S,
            seen: seen::SYN,
            ..Default::default()
        };
        assert!(!e.is_expired(TCP, 160 * NS_PER_S));
        assert!(e.is_expired(TCP, 161 * NS_PER_S));
        // A clock read before last_seen (another CPU stamped later) is not expiry.
        assert!(!e.is_expired(TCP, 50 * NS_PER_S));
    }

    #[test]
    fn handshake_packets_belong_to_one_direction_only() {
        let syn = tcp_flags::SYN;
        let ack = tcp_flags::ACK;
        let both = Directions {
            forward: true,
            reply: true,
        };
        assert_eq!(
            directions(TCP, syn),
            Directions {
                forward: true,
                reply: false
            }
        );
        assert_eq!(
            directions(TCP, syn | ack),
            Directions {
                forward: false,
                reply: true
            }
        );
        assert_eq!(directions(TCP, ack), both);
        assert_eq!(directions(TCP, tcp_flags::FIN | ack), both);
        assert_eq!(directions(TCP, tcp_flags::RST), both);
        // Only TCP has a handshake; flags parsed from elsewhere must not matter.
        assert_eq!(directions(UDP, syn), both);
        assert_eq!(directions(UDP, syn | ack), both);
    }

    #[test]
    fn a_new_syn_reopens_only_finished_flows() {
        let syn = tcp_flags::SYN;
        assert!(is_reopen(TCP, seen::SYN | seen::RST, syn));
        assert!(is_reopen(TCP, seen::SYN | seen::FIN_FORWARD, syn));
        assert!(!is_reopen(TCP, seen::SYN | seen::REPLY, syn));
        assert!(!is_reopen(TCP, seen::RST, syn | tcp_flags::ACK));
        assert!(!is_reopen(UDP, seen::RST, syn));
    }

    #[test]
    fn a_bare_syn_marks_the_flow_opened_in_the_forward_direction_only() {
        assert_eq!(seen_bits(tcp_flags::SYN, dir::FORWARD), seen::SYN);
        assert_eq!(seen_bits(tcp_flags::SYN | tcp_flags::ACK, dir::FORWARD), 0);
        assert_eq!(
            seen_bits(tcp_flags::SYN | tcp_flags::ACK, dir::REPLY),
            seen::REPLY
        );
        // A mid-stream entry a client opens anew waits for the answer again.
        assert_eq!(
            CtState::from_seen(TCP, seen_bits(tcp_flags::SYN, dir::FORWARD)),
            CtState::SynSent
        );
    }

    #[test]
    fn a_syn_ack_answers_only_an_opened_unfinished_flow() {
        let synack = tcp_flags::SYN | tcp_flags::ACK;
        assert!(is_syn_ack(TCP, synack));
        assert!(!is_syn_ack(TCP, tcp_flags::SYN));
        assert!(!is_syn_ack(TCP, tcp_flags::ACK));
        assert!(!is_syn_ack(UDP, synack));

        assert!(awaits_syn_ack(seen::SYN));
        // A retransmitted SYN-ACK (the client's ACK was lost) still belongs to the flow.
        assert!(awaits_syn_ack(seen::SYN | seen::REPLY));
        // Finished: a SYN-ACK now answers another connection on the same tuple.
        for end in [seen::RST, seen::FIN_FORWARD, seen::FIN_REPLY] {
            assert!(!awaits_syn_ack(seen::SYN | seen::REPLY | end), "{end:#x}");
        }
        // Picked up mid-stream and never sent a SYN: the SYN-ACK answers someone else.
        assert!(!awaits_syn_ack(seen::REPLY));
        assert!(!awaits_syn_ack(0));
    }

    #[test]
    fn forward_key_is_recovered_from_a_reply_entry() {
        let reply = CtKey::new(
            0x0a_f4_02_03,
            0x0a_f4_01_02,
            0x901f,
            0x3930,
            TCP,
            dir::REPLY,
        );
        let entry = CtEntry {
            nat_addr: 0x0a_60_00_0a,
            nat_port: 0x5000,
            ..Default::default()
        };
        let fwd = reply.forward_of_reply(&entry);
        assert_eq!(
            fwd,
            CtKey::new(
                0x0a_f4_01_02,
                0x0a_60_00_0a,
                0x3930,
                0x5000,
                TCP,
                dir::FORWARD
            )
        );
    }

    #[test]
    fn forward_key_of_a_masqueraded_flow_names_the_original_client() {
        // Reply backend 10.244.2.3:8080 -> node 172.18.0.2:61000; the client was
        // 172.18.0.1:40000 talking to 10.96.0.10:80.
        let reply = CtKey::new(0x0302_f40a, 0x0200_12ac, 0x901f, 0x48ee, TCP, dir::REPLY);
        let entry = CtEntry {
            nat_addr: 0x0a00_600a,
            nat_port: 0x5000,
            flags: ct_flags::SNAT,
            snat_addr: 0x0100_12ac,
            snat_port: 0x409c,
            ..Default::default()
        };
        assert_eq!(
            reply.forward_of_reply(&entry),
            CtKey::new(0x0100_12ac, 0x0a00_600a, 0x409c, 0x5000, TCP, dir::FORWARD)
        );
    }

    #[test]
    fn snat_ports_stay_clear_of_ephemeral_and_node_ports() {
        const { assert!(snat_ports::MIN > 60_999 && snat_ports::MIN > 32_767) };
        assert_eq!(
            ct_flags::names(ct_flags::SNAT | ct_flags::HAIRPIN).collect::<std::vec::Vec<_>>(),
            ["snat", "hairpin"]
        );
    }
}
