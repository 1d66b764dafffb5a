//! kube-proxy baselines: the exact ruleset kube-proxy (v1.30–1.31) writes for a set of
//! Services and EndpointSlices, in iptables mode and in nftables mode, and the means to load
//! it into a named network namespace so the benchmarks can compare our datapath against the
//! real thing (same chains, same order, same matches: a first packet walks as many rules as
//! it would in a cluster).
//!
//! The input model is deliberately small and self-contained (no lb-agent types): one
//! [`BenchService`] is one *service port*, the unit kube-proxy builds chains for.

// Used by the bench modes iptables/nftables.
#![allow(dead_code)]

pub mod apply;
pub mod chain_names;
pub mod expected_view;
#[cfg(test)]
mod fixtures;
pub mod iptables;
pub mod nftables;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
};

/// The L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The lower-case spelling kube-proxy hashes into chain names and writes into rules
    /// (`-m tcp -p tcp`, `meta l4proto tcp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An IPv4 prefix such as `10.0.0.0/8`, printed the way kube-proxy prints `net.IPNet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// The prefix `addr/prefix` with host bits cleared (as Go's `net.ParseCIDR` does);
    /// `None` if `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        (prefix <= 32).then(|| Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One endpoint of a service port (an EndpointSlice address with the slice's port). All
/// endpoints are taken as ready; `local` says it runs on the node being programmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BenchEndpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub local: bool,
}

impl BenchEndpoint {
    /// `ip:port`, kube-proxy's `Endpoint.String()`: hashed into KUBE-SEP names, used as the
    /// DNAT target, and the key endpoints are sorted by.
    pub fn addr_port(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One service port with its endpoints: what kube-proxy turns into one KUBE-SVC chain (one
/// `service-…` chain in nftables mode). Internal traffic policy is always Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BenchService {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for an unnamed single port.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress` IPs.
    pub lb_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges`; only used when there are `lb_ips`.
    pub lb_source_ranges: Vec<Cidr>,
    /// externalTrafficPolicy=Local.
    pub external_local: bool,
    /// kube-proxy only opens it for externalTrafficPolicy=Local services.
    pub health_check_node_port: Option<u16>,
    /// sessionAffinity=ClientIP with this timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    pub endpoints: Vec<BenchEndpoint>,
}

impl BenchService {
    /// A plain ClusterIP service port with no endpoints yet.
    pub fn cluster_ip(
        namespace: &str,
        name: &str,
        port_name: &str,
        protocol: Protocol,
        cluster_ip: Ipv4Addr,
        port: u16,
    ) -> BenchService {
        BenchService {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
            cluster_ip,
            port,
            node_port: None,
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            lb_source_ranges: Vec::new(),
            external_local: false,
            health_check_node_port: None,
            affinity_timeout_s: None,
            endpoints: Vec::new(),
        }
    }

    /// `ns/name:port` (`ns/name` for an unnamed port): kube-proxy's `ServicePortName.String()`,
    /// hashed into chain names and written into comments.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// Reachable from outside through a NodePort, an external IP or a load-balancer IP
    /// (`ServicePort.ExternallyAccessible()`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.lb_ips.is_empty()
    }

    /// externalTrafficPolicy=Local only means something for externally reachable services.
    pub fn external_policy_local(&self) -> bool {
        self.external_local && self.externally_accessible()
    }

    /// The health-check NodePort kube-proxy opens (filter KUBE-NODEPORTS ACCEPT).
    pub fn effective_health_check_node_port(&self) -> Option<u16> {
        self.health_check_node_port
            .filter(|_| self.external_policy_local())
    }

    /// Endpoints in the order kube-proxy uses them: its endpoint cache sorts them by
    /// `ip:port` as a string (so `10.0.0.10:80` comes before `10.0.0.2:80`).
    pub fn sorted_endpoints(&self) -> Vec<&BenchEndpoint> {
        let mut eps: Vec<&BenchEndpoint> = self.endpoints.iter().collect();
        eps.sort_by_cached_key(|ep| ep.addr_port());
        eps
    }

    /// kube-proxy's `CategorizeEndpoints` for ready endpoints, internal policy Cluster and no
    /// topology hints.
    pub(crate) fn categorize(&self) -> Categorized<'_> {
        let cluster = self.sorted_endpoints();
        let local = if self.external_policy_local() {
            cluster.iter().copied().filter(|ep| ep.local).collect()
        } else {
            Vec::new()
        };
        Categorized {
            has_endpoints: !cluster.is_empty(),
            // Every ready endpoint is in `cluster`, so it covers the local ones too.
            reachable: cluster.clone(),
            cluster,
            local,
        }
    }
}

/// The Services (by namespace/name, as kube-proxy tracks changes) whose ports or endpoints
/// differ between two snapshots: the ones a partial sync rewrites.
pub(crate) fn updated_services(
    previous: &[BenchService],
    current: &[BenchService],
) -> HashSet<(String, String)> {
    fn by_service(services: &[BenchService]) -> HashMap<(&str, &str), Vec<&BenchService>> {
        let mut map: HashMap<(&str, &str), Vec<&BenchService>> = HashMap::new();
        for svc in services {
            map.entry((svc.namespace.as_str(), svc.name.as_str()))
                .or_default()
                .push(svc);
        }
        map
    }
    let (before, after) = (by_service(previous), by_service(current));
    before
        .keys()
        .chain(after.keys())
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .collect()
}

/// Which endpoints serve which traffic class.
pub(crate) struct Categorized<'a> {
    /// For Cluster traffic policy (KUBE-SVC / `service-…`).
    pub cluster: Vec<&'a BenchEndpoint>,
    /// For Local traffic policy (KUBE-SVL / `local-…`); empty unless ETP=Local.
    pub local: Vec<&'a BenchEndpoint>,
    /// Every endpoint that gets a KUBE-SEP / `endpoint-…` chain.
    pub reachable: Vec<&'a BenchEndpoint>,
    /// Any usable endpoint anywhere in the cluster.
    pub has_endpoints: bool,
}

/// Node-wide kube-proxy settings that change the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `--cluster-cidr` (local traffic detector by CIDR). `None`: no detector, so no
    /// "masquerade off-cluster traffic" rule and no pod short-circuit in KUBE-EXT.
    pub cluster_cidr: Option<Cidr>,
    /// `--nodeport-addresses` as the node IPs NodePorts answer on. Empty: every local
    /// address (`addrtype --dst-type LOCAL` / `fib daddr type local`), iptables mode's default.
    pub node_ips: Vec<Ipv4Addr>,
    /// The node's primary IP: a LoadBalancer source range containing it also admits the
    /// LB IPs themselves as sources (hairpin from the node).
    pub primary_node_ip: Ipv4Addr,
    /// Service CIDRs; nftables mode drops traffic to unallocated ClusterIPs in them.
    pub service_cidrs: Vec<Cidr>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (default 14, mark 0x4000).
    pub masquerade_bit: u8,
    /// `--iptables-localhost-nodeports` (default true; iptables mode only).
    pub localhost_nodeports: bool,
    /// iptables supports `MASQUERADE --random-fully` (every iptables since 1.6.2).
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set, so kube-proxy does not drop
    /// ctstate INVALID.
    pub conntrack_tcp_liberal: bool,
    /// kube-proxy could create its nfacct counters (`ct_state_invalid_dropped_pkts`,
    /// `localhost_nps_accepted_pkts`) and adds `-m nfacct` matches for them. Off by
    /// default: the counters must exist before iptables-restore accepts the rules.
    pub nfacct: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            cluster_cidr: Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16),
            node_ips: Vec::new(),
            primary_node_ip: Ipv4Addr::new(192, 168, 0, 2),
            service_cidrs: Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 12)
                .into_iter()
                .collect(),
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_nodeports: true,
            random_fully: true,
            conntrack_tcp_liberal: false,
            nfacct: false,
        }
    }
}

impl ProxyConfig {
    /// kube-proxy's settings on a node of the lab (as the lab's agents are started): pod
    /// CIDR 10.244.0.0/16, services in 10.96.0.0/16, NodePorts on every local address.
    pub fn lab_node(node_ip: Ipv4Addr) -> ProxyConfig {
        ProxyConfig {
            cluster_cidr: Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16),
            primary_node_ip: node_ip,
            service_cidrs: Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 16)
                .into_iter()
                .collect(),
            ..ProxyConfig::default()
        }
    }

    /// The masquerade mark as kube-proxy spells it: Go's `%#08x`, eight hex digits after
    /// `0x` (`0x00004000`; `iptables-save` prints it back as `0x4000`).
    pub fn masquerade_mark(&self) -> String {
        format!("0x{:08x}", 1u32 << self.masquerade_bit)
    }

    /// kube-proxy turns localhost NodePorts off when `--nodeport-addresses` excludes
    /// loopback.
    pub(crate) fn effective_localhost_nodeports(&self) -> bool {
        self.localhost_nodeports
            && (self.node_ips.is_empty() || self.node_ips.iter().any(|ip| ip.is_loopback()))
    }
}

/// `count` ClusterIP services with `endpoints_per_service` endpoints each, numbered from 0:
/// service `i` is `bench/svc-i:http` on `10.96.x.y:80`, its endpoints on `10.244.x.y:8080`,
/// none of them local. Addresses stay unique up to 65 000 services and 65 000 endpoints in
/// total.
pub fn synthetic_services(count: usize, endpoints_per_service: usize) -> Vec<BenchService> {
    let addr = |base: [u8; 2], n: usize| {
        let n = n as u32 + 1;
        Ipv4Addr::new(base[0], base[1], (n >> 8) as u8, n as u8)
    };
    let mut next_endpoint = 0;
    (0..count)
        .map(|i| {
            let mut svc = BenchService::cluster_ip(
                "bench",
                &format!("svc-{i}"),
                "http",
                Protocol::Tcp,
                addr([10, 96], i),
                80,
            );
            svc.endpoints = (0..endpoints_per_service)
                .map(|_| {
                    next_endpoint += 1;
                    BenchEndpoint {
                        ip: addr([10, 244], next_endpoint - 1),
                        port: 8080,
                        local: false,
                    }
                })
                .collect();
            svc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_name_string_omits_the_colon_for_unnamed_ports() {
        let mut svc = BenchService::cluster_ip(
            "ns1",
            "svc1",
            "p80",
            Protocol::Tcp,
            Ipv4Addr::new(172, 30, 0, 41),
            80,
        );
        assert_eq!(svc.port_name_string(), "ns1/svc1:p80");
        svc.port_name.clear();
        assert_eq!(svc.port_name_string(), "ns1/svc1");
    }

    #[test]
    fn endpoints_sort_as_strings_like_kube_proxys_cache() {
        let mut svc = BenchService::cluster_ip(
            "ns",
            "s",
            "",
            Protocol::Tcp,
            Ipv4Addr::new(10, 96, 0, 1),
            80,
        );
        for last in [2, 10, 1] {
            svc.endpoints.push(BenchEndpoint {
                ip: Ipv4Addr::new(10, 0, 0, last),
                port: 80,
                local: false,
            });
        }
        let order: Vec<String> = svc
            .sorted_endpoints()
            .iter()
            .map(|e| e.addr_port())
            .collect();
        assert_eq!(order, ["10.0.0.10:80", "10.0.0.1:80", "10.0.0.2:80"]);
    }

    #[test]
    fn masquerade_mark_is_spelled_like_go_percent_hash_08x() {
        assert_eq!(ProxyConfig::default().masquerade_mark(), "0x00004000");
    }

    #[test]
    fn cidr_clears_host_bits_and_matches() {
        let c = Cidr::new(Ipv4Addr::new(203, 0, 113, 7), 25).unwrap();
        assert_eq!(c.to_string(), "203.0.113.0/25");
        assert!(c.contains(Ipv4Addr::new(203, 0, 113, 127)));
        assert!(!c.contains(Ipv4Addr::new(203, 0, 113, 128)));
        assert!(Cidr::new(Ipv4Addr::UNSPECIFIED, 0)
            .unwrap()
            .contains(Ipv4Addr::BROADCAST));
        assert!(Cidr::new(Ipv4Addr::UNSPECIFIED, 33).is_none());
    }

    #[test]
    fn categorize_splits_local_endpoints_only_for_external_local() {
        let mut svc = fixtures::svc("ns", "s", 80);
        svc.endpoints = vec![
            fixtures::ep("10.0.0.1", false),
            fixtures::ep("10.0.0.2", true),
        ];
        let c = svc.categorize();
        assert!(c.local.is_empty(), "ETP=Cluster has no local chain");
        svc.external_local = true;
        assert!(
            svc.categorize().local.is_empty(),
            "not externally accessible"
        );
        svc.node_port = Some(30080);
        let c = svc.categorize();
        assert_eq!(c.local.len(), 1);
        assert_eq!(c.cluster.len(), 2);
        assert_eq!(c.reachable.len(), 2);
        assert!(c.has_endpoints);
    }

    #[test]
    fn synthetic_services_have_unique_addresses() {
        let svcs = synthetic_services(300, 3);
        let mut vips: Vec<_> = svcs.iter().map(|s| s.cluster_ip).collect();
        vips.dedup();
        assert_eq!(vips.len(), 300);
        let mut eps: Vec<_> = svcs
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| e.ip)
            .collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), 900);
        assert_eq!(svcs[256].cluster_ip, Ipv4Addr::new(10, 96, 1, 1));
    }
}
