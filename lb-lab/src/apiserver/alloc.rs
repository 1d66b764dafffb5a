//! Cluster IP and node port allocation, as the API server's allocators do it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::Value;

use super::index::Indexes;
use crate::plan::{Ipv4Cidr, SERVICE_CIDR};

/// `--service-node-port-range`'s default.
pub const NODE_PORT_RANGE: RangeInclusive<i32> = 30000..=32767;
/// The first address of the service range, reserved for the `default/kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// What the Services in the store already hold: what this request took (`cluster_ips`,
/// `node_ports`), plus, if given, the store's index of every Service's, less what the object
/// being replaced holds itself.
#[derive(Clone, Debug, Default)]
pub struct Allocated<'a> {
    pub cluster_ips: BTreeSet<Ipv4Addr>,
    pub node_ports: BTreeSet<i32>,
    index: Option<&'a Indexes>,
    own_ips: BTreeSet<Ipv4Addr>,
    own_ports: BTreeSet<i32>,
}

impl<'a> Allocated<'a> {
    /// What every Service in `index` holds, except `replaced` (the object being updated,
    /// whose addresses are its own to keep).
    pub fn over(index: &'a Indexes, replaced: Option<&Value>) -> Self {
        let own = Self::of(replaced);
        Self {
            index: Some(index),
            own_ips: own.cluster_ips,
            own_ports: own.node_ports,
            ..Self::default()
        }
    }

    fn ip_in_index(&self, ip: Ipv4Addr, holders: u32) -> bool {
        holders > u32::from(self.own_ips.contains(&ip))
    }

    fn ip_taken(&self, ip: Ipv4Addr) -> bool {
        self.cluster_ips.contains(&ip)
            || self
                .index
                .and_then(|i| i.cluster_ips.get(&ip))
                .is_some_and(|n| self.ip_in_index(ip, *n))
    }

    fn port_taken(&self, port: i32) -> bool {
        self.node_ports.contains(&port)
            || self
                .index
                .and_then(|i| i.node_ports.get(&port))
                .is_some_and(|n| *n > u32::from(self.own_ports.contains(&port)))
    }

    /// Takes `ip` if it is free.
    pub fn take_ip(&mut self, ip: Ipv4Addr) -> bool {
        !self.ip_taken(ip) && self.cluster_ips.insert(ip)
    }

    /// Takes `port` if it is free.
    pub fn take_port(&mut self, port: i32) -> bool {
        !self.port_taken(port) && self.node_ports.insert(port)
    }

    /// Collects the addresses and ports of `services` (raw JSON: even objects stored without
    /// validation hold on to what they name).
    pub fn of<'v>(services: impl IntoIterator<Item = &'v Value>) -> Self {
        let mut allocated = Self::default();
        for svc in services {
            let Some(spec) = svc.get("spec") else {
                continue;
            };
            let ips = spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(spec.get("clusterIP"));
            for ip in ips.filter_map(Value::as_str) {
                if let Ok(ip) = ip.parse() {
                    allocated.cluster_ips.insert(ip);
                }
            }
            let ports = spec
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("nodePort"))
                .chain(spec.get("healthCheckNodePort"));
            for port in ports.filter_map(Value::as_i64) {
                if let Ok(port) = i32::try_from(port) {
                    allocated.node_ports.insert(port);
                }
            }
        }
        allocated
    }

    /// A free cluster IP from `range`, taking it. Allocation runs from the top of the range
    /// down, so that dynamic addresses stay clear of the low, hand-picked ones tests use (the
    /// real allocator prefers the upper part of the range for the same reason). The network
    /// address, the broadcast address and [`KUBERNETES_SERVICE_IP`] are never handed out.
    pub fn cluster_ip(&mut self, range: Ipv4Cidr) -> Option<Ipv4Addr> {
        let base = u32::from(range.addr);
        let size = 1u32.checked_shl(32 - u32::from(range.prefix)).unwrap_or(0);
        let top = base.checked_add(size.checked_sub(2)?)?;
        // Walks the index's taken addresses down in step with the candidates, so that passing
        // a block of N taken addresses costs N iterator steps rather than N lookups.
        let mut indexed = self
            .index
            .map(|i| {
                i.cluster_ips
                    .range(..=Ipv4Addr::from(top))
                    .rev()
                    .filter(|(ip, n)| self.ip_in_index(**ip, **n))
                    .map(|(ip, _)| *ip)
            })
            .into_iter()
            .flatten()
            .peekable();
        let ip = (base + 1..=top).rev().map(Ipv4Addr::from).find(|ip| {
            while indexed.next_if(|t| t > ip).is_some() {}
            let in_index = indexed.peek() == Some(ip);
            *ip != KUBERNETES_SERVICE_IP && !in_index && !self.cluster_ips.contains(ip)
        })?;
        drop(indexed);
        self.cluster_ips.insert(ip);
        Some(ip)
    }

    /// A free node port, taking it (from the top of the range down, like cluster IPs).
    pub fn node_port(&mut self) -> Option<i32> {
        let port = NODE_PORT_RANGE.rev().find(|p| !self.port_taken(*p))?;
        self.node_ports.insert(port);
        Some(port)
    }
}

/// The lab's service range.
pub fn service_range() -> Ipv4Cidr {
    SERVICE_CIDR
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cluster_ips_come_from_the_top_and_skip_taken_and_reserved_ones() {
        let svc = json!({"spec": {"clusterIP": "10.96.255.254", "clusterIPs": ["10.96.255.254"]}});
        let mut allocated = Allocated::of([&svc]);
        assert_eq!(
            allocated.cluster_ip(service_range()),
            Some(Ipv4Addr::new(10, 96, 255, 253))
        );
        assert_eq!(
            allocated.cluster_ip(service_range()),
            Some(Ipv4Addr::new(10, 96, 255, 252))
        );
    }

    #[test]
    fn a_full_range_allocates_nothing_and_never_the_reserved_address() {
        let tiny = Ipv4Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 30);
        let mut allocated = Allocated::default();
        assert_eq!(
            allocated.cluster_ip(tiny),
            Some(Ipv4Addr::new(10, 96, 0, 2))
        );
        assert_eq!(allocated.cluster_ip(tiny), None, "10.96.0.1 is reserved");
    }

    #[test]
    fn node_ports_skip_those_in_use_including_health_check_ports() {
        let svc = json!({"spec": {"ports": [{"port": 80, "nodePort": 32767}], "healthCheckNodePort": 32766}});
        let mut allocated = Allocated::of([&svc]);
        assert_eq!(allocated.node_port(), Some(32765));
        assert_eq!(allocated.node_port(), Some(32764));
    }
}
