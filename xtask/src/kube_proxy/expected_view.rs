//! What `lbctl parity` must read out of the rulesets these generators write: the
//! [`View`] of a set of services, built from the model alone (kube-proxy's semantics, not
//! its rules), so that parsing a generated ruleset can be checked against it.

use lb_agent::ctl::parity::{
    Class, Endpoint, FrontendId, FrontendState, Kind, Masquerade, Source, View,
};

use super::{BenchEndpoint, BenchService, Protocol, ProxyConfig};

/// The frontends of `services` as `lbctl parity` reads them from kube-proxy's ruleset in
/// `source`'s format. `with_filter`: the dump has iptables' filter table (nftables' dump
/// always shows services without endpoints).
pub fn expected_view(
    services: &[BenchService],
    cfg: &ProxyConfig,
    source: Source,
    with_filter: bool,
) -> View {
    let nft = source == Source::NftListRuleset;
    let shows_empty = nft || with_filter;
    let mut view = View {
        shows_empty,
        ..View::default()
    };
    for svc in services {
        let cat = svc.categorize();
        let protocol = match svc.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let id = |class, address, port| FrontendId {
            class,
            address,
            port,
            protocol,
        };
        let empty = |kind| FrontendState::empty(Some(svc.port_name_string()), kind);
        let mut add = |id: FrontendId, state: Option<FrontendState>| {
            if let Some(s) = state {
                view.frontends.insert(id, s);
            }
        };
        let all = shares(&cat.cluster);
        let internal = cat.has_endpoints.then(|| FrontendState {
            endpoints: all.clone(),
            affinity_timeout_s: svc.affinity_timeout_s,
            masquerade: if cfg.masquerade_all {
                Masquerade::All
            } else {
                cfg.cluster_cidr
                    .map_or(Masquerade::None, |c| Masquerade::OffCluster(c.to_string()))
            },
            ..empty(Kind::ClusterIP)
        });
        add(
            id(Class::ClusterIp, Some(svc.cluster_ip), svc.port),
            internal.or_else(|| shows_empty.then(|| empty(Kind::ClusterIP))),
        );
        let external = |kind| {
            if !cat.has_endpoints {
                return shows_empty.then(|| empty(kind));
            }
            Some(if svc.external_policy_local() {
                FrontendState {
                    endpoints: shares(&cat.local),
                    policy_local: true,
                    internal_endpoints: Some(all.clone()),
                    affinity_timeout_s: svc.affinity_timeout_s,
                    ..empty(kind)
                }
            } else {
                FrontendState {
                    endpoints: all.clone(),
                    affinity_timeout_s: svc.affinity_timeout_s,
                    masquerade: Masquerade::All,
                    ..empty(kind)
                }
            })
        };
        for ip in &svc.external_ips {
            let kind = if nft {
                Kind::External
            } else {
                Kind::ExternalIP
            };
            add(id(Class::External, Some(*ip), svc.port), external(kind));
        }
        for ip in &svc.lb_ips {
            let kind = if nft {
                Kind::External
            } else {
                Kind::LoadBalancer
            };
            let mut state = external(kind);
            if let Some(s) = state.as_mut().filter(|_| cat.has_endpoints) {
                if !svc.lb_source_ranges.is_empty() {
                    let mut ranges: Vec<String> =
                        svc.lb_source_ranges.iter().map(|c| c.to_string()).collect();
                    if svc
                        .lb_source_ranges
                        .iter()
                        .any(|c| c.contains(cfg.primary_node_ip))
                    {
                        ranges.extend(svc.lb_ips.iter().map(|ip| format!("{ip}/32")));
                    }
                    ranges.sort();
                    ranges.dedup();
                    s.source_ranges = Some(ranges);
                }
            }
            add(id(Class::External, Some(*ip), svc.port), state);
        }
        if let Some(np) = svc.node_port {
            add(id(Class::NodePort, None, np), external(Kind::NodePort));
        }
    }
    view
}

/// Endpoints sorted by address and port, each an equal share.
fn shares(eps: &[&BenchEndpoint]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = eps
        .iter()
        .map(|e| Endpoint {
            address: e.ip,
            port: e.port,
            weight: 1.0 / eps.len() as f64,
        })
        .collect();
    out.sort_by_key(|e| (e.address, e.port));
    out
}

/// `view`'s frontends with shares rounded to 6 places (iptables-save prints probabilities
/// rounded), for comparing.
pub fn rounded(view: &View) -> std::collections::BTreeMap<FrontendId, FrontendState> {
    let round = |eps: &mut Vec<Endpoint>| {
        for e in eps {
            e.weight = (e.weight * 1e6).round() / 1e6;
        }
    };
    let mut out = view.frontends.clone();
    for s in out.values_mut() {
        round(&mut s.endpoints);
        if let Some(i) = s.internal_endpoints.as_mut() {
            round(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_agent::ctl::parity::{iptables, nft};

    use super::*;
    use crate::kube_proxy::{apply, fixtures, nftables, synthetic_services};

    fn services() -> Vec<BenchService> {
        let mut svcs = fixtures::overall_services();
        svcs.extend(synthetic_services(5, 3));
        let mut udp = BenchService::cluster_ip(
            "default",
            "dns",
            "",
            Protocol::Udp,
            fixtures::ip("10.96.0.10"),
            53,
        );
        udp.node_port = Some(30053);
        udp.external_local = true;
        udp.affinity_timeout_s = Some(60);
        udp.endpoints = vec![
            fixtures::ep("10.244.1.5", true),
            fixtures::ep("10.244.2.5", false),
        ];
        svcs.push(udp);
        svcs
    }

    fn assert_same(parsed: &View, want: &View) {
        assert!(
            parsed.not_understood.is_empty(),
            "{:#?}",
            parsed.not_understood
        );
        let (got, want) = (rounded(parsed), rounded(want));
        for (id, w) in &want {
            assert_eq!(got.get(id), Some(w), "{id}");
        }
        assert_eq!(
            got.len(),
            want.len(),
            "{:#?}",
            got.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_iptables_restore_input_reads_back_as_its_model() {
        let svcs = services();
        for cfg in [
            ProxyConfig::default(),
            fixtures::iptables_fake_proxier_config(),
        ] {
            let text = super::super::iptables::restore_input(&svcs, &cfg);
            let parsed = iptables::parse(&text).expect("parse");
            assert_same(
                &parsed,
                &expected_view(&svcs, &cfg, Source::IptablesSave, true),
            );
            // The nat table alone does not show services without endpoints.
            let nat = &text[text.find("*nat").unwrap()..];
            assert_same(
                &iptables::parse(nat).expect("parse nat"),
                &expected_view(&svcs, &cfg, Source::IptablesSave, false),
            );
        }
    }

    #[test]
    fn a_changed_endpoint_reads_back_changed() {
        let svcs = services();
        let cfg = ProxyConfig::default();
        let mut changed = svcs.clone();
        changed[0].endpoints[0].ip = fixtures::ip("10.180.9.9");
        let parsed =
            iptables::parse(&super::super::iptables::restore_input(&changed, &cfg)).unwrap();
        let want = expected_view(&svcs, &cfg, Source::IptablesSave, true);
        let got = rounded(&parsed);
        let differing: Vec<_> = rounded(&want)
            .into_iter()
            .filter(|(id, s)| got.get(id) != Some(s))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(differing.len(), 1, "{differing:?}");
        assert_eq!(differing[0].address, Some(svcs[0].cluster_ip));
    }

    #[test]
    fn what_iptables_save_and_nft_list_print_reads_back_as_the_model() {
        if !lb_lab::testing::root_or_skip("reading back kube-proxy's rulesets") {
            return;
        }
        let svcs = services();
        let cfg = ProxyConfig::default();
        let ns = apply::ThrowawayNetns::create("parity-readback").expect("netns");
        apply::apply_iptables(&ns.0, &svcs, &cfg).expect("iptables-restore");
        let saved = apply::iptables_save(&ns.0).expect("iptables-save");
        assert_same(
            &iptables::parse(&saved).expect("parse iptables-save"),
            &expected_view(&svcs, &cfg, Source::IptablesSave, true),
        );
        let nat = apply::iptables_save_table(&ns.0, "nat").expect("iptables-save -t nat");
        assert_same(
            &iptables::parse(&nat).expect("parse iptables-save -t nat"),
            &expected_view(&svcs, &cfg, Source::IptablesSave, false),
        );
        apply::clear_iptables(&ns.0).expect("clear");

        apply::apply_nftables(&ns.0, &nftables::ruleset(&svcs, &cfg)).expect("nft -f");
        let listed = apply::nft_list_ruleset(&ns.0).expect("nft list ruleset");
        assert_same(
            &nft::parse(&listed).expect("parse nft list ruleset"),
            &expected_view(&svcs, &cfg, Source::NftListRuleset, true),
        );
        write_fixture("kube-proxy.iptables-save", &saved);
        write_fixture("kube-proxy.nft", &listed);
    }

    /// With `LB_WRITE_PARITY_FIXTURES=1`, refreshes lbctl's parser fixtures from a real
    /// readback (what a node prints).
    fn write_fixture(name: &str, text: &str) {
        if std::env::var_os("LB_WRITE_PARITY_FIXTURES").is_some() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../lb-agent/src/ctl/parity/testdata")
                .join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            // The date line changes every run.
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, text).unwrap();
        }
    }
}
