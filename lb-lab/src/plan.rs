//! The lab's address plan: which namespaces, interfaces and addresses exist (pure data).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::netns::PREFIX;

/// Port every pod's echo server listens on, TCP and UDP.
pub const ECHO_PORT: u16 = 8080;
/// Kubernetes namespace the lab's pods belong to.
pub const POD_NAMESPACE: &str = "default";
/// Namespace holding the "kind" network's bridge.
pub const NET_NS: &str = "lbk-net";
/// Namespace of the host / external client.
pub const HOST_NS: &str = "lbk-host";
/// The bridge joining host and nodes, inside [`NET_NS`].
pub const BRIDGE: &str = "br0";
/// The "kind" network.
pub const NODE_NETWORK: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(172, 18, 0, 0), 16);
/// The host's address on the "kind" network; nodes route everything else through it.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The cluster's pod subnet: every node's pod CIDR lies inside it (the agents'
/// `--cluster-cidr`, and what kindnet never masquerades to).
pub const CLUSTER_CIDR: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16);
/// Where Services' cluster IPs come from (not routed anywhere: only the agent knows them).
pub const SERVICE_CIDR: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 16);
/// Linux's limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Node names, in address order (control-plane is .2 and 10.244.0.0/24).
pub const NODE_NAMES: [&str; 3] = ["control-plane", "worker", "worker2"];
/// Each node's `topology.kubernetes.io/zone`: two zones, so that topology-aware routing has a
/// same-zone pair (control-plane, worker) and a node alone in its zone (worker2).
const NODE_ZONES: [&str; 3] = ["zone-a", "zone-a", "zone-b"];
/// The label kubelet and cloud providers put a node's zone in.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Pods on every node: (role, app label).
const POD_ROLES: [(&str, &str); 3] = [("echo-1", "echo"), ("echo-2", "echo"), ("client", "client")];

/// An IPv4 prefix such as 10.244.1.0/24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A simulated Kind node: a namespace that routes and forwards for its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Kubernetes node name, e.g. `worker`.
    pub name: String,
    /// Network namespace, e.g. `lbk-worker`.
    pub ns: String,
    /// Address on `eth0` in the "kind" network, e.g. 172.18.0.3.
    pub ip: Ipv4Addr,
    /// The node's pod CIDR, e.g. 10.244.1.0/24.
    pub pod_cidr: Ipv4Cidr,
    /// Pods' default gateway: the address on every node-side pod veth, e.g. 10.244.1.1.
    pub pod_gateway: Ipv4Addr,
    /// Name of the bridge port in [`NET_NS`] that leads to this node.
    pub bridge_port: String,
    /// The node's topology zone ([`ZONE_LABEL`]), e.g. `zone-a`.
    pub zone: String,
}

/// A named port of a pod's container, as `spec.containers[].ports[]` would list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
}

/// The echo server's ports. Kubernetes resolves a named targetPort by name *and* protocol, so
/// TCP and UDP need different names even though the number is the same (agnhost netexec uses
/// the same names).
pub const POD_PORTS: [ContainerPort; 2] = [
    ContainerPort {
        name: "http",
        protocol: "TCP",
        port: ECHO_PORT,
    },
    ContainerPort {
        name: "udp",
        protocol: "UDP",
        port: ECHO_PORT,
    },
];

/// A simulated pod: a namespace with one `eth0` running `lb-lab echo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Node the pod runs on, e.g. `worker`.
    pub node: String,
    /// Kubernetes pod name, unique in the lab and what the echo server answers to `/hostname`,
    /// e.g. `worker-echo-1`.
    pub name: String,
    /// The pod's role on its node, e.g. `echo-1` or `client`.
    pub role: String,
    /// Network namespace, e.g. `lbk-worker-echo-1`.
    pub ns: String,
    /// Address on the pod's `eth0`.
    pub ip: Ipv4Addr,
    /// Kubernetes labels, e.g. `app=echo`.
    pub labels: BTreeMap<String, String>,
    /// Node-side end of the pod's veth (starts with `veth`, where the agent attaches).
    pub veth: String,
}

impl Pod {
    /// The container ports the pod declares (the echo server's).
    pub fn ports(&self) -> &'static [ContainerPort] {
        &POD_PORTS
    }

    /// Whether every `key=value` of `selector` is among the pod's labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// The whole lab: nodes and pods with their names and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
}

impl Plan {
    /// The lab as DEVELOPERS.md describes it: three nodes, three pods each.
    pub fn kind() -> Self {
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for ((index, node_name), zone) in (0u8..).zip(NODE_NAMES).zip(NODE_ZONES) {
            let node = Node {
                name: node_name.to_string(),
                ns: format!("{PREFIX}{node_name}"),
                ip: Ipv4Addr::new(172, 18, 0, 2 + index),
                pod_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 244, index, 0), 24),
                pod_gateway: Ipv4Addr::new(10, 244, index, 1),
                bridge_port: node_name.to_string(),
                zone: zone.to_string(),
            };
            for (slot, (role, app)) in (0u8..).zip(POD_ROLES) {
                let name = format!("{node_name}-{role}");
                pods.push(Pod {
                    node: node.name.clone(),
                    ns: format!("{PREFIX}{name}"),
                    ip: Ipv4Addr::new(10, 244, index, 2 + slot),
                    // `node` lets a Service select the pods of one node, so tests can choose
                    // same-node or cross-node backends.
                    labels: BTreeMap::from([
                        ("app".to_string(), app.to_string()),
                        ("node".to_string(), node_name.to_string()),
                    ]),
                    // The node index keeps names unique lab-wide, which makes agent logs clearer.
                    veth: format!("veth{index}-{role}"),
                    role: role.to_string(),
                    name,
                });
            }
            nodes.push(node);
        }
        Self { nodes, pods }
    }

    /// Every namespace of the lab, in creation order (bridge, host, nodes, pods).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![NET_NS.to_string(), HOST_NS.to_string()];
        all.extend(self.nodes.iter().map(|n| n.ns.clone()));
        all.extend(self.pods.iter().map(|p| p.ns.clone()));
        all
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod called `name`: its pod name (`worker-echo-1`) or namespace (`lbk-worker-echo-1`).
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name || p.ns == name)
    }

    /// The zone of node `node`, if the lab has such a node.
    pub fn zone_of(&self, node: &str) -> Option<&str> {
        self.node(node).map(|n| n.zone.as_str())
    }

    /// Pods on node `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nodes_follow_the_developers_table() {
        let plan = Plan::kind();
        let got: Vec<_> = plan
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.ns.as_str(),
                    n.ip.to_string(),
                    n.pod_cidr.to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "control-plane",
                    "lbk-control-plane",
                    "172.18.0.2".into(),
                    "10.244.0.0/24".into()
                ),
                (
                    "worker",
                    "lbk-worker",
                    "172.18.0.3".into(),
                    "10.244.1.0/24".into()
                ),
                (
                    "worker2",
                    "lbk-worker2",
                    "172.18.0.4".into(),
                    "10.244.2.0/24".into()
                ),
            ]
        );
        for node in &plan.nodes {
            assert!(NODE_NETWORK.contains(node.ip));
            assert!(node.pod_cidr.contains(node.pod_gateway));
            assert!(CLUSTER_CIDR.contains(node.pod_cidr.addr));
        }
    }

    #[test]
    fn every_node_has_two_echo_pods_and_a_client_inside_its_pod_cidr() {
        let plan = Plan::kind();
        assert_eq!(plan.pods.len(), 9);
        for node in &plan.nodes {
            let pods: Vec<_> = plan.pods_on(&node.name).collect();
            let roles: Vec<_> = pods.iter().map(|p| p.role.as_str()).collect();
            assert_eq!(roles, ["echo-1", "echo-2", "client"]);
            for (pod, last) in pods.iter().zip(2u8..) {
                assert!(node.pod_cidr.contains(pod.ip));
                assert_eq!(pod.ip.octets()[3], last);
                assert_eq!(pod.ns, format!("lbk-{}-{}", node.name, pod.role));
                assert_eq!(pod.name, format!("{}-{}", node.name, pod.role));
            }
        }
        let app = |p: &Pod| p.labels["app"].clone();
        assert_eq!(plan.pod("worker-echo-2").map(app).as_deref(), Some("echo"));
        assert_eq!(
            plan.pod("lbk-worker2-client").map(app).as_deref(),
            Some("client")
        );
    }

    #[test]
    fn names_are_unique_and_veths_fit_linux_interface_names() {
        let plan = Plan::kind();
        let namespaces = plan.namespaces();
        assert_eq!(
            namespaces.len(),
            namespaces.iter().collect::<HashSet<_>>().len()
        );
        assert!(namespaces.iter().all(|n| n.starts_with(PREFIX)));
        let ips: HashSet<_> = plan.pods.iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), plan.pods.len());
        let veths: HashSet<_> = plan.pods.iter().map(|p| p.veth.as_str()).collect();
        assert_eq!(veths.len(), plan.pods.len());
        for pod in &plan.pods {
            assert!(pod.veth.starts_with("veth"), "{}", pod.veth);
            assert!(pod.veth.len() <= MAX_IFNAME, "{} too long", pod.veth);
        }
        for node in &plan.nodes {
            assert!(node.bridge_port.len() <= MAX_IFNAME);
        }
    }

    #[test]
    fn selectors_match_on_every_label() {
        let plan = Plan::kind();
        let echo = BTreeMap::from([("app".to_string(), "echo".to_string())]);
        assert_eq!(plan.pods.iter().filter(|p| p.matches(&echo)).count(), 6);
        let none = BTreeMap::from([
            ("app".to_string(), "echo".to_string()),
            ("tier".to_string(), "web".to_string()),
        ]);
        assert_eq!(plan.pods.iter().filter(|p| p.matches(&none)).count(), 0);
    }

    #[test]
    fn cidr_contains_checks_the_prefix_only() {
        let cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 244, 1, 0), 24);
        assert!(cidr.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert!(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).contains(Ipv4Addr::BROADCAST));
    }
}
