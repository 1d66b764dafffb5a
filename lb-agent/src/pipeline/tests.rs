use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{proto, Backend, BackendSlotKey, CtEntry, CtKey};

use super::*;
use crate::{
    datapath::maps::memory::{MemoryMaps, Op},
    datapath::maps::Write,
    fixtures::{service, slice},
    model::{parse_service, parse_slice, slice::LAST_CHANGE_TRIGGER_TIME},
    serve::metrics::sample,
    source::Change,
};

const NODE: &str = "node-a";

fn pipeline(expect_node: bool) -> Pipeline<MemoryMaps> {
    Pipeline::new(
        Syncer::new(MemoryMaps::default()),
        PipelineConfig {
            node_name: NODE.into(),
            overrides: NodeOverrides::default(),
            expect_node,
            datapath: Default::default(),
        },
        Metrics::new(None),
        Arc::new(Health::new(Duration::from_secs(60))),
    )
}

fn ev(update: Update) -> SourceEvent {
    SourceEvent::now(update)
}

fn list_services(list: &[Service]) -> SourceEvent {
    ev(Update::Services(Change::Replace(
        list.iter().map(parse_service).collect(),
    )))
}

fn list_slices(list: &[EndpointSlice]) -> SourceEvent {
    ev(Update::Slices(Change::Replace(
        list.iter().map(|s| parse_slice(s, NODE)).collect(),
    )))
}

fn apply_service(s: &Service) -> SourceEvent {
    ev(Update::Services(Change::Apply(parse_service(s))))
}

fn apply_slice(s: &EndpointSlice) -> SourceEvent {
    ev(Update::Slices(Change::Apply(parse_slice(s, NODE))))
}

fn delete_service(name: &str) -> SourceEvent {
    ev(Update::Services(Change::Delete(ObjectId::new(
        "shop", name,
    ))))
}

fn delete_slice(name: &str) -> SourceEvent {
    ev(Update::Slices(Change::Delete(ObjectId::new("shop", name))))
}

fn svc(name: &str, i: u8, protocol: &str) -> Service {
    service("shop", name, &format!("10.96.0.{i}"))
        .port("p", 80, protocol)
        .build()
}

fn eps(name: &str, service: &str, protocol: &str, addrs: &[&str]) -> EndpointSlice {
    addrs
        .iter()
        .fold(
            slice("shop", name, service).port("p", 8080, protocol),
            |s, a| s.ready(a),
        )
        .build()
}

fn key(i: u8, protocol: u8) -> FrontendKey {
    FrontendKey::new(std::net::Ipv4Addr::new(10, 96, 0, i), 80, protocol)
}

/// Three services with two endpoints each, synced.
fn synced_three() -> Pipeline<MemoryMaps> {
    let mut p = pipeline(false);
    p.apply(list_services(&[
        svc("a", 1, "TCP"),
        svc("b", 2, "TCP"),
        svc("c", 3, "TCP"),
    ]));
    p.apply(list_slices(&[
        eps("a-1", "a", "TCP", &["10.244.1.1", "10.244.1.2"]),
        eps("b-1", "b", "TCP", &["10.244.2.1", "10.244.2.2"]),
        eps("c-1", "c", "TCP", &["10.244.3.1", "10.244.3.2"]),
    ]));
    let r = p.sync().expect("sync").expect("a first sync");
    assert_eq!(r.mode, SyncMode::Full);
    p.syncer_mut().maps_mut().take_log();
    p
}

/// The maps as frontends with their backends in slot order (ids resolved away), after
/// checking that nothing is left over: every slot belongs to a frontend and lies within
/// its count, and every backend is used.
type Resolved = (u16, u32, Vec<Backend>, Option<String>);

fn resolved(m: &MemoryMaps) -> BTreeMap<FrontendKey, Resolved> {
    let mut used_slots = 0;
    let mut used_backends = BTreeSet::new();
    let out = m
        .frontends
        .iter()
        .map(|(k, f)| {
            let backends = (1..=u32::from(f.backend_count))
                .map(|slot| {
                    let id = m.slots[&BackendSlotKey {
                        service_id: f.service_id,
                        slot,
                    }];
                    used_backends.insert(id);
                    m.backends[&id]
                })
                .collect();
            used_slots += usize::from(f.backend_count);
            let name = m
                .names
                .get(&f.service_id)
                .and_then(|n| n.as_str().map(str::to_owned));
            (*k, (f.flags, f.affinity_timeout_s, backends, name))
        })
        .collect();
    assert_eq!(m.slots.len(), used_slots, "stray slots in {:?}", m.slots);
    assert_eq!(
        m.backends.keys().copied().collect::<BTreeSet<_>>(),
        used_backends,
        "unused backends"
    );
    let ids: BTreeSet<u32> = m.frontends.values().map(|f| f.service_id).collect();
    assert_eq!(ids.len(), m.frontends.len(), "a service id used twice");
    assert_eq!(
        m.names.keys().copied().collect::<BTreeSet<_>>(),
        ids,
        "LB_SVC_NAMES names exactly the programmed service ids"
    );
    out
}

/// What a fresh agent would write for the same store.
fn full_sync_of(p: &Pipeline<MemoryMaps>) -> MemoryMaps {
    let mut fresh = pipeline(false);
    let services: Vec<_> = p.store().services().cloned().collect();
    let slices: Vec<_> = services
        .iter()
        .flat_map(|s| p.store().slices_of(&s.id))
        .cloned()
        .collect();
    fresh.apply(ev(Update::snapshot(
        Change::Replace(services.into_iter().map(valid).collect()),
        Change::Replace(slices.into_iter().map(valid).collect()),
    )));
    fresh.sync().expect("fresh sync");
    fresh.syncer().maps().clone()
}

fn valid<T>(value: T) -> Parsed<T> {
    Parsed {
        id: None,
        value: Some(value),
        skipped: vec![],
    }
}

fn writes(log: &[Op]) -> Vec<Write> {
    log.iter()
        .filter_map(|op| match op {
            Op::Service(w) => Some(*w),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_written_until_services_slices_and_the_node_are_listed() {
    let mut p = pipeline(true);
    p.apply(list_services(&[svc("a", 1, "TCP")]));
    assert_eq!(p.sync().expect("sync"), None);
    p.apply(list_slices(&[]));
    assert_eq!(p.sync().expect("sync"), None, "the Node is not listed yet");
    p.apply(ev(Update::Node(Change::Replace(vec![]))));
    let r = p.sync().expect("sync").expect("synced");
    assert_eq!((r.mode, r.frontends), (SyncMode::Full, 1));
    assert!(p
        .syncer()
        .maps()
        .frontends
        .contains_key(&key(1, proto::TCP)));
}

#[test]
fn giving_up_on_the_node_lets_the_first_sync_happen() {
    let mut p = pipeline(true);
    p.apply(list_services(&[svc("a", 1, "TCP")]));
    p.apply(list_slices(&[]));
    p.stop_waiting_for_node();
    assert!(p.sync().expect("sync").is_some());
}

#[test]
fn an_endpoint_change_writes_only_that_services_entries_without_reading_the_maps() {
    let mut p = synced_three();
    let reads = p.syncer().maps().reads.get();
    let b_id = p.syncer().maps().frontends[&key(2, proto::TCP)].service_id;
    p.apply(apply_slice(&eps(
        "b-1",
        "b",
        "TCP",
        &["10.244.2.1", "10.244.2.2", "10.244.2.3"],
    )));
    let r = p.sync().expect("sync").expect("synced");
    assert_eq!(r.mode, SyncMode::Incremental);
    assert_eq!(p.syncer().maps().reads.get(), reads, "no whole-map reads");
    let log = writes(&p.syncer_mut().maps_mut().take_log());
    let new_backend = Backend::new([10, 244, 2, 3].into(), 8080, proto::TCP);
    let backend_id = match log.first() {
        Some(Write::PutBackend(id, b)) if *b == new_backend => *id,
        other => panic!("expected the new backend first, got {other:?}"),
    };
    assert_eq!(
        log[1..],
        [
            Write::PutSlot(
                BackendSlotKey {
                    service_id: b_id,
                    slot: 3
                },
                backend_id
            ),
            Write::PutFrontend(
                key(2, proto::TCP),
                lb_common::Frontend {
                    backend_count: 3,
                    ..p.syncer().maps().frontends[&key(2, proto::TCP)]
                }
            ),
        ]
    );
    assert_eq!(resolved(p.syncer().maps()), resolved(&full_sync_of(&p)));
}

#[test]
fn removing_an_endpoint_removes_its_slot_and_backend_after_the_count() {
    let mut p = synced_three();
    p.apply(apply_slice(&eps("a-1", "a", "TCP", &["10.244.1.2"])));
    p.sync().expect("sync");
    let kinds: Vec<&str> = writes(&p.syncer_mut().maps_mut().take_log())
        .iter()
        .map(|w| match w {
            Write::PutBackend(..) => "put backend",
            Write::PutSlot(..) => "put slot",
            Write::PutFrontend(..) => "put frontend",
            Write::DeleteFrontend(..) => "delete frontend",
            Write::DeleteSlot(..) => "delete slot",
            Write::DeleteBackend(..) => "delete backend",
            Write::PutSourceRange(..) => "put source range",
            Write::DeleteSourceRange(..) => "delete source range",
        })
        .collect();
    assert_eq!(
        kinds,
        ["put slot", "put frontend", "delete slot", "delete backend"]
    );
    assert_eq!(resolved(p.syncer().maps()), resolved(&full_sync_of(&p)));
}

#[test]
fn an_update_that_changes_nothing_the_model_reads_syncs_nothing() {
    let mut p = synced_three();
    let mut same = svc("a", 1, "TCP");
    same.metadata.annotations = Some([("note".to_owned(), "x".to_owned())].into());
    p.apply(apply_service(&same));
    assert!(!p.has_work());
    assert_eq!(p.sync().expect("sync"), None);
}

#[test]
fn deleting_a_service_and_its_slice_removes_everything_it_had() {
    let mut p = synced_three();
    p.apply(delete_service("c"));
    p.apply(delete_slice("c-1"));
    let r = p.sync().expect("sync").expect("synced");
    assert_eq!(r.mode, SyncMode::Incremental);
    assert!(!p
        .syncer()
        .maps()
        .frontends
        .contains_key(&key(3, proto::TCP)));
    assert_eq!(resolved(p.syncer().maps()).len(), 2);
    assert_eq!(p.syncer().maps().backends.len(), 4);
}

#[test]
fn a_relist_after_an_outage_removes_what_vanished_and_adds_what_appeared() {
    let mut p = synced_three();
    // While the API was unreachable: b was deleted, d created, a's endpoints moved.
    p.apply(list_services(&[
        svc("a", 1, "TCP"),
        svc("c", 3, "TCP"),
        svc("d", 4, "TCP"),
    ]));
    p.apply(list_slices(&[
        eps("a-1", "a", "TCP", &["10.244.1.9"]),
        eps("c-1", "c", "TCP", &["10.244.3.1", "10.244.3.2"]),
        eps("d-1", "d", "TCP", &["10.244.4.1"]),
    ]));
    let r = p.sync().expect("sync").expect("synced");
    assert_eq!(r.mode, SyncMode::Full);
    let maps = p.syncer().maps();
    let keys: Vec<_> = maps.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        [key(1, proto::TCP), key(3, proto::TCP), key(4, proto::TCP)]
    );
    assert_eq!(resolved(maps), resolved(&full_sync_of(&p)));
    // c was untouched: the relist rewrote none of its entries.
    let c_id = maps.frontends[&key(3, proto::TCP)].service_id;
    let log = writes(&p.syncer_mut().maps_mut().take_log());
    assert!(!log.iter().any(|w| matches!(w,
        Write::PutSlot(k, _) | Write::DeleteSlot(k) if k.service_id == c_id)));
    // And the record is good for incremental syncs again.
    p.apply(apply_slice(&eps(
        "d-1",
        "d",
        "TCP",
        &["10.244.4.1", "10.244.4.2"],
    )));
    assert_eq!(
        p.sync().expect("sync").map(|r| r.mode),
        Some(SyncMode::Incremental)
    );
}

#[test]
fn nothing_is_removed_while_the_source_is_silent() {
    let mut p = synced_three();
    let before = p.syncer().maps().frontends.clone();
    // No events for a while (an outage): syncs have nothing to do.
    assert_eq!(p.sync().expect("sync"), None);
    p.request_full_resync();
    p.sync().expect("sync");
    assert_eq!(p.syncer().maps().frontends, before);
}

#[test]
fn a_service_made_invalid_by_an_update_stops_being_served_and_is_counted() {
    let mut p = synced_three();
    let mut bad = svc("a", 1, "TCP");
    if let Some(spec) = bad.spec.as_mut() {
        spec.cluster_ip = Some("10.96.0.300".into());
        spec.cluster_ips = Some(vec!["10.96.0.300".into()]);
    }
    p.apply(apply_service(&bad));
    p.sync().expect("sync");
    assert!(!p
        .syncer()
        .maps()
        .frontends
        .contains_key(&key(1, proto::TCP)));
    assert_eq!(p.syncer().maps().frontends.len(), 2);
    let text = p.metrics.encode().expect("metrics");
    assert_eq!(
        sample(
            &text,
            "lb_invalid_objects_total",
            "kind=\"Service\",reason=\"bad_address\""
        ),
        Some("1")
    );
}

#[test]
fn a_failed_write_makes_the_next_sync_a_full_one_that_repairs_the_maps() {
    let mut p = synced_three();
    p.syncer_mut().maps_mut().fail_writes = true;
    p.apply(apply_slice(&eps("a-1", "a", "TCP", &["10.244.1.7"])));
    assert!(p.sync().is_err());
    assert!(!p.syncer().has_record());
    p.syncer_mut().maps_mut().fail_writes = false;
    let r = p.sync().expect("sync").expect("retried");
    assert_eq!(r.mode, SyncMode::Full);
    assert_eq!(resolved(p.syncer().maps()), resolved(&full_sync_of(&p)));
    let text = p.metrics.encode().expect("metrics");
    assert_eq!(
        sample(
            &text,
            "lb_sync_proxy_rules_errors_total",
            "mode=\"incremental\""
        ),
        Some("1")
    );
}

#[test]
fn removing_a_udp_backend_incrementally_clears_its_conntrack_entries() {
    let mut p = pipeline(false);
    p.apply(list_services(&[svc("dns", 53, "UDP")]));
    p.apply(list_slices(&[eps(
        "dns-1",
        "dns",
        "UDP",
        &["10.244.1.1", "10.244.1.2"],
    )]));
    p.sync().expect("sync");
    let maps = p.syncer_mut().maps_mut();
    let f = maps.frontends[&key(53, proto::UDP)];
    let gone = Backend::new([10, 244, 1, 1].into(), 8080, proto::UDP);
    let client = lb_common::addr_be([10, 244, 9, 9].into());
    let fwd = CtKey::new(
        client,
        key(53, proto::UDP).addr,
        4000u16.to_be(),
        80u16.to_be(),
        proto::UDP,
        lb_common::conntrack::dir::FORWARD,
    );
    maps.conntrack.insert(
        fwd,
        CtEntry {
            nat_addr: gone.addr,
            nat_port: gone.port,
            service_id: f.service_id,
            backend_id: 1,
            ..Default::default()
        },
    );
    p.apply(apply_slice(&eps("dns-1", "dns", "UDP", &["10.244.1.2"])));
    let r = p.sync().expect("sync").expect("synced");
    assert_eq!((r.mode, r.conntrack_deleted), (SyncMode::Incremental, 2));
    assert!(p.syncer().maps().conntrack.is_empty());
}

#[test]
fn a_zone_change_resyncs_every_service_with_the_new_hints() {
    let mut p = pipeline(true);
    let hinted = slice("shop", "a-1", "a")
        .port("p", 8080, "TCP")
        .ready("10.244.1.1")
        .hints(&["zone-a"])
        .ready("10.244.2.1")
        .hints(&["zone-b"])
        .build();
    p.apply(list_services(&[svc("a", 1, "TCP")]));
    p.apply(list_slices(&[hinted]));
    let node = |zone: &str| {
        let n = k8s_openapi::api::core::v1::Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(NODE.into()),
                labels: Some([(crate::model::node::ZONE_LABEL.to_owned(), zone.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Parsed {
            id: Some(ObjectId::new("", NODE)),
            value: Some(NodeInfo::from_node(&n)),
            skipped: vec![],
        }
    };
    p.apply(ev(Update::Node(Change::Replace(vec![node("zone-a")]))));
    p.sync().expect("sync");
    let backends =
        |p: &Pipeline<MemoryMaps>| resolved(p.syncer().maps())[&key(1, proto::TCP)].2.clone();
    assert_eq!(backends(&p)[0].ip(), std::net::Ipv4Addr::new(10, 244, 1, 1));
    assert_eq!(backends(&p).len(), 1);
    p.apply(ev(Update::Node(Change::Apply(node("zone-b")))));
    assert_eq!(
        p.sync().expect("sync").map(|r| r.mode),
        Some(SyncMode::Full)
    );
    assert_eq!(backends(&p)[0].ip(), std::net::Ipv4Addr::new(10, 244, 2, 1));
    assert_eq!(p.node().zone.as_deref(), Some("zone-b"));
}

#[test]
fn programming_latency_is_measured_from_the_slices_trigger_time() {
    let mut p = synced_three();
    p.started = Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(10))
        .expect("time");
    let two_seconds_ago = Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(2))
        .expect("time");
    let changed = slice("shop", "a-1", "a")
        .port("p", 8080, "TCP")
        .ready("10.244.1.5")
        .annotation(LAST_CHANGE_TRIGGER_TIME, &two_seconds_ago.to_string())
        .build();
    p.apply(apply_slice(&changed));
    p.sync().expect("sync");
    let text = p.metrics.encode().expect("metrics");
    // The first sync is not a change being propagated; this one is, of about two seconds.
    let bucket = |le: &str| {
        sample(
            &text,
            "lb_network_programming_duration_seconds_bucket",
            &format!("le=\"{le}\""),
        )
    };
    assert_eq!(
        sample(&text, "lb_network_programming_duration_seconds_count", ""),
        Some("1")
    );
    assert_eq!(bucket("1.0"), Some("0"));
    assert_eq!(bucket("5.0"), Some("1"));
}

#[test]
fn trigger_times_from_before_the_agent_started_are_not_measured() {
    let mut p = synced_three();
    let changed = slice("shop", "a-1", "a")
        .port("p", 8080, "TCP")
        .ready("10.244.1.5")
        .annotation(LAST_CHANGE_TRIGGER_TIME, "2020-01-01T00:00:00Z")
        .build();
    p.apply(apply_slice(&changed));
    p.apply(apply_slice(&eps("b-1", "b", "TCP", &["10.244.2.9"])));
    p.sync().expect("sync");
    let text = p.metrics.encode().expect("metrics");
    assert_eq!(
        sample(&text, "lb_network_programming_duration_seconds_count", ""),
        Some("1"),
        "only b, from when it was received"
    );
}

#[test]
fn health_turns_healthy_at_the_first_sync() {
    let mut p = pipeline(false);
    p.apply(list_services(&[svc("a", 1, "TCP")]));
    assert!(!p.health.healthz(SystemTime::now()).healthy);
    p.apply(list_slices(&[]));
    p.sync().expect("sync");
    assert!(p.health.healthz(SystemTime::now()).healthy);
    // A change pending longer than the bound is unhealthy.
    p.apply(delete_service("a"));
    let later = SystemTime::now() + Duration::from_secs(61);
    assert!(!p.health.healthz(later).healthy);
    p.sync().expect("sync");
    assert!(p.health.healthz(later).healthy);
}

#[test]
fn the_state_report_lists_every_frontend_with_its_programmed_id() {
    let mut p = synced_three();
    let np = service("shop", "np", "10.96.0.9")
        .port("p", 80, "TCP")
        .node_port(30080)
        .type_("NodePort")
        .build();
    p.apply(apply_service(&np));
    p.sync().expect("sync");
    let state = p.state();
    assert!(state.synced);
    assert_eq!(state.services, 4);
    // No node address: the NodePort is served on 127.0.0.1 only, and programmed.
    assert_eq!(state.frontends.len(), 5);
    let local = state
        .frontends
        .iter()
        .find(|f| f.kind == "NodePort")
        .expect("NodePort on localhost");
    assert_eq!(
        (local.address.to_string(), local.port),
        ("127.0.0.1".into(), 30080)
    );
    assert!(local.programmed && local.service_id.is_some());
    let a = state
        .frontends
        .iter()
        .find(|f| f.name == "shop/a:p")
        .expect("shop/a");
    assert_eq!(
        (a.name.as_str(), a.programmed, a.backends.len()),
        ("shop/a:p", true, 2)
    );
    assert_eq!(
        a.service_id,
        Some(p.syncer().maps().frontends[&key(1, proto::TCP)].service_id)
    );
}

/// A small deterministic generator, so the sequence below is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 33) % n
    }
}

#[test]
fn any_sequence_of_incremental_syncs_ends_where_a_full_sync_would() {
    let mut rng = Lcg(7);
    let mut p = pipeline(false);
    p.apply(list_services(&[]));
    p.apply(list_slices(&[]));
    p.sync().expect("sync");
    for step in 0..400 {
        // A small universe, so that services share backends and ids get reused.
        let n = rng.next(6) as u8;
        let name = format!("s{n}");
        let protocol = if n.is_multiple_of(2) { "TCP" } else { "UDP" };
        match rng.next(6) {
            0 => p.apply(delete_service(&name)),
            1 => p.apply(delete_slice(&format!("{name}-1"))),
            2 | 3 => {
                let count = rng.next(4) as usize;
                let mut s = slice("shop", &format!("{name}-{}", 1 + rng.next(2)), &name)
                    .port("p", 8080, protocol);
                for _ in 0..count {
                    let addr = format!("10.244.0.{}", 1 + rng.next(5));
                    s = match rng.next(3) {
                        0 => s.terminating(&addr),
                        1 => s.ready(&addr).on_node(NODE),
                        _ => s.ready(&addr),
                    };
                }
                p.apply(apply_slice(&s.build()));
            }
            _ => {
                let mut s = svc(&name, 10 + n, protocol);
                if rng.next(3) == 0 {
                    s = service("shop", &name, "10.96.0.99")
                        .port("p", 80, protocol)
                        .client_ip_affinity(Some(30))
                        .build();
                }
                p.apply(apply_service(&s));
            }
        }
        if rng.next(3) == 0 {
            continue; // let changes pile up into one sync
        }
        if let Some(r) = p.sync().expect("sync") {
            assert_eq!(r.mode, SyncMode::Incremental, "step {step}");
        }
        let maps = p.syncer().maps();
        assert_eq!(resolved(maps), resolved(&full_sync_of(&p)), "step {step}");
        let counts = p.syncer().counts().expect("a record");
        assert_eq!(
            (counts.frontends, counts.slots, counts.backends),
            (maps.frontends.len(), maps.slots.len(), maps.backends.len()),
            "step {step}"
        );
    }
}

#[tokio::test]
async fn run_batches_queued_events_into_one_sync_and_answers_state_requests() {
    let mut p = pipeline(false);
    let (tx, mut rx) = mpsc::channel(16);
    tx.send(list_services(&[svc("a", 1, "TCP"), svc("b", 2, "TCP")]))
        .await
        .expect("send");
    tx.send(list_slices(&[eps("a-1", "a", "TCP", &["10.244.1.1"])]))
        .await
        .expect("send");
    tx.send(apply_slice(&eps("b-1", "b", "TCP", &["10.244.2.1"])))
        .await
        .expect("send");
    let (state_tx, mut state_rx) = mpsc::channel(1);
    let (synced_tx, mut synced) = watch::channel(false);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let options = RunOptions::default();
    let driver = async {
        synced.wait_for(|s| *s).await.expect("synced");
        let (reply_tx, reply_rx) = oneshot::channel();
        state_tx.send(reply_tx).await.expect("request");
        let state = reply_rx.await.expect("state");
        let _ = stop_tx.send(());
        state
    };
    let runner = run(
        &mut p,
        &mut rx,
        &mut state_rx,
        &options,
        &synced_tx,
        async {
            let _ = stop_rx.await;
        },
    );
    let (result, state) = tokio::join!(runner, driver);
    result.expect("ran");
    assert_eq!(state.frontends.len(), 2);
    assert!(state.frontends.iter().all(|f| f.backends.len() == 1));
    let text = p.metrics.encode().expect("metrics");
    assert_eq!(
        sample(&text, "lb_sync_proxy_rules_total", "mode=\"full\""),
        Some("1"),
        "one sync for all three events"
    );
}

#[tokio::test]
async fn run_stops_waiting_for_a_node_that_never_appears() {
    let mut p = pipeline(true);
    let (tx, mut rx) = mpsc::channel(16);
    tx.send(list_services(&[svc("a", 1, "TCP")]))
        .await
        .expect("send");
    tx.send(list_slices(&[])).await.expect("send");
    let (_state_tx, mut state_rx) = mpsc::channel(1);
    let (synced_tx, mut synced) = watch::channel(false);
    let options = RunOptions {
        node_wait: Duration::from_millis(50),
        ..Default::default()
    };
    let runner = run(
        &mut p,
        &mut rx,
        &mut state_rx,
        &options,
        &synced_tx,
        async {
            let _ = synced.wait_for(|s| *s).await;
        },
    );
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("synced without a Node")
        .expect("ran");
    assert!(p
        .syncer()
        .maps()
        .frontends
        .contains_key(&key(1, proto::TCP)));
}

#[tokio::test]
async fn run_ends_with_an_error_when_the_source_stops() {
    let mut p = pipeline(false);
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(1);
    drop(tx);
    let (_state_tx, mut state_rx) = mpsc::channel(1);
    let (synced_tx, _synced) = watch::channel(false);
    let result = run(
        &mut p,
        &mut rx,
        &mut state_rx,
        &RunOptions::default(),
        &synced_tx,
        std::future::pending(),
    )
    .await;
    assert!(matches!(result, Err(PipelineError::SourceStopped)));
}

#[test]
fn the_state_report_lists_what_is_left_out_until_it_is_fixed_or_gone() {
    let mut p = synced_three();
    let objects = |p: &Pipeline<MemoryMaps>| -> Vec<(String, String)> {
        p.state()
            .skipped
            .into_iter()
            .map(|s| (s.object, s.reason))
            .collect()
    };
    assert_eq!(objects(&p), []);
    let mut bad = svc("a", 1, "TCP");
    if let Some(spec) = bad.spec.as_mut() {
        spec.cluster_ip = Some("10.96.0.300".into());
        spec.cluster_ips = Some(vec!["10.96.0.300".into()]);
    }
    p.apply(apply_service(&bad));
    // d claims c's address: the loser is reported after the sync.
    p.apply(apply_service(&svc("d", 3, "TCP")));
    p.apply(apply_slice(&eps(
        "a-1",
        "a",
        "TCP",
        &["10.244.1.1", "not-an-ip"],
    )));
    p.sync().expect("sync");
    let state = p.state();
    let bad_port = state
        .skipped
        .iter()
        .find(|s| s.object == "Service shop/a")
        .expect("shop/a reported");
    assert_eq!(bad_port.kind, "Service");
    assert_eq!(
        bad_port.message,
        "spec.clusterIP \"10.96.0.300\" is not an IP address"
    );
    assert!(!bad_port.by_design);
    assert_eq!(
        objects(&p),
        [
            (
                "EndpointSlice shop/a-1 endpoint 2".into(),
                "bad_address".into()
            ),
            ("Service shop/a".into(), "bad_address".into()),
            ("Service shop/d port p".into(), "duplicate_frontend".into()),
        ]
    );

    // Fixed, deleted, relisted: each takes its entry away.
    p.apply(apply_service(&svc("a", 1, "TCP")));
    p.apply(delete_service("d"));
    p.sync().expect("sync");
    assert_eq!(
        objects(&p),
        [(
            "EndpointSlice shop/a-1 endpoint 2".into(),
            "bad_address".into()
        )]
    );
    p.apply(list_slices(&[eps("a-1", "a", "TCP", &["10.244.1.1"])]));
    p.sync().expect("sync");
    assert_eq!(objects(&p), []);
}
