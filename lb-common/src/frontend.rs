//! Frontends: the (address, port, protocol) a client sends to, and the service behind it.

use crate::user_pod;

/// What a packet's destination is matched on. 8 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Service address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// [`crate::proto`] number.
    pub proto: u8,
    /// Which traffic class this entry serves ([`scope`]); traffic policies need two views of
    /// one address.
    pub scope: u8,
}

/// Lookup scopes, as Cilium splits a service for externalTrafficPolicy=Local: external
/// traffic sees only local backends, internal traffic sees all.
pub mod scope {
    /// The default and only scope for ClusterIP.
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

impl FrontendKey {
    /// A key from host-order values.
    pub fn new(addr: core::net::Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: crate::addr_be(addr),
            port: port.to_be(),
            proto,
            scope: scope::EXTERNAL,
        }
    }

    pub fn ip(&self) -> core::net::Ipv4Addr {
        crate::addr_from_be(self.addr)
    }

    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// The service behind a frontend. 16 bytes.
///
/// Its backends live in the slot map under (`service_id`, 1..=`backend_count`): slot numbers
/// start at 1 so that the agent can grow or shrink a service by writing slots before it
/// changes the count, and removing them after, and no packet sees a half-written set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Frontend {
    /// Stable identifier for the service port; keys backend slots, conntrack and counters.
    pub service_id: u32,
    /// Number of backend slots in use.
    pub backend_count: u16,
    /// [`flags`] bits.
    pub flags: u16,
    /// Session-affinity stickiness; 0 when affinity is off.
    pub affinity_timeout_s: u32,
    pub _reserved: u32,
}

/// Frontend flag bits: the service type this address came from, and the policies that
/// decide how its traffic is handled.
pub mod flags {
    pub const CLUSTER_IP: u16 = 1 << 0;
    pub const NODE_PORT: u16 = 1 << 1;
    pub const EXTERNAL_IP: u16 = 1 << 2;
    pub const LOAD_BALANCER: u16 = 1 << 3;
    /// externalTrafficPolicy=Local, on the external-scope entry: only local backends, the
    /// client address is kept, and with no local backend external traffic is dropped
    /// (never rejected). Clients inside the cluster use the [`super::scope::INTERNAL`] twin.
    pub const EXTERNAL_LOCAL: u16 = 1 << 4;
    /// internalTrafficPolicy=Local: only local backends; none means drop, not reject.
    pub const INTERNAL_LOCAL: u16 = 1 << 5;
    /// loadBalancerSourceRanges apply: the client must match an entry of the source-range
    /// trie under this frontend's service id.
    pub const SOURCE_RANGES: u16 = 1 << 6;

    /// Any of the kinds reached from outside the cluster (kube-proxy's "external" chains).
    pub const EXTERNAL_KINDS: u16 = NODE_PORT | EXTERNAL_IP | LOAD_BALANCER;

    /// Names of the set bits, for display.
    pub fn names(flags: u16) -> impl Iterator<Item = &'static str> {
        [
            (CLUSTER_IP, "ClusterIP"),
            (NODE_PORT, "NodePort"),
            (EXTERNAL_IP, "ExternalIP"),
            (LOAD_BALANCER, "LoadBalancer"),
            (EXTERNAL_LOCAL, "ExternalLocal"),
            (INTERNAL_LOCAL, "InternalLocal"),
            (SOURCE_RANGES, "SourceRanges"),
        ]
        .into_iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
    }
}

user_pod!(FrontendKey, Frontend);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn frontend_key_is_eight_packed_bytes() {
        assert_eq!(size_of::<FrontendKey>(), 8);
        assert_eq!(align_of::<FrontendKey>(), 4);
        assert_eq!(offset_of!(FrontendKey, port), 4);
        assert_eq!(offset_of!(FrontendKey, proto), 6);
        assert_eq!(offset_of!(FrontendKey, scope), 7);
    }

    #[test]
    fn frontend_value_has_no_hidden_padding() {
        assert_eq!(size_of::<Frontend>(), 16);
        assert_eq!(offset_of!(Frontend, backend_count), 4);
        assert_eq!(offset_of!(Frontend, flags), 6);
        assert_eq!(offset_of!(Frontend, affinity_timeout_s), 8);
    }

    #[test]
    fn key_holds_address_and_port_as_packet_bytes() {
        let k = FrontendKey::new(
            core::net::Ipv4Addr::new(10, 96, 0, 10),
            80,
            crate::proto::TCP,
        );
        assert_eq!(k.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(k.ip(), core::net::Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(k.port_host(), 80);
    }

    #[test]
    fn flag_names_list_set_bits_in_order() {
        let names: std::vec::Vec<_> = flags::names(flags::NODE_PORT | flags::CLUSTER_IP).collect();
        assert_eq!(names, ["ClusterIP", "NodePort"]);
    }
}
