//! This node as the model sees it: name, addresses, pod CIDRs and zone, from the Node object
//! and the command line.
//!
//! The Node object is authoritative unless a flag says otherwise: a flag given on the command
//! line replaces that field of the Node (an operator who sets `--node-ip` means it), and is
//! all there is when the source has no Node (the file source) or the Node never appears.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use k8s_openapi::api::core::v1::Node;

/// Label carrying a node's zone, which topology hints refer to.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Taint the cluster autoscaler puts on a node it is about to remove; kube-proxy reports
/// such a node as not eligible so that load balancers drain it first.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// An IPv4 prefix, `10.244.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR: expected ADDRESS/PREFIX, e.g. 10.244.1.0/24")]
    Syntax(String),
    #[error("{0:?} is not an IPv4 CIDR")]
    NotIpv4(String),
    #[error("prefix length in {0:?} is above 32")]
    PrefixTooLong(String),
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.to_owned()))?;
        let prefix_len: u8 = len.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        let addr: Ipv4Addr = match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => a,
            Ok(std::net::IpAddr::V6(_)) => return Err(CidrError::NotIpv4(s.to_owned())),
            Err(_) => return Err(CidrError::Syntax(s.to_owned())),
        };
        if prefix_len > 32 {
            return Err(CidrError::PrefixTooLong(s.to_owned()));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl Ipv4Cidr {
    /// The same prefix with the host bits cleared (`10.0.0.7/24` -> `10.0.0.0/24`).
    pub fn masked(self) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & mask),
            prefix_len: self.prefix_len,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What the Node object says about this node (the parts the datapath needs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// InternalIP then ExternalIP addresses, IPv4 only, without duplicates.
    pub ips: Vec<Ipv4Addr>,
    /// spec.podCIDRs (or spec.podCIDR), IPv4 only.
    pub pod_cidrs: Vec<Ipv4Cidr>,
    pub zone: Option<String>,
    /// False while the node is being deleted or drained by the cluster autoscaler.
    pub eligible: bool,
}

impl NodeInfo {
    /// Reads a Node; fields that do not parse (or are IPv6) are left out.
    pub fn from_node(node: &Node) -> Self {
        let mut ips = Vec::new();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        for wanted in ["InternalIP", "ExternalIP"] {
            for a in addresses.iter().filter(|a| a.type_ == wanted) {
                if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
        }
        let spec = node.spec.as_ref();
        let listed = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        let pod_cidrs = listed.iter().filter_map(|c| c.parse().ok()).collect();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned();
        let being_deleted = node.metadata.deletion_timestamp.is_some();
        let draining = spec
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == TO_BE_DELETED_TAINT);
        Self {
            ips,
            pod_cidrs,
            zone,
            eligible: !being_deleted && !draining,
        }
    }
}

/// Node fields given on the command line; each one given replaces the Node's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    pub ips: Vec<Ipv4Addr>,
    pub pod_cidrs: Vec<Ipv4Cidr>,
    pub zone: Option<String>,
}

/// This node: its name (fixed for the agent's life) and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    pub ips: Vec<Ipv4Addr>,
    pub pod_cidrs: Vec<Ipv4Cidr>,
    pub zone: Option<String>,
    pub eligible: bool,
}

impl ThisNode {
    /// A node known only by name (tests, and before the Node is read).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ips: Vec::new(),
            pod_cidrs: Vec::new(),
            zone: None,
            eligible: true,
        }
    }

    /// The node from what the API says (if anything) and the flags.
    pub fn merge(name: &str, api: Option<&NodeInfo>, flags: &NodeOverrides) -> Self {
        let api = api.cloned().unwrap_or(NodeInfo {
            eligible: true,
            ..Default::default()
        });
        Self {
            name: name.to_owned(),
            ips: if flags.ips.is_empty() {
                api.ips
            } else {
                flags.ips.clone()
            },
            pod_cidrs: if flags.pod_cidrs.is_empty() {
                api.pod_cidrs
            } else {
                flags.pod_cidrs.clone()
            },
            zone: flags.zone.clone().or(api.zone),
            eligible: api.eligible,
        }
    }

    /// True when a change from `self` to `other` can change any service's frontends (the
    /// zone picks topology hints, the addresses are NodePort frontends).
    pub fn changes_frontends(&self, other: &ThisNode) -> bool {
        self.zone != other.zone || self.ips != other.ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{NodeAddress, NodeSpec, NodeStatus, Taint},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    fn node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("worker".into()),
                labels: Some([(ZONE_LABEL.to_owned(), "zone-a".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:1::/64".into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "worker".into(),
                    },
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "203.0.113.7".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "172.18.0.3".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "fc00::3".into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_node_gives_its_ipv4_addresses_internal_first_cidrs_and_zone() {
        let info = NodeInfo::from_node(&node());
        assert_eq!(
            info.ips,
            [Ipv4Addr::new(172, 18, 0, 3), Ipv4Addr::new(203, 0, 113, 7)]
        );
        assert_eq!(info.pod_cidrs, ["10.244.1.0/24".parse().expect("cidr")]);
        assert_eq!(info.zone.as_deref(), Some("zone-a"));
        assert!(info.eligible);
    }

    #[test]
    fn a_node_being_deleted_or_drained_is_not_eligible() {
        let mut deleting = node();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!NodeInfo::from_node(&deleting).eligible);
        let mut drained = node();
        drained.spec.get_or_insert_with(Default::default).taints = Some(vec![Taint {
            key: TO_BE_DELETED_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        assert!(!NodeInfo::from_node(&drained).eligible);
    }

    #[test]
    fn the_old_single_pod_cidr_field_is_read_when_the_list_is_empty() {
        let mut n = node();
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = None;
        }
        assert_eq!(
            NodeInfo::from_node(&n).pod_cidrs,
            ["10.244.1.0/24".parse().expect("cidr")]
        );
    }

    #[test]
    fn flags_replace_the_node_fields_they_give() {
        let api = NodeInfo::from_node(&node());
        let flags = NodeOverrides {
            ips: vec![Ipv4Addr::new(10, 0, 0, 1)],
            pod_cidrs: vec![],
            zone: Some("zone-b".into()),
        };
        let merged = ThisNode::merge("worker", Some(&api), &flags);
        assert_eq!(merged.ips, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(merged.pod_cidrs, api.pod_cidrs);
        assert_eq!(merged.zone.as_deref(), Some("zone-b"));
        let flags_only = ThisNode::merge("worker", None, &flags);
        assert!(flags_only.pod_cidrs.is_empty() && flags_only.eligible);
    }

    #[test]
    fn cidrs_parse_and_reject_with_reasons() {
        assert_eq!(
            "10.244.0.0/16".parse::<Ipv4Cidr>().map(|c| c.to_string()),
            Ok("10.244.0.0/16".into())
        );
        assert!(matches!(
            "10.244.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "fd00::/64".parse::<Ipv4Cidr>(),
            Err(CidrError::NotIpv4(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::PrefixTooLong(_))
        ));
    }
}
