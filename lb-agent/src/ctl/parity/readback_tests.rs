//! The readers on what a node prints: `iptables-save` and `nft list ruleset` of kube-proxy's
//! rulesets for the services of kube-proxy's own overall-rules tests (plus a few), as the
//! bench's generators write them, loaded into a throwaway namespace and read back
//! (`testdata/`, refreshed by xtask's `what_iptables_save_and_nft_list_print_reads_back_as_the_model`
//! with `LB_WRITE_PARITY_FIXTURES=1`).

use std::net::Ipv4Addr;

use super::{
    compare::{compare, Status},
    iptables, nft, Class, FrontendId, FrontendState, Kind, Masquerade, Source, View,
};

const IPTABLES_SAVE: &str = include_str!("testdata/kube-proxy.iptables-save");
const NFT: &str = include_str!("testdata/kube-proxy.nft");

fn views() -> [(View, bool); 2] {
    [
        (
            iptables::parse(IPTABLES_SAVE).expect("iptables-save"),
            false,
        ),
        (nft::parse(NFT).expect("nft list ruleset"), true),
    ]
}

fn at<'v>(
    view: &'v View,
    class: Class,
    addr: Option<[u8; 4]>,
    port: u16,
    protocol: &'static str,
) -> &'v FrontendState {
    let id = FrontendId {
        class,
        address: addr.map(Ipv4Addr::from),
        port,
        protocol,
    };
    view.frontends
        .get(&id)
        .unwrap_or_else(|| panic!("no frontend {id}: {:#?}", view.frontends.keys()))
}

fn addrs(s: &FrontendState) -> Vec<String> {
    s.endpoints
        .iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect()
}

#[test]
fn every_rule_of_both_dumps_is_understood() {
    for (v, _) in views() {
        assert!(v.not_understood.is_empty(), "{:#?}", v.not_understood);
        assert!(v.problems.is_empty());
        assert!(v.shows_empty);
        // 6 + 5 ClusterIPs, svc2's external IP and LB IP, svc4's external IP, svc5's LB IP,
        // 3 NodePorts of the overall services and the DNS NodePort.
        assert_eq!(v.frontends.len(), 12 + 4 + 4, "{:#?}", v.frontends.keys());
    }
}

#[test]
fn a_clusterip_has_its_endpoints_and_masquerades_off_cluster_clients() {
    for (v, _) in views() {
        let s = at(&v, Class::ClusterIp, Some([172, 30, 0, 41]), 80, "TCP");
        assert_eq!(s.service.as_deref(), Some("ns1/svc1:p80"));
        assert_eq!(s.kind, Kind::ClusterIP);
        assert_eq!(addrs(s), ["10.180.0.1:80"]);
        assert!((s.endpoints[0].weight - 1.0).abs() < 1e-9);
        assert_eq!(s.masquerade, Masquerade::OffCluster("10.244.0.0/16".into()));
        assert!(!s.policy_local && s.hairpin && s.affinity_timeout_s.is_none());
    }
}

#[test]
fn three_endpoints_get_a_third_each() {
    for (v, _) in views() {
        let s = at(&v, Class::ClusterIp, Some([10, 96, 0, 1]), 80, "TCP");
        assert_eq!(s.endpoints.len(), 3);
        for e in &s.endpoints {
            assert!((e.weight - 1.0 / 3.0).abs() < 1e-6, "{e:?}");
        }
    }
}

#[test]
fn local_policy_without_local_endpoints_serves_in_cluster_clients_only() {
    for (v, nft) in views() {
        for (class, addr, port) in [
            (Class::External, Some([1, 2, 3, 4]), 80),
            (Class::External, Some([192, 168, 99, 22]), 80),
            (Class::NodePort, None, 3001),
        ] {
            let s = at(&v, class, addr, port, "TCP");
            assert!(s.policy_local, "{s:?}");
            assert!(s.endpoints.is_empty());
            assert_eq!(
                s.internal_endpoints.as_ref().map(|e| e.len()),
                Some(1),
                "{s:?}"
            );
            assert_eq!(s.masquerade, Masquerade::None);
            if class == Class::External && !nft {
                assert!(matches!(s.kind, Kind::LoadBalancer | Kind::ExternalIP));
            }
        }
    }
}

#[test]
fn a_local_udp_nodeport_with_affinity() {
    for (v, _) in views() {
        let s = at(&v, Class::NodePort, None, 30053, "UDP");
        assert_eq!(s.service.as_deref(), Some("default/dns"));
        assert!(s.policy_local);
        assert_eq!(addrs(s), ["10.244.1.5:80"]);
        assert_eq!(s.affinity_timeout_s, Some(60));
        assert_eq!(s.internal_endpoints.as_ref().map(Vec::len), Some(2));
    }
}

#[test]
fn source_ranges_affinity_and_masquerade_of_a_loadbalancer() {
    for (v, nft) in views() {
        let s = at(&v, Class::External, Some([5, 6, 7, 8]), 80, "TCP");
        assert_eq!(
            s.kind,
            if nft {
                Kind::External
            } else {
                Kind::LoadBalancer
            }
        );
        assert_eq!(
            s.source_ranges.as_deref(),
            Some(&["203.0.113.0/25".to_owned()][..])
        );
        assert_eq!(s.affinity_timeout_s, Some(10800));
        assert_eq!(s.masquerade, Masquerade::All);
        assert_eq!(addrs(s), ["10.180.0.3:80"]);
    }
}

#[test]
fn a_service_without_endpoints_is_shown_empty() {
    for (v, _) in views() {
        let s = at(&v, Class::ClusterIp, Some([172, 30, 0, 46]), 80, "TCP");
        assert_eq!(s.service.as_deref(), Some("ns6/svc6:p80"));
        assert!(s.endpoints.is_empty() && !s.policy_local);
    }
}

#[test]
fn both_modes_say_the_same_of_the_same_services() {
    let [(ipt, _), (nft, _)] = views();
    let r = compare(Source::NftListRuleset, &ipt, &nft);
    assert!(r.same(), "{}", super::compare::render(&r));
}

#[test]
fn one_changed_dnat_target_is_one_differing_service_port() {
    let [(ipt, _), _] = views();
    let changed = IPTABLES_SAVE.replacen(
        "--to-destination 10.180.0.1:80",
        "--to-destination 10.180.0.99:80",
        1,
    );
    assert_ne!(changed, IPTABLES_SAVE);
    let r = compare(
        Source::IptablesSave,
        &iptables::parse(&changed).unwrap(),
        &ipt,
    );
    let differing: Vec<_> = r
        .service_ports
        .iter()
        .filter(|s| s.status == Status::Diff)
        .collect();
    assert_eq!(differing.len(), 1);
    assert_eq!(differing[0].service, "ns1/svc1:p80");
    assert_eq!(r.summary.differing, 1);
}
