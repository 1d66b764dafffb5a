//! Map names (as pinned in bpffs) and default sizes. The agent may resize at load time.
//!
//! Names stay within 15 characters: the kernel keeps no more (BPF_OBJ_NAME_LEN).

/// [`crate::FrontendKey`] -> [`crate::Frontend`].
pub const FRONTENDS: &str = "LB_FRONTENDS";
/// [`crate::BackendSlotKey`] -> [`crate::BackendId`].
pub const BACKEND_SLOTS: &str = "LB_SLOTS";
/// [`crate::BackendId`] -> [`crate::Backend`].
pub const BACKENDS: &str = "LB_BACKENDS";
/// [`crate::CtKey`] -> [`crate::CtEntry`] of IPv4 TCP flows: a preallocated hash, so a
/// full table refuses new flows (counted) instead of evicting live ones; the agent collects
/// expired entries.
pub const CONNTRACK_TCP: &str = "LB_CT4_TCP";
/// The same for every other protocol (UDP): a UDP flood fills this table, never the TCP one.
pub const CONNTRACK_ANY: &str = "LB_CT4_ANY";
/// Both conntrack tables, TCP first.
pub const CONNTRACK: [&str; 2] = [CONNTRACK_TCP, CONNTRACK_ANY];

/// The conntrack table that holds flows of protocol `proto`.
pub const fn conntrack_table(proto: u8) -> &'static str {
    if proto == crate::proto::TCP {
        CONNTRACK_TCP
    } else {
        CONNTRACK_ANY
    }
}

/// [`crate::FragKey`] -> [`crate::FragPorts`], LRU: the ports of fragmented datagrams,
/// learnt from their first fragment, so the later ones (which carry no ports) are
/// translated alike.
pub const FRAGMENTS: &str = "LB_FRAG4";
/// Per-CPU u64 counters indexed by [`crate::Reason`].
pub const COUNTERS: &str = "LB_COUNTERS";
/// One [`crate::Config`].
pub const CONFIG: &str = "LB_CONFIG";

/// [`crate::BackendId`] -> [`crate::BackendStats`], an array.
pub const BACKEND_STATS: &str = "LB_BE_STATS";
/// [`crate::AffinityKey`] -> [`crate::AffinityEntry`], LRU.
pub const AFFINITY: &str = "LB_AFFINITY";
/// Service id -> [`crate::ServiceName`]; written by the agent, read by lbctl only.
pub const SERVICE_NAMES: &str = "LB_SVC_NAMES";

/// (prefix length, [`crate::SourceRange`]) -> u32 (1), an LPM trie: loadBalancerSourceRanges.
pub const SOURCE_RANGES: &str = "LB_SRC_RANGES";
/// [`crate::SockRevKey`] -> [`crate::SockRevEntry`], LRU: socket-level LB's reverse view.
pub const SOCK_REV: &str = "LB_SOCK_REV";

/// Every map the agent pins, for tools that walk them.
pub const ALL: [&str; 13] = [
    FRONTENDS,
    BACKEND_SLOTS,
    BACKENDS,
    CONNTRACK_TCP,
    CONNTRACK_ANY,
    FRAGMENTS,
    COUNTERS,
    CONFIG,
    BACKEND_STATS,
    AFFINITY,
    SERVICE_NAMES,
    SOURCE_RANGES,
    SOCK_REV,
];

pub const FRONTENDS_MAX: u32 = 131_072;
pub const BACKEND_SLOTS_MAX: u32 = 1_048_576;
pub const BACKENDS_MAX: u32 = 262_144;
/// The object's conntrack table sizes (two entries per flow). The agent sizes the tables
/// from the node's memory at load time (`lb_agent::datapath::sizing`); these are what a
/// bare load of the object gets.
pub const CONNTRACK_TCP_MAX: u32 = 262_144;
pub const CONNTRACK_ANY_MAX: u32 = 131_072;
/// The most entries a conntrack table may have (tools bound their walks by it): Cilium's
/// cap, 16M.
pub const CONNTRACK_LIMIT: u32 = 1 << 24;
/// Fragmented datagrams in flight whose later fragments are awaited (Cilium's default).
pub const FRAGMENTS_MAX: u32 = 8_192;
/// One name per service port.
pub const SERVICE_NAMES_MAX: u32 = FRONTENDS_MAX;
/// One client per entry per service with ClientIP affinity; LRU, so idle clients make room.
pub const AFFINITY_MAX: u32 = 65_536;
/// Source ranges over all LoadBalancer frontends.
pub const SOURCE_RANGES_MAX: u32 = 16_384;
/// Translated sockets whose peer must be shown as the service (connected UDP and TCP
/// sockets of node processes); LRU, so closed sockets' entries make room.
pub const SOCK_REV_MAX: u32 = 65_536;
/// Room for reasons added later without changing the map.
pub const COUNTERS_MAX: u32 = 64;

/// [`crate::FrontendKey`] -> [`crate::Frontend`]: the bench's floor program (`lb_floor_tc`,
/// `lb_floor_xdp`) parses and does one lookup here, the least any service datapath does.
/// Not pinned and not in [`ALL`]: the agent never attaches the floor programs, and the
/// object declares it with [`FLOOR_MAX`] entries so an agent loading the object pays nothing
/// for it; the bench resizes it at load time to hold as many keys as the real frontend map.
pub const FLOOR: &str = "LB_FLOOR";
pub const FLOOR_MAX: u32 = 1;

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_limit() {
        for name in super::ALL {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
