//! Test builders, including the service set of kube-proxy's own `TestOverallIPTablesRules` /
//! `TestOverallNFTablesRules`, whose expected output is the strongest check we have.

use std::net::Ipv4Addr;

use super::{BenchEndpoint, BenchService, Cidr, Protocol, ProxyConfig};

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

pub fn cidr(s: &str) -> Cidr {
    let (addr, prefix) = s.split_once('/').expect("test CIDR");
    Cidr::new(ip(addr), prefix.parse().expect("prefix")).expect("valid CIDR")
}

/// Endpoint `ip:80`.
pub fn ep(addr: &str, local: bool) -> BenchEndpoint {
    BenchEndpoint {
        ip: ip(addr),
        port: 80,
        local,
    }
}

/// `ns/name:p80`, TCP, ClusterIP `172.30.0.<last>`, port 80, no endpoints.
pub fn svc(ns: &str, name: &str, last: u8) -> BenchService {
    BenchService::cluster_ip(
        ns,
        name,
        "p80",
        Protocol::Tcp,
        Ipv4Addr::new(172, 30, 0, last),
        80,
    )
}

/// The six services of kube-proxy's overall-rules tests, in their order.
pub fn overall_services() -> Vec<BenchService> {
    // ClusterIP service.
    let mut svc1 = svc("ns1", "svc1", 41);
    svc1.endpoints = vec![ep("10.180.0.1", false)];

    // LoadBalancer with Local traffic policy; its only endpoint is on another node.
    let mut svc2 = svc("ns2", "svc2", 42);
    svc2.external_local = true;
    svc2.node_port = Some(3001);
    svc2.lb_ips = vec![ip("1.2.3.4")];
    svc2.external_ips = vec![ip("192.168.99.22")];
    svc2.health_check_node_port = Some(30000);
    svc2.endpoints = vec![ep("10.180.0.2", false)];

    // NodePort service.
    let mut svc3 = svc("ns3", "svc3", 43);
    svc3.node_port = Some(3003);
    svc3.endpoints = vec![ep("10.180.0.3", false)];

    // External IP service, one remote and one local endpoint.
    let mut svc4 = svc("ns4", "svc4", 44);
    svc4.external_ips = vec![ip("192.168.99.33")];
    svc4.endpoints = vec![ep("10.180.0.4", false), ep("10.180.0.5", true)];

    // LoadBalancer with Cluster policy, source ranges and session affinity. (Its health
    // check port is ignored: kube-proxy only opens it for ETP=Local.)
    let mut svc5 = svc("ns5", "svc5", 45);
    svc5.node_port = Some(3002);
    svc5.lb_ips = vec![ip("5.6.7.8")];
    svc5.health_check_node_port = Some(30000);
    svc5.lb_source_ranges = vec![cidr("203.0.113.0/25")];
    svc5.affinity_timeout_s = Some(10800);
    svc5.endpoints = vec![ep("10.180.0.3", false)];

    // ClusterIP service with no endpoints.
    let svc6 = svc("ns6", "svc6", 46);

    vec![svc1, svc2, svc3, svc4, svc5, svc6]
}

/// The settings of kube-proxy's iptables `NewFakeProxier`: pod CIDR 10.0.0.0/8, NodePorts on
/// every local address, localhost NodePorts on, nfacct counters present, and a fake
/// iptables without `--random-fully`.
pub fn iptables_fake_proxier_config() -> ProxyConfig {
    ProxyConfig {
        cluster_cidr: Some(cidr("10.0.0.0/8")),
        node_ips: Vec::new(),
        primary_node_ip: ip("192.168.0.2"),
        service_cidrs: vec![cidr("172.30.0.0/16")],
        masquerade_all: false,
        masquerade_bit: 14,
        localhost_nodeports: true,
        random_fully: false,
        conntrack_tcp_liberal: false,
        nfacct: true,
    }
}

/// The settings of kube-proxy's nftables `NewFakeProxier`: NodePorts on 192.168.0.2 only,
/// service CIDR 172.30.0.0/16.
pub fn nftables_fake_proxier_config() -> ProxyConfig {
    ProxyConfig {
        node_ips: vec![ip("192.168.0.2")],
        nfacct: false,
        random_fully: true,
        ..iptables_fake_proxier_config()
    }
}
