//! The datapath-wide settings in LB_CONFIG besides the hash seed: this node's address (the
//! source of masqueraded flows), the cluster CIDR (who is "inside"), the source ports
//! masquerading may use and the conntrack timeouts. They come from the command line and the
//! Node, and are written whenever they change; the hash seed already in the map is always
//! kept.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use lb_common::{conntrack::snat_ports, Config, CtTimeouts};

use crate::model::node::{CidrError, Ipv4Cidr, ThisNode};

/// Inclusive range of masquerade source ports (`--snat-port-range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for SnatPortRange {
    fn default() -> Self {
        Self {
            min: snat_ports::MIN,
            max: snat_ports::MAX,
        }
    }
}

/// Below this, masqueraded flows would take the ports of well-known services on the node.
pub const SNAT_PORT_FLOOR: u16 = 1024;

impl FromStr for SnatPortRange {
    type Err = String;

    /// `MIN-MAX`, both inclusive, `MIN <= MAX`, `MIN >= 1024`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (min, max) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range like 61000-65535"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} in {s:?} is not a port number (0..=65535)"))
        };
        let (min, max) = (port(min)?, port(max)?);
        if min > max {
            return Err(format!("{s:?} is empty: the first port is above the last"));
        }
        if min < SNAT_PORT_FLOOR {
            return Err(format!(
                "{s:?} starts below {SNAT_PORT_FLOOR}: masqueraded flows would take well-known ports"
            ));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for SnatPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl SnatPortRange {
    /// Whether the two inclusive ranges share a port.
    pub fn overlaps(&self, other: &SnatPortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// Why a source port range cannot be used on this node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnatRangeError {
    #[error("--snat-port-range {snat} overlaps this node's ephemeral ports (net.ipv4.ip_local_port_range {local}): a masqueraded flow could take the tuple of one of the node's own connections, whose replies the datapath would then steal. Pick a range outside it (the default 61000-65535 is above Linux's default 32768-60999), or shrink ip_local_port_range")]
    Ephemeral {
        snat: SnatPortRange,
        local: SnatPortRange,
    },
    #[error("--snat-port-range {snat} overlaps the NodePort range {node_ports} (--node-port-range): a backend's connection to a NodePort could be taken for a reply. Pick a range outside it")]
    NodePorts {
        snat: SnatPortRange,
        node_ports: SnatPortRange,
    },
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Where Linux keeps the ephemeral port range of the calling thread's network namespace.
pub const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Checks that masquerade ports cannot collide with the node's own connections (its
/// ephemeral range, `local`) or with NodePorts: the datapath cannot see those flows, so a
/// shared port would let it take their replies. Refused at start, before any change.
pub fn check_snat_range(
    snat: SnatPortRange,
    local: SnatPortRange,
    node_ports: SnatPortRange,
) -> Result<(), SnatRangeError> {
    if snat.overlaps(&local) {
        return Err(SnatRangeError::Ephemeral { snat, local });
    }
    if snat.overlaps(&node_ports) {
        return Err(SnatRangeError::NodePorts { snat, node_ports });
    }
    Ok(())
}

/// This network namespace's ephemeral port range, from `path` (two numbers).
pub fn read_local_port_range(path: &str) -> Result<SnatPortRange, SnatRangeError> {
    let fail = |reason: String| SnatRangeError::Read {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(min)), Some(Ok(max))) if min <= max => Ok(SnatPortRange { min, max }),
        _ => Err(fail(format!("{:?} is not two port numbers", text.trim()))),
    }
}

/// `--cluster-cidr` as kube-proxy takes it: empty (unknown), or a comma-separated list with
/// at most one IPv4 CIDR (IPv6 ones, for a dual-stack cluster, are passed over).
pub fn parse_cluster_cidr(s: &str) -> Result<Option<Ipv4Cidr>, String> {
    let mut found = None;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<Ipv4Cidr>() {
            Ok(c) if found.is_none() => found = Some(c.masked()),
            Ok(_) => return Err(format!("{s:?} has more than one IPv4 CIDR")),
            Err(CidrError::NotIpv4(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(found)
}

/// What the agent writes into LB_CONFIG besides the hash seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathSettings {
    /// This node's InternalIP (its first address); `None` disables masquerading.
    pub node_addr: Option<Ipv4Addr>,
    /// `None`: unknown, so no ClusterIP client counts as outside the cluster.
    pub cluster_cidr: Option<Ipv4Cidr>,
    pub snat_ports: SnatPortRange,
    /// Conntrack timeouts (zero fields: the datapath's defaults).
    pub ct_timeouts: CtTimeouts,
}

impl DatapathSettings {
    /// The settings with the node's address taken from `node` (InternalIP first).
    pub fn for_node(self, node: &ThisNode) -> Self {
        Self {
            node_addr: node.ips.first().copied(),
            ..self
        }
    }

    /// `config` with these settings in place; the hash seed is kept.
    pub fn apply(&self, config: Config) -> Config {
        let base = Config {
            hash_seed: config.hash_seed,
            node_addr: self.node_addr.map_or(0, lb_common::addr_be),
            snat_port_min: self.snat_ports.min,
            snat_port_max: self.snat_ports.max,
            ct_timeouts: self.ct_timeouts,
            ..Config::default()
        };
        match self.cluster_cidr {
            Some(c) => base.with_cluster_cidr(c.addr, c.prefix_len),
            None => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_port_ranges_are_validated() {
        assert_eq!(
            "61000-65535".parse(),
            Ok(SnatPortRange {
                min: 61_000,
                max: 65_535
            })
        );
        assert_eq!(SnatPortRange::default().to_string(), "61000-65535");
        assert!("65535-61000"
            .parse::<SnatPortRange>()
            .unwrap_err()
            .contains("empty"));
        assert!("100-200"
            .parse::<SnatPortRange>()
            .unwrap_err()
            .contains("1024"));
        assert!("61000".parse::<SnatPortRange>().is_err());
        assert!("61000-70000".parse::<SnatPortRange>().is_err());
    }

    #[test]
    fn cluster_cidrs_take_the_ipv4_one_of_a_dual_stack_list() {
        let want = Some("10.244.0.0/16".parse().expect("cidr"));
        assert_eq!(parse_cluster_cidr("10.244.0.0/16"), Ok(want));
        assert_eq!(
            parse_cluster_cidr("fd00:10:244::/56,10.244.3.4/16"),
            Ok(want)
        );
        assert_eq!(parse_cluster_cidr(""), Ok(None));
        assert!(parse_cluster_cidr("10.244.0.0/16,10.245.0.0/16").is_err());
        assert!(parse_cluster_cidr("10.244.0.0").is_err());
    }

    #[test]
    fn settings_fill_the_config_and_keep_the_seed() {
        let settings = DatapathSettings {
            node_addr: Some(Ipv4Addr::new(172, 18, 0, 3)),
            cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
            snat_ports: SnatPortRange {
                min: 62_000,
                max: 63_000,
            },
            ct_timeouts: CtTimeouts {
                udp_s: 5,
                ..Default::default()
            },
        };
        let c = settings.apply(Config {
            hash_seed: 7,
            ..Default::default()
        });
        assert_eq!(c.hash_seed, 7);
        assert_eq!(
            lb_common::addr_from_be(c.node_addr),
            settings.node_addr.unwrap()
        );
        assert_eq!(
            (
                lb_common::addr_from_be(c.cluster_cidr_addr),
                c.cluster_cidr_mask.to_ne_bytes()
            ),
            (Ipv4Addr::new(10, 244, 0, 0), [255, 255, 0, 0])
        );
        assert_eq!((c.snat_port_min, c.snat_port_max), (62_000, 63_000));
        assert_eq!(c.ct_timeouts.udp_s, 5);
        let unknown = DatapathSettings::default().apply(Config::default());
        assert_eq!((unknown.node_addr, unknown.cluster_cidr_mask), (0, 0));
        assert_eq!(unknown.snat_port_min, snat_ports::MIN);
    }

    #[test]
    fn a_snat_range_must_stay_clear_of_ephemeral_ports_and_node_ports() {
        let r = |s: &str| s.parse::<SnatPortRange>().expect("range");
        let node_ports = r("30000-32767");
        assert_eq!(
            check_snat_range(r("61000-65535"), r("32768-60999"), node_ports),
            Ok(())
        );
        let e = check_snat_range(r("60000-65535"), r("32768-60999"), node_ports)
            .expect_err("overlaps the ephemeral range");
        assert!(
            e.to_string().contains("ip_local_port_range 32768-60999"),
            "{e}"
        );
        let e = check_snat_range(r("32000-33000"), r("40000-60999"), node_ports)
            .expect_err("overlaps the node ports");
        assert!(e.to_string().contains("--node-port-range"), "{e}");
        // Ranges that only touch at their ends overlap: both ends are inclusive.
        assert!(r("2000-3000").overlaps(&r("3000-4000")));
        assert!(!r("2000-2999").overlaps(&r("3000-4000")));
    }

    #[test]
    fn the_local_port_range_is_read_as_two_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("range");
        std::fs::write(&path, "32768\t60999\n").expect("write");
        let path = path.to_str().expect("utf-8");
        assert_eq!(
            read_local_port_range(path),
            Ok(SnatPortRange {
                min: 32_768,
                max: 60_999
            })
        );
        std::fs::write(path, "nonsense").expect("write");
        assert!(read_local_port_range(path).is_err());
        // This machine's own file reads too.
        read_local_port_range(LOCAL_PORT_RANGE).expect("this namespace's range");
    }

    #[test]
    fn the_node_address_is_the_first_one() {
        let mut node = ThisNode::named("n");
        node.ips = vec![Ipv4Addr::new(172, 18, 0, 3), Ipv4Addr::new(203, 0, 113, 7)];
        assert_eq!(
            DatapathSettings::default().for_node(&node).node_addr,
            Some(Ipv4Addr::new(172, 18, 0, 3))
        );
    }
}
