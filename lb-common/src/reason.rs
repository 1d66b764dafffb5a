//! Why a packet left the datapath the way it did. Each reason indexes a per-CPU counter,
//! which `lbctl stats` shows by name; every drop and every unexpected pass has one.

/// What happened to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Translated as intended (counted so operators can see the datapath working).
    Translated,
    /// Let through untranslated although it may have needed translation.
    Passed,
    /// Dropped.
    Dropped,
    /// Answered in place of the service: an ICMP port-unreachable back to the client (or a
    /// refused connect() at the socket), as kube-proxy's REJECT does.
    Rejected,
}

impl Kind {
    /// Stable name, as `lbctl` and the metrics' `kind` label show it.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Translated => "translated",
            Kind::Passed => "passed",
            Kind::Dropped => "dropped",
            Kind::Rejected => "rejected",
        }
    }
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First packet of a new flow to a service: backend chosen, DNATed.
    NewFlow = 0,
    /// Later packet of a tracked flow, DNATed to its backend.
    EstablishedFlow = 1,
    /// Reply from a backend, source restored to the service address.
    ReplyTranslated = 2,
    /// Headers shorter than they claim (Ethernet, IPv4 or L4), or an IPv4 header whose
    /// version or length field is invalid. Passed to the stack, which drops it.
    PassMalformed = 3,
    /// An IPv4 fragment: ports are only in the first fragment, so later ones cannot be
    /// matched to a service.
    PassFragment = 4,
    /// The service has no backends.
    DropNoBackend = 5,
    /// The frontend pointed at a slot that does not exist (maps mid-update or corrupt).
    DropNoBackendSlot = 6,
    /// A slot pointed at a backend that does not exist.
    DropBackendMissing = 7,
    /// The conntrack map refused a new entry for another reason than being full.
    DropCtInsert = 8,
    /// The kernel refused to rewrite the packet (store or checksum helper failed).
    DropRewrite = 9,
    /// The service has no endpoints: the client got ICMP port-unreachable (TCP and UDP), or
    /// its connect() was refused at the socket.
    RejectNoBackend = 10,
    /// externalTrafficPolicy or internalTrafficPolicy Local, and no endpoint on this node:
    /// dropped, as kube-proxy does, so that the client's retry finds a node that has one.
    DropNoLocalBackend = 11,
    /// The client is outside the LoadBalancer's loadBalancerSourceRanges.
    DropSourceRange = 12,
    /// Every source port tried for this backend was held by a live flow: more flows to one
    /// backend are live at once than the source port range holds.
    DropSnatExhausted = 13,
    /// Translated, but the FIB had no route for the result; left to the stack to route.
    PassNoRoute = 14,
    /// An ICMP error about a translated flow was translated back for the client.
    IcmpErrorTranslated = 15,
    /// XDP translated the packet and sent it back out of the uplink (XDP_TX).
    XdpTx = 16,
    /// XDP left the packet to the tc program (a local backend, a reject, or an unknown
    /// neighbour), which finishes it.
    PassToTc = 17,
    /// A socket's connect() or sendmsg() to a service was given a backend (socket-level LB).
    SockTranslated = 18,
    /// XDP translated the packet and redirected it to another interface.
    XdpRedirect = 19,
    /// The conntrack table of the flow's protocol is full: the new flow was refused (and
    /// its packet dropped) rather than evicting a live flow. The agent's GC makes room.
    DropCtFull = 20,
    /// A new flow's translated tuple belonged to another live flow, so its source port was
    /// changed (kept address), as nf_nat does on a clash. Counted besides `new_flow`.
    PortRemapped = 21,
    /// A live flow had lost its reply entry; the datapath rebuilt it from the forward one.
    CtRepaired = 22,
    /// XDP: the L4 checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL, from
    /// a sender on this machine), which XDP cannot complete; tc translates the packet.
    PassCsumPartial = 23,
    /// A later fragment of a datagram whose first fragment was not seen (reordered, or its
    /// record evicted): its ports are unknown, so it passes untranslated.
    PassFragUnknown = 24,
    /// A translated packet would have been forwarded with its TTL run out: dropped, as a
    /// router drops it.
    DropTtlExceeded = 25,
    /// A translated packet with Don't Fragment set is larger than the egress interface's
    /// MTU: the client got ICMP fragmentation-needed with that MTU, as from a router.
    RejectFragNeeded = 26,
    /// A translated packet without Don't Fragment is larger than the egress MTU: handed to
    /// the stack, which fragments it, instead of being redirected.
    PassMtu = 27,
}

impl Reason {
    /// Number of reasons; counter slots at and above this are unused.
    pub const COUNT: u32 = 28;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NewFlow,
        Reason::EstablishedFlow,
        Reason::ReplyTranslated,
        Reason::PassMalformed,
        Reason::PassFragment,
        Reason::DropNoBackend,
        Reason::DropNoBackendSlot,
        Reason::DropBackendMissing,
        Reason::DropCtInsert,
        Reason::DropRewrite,
        Reason::RejectNoBackend,
        Reason::DropNoLocalBackend,
        Reason::DropSourceRange,
        Reason::DropSnatExhausted,
        Reason::PassNoRoute,
        Reason::IcmpErrorTranslated,
        Reason::XdpTx,
        Reason::PassToTc,
        Reason::SockTranslated,
        Reason::XdpRedirect,
        Reason::DropCtFull,
        Reason::PortRemapped,
        Reason::CtRepaired,
        Reason::PassCsumPartial,
        Reason::PassFragUnknown,
        Reason::DropTtlExceeded,
        Reason::RejectFragNeeded,
        Reason::PassMtu,
    ];

    pub fn from_index(i: u32) -> Option<Reason> {
        Self::ALL.get(i as usize).copied()
    }

    /// Stable name, as `lbctl stats` and the metrics label show it.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NewFlow => "new_flow",
            Reason::EstablishedFlow => "established_flow",
            Reason::ReplyTranslated => "reply_translated",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassFragment => "pass_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNoBackendSlot => "drop_no_backend_slot",
            Reason::DropBackendMissing => "drop_backend_missing",
            Reason::DropCtInsert => "drop_ct_insert",
            Reason::DropRewrite => "drop_rewrite",
            Reason::RejectNoBackend => "reject_no_backend",
            Reason::DropNoLocalBackend => "drop_no_local_backend",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::PassNoRoute => "pass_no_route",
            Reason::IcmpErrorTranslated => "icmp_error_translated",
            Reason::XdpTx => "xdp_tx",
            Reason::PassToTc => "pass_to_tc",
            Reason::SockTranslated => "sock_translated",
            Reason::XdpRedirect => "xdp_redirect",
            Reason::DropCtFull => "drop_ct_full",
            Reason::PortRemapped => "port_remapped",
            Reason::CtRepaired => "ct_repaired",
            Reason::PassCsumPartial => "pass_csum_partial",
            Reason::PassFragUnknown => "pass_frag_unknown",
            Reason::DropTtlExceeded => "drop_ttl_exceeded",
            Reason::RejectFragNeeded => "reject_frag_needed",
            Reason::PassMtu => "pass_mtu",
        }
    }

    pub const fn kind(self) -> Kind {
        match self {
            Reason::NewFlow
            | Reason::EstablishedFlow
            | Reason::ReplyTranslated
            | Reason::IcmpErrorTranslated
            | Reason::XdpTx
            | Reason::XdpRedirect
            | Reason::SockTranslated
            | Reason::PortRemapped
            | Reason::CtRepaired => Kind::Translated,
            Reason::PassMalformed
            | Reason::PassFragment
            | Reason::PassNoRoute
            | Reason::PassToTc
            | Reason::PassCsumPartial
            | Reason::PassFragUnknown
            | Reason::PassMtu => Kind::Passed,
            Reason::RejectNoBackend | Reason::RejectFragNeeded => Kind::Rejected,
            Reason::DropNoBackend
            | Reason::DropNoBackendSlot
            | Reason::DropBackendMissing
            | Reason::DropCtInsert
            | Reason::DropRewrite
            | Reason::DropNoLocalBackend
            | Reason::DropSourceRange
            | Reason::DropSnatExhausted
            | Reason::DropCtFull
            | Reason::DropTtlExceeded => Kind::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_own_index() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert_eq!(Reason::from_index(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
        const { assert!(Reason::COUNT <= crate::maps::COUNTERS_MAX) };
    }

    #[test]
    fn names_are_unique() {
        let mut names: std::vec::Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT as usize);
    }

    #[test]
    fn drop_names_start_with_drop_and_passes_with_pass() {
        for r in Reason::ALL {
            match r.kind() {
                Kind::Dropped => assert!(r.name().starts_with("drop_"), "{r:?}"),
                Kind::Passed => assert!(r.name().starts_with("pass_"), "{r:?}"),
                Kind::Rejected => assert!(r.name().starts_with("reject_"), "{r:?}"),
                Kind::Translated => {}
            }
        }
    }
}
