//! The decision every program shares: is this packet part of a tracked flow (either
//! direction), the first packet of a new flow to a service, or none of ours?
//!
//! Order: conntrack (forward, then reply) -> frontend -> source ranges -> backends ->
//! masquerade. Creating the conntrack entries is a separate step ([`commit`]) so that XDP
//! can first check that it is able to send the packet itself.

use lb_common::{
    backend::flags as backend_flags,
    conntrack::{ct_flags, dir, directions},
    frontend::flags,
    BackendId, Config, CtKey, Reason,
};

use crate::{
    backend,
    conntrack::{self, Forward, NewFlow},
    frontend::{self, Origin},
    maps::LB_CONFIG,
    nat::Tuple,
    parse::Packet,
    source_range,
};

pub enum Step {
    /// Not addressed to a service and not part of a tracked flow.
    Untouched,
    /// A tracked flow: rewrite to `to`. `reason` is EstablishedFlow or ReplyTranslated.
    Tracked {
        to: Tuple,
        backend_id: BackendId,
        reason: Reason,
    },
    /// The first packet of a new flow; [`commit`] tracks it.
    New(NewFlow),
}

/// The datapath-wide settings (zeroes until the agent has written them).
#[inline(always)]
pub fn config() -> Config {
    LB_CONFIG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
pub fn forward_key(pkt: &Packet) -> CtKey {
    CtKey::new(
        pkt.saddr,
        pkt.daddr,
        pkt.sport,
        pkt.dport,
        pkt.proto,
        dir::FORWARD,
    )
}

/// What to do with `pkt`. `Err` carries a drop or reject reason.
#[inline(always)]
pub fn decide(pkt: &Packet, origin: Origin, now: u64) -> Result<Step, Reason> {
    let key = forward_key(pkt);
    let t = conntrack::timeouts();
    // Each lookup of a new flow's tuple is a cache miss on the real path: a handshake
    // packet looks up only the direction it can belong to.
    let may = directions(pkt.proto, pkt.tcp_flags);
    let mut stale = None;
    // A SYN-ACK skips the forward lookup, since replies carry it. One sent to a service
    // address is no reply, though: taken for a new flow, it would replace a live flow's
    // forward entry on its tuple, moving that flow to another source port (a remap, or a
    // new masquerade port: the connection breaks) and leaving its reply entry orphaned.
    // The fuzzer found this (lb-ebpf-tests/fuzz/regressions/syn-ack-to-service.hex). So a
    // SYN-ACK to a frontend is looked up as a forward packet too, at the cost of one
    // frontend lookup per SYN-ACK (a second forward-lookup site, after the frontend lookup
    // below, would not fit the 512-byte stack the programs share with the SNAT callback).
    if may.forward || frontend::is_frontend(pkt) {
        match conntrack::forward(&key, pkt, now, &t) {
            Forward::Hit(hit) => {
                return Ok(Step::Tracked {
                    to: hit.to,
                    backend_id: hit.backend_id,
                    reason: Reason::EstablishedFlow,
                })
            }
            Forward::Stale(old) => stale = Some(old),
            Forward::Miss => {}
        }
    }
    if may.reply {
        let reply_key = CtKey {
            dir: dir::REPLY,
            ..key
        };
        if let Some(hit) = conntrack::reply(&reply_key, pkt, now, &t) {
            return Ok(Step::Tracked {
                to: hit.to,
                backend_id: hit.backend_id,
                reason: Reason::ReplyTranslated,
            });
        }
    }

    // Read only now: a tracked flow's packets never need the settings.
    let cfg = config();
    let Some(found) = frontend::lookup(pkt, origin, &cfg) else {
        return Ok(Step::Untouched);
    };
    let fe = found.fe;
    if fe.flags & flags::SOURCE_RANGES != 0 && !source_range::allowed(fe.service_id, pkt.saddr) {
        return Err(Reason::DropSourceRange);
    }
    if fe.backend_count == 0 {
        // kube-proxy drops when a Local policy leaves no endpoint on this node, so that
        // the client's retry can find a node that has one; otherwise it rejects.
        return Err(
            if fe.flags & (flags::EXTERNAL_LOCAL | flags::INTERNAL_LOCAL) != 0 {
                Reason::DropNoLocalBackend
            } else {
                Reason::RejectNoBackend
            },
        );
    }
    let (backend_id, backend) = backend::select(&fe, pkt, now)?;

    let mut ct = 0;
    if origin == Origin::Net {
        ct |= ct_flags::NORTH_SOUTH;
    }
    let hairpin = backend.addr == pkt.saddr;
    if hairpin {
        ct |= ct_flags::HAIRPIN;
    }
    // A backend that is this node itself (a hostNetwork pod) answers from the node's own
    // stack, whose replies are translated on their way out; masquerading to the node's own
    // address would make the packet a martian.
    let on_node = backend.flags & backend_flags::HOST != 0;
    let masquerade = !on_node
        && (hairpin
            || if fe.flags & flags::EXTERNAL_KINDS != 0 {
                // externalTrafficPolicy=Cluster masquerades (KUBE-EXT's KUBE-MARK-MASQ) and
                // Local keeps the client. A pod elsewhere using the Local service's twin
                // through this node is masqueraded too, so that the backend's reply comes back
                // here to be translated rather than straight to the pod.
                if found.internal_twin {
                    origin == Origin::Net
                } else {
                    fe.flags & flags::EXTERNAL_LOCAL == 0
                }
            } else {
                // A ClusterIP reached from outside the cluster CIDR (kube-proxy's
                // `! -s <clusterCIDR> -j KUBE-MARK-MASQ`).
                origin == Origin::Net && !cfg.in_cluster(pkt.saddr)
            });
    Ok(Step::New(NewFlow {
        fe,
        backend_id,
        backend,
        snat_addr: if masquerade { cfg.node_addr } else { 0 },
        flags: ct,
        snat_ports: (cfg.snat_port_min, cfg.snat_port_max),
        stale,
    }))
}

/// The tuple a new flow's packets will carry, before any masquerade port is chosen (the
/// FIB only needs the addresses).
#[inline(always)]
pub fn predicted(pkt: &Packet, flow: &NewFlow) -> Tuple {
    Tuple {
        saddr: if flow.snat_addr != 0 {
            flow.snat_addr
        } else {
            pkt.saddr
        },
        sport: pkt.sport,
        daddr: flow.backend.addr,
        dport: flow.backend.port,
    }
}

/// Tracks a new flow and returns the tuple its first packet must carry.
#[inline(always)]
pub fn commit(pkt: &Packet, flow: &NewFlow, now: u64) -> Result<Tuple, Reason> {
    conntrack::create(&forward_key(pkt), pkt, flow, now)
}
