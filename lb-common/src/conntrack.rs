//! Connection tracking: keys, entries, the TCP state machine and its timeouts.
//!
//! A translated flow has two entries in its protocol's table (TCP flows in one, every other
//! protocol in another, so that a UDP flood cannot take the room of established TCP flows):
//! - `FORWARD`, keyed by the client's tuple (client -> service address), holds the chosen
//!   backend, the source translation if any, and the flow's state. Both directions update it.
//! - `REPLY`, keyed by the tuple replies carry (backend -> client, or backend -> the
//!   translated source), holds the service address to restore as the reply's source. It is
//!   also the claim on that tuple: no other flow may be translated onto it while it lives.
//!
//! A reply entry is alive exactly while its forward entry is alive and still maps onto it
//! ([`CtKey::reply_of_forward`]): the forward entry is the flow. Each entry carries all
//! that is needed to rebuild the other, so a lost half is repaired, never left alone.
//!
//! Keys and entries are generic over the address type ([`Ipv4`] is `u32`, [`Ipv6`] four
//! words), so each address family has tables of its own with one layout definition.
//!
//! The state is a pure function of the flags seen so far, so it lives here and is tested on
//! the host; the datapath only ORs in flags and stamps `last_seen_ns`.

use crate::user_pod;

/// An IPv4 address as the maps store it: the packet's bytes read as a native integer.
pub type Ipv4 = u32;
/// An IPv6 address as the maps store it: the packet's 16 bytes as four native words.
pub type Ipv6 = [u32; 4];

/// An IPv4 flow tuple (16 bytes) and entry (48 bytes).
pub type CtKey = CtKeyOf<Ipv4>;
pub type CtEntry = CtEntryOf<Ipv4>;
/// An IPv6 flow tuple (40 bytes) and entry (72 bytes).
pub type CtKey6 = CtKeyOf<Ipv6>;
pub type CtEntry6 = CtEntryOf<Ipv6>;

/// Flow tuple as a packet carries it, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
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

impl<A: Copy> CtKeyOf<A> {
    pub const fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8, dir: u8) -> Self {
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
    /// client (or, for a source-translated flow, the address the entry keeps for the
    /// client), and the entry remembers the service address the client used.
    pub const fn forward_of_reply(&self, entry: &CtEntryOf<A>) -> Self {
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

    /// The reply key of the flow a forward entry describes: from the backend to the
    /// client, or to the translated source when the flow is source-translated.
    pub const fn reply_of_forward(&self, entry: &CtEntryOf<A>) -> Self {
        let (to, to_port) = if entry.flags & ct_flags::SNAT != 0 {
            (entry.snat_addr, entry.snat_port)
        } else {
            (self.saddr, self.sport)
        };
        Self::new(
            entry.nat_addr,
            to,
            entry.nat_port,
            to_port,
            self.proto,
            dir::REPLY,
        )
    }
}

impl<A: Copy + PartialEq> CtKeyOf<A> {
    /// True when `forward` (this forward key's entry) is the flow that owns `reply`: a
    /// reply entry whose forward entry has moved on (a reopened tuple with another backend
    /// or source port) belongs to nobody.
    pub fn owns_reply(&self, forward: &CtEntryOf<A>, reply: &Self) -> bool {
        let want = self.reply_of_forward(forward);
        want.saddr == reply.saddr
            && want.daddr == reply.daddr
            && want.sport == reply.sport
            && want.dport == reply.dport
            && want.proto == reply.proto
            && reply.dir == dir::REPLY
    }

    /// The entry the reply direction of `forward` (this forward key's entry) needs: the
    /// service address to restore, and for a source-translated flow the client's own
    /// address and port. Used to create a flow and to rebuild a lost reply entry.
    pub fn reply_entry(&self, forward: &CtEntryOf<A>) -> CtEntryOf<A> {
        let mut reply = CtEntryOf {
            nat_addr: self.daddr,
            nat_port: self.dport,
            seen: 0,
            ..*forward
        };
        if forward.flags & ct_flags::SNAT != 0 {
            reply.snat_addr = self.saddr;
            reply.snat_port = self.sport;
        }
        reply
    }
}

/// A conntrack entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntryOf<A> {
    /// bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC) when the flow was first seen.
    pub created_ns: u64,
    /// Forward: the latest packet in either direction, restamped once it is a second stale
    /// and whenever the flow's state changes. Reply: when the reply direction last passed
    /// its news on to the forward entry.
    pub last_seen_ns: u64,
    /// Forward: the backend address. Reply: the service address. Network byte order.
    pub nat_addr: A,
    /// Forward: the backend port. Reply: the service port. Network byte order.
    pub nat_port: u16,
    /// [`seen`] bits. Reply entries: the bits already passed on to the forward entry.
    pub seen: u8,
    /// [`ct_flags`] bits.
    pub flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// With [`ct_flags::SNAT`]. Forward: the source address the packet gets (the node's
    /// when masqueraded, the client's own when only its port is remapped). Reply: the
    /// client's own address, restored as the reply's destination. Network order.
    pub snat_addr: A,
    /// With [`ct_flags::SNAT`]: the source port to write (forward) or restore (reply).
    pub snat_port: u16,
    pub _pad: [u8; 2],
    /// Forward, TCP: the TCP timestamp (TSval) of the client's FIN or RST, as the packet
    /// carries it; 0 if none was seen. Whoever takes the flow's tuple next must show a newer
    /// one, or the backend, whose TIME_WAIT remembers it, refuses the SYN (PAWS).
    pub client_tsval: u32,
    pub _pad2: [u8; 4],
}

/// What a flow's translation involves besides DNAT.
pub mod ct_flags {
    /// The source is translated too: masquerade (external traffic under
    /// externalTrafficPolicy=Cluster, off-cluster clients of a ClusterIP, hairpin) or a
    /// port remap ([`PORT_REMAP`]).
    pub const SNAT: u8 = 1 << 0;
    /// The flow entered the node from its uplink (north-south) rather than from a pod.
    pub const NORTH_SOUTH: u8 = 1 << 1;
    /// The client reached its own pod through the service (hairpin).
    pub const HAIRPIN: u8 = 1 << 2;
    /// The client's source port was changed (its address kept) because the translated
    /// tuple belonged to another live flow, as nf_nat does on a clash.
    pub const PORT_REMAP: u8 = 1 << 3;

    /// Names of the set bits, for display.
    pub fn names(flags: u8) -> impl Iterator<Item = &'static str> {
        [
            (SNAT, "snat"),
            (NORTH_SOUTH, "north-south"),
            (HAIRPIN, "hairpin"),
            (PORT_REMAP, "port-remap"),
        ]
        .into_iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
    }
}

/// Source ports the datapath gives source-translated flows: above Linux's default ephemeral
/// range (32768..=60999, the node's and pods' own connections) and the NodePort range
/// (30000..=32767), so a translated flow never collides with either (the agent refuses a
/// range that overlaps the node's). Per backend address and port, so 4536 concurrent
/// translated flows per backend and source address.
pub mod snat_ports {
    pub const MIN: u16 = 61_000;
    pub const MAX: u16 = 65_535;
    /// Candidate ports tried before a new flow is refused (Cilium's SNAT_COLLISION_RETRIES
    /// is 32; nf_nat tries up to 128): the preferred port, then every port of a range no
    /// larger than this, or random ones of a larger range. With 70 % of
    /// the range held (2000 live flows and a burst of closing ones on 4536 ports), 64 tries
    /// all fail with probability 1e-10.
    pub const TRIES: u32 = 64;
    /// A closed flow's port (both FINs or a RST seen) may go to a new flow once the old one
    /// has been quiet this long, before its close timeout ends: nf_nat likewise lets a new
    /// connection take a tuple whose TCP entry is closing. A second is a thousand in-cluster
    /// round trips for the last ACK to pass, and without it a backend taking more than
    /// 4536 / close timeout (450) short connections a second from one node would run out.
    ///
    /// A new SYN whose TCP timestamp is newer than the old client's last one may take the
    /// tuple at once ([`CtEntryOf::frees_tuple`]): that is the rule by which the backend's
    /// TIME_WAIT for the tuple accepts the new connection (RFC 7323 PAWS), as nf_nat's
    /// eviction of closing entries asks that the new sequence has advanced.
    pub const CLOSED_REUSE_NS: u64 = 1_000_000_000;
}

/// How long a reply entry may stand without its forward entry (or beside a forward entry
/// that does not own it) before it counts as an orphan: the datapath writes a new flow's
/// reply entry first, and replaces a stale flow's forward entry only after, so a young one
/// may be a flow being made. Far longer than the few instructions between the two writes.
pub const ORPHAN_GRACE_NS: u64 = 1_000_000_000;

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

/// Default timeouts, in seconds. Kubernetes' expectations (service-proxy-behaviour.md) with
/// the peers' values where Kubernetes sets none:
/// - SYN 60 s (Cilium): a client that never hears back stops holding a slot within a minute.
/// - Established 86400 s: kube-proxy sets nf_conntrack_tcp_timeout_established to a day.
/// - Half-closed 3600 s: kube-proxy's CLOSE_WAIT timeout; one side can keep sending.
/// - Closing and reset 10 s (Cilium's close timeout): late segments still translate.
/// - UDP 60 s (Cilium and Calico).
///
/// The agent can set others ([`CtTimeouts`] in the datapath's config), as kube-proxy's
/// `--conntrack-*-timeout` flags set netfilter's.
pub mod timeout {
    pub const SYN_SENT_S: u32 = 60;
    pub const ESTABLISHED_S: u32 = 86_400;
    pub const HALF_CLOSED_S: u32 = 3_600;
    pub const CLOSING_S: u32 = 10;
    pub const RESET_S: u32 = 10;
    pub const UDP_S: u32 = 60;
}

const NS_PER_S: u64 = 1_000_000_000;

/// Conntrack timeouts in seconds, as the agent writes them into the datapath's config. A
/// zero field means "the default" ([`timeout`]), so a datapath whose config the agent has
/// not written yet still times flows out. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtTimeouts {
    pub syn_sent_s: u32,
    pub established_s: u32,
    pub half_closed_s: u32,
    pub closing_s: u32,
    pub reset_s: u32,
    pub udp_s: u32,
}

impl CtTimeouts {
    /// Every timeout at its default.
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        syn_sent_s: timeout::SYN_SENT_S,
        established_s: timeout::ESTABLISHED_S,
        half_closed_s: timeout::HALF_CLOSED_S,
        closing_s: timeout::CLOSING_S,
        reset_s: timeout::RESET_S,
        udp_s: timeout::UDP_S,
    };

    /// How long a flow in `state` may stay idle, in nanoseconds.
    #[inline(always)]
    pub const fn of(&self, state: CtState) -> u64 {
        let (set, default) = match state {
            CtState::SynSent => (self.syn_sent_s, timeout::SYN_SENT_S),
            CtState::Established => (self.established_s, timeout::ESTABLISHED_S),
            CtState::HalfClosed => (self.half_closed_s, timeout::HALF_CLOSED_S),
            CtState::Closing => (self.closing_s, timeout::CLOSING_S),
            CtState::Reset => (self.reset_s, timeout::RESET_S),
            CtState::Udp => (self.udp_s, timeout::UDP_S),
        };
        (if set != 0 { set } else { default }) as u64 * NS_PER_S
    }
}

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

    /// Whether a flow in this state has ended (both FINs or a RST): its tuple may soon
    /// carry a new connection.
    #[inline(always)]
    pub const fn is_closed(self) -> bool {
        matches!(self, CtState::Closing | CtState::Reset)
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

impl<A> CtEntryOf<A> {
    #[inline(always)]
    pub const fn state(&self, proto: u8) -> CtState {
        CtState::from_seen(proto, self.seen)
    }

    /// True when the flow has been idle longer than its state allows at `now_ns`.
    #[inline(always)]
    pub const fn is_expired(&self, proto: u8, now_ns: u64, timeouts: &CtTimeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > timeouts.of(self.state(proto))
    }

    /// True when a new flow, whose opening packet carries TCP timestamp `tsval` (0: none),
    /// may take this (forward) entry's tuples: the flow has expired, or it has ended and
    /// either been quiet for [`snat_ports::CLOSED_REUSE_NS`] or been left with an older
    /// timestamp than the newcomer's.
    ///
    /// Why the timestamp: a backend that closed first keeps the tuple in TIME_WAIT for a
    /// minute and refuses a SYN whose timestamp is older than the last one it saw (PAWS).
    /// Clients' timestamps start at a random offset per connection, so a port that passed
    /// from one client connection to another is refused half of the time, and each refusal
    /// costs a reset and a retransmitted SYN. With the check, a port goes only to a SYN the
    /// backend will take, and closed flows give their ports back at once.
    #[inline(always)]
    pub const fn frees_tuple(
        &self,
        proto: u8,
        now_ns: u64,
        timeouts: &CtTimeouts,
        tsval: u32,
    ) -> bool {
        if self.is_expired(proto, now_ns, timeouts) {
            return true;
        }
        if !self.state(proto).is_closed() {
            return false;
        }
        if tsval != 0 && self.client_tsval != 0 {
            return tsval.wrapping_sub(self.client_tsval) as i32 > 0;
        }
        now_ns.saturating_sub(self.last_seen_ns) >= snat_ports::CLOSED_REUSE_NS
    }
}

user_pod!(CtKey, CtEntry, CtKey6, CtEntry6, CtTimeouts);

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
        assert_eq!(size_of::<CtEntry>(), 48);
        assert_eq!(offset_of!(CtEntry, nat_addr), 16);
        assert_eq!(offset_of!(CtEntry, flags), 23);
        assert_eq!(offset_of!(CtEntry, service_id), 24);
        assert_eq!(offset_of!(CtEntry, snat_addr), 32);
        assert_eq!(offset_of!(CtEntry, snat_port), 36);
        // The IPv6 tables use the same definitions with 16-byte addresses.
        assert_eq!(size_of::<CtKey6>(), 40);
        assert_eq!(size_of::<CtEntry6>(), 72);
        assert_eq!(size_of::<CtTimeouts>(), 24);
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
        let t = CtTimeouts::default();
        assert_eq!(t.of(CtState::SynSent), 60 * NS_PER_S);
        assert_eq!(t.of(CtState::Established), 86_400 * NS_PER_S);
        assert_eq!(t.of(CtState::HalfClosed), 3_600 * NS_PER_S);
        assert_eq!(t.of(CtState::Closing), 10 * NS_PER_S);
        assert_eq!(t.of(CtState::Reset), 10 * NS_PER_S);
        assert_eq!(t.of(CtState::Udp), 60 * NS_PER_S);
        // Zero fields are the defaults, so an unwritten config and DEFAULT agree.
        for state in [CtState::SynSent, CtState::Udp, CtState::Closing] {
            assert_eq!(t.of(state), CtTimeouts::DEFAULT.of(state));
        }
    }

    #[test]
    fn set_timeouts_replace_the_defaults() {
        let t = CtTimeouts {
            udp_s: 5,
            closing_s: 2,
            ..CtTimeouts::default()
        };
        assert_eq!(t.of(CtState::Udp), 5 * NS_PER_S);
        assert_eq!(t.of(CtState::Closing), 2 * NS_PER_S);
        assert_eq!(t.of(CtState::Established), 86_400 * NS_PER_S);
    }

    #[test]
    fn expiry_uses_the_current_state_timeout() {
        let t = CtTimeouts::default();
        let e = CtEntry {
            last_seen_ns: 100 * NS_PER_S,
            seen: seen::SYN,
            ..Default::default()
        };
        assert!(!e.is_expired(TCP, 160 * NS_PER_S, &t));
        assert!(e.is_expired(TCP, 161 * NS_PER_S, &t));
        // A clock read before last_seen (another CPU stamped later) is not expiry.
        assert!(!e.is_expired(TCP, 50 * NS_PER_S, &t));
    }

    #[test]
    fn a_closed_flow_frees_its_tuple_after_a_quiet_second_a_live_one_never() {
        let t = CtTimeouts::default();
        let at = 100 * NS_PER_S;
        let closed = CtEntry {
            last_seen_ns: at,
            seen: seen::SYN | seen::REPLY | seen::FIN_FORWARD | seen::FIN_REPLY,
            ..Default::default()
        };
        assert!(!closed.frees_tuple(TCP, at + NS_PER_S / 2, &t, 0));
        assert!(closed.frees_tuple(TCP, at + NS_PER_S, &t, 0));
        let reset = CtEntry {
            seen: seen::SYN | seen::RST,
            ..closed
        };
        assert!(reset.frees_tuple(TCP, at + NS_PER_S, &t, 0));
        let open = CtEntry {
            seen: seen::SYN | seen::REPLY,
            ..closed
        };
        assert!(!open.frees_tuple(TCP, at + 3600 * NS_PER_S, &t, 0));
        assert!(open.frees_tuple(TCP, at + 86_401 * NS_PER_S, &t, 0));
        // UDP has no end: only its idle timeout frees it.
        assert!(!open.frees_tuple(UDP, at + 59 * NS_PER_S, &t, 0));
        assert!(open.frees_tuple(UDP, at + 61 * NS_PER_S, &t, 0));
    }

    #[test]
    fn a_newer_timestamp_takes_a_closed_flows_tuple_at_once_an_older_one_waits() {
        let t = CtTimeouts::default();
        let at = 100 * NS_PER_S;
        let closed = CtEntry {
            last_seen_ns: at,
            seen: seen::SYN | seen::REPLY | seen::FIN_FORWARD | seen::FIN_REPLY,
            client_tsval: 0xffff_fff0,
            ..Default::default()
        };
        // Newer, across the wrap: the backend's TIME_WAIT takes it.
        assert!(closed.frees_tuple(TCP, at + 1, &t, 0x0000_0010));
        // Older or equal: PAWS would refuse it, so it must not get the tuple, however long
        // the flow has been quiet (short of its close timeout).
        assert!(!closed.frees_tuple(TCP, at + 5 * NS_PER_S, &t, 0xffff_ff00));
        assert!(!closed.frees_tuple(TCP, at + 5 * NS_PER_S, &t, 0xffff_fff0));
        assert!(closed.frees_tuple(TCP, at + 11 * NS_PER_S, &t, 0xffff_ff00));
        // Either side without timestamps: the quiet second decides.
        assert!(!closed.frees_tuple(TCP, at + 1, &t, 0));
        let untimed = CtEntry {
            client_tsval: 0,
            ..closed
        };
        assert!(!untimed.frees_tuple(TCP, at + 1, &t, 7));
        assert!(untimed.frees_tuple(TCP, at + NS_PER_S, &t, 7));
        // A live flow keeps its tuple whatever the newcomer shows.
        let open = CtEntry {
            seen: seen::SYN | seen::REPLY,
            ..closed
        };
        assert!(!open.frees_tuple(TCP, at + 1, &t, 0x0000_0010));
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
    fn a_forward_entry_names_its_reply_key_and_owns_only_that_one() {
        // Client 10.244.1.2:40000 -> VIP 10.96.0.10:80, DNAT to 10.244.2.3:8080.
        let fwd_key = CtKey::new(0x0201_f40a, 0x0a00_600a, 0x409c, 0x5000, TCP, dir::FORWARD);
        let fwd = CtEntry {
            nat_addr: 0x0302_f40a,
            nat_port: 0x901f,
            ..Default::default()
        };
        let reply = fwd_key.reply_of_forward(&fwd);
        assert_eq!(
            reply,
            CtKey::new(0x0302_f40a, 0x0201_f40a, 0x901f, 0x409c, TCP, dir::REPLY)
        );
        assert!(fwd_key.owns_reply(&fwd, &reply));
        let back = reply.forward_of_reply(&fwd_key.reply_entry(&fwd));
        assert_eq!(back, fwd_key);

        // Source-translated (a remapped port): the reply goes to the new port, and the
        // reply entry keeps the client's own port to restore.
        let remapped = CtEntry {
            flags: ct_flags::SNAT | ct_flags::PORT_REMAP,
            snat_addr: 0x0201_f40a,
            snat_port: 0x50ee,
            ..fwd
        };
        let reply2 = fwd_key.reply_of_forward(&remapped);
        assert_eq!(reply2.dport, 0x50ee);
        assert!(fwd_key.owns_reply(&remapped, &reply2));
        assert!(!fwd_key.owns_reply(&remapped, &reply));
        let entry2 = fwd_key.reply_entry(&remapped);
        assert_eq!((entry2.snat_addr, entry2.snat_port), (0x0201_f40a, 0x409c));
        assert_eq!(reply2.forward_of_reply(&entry2), fwd_key);
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
