//! Datapath-wide settings, one entry in an array map written by the agent.

use crate::{conntrack::CtTimeouts, user_pod};

/// 48 bytes. Addresses and masks in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Seed for [`crate::hash::flow_hash`]; chosen at random when the maps are first created
    /// and kept across agent restarts.
    pub hash_seed: u32,
    /// This node's address: the source of masqueraded flows (kube-proxy's MASQUERADE picks
    /// the outgoing interface's address, which is this one on a Kind node). 0 disables SNAT.
    pub node_addr: u32,
    /// The cluster's pod CIDR (kube-proxy's `--cluster-cidr`): clients inside it are
    /// "internal" for traffic policies and are not masqueraded on the way to a ClusterIP.
    /// A zero mask means unknown: then no ClusterIP traffic is masqueraded, as kube-proxy
    /// does without `--cluster-cidr`.
    pub cluster_cidr_addr: u32,
    pub cluster_cidr_mask: u32,
    /// Inclusive range of source ports for masqueraded flows, host order
    /// ([`crate::conntrack::snat_ports`] by default).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _reserved: u32,
    /// How long idle flows are tracked, per state (zeroes: the defaults).
    pub ct_timeouts: CtTimeouts,
}

impl Config {
    /// Whether `addr` (network order) lies in the cluster CIDR; false when it is unknown.
    #[inline(always)]
    pub const fn in_cluster(&self, addr: u32) -> bool {
        self.cluster_cidr_mask != 0
            && addr & self.cluster_cidr_mask == self.cluster_cidr_addr & self.cluster_cidr_mask
    }

    /// The cluster CIDR as network-order address and mask, from a host-order prefix.
    pub fn with_cluster_cidr(mut self, addr: core::net::Ipv4Addr, prefix: u8) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0);
        self.cluster_cidr_mask = mask.to_be();
        self.cluster_cidr_addr = crate::addr_be(addr) & self.cluster_cidr_mask;
        self
    }
}

user_pod!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn config_is_forty_eight_bytes() {
        assert_eq!(core::mem::size_of::<Config>(), 48);
    }

    #[test]
    fn cluster_cidr_membership_uses_the_prefix() {
        let c = Config::default().with_cluster_cidr(Ipv4Addr::new(10, 244, 0, 0), 16);
        assert!(c.in_cluster(crate::addr_be(Ipv4Addr::new(10, 244, 2, 3))));
        assert!(!c.in_cluster(crate::addr_be(Ipv4Addr::new(172, 18, 0, 1))));
        assert!(!Config::default().in_cluster(crate::addr_be(Ipv4Addr::new(10, 244, 2, 3))));
    }
}
