use super::node::ThisNode;
use super::*;
use crate::fixtures::{service, slice};
use lb_common::{
    backend::flags::{HOST, LOCAL, TERMINATING},
    frontend, proto,
};

const NODE: &str = "node-a";
const TCP: u8 = proto::TCP;
const UDP: u8 = proto::UDP;

fn build(services: &[Service], slices: &[EndpointSlice]) -> (DesiredState, Vec<Skipped>) {
    desired_state(services, slices, &ThisNode::named(NODE))
}

fn key(ip: &str, port: u16, protocol: u8) -> FrontendKey {
    FrontendKey::new(ip.parse().expect("test address"), port, protocol)
}

/// The backends of one frontend as (address:port, flags).
fn backends(state: &DesiredState, ip: &str, port: u16, protocol: u8) -> Vec<(String, u8)> {
    state
        .frontends
        .get(&key(ip, port, protocol))
        .unwrap_or_else(|| panic!("no frontend {ip}:{port}/{protocol} in {state:?}"))
        .backends
        .iter()
        .map(|b| (format!("{}:{}", b.ip(), b.port_host()), b.flags))
        .collect()
}

fn reasons(skipped: &[Skipped]) -> Vec<&SkipReason> {
    skipped.iter().map(|s| &s.reason).collect()
}

fn web() -> crate::fixtures::ServiceBuilder {
    service("shop", "web", "10.96.0.10").port("http", 80, "TCP")
}

#[test]
fn a_service_with_ready_endpoints_gets_a_sorted_frontend() {
    let svc = web().build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.2.3")
        .ready("10.244.1.9")
        .ready("10.244.1.10")
        .build();
    let (state, skipped) = build(&[svc], &[s]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(state.frontends.len(), 1);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(f.name, "shop/web:http");
    assert_eq!(f.flags, frontend::flags::CLUSTER_IP);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [
            ("10.244.1.9:8080".into(), 0),
            ("10.244.1.10:8080".into(), 0),
            ("10.244.2.3:8080".into(), 0)
        ]
    );
    assert_eq!(state.backend_count(), 3);
}

#[test]
fn each_service_port_gets_its_own_frontend_and_target_port() {
    let svc = web().port("metrics", 9090, "TCP").build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .port("metrics", 9100, "TCP")
        .ready("10.244.1.2")
        .build();
    let (state, skipped) = build(&[svc], &[s]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0)]
    );
    assert_eq!(
        backends(&state, "10.96.0.10", 9090, TCP),
        [("10.244.1.2:9100".into(), 0)]
    );
    assert_eq!(
        state.frontends[&key("10.96.0.10", 9090, TCP)].name,
        "shop/web:metrics"
    );
    // One pod, two ports: two backends.
    assert_eq!(state.backend_count(), 2);
}

#[test]
fn a_named_target_port_resolves_per_endpoint_through_each_slice() {
    // Mid-rollout: old pods serve "http" on 8080, new ones on 8081.
    let svc = web().build();
    let old = slice("shop", "web-old", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .build();
    let new = slice("shop", "web-new", "web")
        .port("http", 8081, "TCP")
        .ready("10.244.1.3")
        .build();
    let (state, _) = build(&[svc], &[old, new]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0), ("10.244.1.3:8081".into(), 0)]
    );
}

#[test]
fn an_unnamed_port_matches_an_unnamed_slice_port_and_is_named_by_number() {
    let svc = service("shop", "web", "10.96.0.10")
        .port("", 80, "TCP")
        .build();
    let s = slice("shop", "web-1", "web")
        .port("", 8080, "TCP")
        .ready("10.244.1.2")
        .build();
    let (state, _) = build(&[svc], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0)]
    );
    assert_eq!(
        state.frontends[&key("10.96.0.10", 80, TCP)].name,
        "shop/web:80"
    );
}

#[test]
fn slice_ports_must_match_protocol_as_well_as_name() {
    let svc = web().build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "UDP")
        .ready("10.244.1.2")
        .build();
    let (state, skipped) = build(&[svc], &[s]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(backends(&state, "10.96.0.10", 80, TCP).is_empty());
}

#[test]
fn tcp_and_udp_on_one_port_are_two_frontends() {
    let svc = service("kube-system", "dns", "10.96.0.53")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .build();
    let s = slice("kube-system", "dns-1", "dns")
        .port("dns", 5353, "UDP")
        .port("dns-tcp", 5354, "TCP")
        .ready("10.244.1.2")
        .build();
    let (state, _) = build(&[svc], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.53", 53, UDP),
        [("10.244.1.2:5353".into(), 0)]
    );
    assert_eq!(
        backends(&state, "10.96.0.53", 53, TCP),
        [("10.244.1.2:5354".into(), 0)]
    );
    let b = state.frontends[&key("10.96.0.53", 53, UDP)].backends[0];
    assert_eq!(b.proto, UDP);
}

#[test]
fn only_ready_endpoints_are_used_while_any_is_ready() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .not_ready("10.244.1.3")
        .terminating("10.244.1.4")
        .build();
    let (state, _) = build(&[web().build()], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0)]
    );
}

#[test]
fn unset_conditions_count_as_ready_and_serving() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.244.1.2", None, None, None)
        .build();
    let mut no_conditions = s.clone();
    no_conditions.endpoints[0].conditions = None;
    for s in [s, no_conditions] {
        let (state, _) = build(&[web().build()], &[s]);
        assert_eq!(
            backends(&state, "10.96.0.10", 80, TCP),
            [("10.244.1.2:8080".into(), 0)]
        );
    }
}

#[test]
fn with_nothing_ready_serving_terminating_endpoints_are_used_and_flagged() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .not_ready("10.244.1.3")
        .terminating("10.244.1.4")
        // Terminating and no longer serving: never used.
        .endpoint("10.244.1.5", Some(false), Some(false), Some(true))
        .build();
    let (state, _) = build(&[web().build()], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.4:8080".into(), TERMINATING)]
    );
}

#[test]
fn with_nothing_ready_or_serving_the_frontend_has_no_backends() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .not_ready("10.244.1.3")
        .build();
    let (state, _) = build(&[web().build()], &[s]);
    assert!(backends(&state, "10.96.0.10", 80, TCP).is_empty());
}

#[test]
fn a_service_without_slices_still_gets_its_frontend() {
    let (state, skipped) = build(&[web().build()], &[]);
    assert!(skipped.is_empty());
    assert!(backends(&state, "10.96.0.10", 80, TCP).is_empty());
}

#[test]
fn publish_not_ready_addresses_uses_every_endpoint() {
    let svc = web().publish_not_ready().build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .not_ready("10.244.1.3")
        .terminating("10.244.1.4")
        .build();
    let (state, _) = build(&[svc], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [
            ("10.244.1.3:8080".into(), 0),
            ("10.244.1.4:8080".into(), TERMINATING)
        ]
    );
}

#[test]
fn endpoints_on_this_node_are_flagged_local() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .on_node(NODE)
        .ready("10.244.2.2")
        .on_node("node-b")
        .build();
    let (state, _) = build(&[web().build()], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [
            ("10.244.1.2:8080".into(), LOCAL),
            ("10.244.2.2:8080".into(), 0)
        ]
    );
}

#[test]
fn an_endpoint_at_this_nodes_own_address_is_flagged_host() {
    // A hostNetwork pod on this node, and one on another node.
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("172.18.0.3")
        .on_node(NODE)
        .ready("172.18.0.4")
        .on_node("node-b")
        .build();
    let node = ThisNode {
        ips: vec!["172.18.0.3".parse().expect("ip")],
        ..ThisNode::named(NODE)
    };
    let (state, _) = build_on(&node, &[web().build()], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [
            ("172.18.0.3:8080".into(), LOCAL | HOST),
            ("172.18.0.4:8080".into(), 0)
        ]
    );
}

#[test]
fn headless_and_external_name_services_are_skipped_by_design() {
    let headless = service("shop", "db", "None")
        .port("pg", 5432, "TCP")
        .build();
    let external = service("shop", "ext", "").type_("ExternalName").build();
    let (state, skipped) = build(&[headless, external], &[]);
    assert!(state.frontends.is_empty());
    assert_eq!(
        reasons(&skipped),
        [&SkipReason::Headless, &SkipReason::ExternalName]
    );
    assert!(skipped.iter().all(|s| s.reason.is_by_design()));
    assert_eq!(skipped[0].object, "Service shop/db");
}

#[test]
fn label_filtered_services_are_skipped() {
    let other = web().label(SERVICE_PROXY_NAME_LABEL, "cilium").build();
    let headless = service("shop", "api", "10.96.0.11")
        .port("http", 80, "TCP")
        .label(HEADLESS_LABEL, "")
        .build();
    let (state, skipped) = build(&[other, headless], &[]);
    assert!(state.frontends.is_empty());
    assert_eq!(
        reasons(&skipped),
        [
            &SkipReason::HeadlessLabel,
            &SkipReason::OtherProxy("cilium".into())
        ]
    );
}

#[test]
fn label_filtered_slices_are_skipped() {
    let proxied = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .label(SERVICE_PROXY_NAME_LABEL, "other")
        .build();
    let headless = slice("shop", "web-2", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.3")
        .label(HEADLESS_LABEL, "")
        .build();
    let kept = slice("shop", "web-3", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.4")
        .build();
    let (state, skipped) = build(&[web().build()], &[proxied, headless, kept]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.4:8080".into(), 0)]
    );
    assert_eq!(skipped.len(), 2);
    assert!(skipped
        .iter()
        .all(|s| s.object.starts_with("EndpointSlice shop/web-")));
}

#[test]
fn bad_cluster_ips_skip_the_service_without_panicking() {
    let bad = service("shop", "a", "10.96.0.300")
        .port("http", 80, "TCP")
        .build();
    let empty = service("shop", "b", "").port("http", 80, "TCP").build();
    let v6 = service("shop", "c", "fd00::10")
        .port("http", 80, "TCP")
        .build();
    let (state, skipped) = build(&[bad, empty, v6], &[]);
    assert!(state.frontends.is_empty());
    assert_eq!(
        reasons(&skipped),
        [
            &SkipReason::BadAddress {
                field: "spec.clusterIP",
                value: "10.96.0.300".into()
            },
            &SkipReason::MissingField("spec.clusterIP"),
            &SkipReason::NoIpv4ClusterIp,
        ]
    );
    assert!(!skipped[0].reason.is_by_design());
    assert!(skipped[2].reason.is_by_design());
}

#[test]
fn dual_stack_services_serve_their_ipv4_address() {
    let svc = service("shop", "web", "fd00::10")
        .cluster_ips(&["fd00::10", "10.96.0.10"])
        .port("http", 80, "TCP")
        .build();
    let (state, skipped) = build(&[svc], &[]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(
        state.frontends.keys().copied().collect::<Vec<_>>(),
        [key("10.96.0.10", 80, TCP)]
    );
}

#[test]
fn bad_service_ports_skip_only_that_port() {
    let svc = web()
        .port("zero", 0, "TCP")
        .port("huge", 70000, "TCP")
        .port("sctp", 9000, "SCTP")
        .port("weird", 9001, "ICMP")
        .build();
    let (state, skipped) = build(&[svc], &[]);
    assert_eq!(state.frontends.len(), 1);
    let got: Vec<_> = skipped
        .iter()
        .map(|s| (s.object.as_str(), &s.reason))
        .collect();
    assert_eq!(
        got,
        [
            ("Service shop/web port huge", &SkipReason::BadPort(70000)),
            ("Service shop/web port sctp", &SkipReason::Sctp),
            (
                "Service shop/web port weird",
                &SkipReason::UnknownProtocol("ICMP".into())
            ),
            ("Service shop/web port zero", &SkipReason::BadPort(0)),
        ]
    );
}

#[test]
fn bad_slice_ports_and_addresses_are_skipped_and_the_rest_used() {
    let mut unset_port = slice("shop", "web-2", "web")
        .port("http", 1, "TCP")
        .ready("10.244.1.5")
        .build();
    if let Some(p) = unset_port.ports.as_mut().and_then(|p| p.first_mut()) {
        p.port = None;
    }
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .ready("not-an-ip")
        .ready("fd00::1")
        .build();
    let mut no_address = s.clone();
    no_address.metadata.name = Some("web-3".into());
    for ep in &mut no_address.endpoints {
        ep.addresses.clear();
    }
    let bad_port = slice("shop", "web-4", "web")
        .port("http", 65536, "TCP")
        .ready("10.244.1.6")
        .build();
    let (state, skipped) = build(&[web().build()], &[s, unset_port, no_address, bad_port]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0)]
    );
    let got: Vec<_> = skipped.iter().map(|s| s.object.as_str()).collect();
    assert_eq!(
        got,
        [
            "EndpointSlice shop/web-1 endpoint 2",
            "EndpointSlice shop/web-1 endpoint 3",
            "EndpointSlice shop/web-2 port http",
            "EndpointSlice shop/web-3 endpoint 1",
            "EndpointSlice shop/web-3 endpoint 2",
            "EndpointSlice shop/web-3 endpoint 3",
            "EndpointSlice shop/web-4 port http",
        ]
    );
}

#[test]
fn backends_from_several_slices_are_merged_and_deduplicated() {
    let a = slice("shop", "web-a", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .ready("10.244.1.3")
        .build();
    // During rebalancing an endpoint can sit in two slices at once.
    let b = slice("shop", "web-b", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.3")
        .ready("10.244.2.2")
        .build();
    let (state, _) = build(&[web().build()], &[a.clone(), b.clone()]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [
            ("10.244.1.2:8080".into(), 0),
            ("10.244.1.3:8080".into(), 0),
            ("10.244.2.2:8080".into(), 0)
        ]
    );

    // Deleting slice b drops the endpoints only it had.
    let (state, _) = build(&[web().build()], &[a]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), 0), ("10.244.1.3:8080".into(), 0)]
    );
}

#[test]
fn slices_link_only_to_the_service_of_their_namespace_and_label() {
    let elsewhere = slice("other", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .build();
    let other_svc = slice("shop", "api-1", "api")
        .port("http", 8080, "TCP")
        .ready("10.244.1.3")
        .build();
    let mut unlabelled = slice("shop", "web-2", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.4")
        .build();
    unlabelled.metadata.labels = None;
    let (state, skipped) = build(&[web().build()], &[elsewhere, other_svc, unlabelled]);
    assert!(backends(&state, "10.96.0.10", 80, TCP).is_empty());
    assert_eq!(reasons(&skipped), [&SkipReason::NoServiceLabel]);
}

#[test]
fn non_ipv4_slices_are_skipped_by_design() {
    let v6 = slice("shop", "web-1", "web")
        .address_type("IPv6")
        .port("http", 8080, "TCP")
        .ready("fd00::2")
        .build();
    let (state, skipped) = build(&[web().build()], &[v6]);
    assert!(backends(&state, "10.96.0.10", 80, TCP).is_empty());
    assert_eq!(
        reasons(&skipped),
        [&SkipReason::UnsupportedAddressType(
            "EndpointSlice",
            "IPv6".into()
        )]
    );
    assert!(skipped[0].reason.is_by_design());
}

#[test]
fn objects_missing_required_fields_are_skipped() {
    let mut no_name = web().build();
    no_name.metadata.name = None;
    let mut no_spec = service("shop", "api", "10.96.0.11").build();
    no_spec.spec = None;
    let mut slice_no_ns = slice("shop", "web-1", "web").build();
    slice_no_ns.metadata.namespace = Some(String::new());
    let (state, skipped) = build(&[no_name, no_spec], &[slice_no_ns]);
    assert!(state.frontends.is_empty());
    let got: Vec<_> = skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        got,
        [
            "EndpointSlice: missing metadata.namespace",
            "Service: missing metadata.name",
            "Service shop/api: missing spec",
        ]
    );
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
    let a = service("shop", "a", "10.96.0.10")
        .port("http", 80, "TCP")
        .build();
    let b = service("shop", "b", "10.96.0.10")
        .port("web", 80, "TCP")
        .build();
    let (state, skipped) = build(&[b, a], &[]);
    assert_eq!(
        state.frontends[&key("10.96.0.10", 80, TCP)].name,
        "shop/a:http"
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        skipped[0].to_string(),
        "Service shop/b port web: address already served for shop/a:http"
    );
}

#[test]
fn a_backend_shared_by_two_services_counts_once() {
    let a = service("shop", "a", "10.96.0.10")
        .port("http", 80, "TCP")
        .build();
    let b = service("shop", "b", "10.96.0.11")
        .port("http", 80, "TCP")
        .build();
    let sa = slice("shop", "a-1", "a")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .build();
    let sb = slice("shop", "b-1", "b")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .build();
    let (state, _) = build(&[a, b], &[sa, sb]);
    assert_eq!(state.frontends.len(), 2);
    assert_eq!(state.backend_count(), 1);
}

#[test]
fn empty_and_default_objects_do_not_panic() {
    let (state, skipped) = build(&[Service::default()], &[EndpointSlice::default()]);
    assert!(state.frontends.is_empty());
    assert_eq!(skipped.len(), 2);
    let (state, skipped) = build(&[], &[]);
    assert!(state.frontends.is_empty() && skipped.is_empty());
}

// ---- per-frontend flags: types, affinity, traffic policies, topology ----

fn zoned(zone: &str) -> ThisNode {
    ThisNode {
        zone: Some(zone.into()),
        ips: vec!["172.18.0.3".parse().expect("ip")],
        ..ThisNode::named(NODE)
    }
}

fn build_on(
    node: &ThisNode,
    services: &[Service],
    slices: &[EndpointSlice],
) -> (DesiredState, Vec<Skipped>) {
    desired_state(services, slices, node)
}

fn addrs(f: &DesiredFrontend) -> Vec<String> {
    f.backends.iter().map(|b| b.ip().to_string()).collect()
}

#[test]
fn client_ip_affinity_defaults_to_three_hours_and_takes_the_configured_timeout() {
    let default = web().client_ip_affinity(None).build();
    let (state, _) = build(&[default], &[]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(f.affinity_timeout_s, 10_800);

    let custom = web().client_ip_affinity(Some(60)).build();
    let (state, _) = build(&[custom], &[]);
    assert_eq!(
        state.frontends[&key("10.96.0.10", 80, TCP)].affinity_timeout_s,
        60
    );

    let none = web().session_affinity("None").build();
    let (state, _) = build(&[none], &[]);
    assert_eq!(
        state.frontends[&key("10.96.0.10", 80, TCP)].affinity_timeout_s,
        0
    );
}

#[test]
fn invalid_affinity_settings_skip_the_service_with_a_reason() {
    let too_long = web().client_ip_affinity(Some(86_401)).build();
    let zero = service("shop", "b", "10.96.0.11")
        .port("http", 80, "TCP")
        .client_ip_affinity(Some(0))
        .build();
    let odd = service("shop", "c", "10.96.0.12")
        .port("http", 80, "TCP")
        .session_affinity("Cookie")
        .build();
    let (state, skipped) = build(&[too_long, zero, odd], &[]);
    assert!(state.frontends.is_empty());
    assert_eq!(
        reasons(&skipped),
        [
            &SkipReason::BadAffinityTimeout(0),
            &SkipReason::UnknownAffinity("Cookie".into()),
            &SkipReason::BadAffinityTimeout(86_401),
        ]
    );
    assert!(skipped.iter().all(|s| !s.reason.is_by_design()));
}

#[test]
fn node_port_services_are_programmed_on_every_node_address_and_localhost() {
    let svc = web().node_port(30080).type_("NodePort").build();
    let (state, skipped) = build_on(&zoned("a"), &[svc], &[]);
    assert!(skipped.is_empty(), "{skipped:?}");
    for ip in ["172.18.0.3", "127.0.0.1"] {
        let np = &state.frontends[&key(ip, 30080, TCP)];
        assert_eq!(np.kind, FrontendKind::NodePort);
        assert_eq!(np.flags, frontend::flags::NODE_PORT);
        assert!(np.is_programmed());
    }
    assert_eq!(state.programmed().len(), 3, "ClusterIP and two NodePorts");
}

#[test]
fn external_and_load_balancer_ips_get_frontends_and_proxy_mode_ingress_does_not() {
    let svc = web()
        .type_("LoadBalancer")
        .external_ips(&["192.0.2.1", "fd00::1", "bogus"])
        .load_balancer_ingress(&["198.51.100.7"], None)
        .build();
    let (state, skipped) = build(&[svc], &[]);
    assert_eq!(
        state.frontends[&key("192.0.2.1", 80, TCP)].kind,
        FrontendKind::ExternalIp
    );
    assert_eq!(
        state.frontends[&key("198.51.100.7", 80, TCP)].kind,
        FrontendKind::LoadBalancer
    );
    assert_eq!(
        reasons(&skipped),
        [&SkipReason::BadAddress {
            field: "spec.externalIPs",
            value: "bogus".into()
        }]
    );
    let proxied = web()
        .type_("LoadBalancer")
        .load_balancer_ingress(&["198.51.100.7"], Some("Proxy"))
        .build();
    let (state, _) = build(&[proxied], &[]);
    assert_eq!(state.frontends.len(), 1, "only the ClusterIP: {state:?}");
}

fn mixed_slice() -> EndpointSlice {
    slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .on_node(NODE)
        .ready("10.244.2.2")
        .on_node("node-b")
        .build()
}

#[test]
fn internal_traffic_policy_local_gives_the_cluster_ip_only_local_backends() {
    let svc = web().internal_traffic_policy("Local").build();
    let (state, _) = build(&[svc], &[mixed_slice()]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(addrs(f), ["10.244.1.2"]);
    assert!(f.policy.internal_local && !f.policy.external_local);

    // No local endpoint: no backend (the datapath drops, as kube-proxy does for ITP=Local).
    let elsewhere = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.2.2")
        .on_node("node-b")
        .build();
    let svc = web().internal_traffic_policy("Local").build();
    let (state, _) = build(&[svc], &[elsewhere]);
    assert!(state.frontends[&key("10.96.0.10", 80, TCP)]
        .backends
        .is_empty());
}

#[test]
fn local_policy_falls_back_to_local_terminating_endpoints() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .terminating("10.244.1.2")
        .on_node(NODE)
        .ready("10.244.2.2")
        .on_node("node-b")
        .build();
    let svc = web().internal_traffic_policy("Local").build();
    let (state, _) = build(&[svc], &[s]);
    assert_eq!(
        backends(&state, "10.96.0.10", 80, TCP),
        [("10.244.1.2:8080".into(), TERMINATING | LOCAL)]
    );
}

#[test]
fn external_traffic_policy_local_splits_external_and_internal_scopes() {
    let svc = web()
        .type_("NodePort")
        .node_port(30080)
        .external_traffic_policy("Local")
        .build();
    let (state, _) = build_on(&zoned("a"), &[svc], &[mixed_slice()]);
    let external = &state.frontends[&key("172.18.0.3", 30080, TCP)];
    assert_eq!(addrs(external), ["10.244.1.2"]);
    assert!(external.policy.external_local);
    let internal_key = FrontendKey {
        scope: frontend::scope::INTERNAL,
        ..key("172.18.0.3", 30080, TCP)
    };
    assert_eq!(
        addrs(&state.frontends[&internal_key]),
        ["10.244.1.2", "10.244.2.2"]
    );
    // ETP does not touch the ClusterIP.
    assert_eq!(
        addrs(&state.frontends[&key("10.96.0.10", 80, TCP)]),
        ["10.244.1.2", "10.244.2.2"]
    );
}

fn hinted(hints: &[(&str, Option<&[&str]>)]) -> EndpointSlice {
    let mut s = slice("shop", "web-1", "web").port("http", 8080, "TCP");
    for (addr, zones) in hints {
        s = s.ready(addr);
        if let Some(z) = zones {
            s = s.hints(z);
        }
    }
    s.build()
}

#[test]
fn topology_hints_narrow_cluster_backends_to_this_zone() {
    let s = hinted(&[
        ("10.244.1.2", Some(&["a"])),
        ("10.244.2.2", Some(&["b"])),
        ("10.244.3.2", Some(&["a", "b"])),
    ]);
    let (state, _) = build_on(&zoned("a"), &[web().build()], &[s]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(addrs(f), ["10.244.1.2", "10.244.3.2"]);
    assert!(f.policy.topology_aware);
}

#[test]
fn topology_hints_are_ignored_unless_all_ready_endpoints_have_them() {
    let s = hinted(&[("10.244.1.2", Some(&["a"])), ("10.244.2.2", None)]);
    let (state, _) = build_on(&zoned("a"), &[web().build()], &[s]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(addrs(f), ["10.244.1.2", "10.244.2.2"]);
    assert!(!f.policy.topology_aware);
}

#[test]
fn topology_hints_are_ignored_when_none_is_for_this_zone_or_the_zone_is_unknown() {
    let s = hinted(&[("10.244.1.2", Some(&["b"])), ("10.244.2.2", Some(&["c"]))]);
    let (state, _) = build_on(&zoned("a"), &[web().build()], std::slice::from_ref(&s));
    assert_eq!(
        addrs(&state.frontends[&key("10.96.0.10", 80, TCP)]),
        ["10.244.1.2", "10.244.2.2"]
    );
    let (state, _) = build(&[web().build()], &[s]);
    assert!(
        !state.frontends[&key("10.96.0.10", 80, TCP)]
            .policy
            .topology_aware
    );
}

#[test]
fn unready_endpoints_without_hints_do_not_disable_topology() {
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .hints(&["a"])
        .ready("10.244.2.2")
        .hints(&["b"])
        .not_ready("10.244.3.2")
        .build();
    let (state, _) = build_on(&zoned("a"), &[web().build()], &[s]);
    assert_eq!(
        addrs(&state.frontends[&key("10.96.0.10", 80, TCP)]),
        ["10.244.1.2"]
    );
}

#[test]
fn publish_not_ready_is_carried_as_a_flag() {
    let (state, _) = build(&[web().publish_not_ready().build()], &[]);
    assert!(
        state.frontends[&key("10.96.0.10", 80, TCP)]
            .policy
            .publish_not_ready
    );
}

#[test]
fn unknown_service_types_are_invalid_and_node_ports_are_checked() {
    let odd = web().type_("Magic").build();
    let bad_np = service("shop", "np", "10.96.0.11")
        .port("http", 80, "TCP")
        .node_port(70000)
        .type_("NodePort")
        .build();
    let (state, skipped) = build(&[odd, bad_np], &[]);
    assert!(state.frontends.is_empty());
    assert_eq!(
        reasons(&skipped),
        [
            &SkipReason::BadNodePort(70000),
            &SkipReason::UnknownType("Magic".into())
        ]
    );
}

#[test]
fn a_service_claiming_one_address_twice_keeps_its_first_port() {
    let svc = web().port("again", 80, "TCP").build();
    let (state, skipped) = build(&[svc], &[]);
    assert_eq!(
        state.frontends[&key("10.96.0.10", 80, TCP)].name,
        "shop/web:http"
    );
    assert_eq!(
        skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ["Service shop/web port again: address already served for shop/web:http"]
    );
}

#[test]
fn the_trigger_time_annotation_is_read_and_a_bad_one_ignored() {
    let good = slice("shop", "web-1", "web")
        .annotation(slice::LAST_CHANGE_TRIGGER_TIME, "2024-05-01T10:00:00Z")
        .build();
    let parsed = parse_slice(&good, NODE);
    assert_eq!(
        parsed
            .value
            .and_then(|s| s.trigger_time)
            .map(|t| t.to_string()),
        Some("2024-05-01T10:00:00Z".into())
    );
    let bad = slice("shop", "web-1", "web")
        .annotation(slice::LAST_CHANGE_TRIGGER_TIME, "yesterday")
        .build();
    assert_eq!(
        parse_slice(&bad, NODE).value.and_then(|s| s.trigger_time),
        None
    );
}

#[test]
fn a_skipped_object_with_a_name_still_reports_its_id() {
    let mut svc = web().build();
    svc.spec = None;
    let parsed = parse_service(&svc);
    assert_eq!(parsed.id, Some(ObjectId::new("shop", "web")));
    assert!(parsed.value.is_none());
    assert_eq!(parsed.skipped[0].kind, ObjectKind::Service);
    assert_eq!(parsed.skipped[0].reason.label(), "missing_field");
}

#[test]
fn the_index_hands_a_contested_address_to_the_next_claimant_when_the_owner_goes() {
    let a = service("shop", "a", "10.96.0.10")
        .port("http", 80, "TCP")
        .build();
    let b = service("shop", "b", "10.96.0.10")
        .port("web", 80, "TCP")
        .build();
    let node = ThisNode::named(NODE);
    let mut index = DesiredIndex::default();
    for svc in [&b, &a] {
        let info = parse_service(svc).value.expect("valid");
        let (frontends, _) = service_frontends(&info, &[], &node);
        index.set_service(&info.id, frontends);
    }
    let k = key("10.96.0.10", 80, TCP);
    assert_eq!(index.get(&k).map(|f| f.name.as_str()), Some("shop/a:http"));
    let changed = index.remove_service(&ObjectId::new("shop", "a"));
    assert_eq!(changed, [k].into());
    assert_eq!(index.get(&k).map(|f| f.name.as_str()), Some("shop/b:web"));
    assert!(index.conflicts().is_empty());
}

// ---- North-south: flags, source ranges, health checks ----

fn lb_web() -> crate::fixtures::ServiceBuilder {
    web()
        .type_("LoadBalancer")
        .node_port(30080)
        .load_balancer_ingress(&["198.51.100.7"], None)
}

fn scoped(ip: &str, port: u16, scope: u8) -> FrontendKey {
    FrontendKey {
        scope,
        ..key(ip, port, TCP)
    }
}

#[test]
fn every_kind_gets_its_flag_and_etp_local_marks_only_the_external_entry() {
    let svc = lb_web()
        .external_ips(&["192.0.2.1"])
        .external_traffic_policy("Local")
        .build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.9")
        .build();
    let (state, skipped) = build_on(&zoned("a"), &[svc], &[s]);
    assert!(skipped.is_empty(), "{skipped:?}");
    use frontend::{flags::*, scope::*};
    let flags = |k: FrontendKey| state.frontends[&k].flags;
    assert_eq!(flags(key("10.96.0.10", 80, TCP)), CLUSTER_IP);
    for (ip, port, kind) in [
        ("172.18.0.3", 30080, NODE_PORT),
        ("127.0.0.1", 30080, NODE_PORT),
        ("192.0.2.1", 80, EXTERNAL_IP),
        ("198.51.100.7", 80, LOAD_BALANCER),
    ] {
        assert_eq!(
            flags(scoped(ip, port, EXTERNAL)),
            kind | EXTERNAL_LOCAL,
            "{ip}"
        );
        assert_eq!(flags(scoped(ip, port, INTERNAL)), kind, "{ip}");
    }
    // No local endpoint (the only one is on another node): the external entry is still
    // programmed, with no backends, so the datapath drops instead of rejecting.
    let external = &state.frontends[&scoped("198.51.100.7", 80, EXTERNAL)];
    assert!(external.backends.is_empty() && external.is_programmed());
    assert_eq!(
        state.frontends[&scoped("198.51.100.7", 80, INTERNAL)]
            .backends
            .len(),
        1
    );
}

#[test]
fn itp_local_marks_the_cluster_ip() {
    let svc = web().internal_traffic_policy("Local").build();
    let (state, _) = build(&[svc], &[]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert_eq!(
        f.flags,
        frontend::flags::CLUSTER_IP | frontend::flags::INTERNAL_LOCAL
    );
}

#[test]
fn a_service_without_endpoints_is_programmed_with_no_backends() {
    let (state, _) = build(&[web().build()], &[]);
    let f = &state.frontends[&key("10.96.0.10", 80, TCP)];
    assert!(f.backends.is_empty());
    assert_eq!(state.programmed().len(), 1);
}

#[test]
fn source_ranges_apply_to_load_balancer_addresses_only() {
    let svc = lb_web()
        .external_ips(&["192.0.2.1"])
        .source_ranges(&["203.0.113.7/24", "10.0.0.0/8", "fd00::/64", "10.0.0.0/8"])
        .build();
    let (state, skipped) = build(&[svc], &[]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let lb = &state.frontends[&key("198.51.100.7", 80, TCP)];
    assert_eq!(
        lb.flags,
        frontend::flags::LOAD_BALANCER | frontend::flags::SOURCE_RANGES
    );
    // Masked, sorted, without duplicates; the IPv6 range is another family's.
    let ranges: Vec<String> = lb.source_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["10.0.0.0/8", "203.0.113.0/24"]);
    for other in [
        key("10.96.0.10", 80, TCP),
        key("192.0.2.1", 80, TCP),
        key("127.0.0.1", 30080, TCP),
    ] {
        let f = &state.frontends[&other];
        assert_eq!(f.flags & frontend::flags::SOURCE_RANGES, 0);
        assert!(f.source_ranges.is_empty());
    }
}

#[test]
fn the_source_range_annotation_is_used_when_the_field_is_empty() {
    let annotation = crate::model::service::SOURCE_RANGES_ANNOTATION;
    let svc = lb_web()
        .annotation(annotation, " 192.0.2.0/25 , 198.51.100.0/24")
        .build();
    let (state, _) = build(&[svc], &[]);
    let lb = &state.frontends[&key("198.51.100.7", 80, TCP)];
    assert_eq!(lb.source_ranges.len(), 2);
    // The field wins over the annotation.
    let both = lb_web()
        .annotation(annotation, "192.0.2.0/25")
        .source_ranges(&["10.0.0.0/8"])
        .build();
    let (state, _) = build(&[both], &[]);
    let ranges = &state.frontends[&key("198.51.100.7", 80, TCP)].source_ranges;
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].to_string(), "10.0.0.0/8");
}

#[test]
fn invalid_source_ranges_are_noted_and_all_invalid_fails_closed() {
    let svc = lb_web()
        .source_ranges(&["10.0.0.0/8", "10.0.0.0", "nonsense/8"])
        .build();
    let (state, skipped) = build(&[svc], &[]);
    let lb = &state.frontends[&key("198.51.100.7", 80, TCP)];
    assert_eq!(lb.source_ranges.len(), 1);
    assert_eq!(
        reasons(&skipped),
        [
            &SkipReason::BadSourceRange {
                field: "spec.loadBalancerSourceRanges",
                value: "10.0.0.0".into()
            },
            &SkipReason::BadSourceRange {
                field: "spec.loadBalancerSourceRanges",
                value: "nonsense/8".into()
            },
        ]
    );
    assert!(!skipped[0].reason.is_by_design());

    let broken = lb_web().source_ranges(&["10.0.0.0/33", "bogus"]).build();
    let (state, skipped) = build(&[broken], &[]);
    let lb = &state.frontends[&key("198.51.100.7", 80, TCP)];
    assert_ne!(
        lb.flags & frontend::flags::SOURCE_RANGES,
        0,
        "still restricted"
    );
    assert!(lb.source_ranges.is_empty(), "nobody is admitted");
    assert!(
        skipped
            .iter()
            .any(|s| s.reason == SkipReason::NoUsableSourceRange("spec.loadBalancerSourceRanges")),
        "{skipped:?}"
    );
}

#[test]
fn health_checks_count_ready_local_endpoints_only() {
    let svc = lb_web()
        .external_traffic_policy("Local")
        .health_check_node_port(32000)
        .build();
    let s = slice("shop", "web-1", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.1.2")
        .on_node(NODE)
        .build();
    let local = |s: SliceBuilderFn| {
        let parsed = parse_service(&svc).value.expect("service");
        let slices: Vec<SliceInfo> = s()
            .iter()
            .map(|e| parse_slice(e, NODE).value.expect("slice"))
            .collect();
        let refs: Vec<&SliceInfo> = slices.iter().collect();
        health_check(&parsed, &refs)
    };
    let check = local(&|| vec![s.clone()]).expect("a health check");
    assert_eq!((check.port, check.local_endpoints), (32000, 1));
    assert_eq!(check.service, ObjectId::new("shop", "web"));
    // A terminating local endpoint does not count, nor one on another node, nor one listed
    // twice.
    let mixed = slice("shop", "web-2", "web")
        .port("http", 8080, "TCP")
        .terminating("10.244.1.3")
        .on_node(NODE)
        .build();
    let remote = slice("shop", "web-3", "web")
        .port("http", 8080, "TCP")
        .ready("10.244.2.2")
        .build();
    let check =
        local(&|| vec![s.clone(), s.clone(), mixed.clone(), remote.clone()]).expect("check");
    assert_eq!(check.local_endpoints, 1);
    let check = local(&|| vec![mixed.clone()]).expect("check");
    assert_eq!(check.local_endpoints, 0);
    // Without ETP=Local, or without the port, there is none.
    let cluster = parse_service(&lb_web().health_check_node_port(32000).build())
        .value
        .expect("service");
    assert_eq!(health_check(&cluster, &[]), None);
    let no_port = parse_service(&lb_web().external_traffic_policy("Local").build())
        .value
        .expect("service");
    assert_eq!(health_check(&no_port, &[]), None);
}

type SliceBuilderFn<'a> = &'a dyn Fn() -> Vec<EndpointSlice>;
