//! kube-proxy's chain, set and map names. They are hashes of the service port name, so the
//! baseline must compute them exactly: a different name would still work, but it would not
//! be kube-proxy's ruleset.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::{BenchEndpoint, BenchService};

/// Go's `base32.StdEncoding.EncodeToString(sha256(input))`; callers take a prefix of it.
fn sha256_base32(input: &str) -> String {
    BASE32.encode(&Sha256::digest(input.as_bytes()))
}

/// kube-proxy's `portProtoHash`: 16 characters of base32(sha256(`ns/svc:port` + `tcp`)),
/// short enough for iptables' 28-character chain names.
pub fn port_proto_hash(svc: &BenchService) -> String {
    let mut hash = sha256_base32(&(svc.port_name_string() + svc.protocol.lower()));
    hash.truncate(16);
    hash
}

/// The per-service chain names of iptables mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesChains {
    /// `KUBE-SVC-…`: dispatch to all endpoints (Cluster traffic policy).
    pub cluster: String,
    /// `KUBE-SVL-…`: dispatch to local endpoints (Local traffic policy).
    pub local: String,
    /// `KUBE-EXT-…`: entry for NodePort / external IP / LB IP traffic.
    pub external: String,
    /// `KUBE-FW-…`: loadBalancerSourceRanges filter.
    pub firewall: String,
}

impl IptablesChains {
    pub fn for_service(svc: &BenchService) -> IptablesChains {
        let hash = port_proto_hash(svc);
        IptablesChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }
}

/// `KUBE-SEP-…`: 16 characters of base32(sha256(`ns/svc:port` + `tcp` + `ip:port`)).
pub fn iptables_endpoint_chain(svc: &BenchService, ep: &BenchEndpoint) -> String {
    let hash = sha256_base32(&(svc.port_name_string() + svc.protocol.lower() + &ep.addr_port()));
    format!("KUBE-SEP-{}", &hash[..16])
}

/// knftables' `NameLengthMax` (256) less the longest prefix kube-proxy puts in front.
const NFT_CHAIN_NAME_BASE_MAX: usize = 256 - 16;

/// kube-proxy's nftables `hashAndTruncate`: eight hash characters in front keep names that
/// differ in one digit visually apart, and keep truncated names unique.
fn hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{}", &sha256_base32(name)[..8], name);
    if out.len() > NFT_CHAIN_NAME_BASE_MAX {
        // Names are ASCII (DNS labels, IPs, digits), so byte truncation is safe.
        out.truncate(NFT_CHAIN_NAME_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// The per-service chain names of nftables mode: `HASH-ns/svc/proto/port` behind a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChains {
    /// `service-…`: Cluster traffic policy dispatch.
    pub cluster: String,
    /// `local-…`: Local traffic policy dispatch.
    pub local: String,
    /// `external-…`: entry for external traffic.
    pub external: String,
    /// `firewall-…`: loadBalancerSourceRanges filter.
    pub firewall: String,
}

impl NftChains {
    pub fn for_service(svc: &BenchService) -> NftChains {
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}",
            svc.namespace,
            svc.name,
            svc.protocol.lower(),
            svc.port_name
        ));
        NftChains {
            cluster: format!("service-{base}"),
            local: format!("local-{base}"),
            external: format!("external-{base}"),
            firewall: format!("firewall-{base}"),
        }
    }
}

/// The per-endpoint names of nftables mode: the `endpoint-…` chain and its `affinity-…` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftEndpointNames {
    pub chain: String,
    pub affinity_set: String,
}

impl NftEndpointNames {
    pub fn for_endpoint(svc: &BenchService, ep: &BenchEndpoint) -> NftEndpointNames {
        // "__" separates the service part from `ip/port` ("/" because ":" is not allowed).
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}__{}/{}",
            svc.namespace,
            svc.name,
            svc.protocol.lower(),
            svc.port_name,
            ep.ip,
            ep.port
        ));
        NftEndpointNames {
            chain: format!("endpoint-{base}"),
            affinity_set: format!("affinity-{base}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::kube_proxy::{fixtures, Protocol};

    fn named(ns: &str, name: &str, port: &str, protocol: Protocol) -> BenchService {
        BenchService::cluster_ip(ns, name, port, protocol, Ipv4Addr::new(10, 96, 0, 1), 80)
    }

    /// Values from kube-proxy's `TestOverallIPTablesRules` (ns1..ns5 `svcN:p80`, tcp).
    #[test]
    fn iptables_service_chains_match_kube_proxys_tests() {
        for (ns, svc, hash) in [
            ("ns1", "svc1", "XPGD46QRK7WJZT7O"),
            ("ns2", "svc2", "GNZBNJ2PO5MGZ6GT"),
            ("ns3", "svc3", "X27LE4BHSL4DOUIK"),
            ("ns4", "svc4", "4SW47YFZTEDKD3PK"),
            ("ns5", "svc5", "NUKIZ6OKUXPJNT4C"),
        ] {
            let chains = IptablesChains::for_service(&named(ns, svc, "p80", Protocol::Tcp));
            assert_eq!(chains.cluster, format!("KUBE-SVC-{hash}"));
            assert_eq!(chains.local, format!("KUBE-SVL-{hash}"));
            assert_eq!(chains.external, format!("KUBE-EXT-{hash}"));
            assert_eq!(chains.firewall, format!("KUBE-FW-{hash}"));
        }
    }

    /// Chains every kubeadm cluster has, including a UDP port (`iptables-save` of any node).
    #[test]
    fn iptables_service_chains_match_well_known_cluster_chains() {
        for (ns, svc, port, proto, chain) in [
            (
                "default",
                "kubernetes",
                "https",
                Protocol::Tcp,
                "KUBE-SVC-NPX46M4PTMTKRN6Y",
            ),
            (
                "kube-system",
                "kube-dns",
                "dns",
                Protocol::Udp,
                "KUBE-SVC-TCOU7JCQXEZGVUNU",
            ),
            (
                "kube-system",
                "kube-dns",
                "dns-tcp",
                Protocol::Tcp,
                "KUBE-SVC-ERIFXISQEP7F7OF4",
            ),
            (
                "kube-system",
                "kube-dns",
                "metrics",
                Protocol::Tcp,
                "KUBE-SVC-JD5MR3NA4I4DYORP",
            ),
        ] {
            assert_eq!(
                IptablesChains::for_service(&named(ns, svc, port, proto)).cluster,
                chain,
                "{ns}/{svc}:{port}"
            );
        }
    }

    /// Values from kube-proxy's `TestOverallIPTablesRules`.
    #[test]
    fn iptables_endpoint_chains_match_kube_proxys_tests() {
        for (ns, svc, ep, chain) in [
            ("ns1", "svc1", "10.180.0.1", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
            ("ns2", "svc2", "10.180.0.2", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
            ("ns3", "svc3", "10.180.0.3", "KUBE-SEP-OYPFS5VJICHGATKP"),
            ("ns4", "svc4", "10.180.0.4", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
            ("ns4", "svc4", "10.180.0.5", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
            ("ns5", "svc5", "10.180.0.3", "KUBE-SEP-I77PXRDZVX7PMWMN"),
        ] {
            let svc = named(ns, svc, "p80", Protocol::Tcp);
            assert_eq!(
                iptables_endpoint_chain(&svc, &fixtures::ep(ep, false)),
                chain
            );
        }
    }

    /// Values from kube-proxy's `TestOverallNFTablesRules`.
    #[test]
    fn nftables_names_match_kube_proxys_tests() {
        for (ns, svc, hash) in [
            ("ns1", "svc1", "ULMVA6XW"),
            ("ns2", "svc2", "42NFTM6N"),
            ("ns3", "svc3", "4AT6LBPK"),
            ("ns4", "svc4", "LAUZTJTB"),
            ("ns5", "svc5", "HVFWP5L3"),
        ] {
            let chains = NftChains::for_service(&named(ns, svc, "p80", Protocol::Tcp));
            let base = format!("{hash}-{ns}/{svc}/tcp/p80");
            assert_eq!(chains.cluster, format!("service-{base}"));
            assert_eq!(chains.local, format!("local-{base}"));
            assert_eq!(chains.external, format!("external-{base}"));
            assert_eq!(chains.firewall, format!("firewall-{base}"));
        }
        for (ns, svc, ep, hash) in [
            ("ns1", "svc1", "10.180.0.1", "5OJB2KTY"),
            ("ns2", "svc2", "10.180.0.2", "SGOXE6O3"),
            ("ns3", "svc3", "10.180.0.3", "UEIP74TE"),
            ("ns4", "svc4", "10.180.0.4", "UNZV3OEC"),
            ("ns4", "svc4", "10.180.0.5", "5RFCDDV7"),
            ("ns5", "svc5", "10.180.0.3", "GTK6MW7G"),
        ] {
            let names = NftEndpointNames::for_endpoint(
                &named(ns, svc, "p80", Protocol::Tcp),
                &fixtures::ep(ep, false),
            );
            let base = format!("{hash}-{ns}/{svc}/tcp/p80__{ep}/80");
            assert_eq!(names.chain, format!("endpoint-{base}"));
            assert_eq!(names.affinity_set, format!("affinity-{base}"));
        }
    }

    #[test]
    fn nftables_names_are_truncated_with_an_ellipsis() {
        let long = "a".repeat(300);
        let name = hash_and_truncate(&long);
        assert_eq!(name.len(), NFT_CHAIN_NAME_BASE_MAX);
        assert!(name.ends_with("..."));
        assert_eq!(&name[8..9], "-");
    }
}
