//! Frontend lookup: is the packet addressed to a service, and which view of it applies?

use lb_common::{
    frontend::{flags, scope},
    Config, Frontend, FrontendKey,
};

use crate::{maps::LB_FRONTENDS, parse::Packet};

/// Where the packet came from, which decides what counts as "inside the cluster".
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a pod on this node (tc ingress on its veth): always inside the cluster.
    Pod,
    /// From the node's uplink: outside the cluster unless the source is in the cluster CIDR.
    Net,
}

/// A frontend and whether its internal-scope twin was used.
pub struct Found {
    pub fe: Frontend,
    /// The client is inside the cluster and the service has externalTrafficPolicy=Local:
    /// the twin with every ready backend serves it, as kube-proxy sends pod traffic to the
    /// cluster-wide chain.
    pub internal_twin: bool,
}

/// Whether the packet's destination is a frontend (of any scope: an internal twin always
/// has its external entry).
#[inline(always)]
pub fn is_frontend(pkt: &Packet) -> bool {
    let key = FrontendKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope: scope::EXTERNAL,
    };
    // SAFETY: only the presence is read.
    unsafe { LB_FRONTENDS.get(&key).is_some() }
}

#[inline(always)]
pub fn lookup(pkt: &Packet, origin: Origin, cfg: &Config) -> Option<Found> {
    let mut key = FrontendKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope: scope::EXTERNAL,
    };
    // SAFETY: the value is copied out at once; the agent may replace it concurrently, and a
    // copy is either the old or the new value (hash map updates swap whole elements).
    let fe = unsafe { LB_FRONTENDS.get(&key).copied() }?;
    let internal = origin == Origin::Pod || cfg.in_cluster(pkt.saddr);
    if fe.flags & flags::EXTERNAL_LOCAL != 0 && internal {
        key.scope = scope::INTERNAL;
        // SAFETY: as above.
        if let Some(twin) = unsafe { LB_FRONTENDS.get(&key).copied() } {
            return Some(Found {
                fe: twin,
                internal_twin: true,
            });
        }
    }
    Some(Found {
        fe,
        internal_twin: false,
    })
}
