//! The kube source end to end: the lab's API server (in-process, real HTTP list/watch)
//! -> kube-rs watchers -> pipeline -> in-memory maps. No root needed.

use std::time::{Duration, Instant};

use lb_common::{proto, FrontendKey};
use lb_lab::apiserver::{ApiServer, Config as ServerConfig, PauseMode};
use serde_json::{json, Value};

use super::*;
use crate::{
    datapath::maps::memory::MemoryMaps,
    model::node::NodeOverrides,
    pipeline::{Pipeline, PipelineConfig},
    serve::{health::Health, metrics::sample},
    source::{EventReceiver, EVENT_QUEUE},
    sync::{SyncMode, Syncer},
};

const NODE: &str = "node-a";
const PATIENCE: Duration = Duration::from_secs(30);

fn service(name: &str, ip: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, service: &str, addrs: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true}, "nodeName": NODE,
        })).collect::<Vec<_>>(),
    })
}

fn node(zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]},
    })
}

fn key(last: u8) -> FrontendKey {
    FrontendKey::new(std::net::Ipv4Addr::new(10, 96, 0, last), 80, proto::TCP)
}

/// Backend count of each frontend in the maps.
fn counts(p: &Pipeline<MemoryMaps>) -> Vec<(FrontendKey, u16)> {
    p.syncer()
        .maps()
        .frontends
        .iter()
        .map(|(k, f)| (*k, f.backend_count))
        .collect()
}

/// Feeds events to the pipeline and syncs until `done` holds; returns the modes of the
/// syncs made on the way.
async fn pump(
    p: &mut Pipeline<MemoryMaps>,
    events: &mut EventReceiver,
    for_at_least: Duration,
    done: impl Fn(&Pipeline<MemoryMaps>) -> bool,
) -> Vec<SyncMode> {
    let started = Instant::now();
    let mut modes = Vec::new();
    loop {
        if done(p) && started.elapsed() >= for_at_least {
            return modes;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "gave up waiting; maps hold {:?}",
            counts(p)
        );
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            p.apply(e);
            while let Ok(e) = events.try_recv() {
                p.apply(e);
            }
        }
        if let Some(r) = p.sync().expect("sync") {
            modes.push(r.mode);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_program_the_maps_and_an_outage_keeps_the_last_state_until_the_relist() {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.bookmark_interval = Duration::from_millis(200);
    let server = ApiServer::start(config).await.expect("API server");
    let api = server.handle();
    for object in [
        service("web", "10.96.0.10", json!({})),
        slice("web-1", "web", &["10.244.1.2"]),
        service("api", "10.96.0.11", json!({})),
        slice("api-1", "api", &["10.244.1.3"]),
        // kube-proxy's label filter: never served.
        service(
            "other",
            "10.96.0.12",
            json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
        ),
        node("zone-a"),
    ] {
        api.put_raw(object).expect("store object");
    }

    let kube = kube::Client::try_from(kube::Config::new(server.url().parse().expect("url")))
        .expect("client");
    let metrics = Metrics::new(None);
    let (tx, mut events) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let watchers = spawn(kube, NODE, tx, metrics.clone());
    let mut p = Pipeline::new(
        Syncer::new(MemoryMaps::default()),
        PipelineConfig {
            node_name: NODE.into(),
            overrides: NodeOverrides::default(),
            expect_node: true,
            datapath: Default::default(),
        },
        metrics.clone(),
        std::sync::Arc::new(Health::new(Duration::from_secs(60))),
    );

    // The initial lists: a full sync with both services, not the filtered one.
    let modes = pump(&mut p, &mut events, Duration::ZERO, |p| {
        counts(p) == [(key(10), 1), (key(11), 1)]
    })
    .await;
    assert_eq!(modes.first(), Some(&SyncMode::Full));
    assert_eq!(p.node().zone.as_deref(), Some("zone-a"));
    assert_eq!(p.node().ips, [std::net::Ipv4Addr::new(172, 18, 0, 2)]);

    // A watch event: an incremental sync of that one service.
    api.put_raw(slice("web-1", "web", &["10.244.1.2", "10.244.1.4"]))
        .expect("update slice");
    let modes = pump(&mut p, &mut events, Duration::ZERO, |p| {
        counts(p) == [(key(10), 2), (key(11), 1)]
    })
    .await;
    assert!(
        modes.iter().all(|m| *m == SyncMode::Incremental),
        "{modes:?}"
    );

    // The API goes away; meanwhile web grows and api is relabelled out of our hands.
    api.pause(PauseMode::Unavailable);
    api.put_raw(slice(
        "web-1",
        "web",
        &["10.244.1.2", "10.244.1.4", "10.244.1.5"],
    ))
    .expect("update slice");
    api.put_raw(service(
        "api",
        "10.96.0.11",
        json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
    ))
    .expect("relabel service");
    // The datapath keeps serving the last state for as long as the API is gone.
    pump(&mut p, &mut events, Duration::from_secs(2), |p| {
        counts(p) == [(key(10), 2), (key(11), 1)]
    })
    .await;
    // (kube-rs retries 503s inside the client before the watcher sees an error.)

    // Back, with the history gone: the watchers relist, and a full sync applies the lot.
    api.compact();
    api.resume();
    let modes = pump(&mut p, &mut events, Duration::ZERO, |p| {
        counts(p) == [(key(10), 3)]
    })
    .await;
    assert!(modes.contains(&SyncMode::Full), "{modes:?}");
    let text = metrics.encode().expect("metrics");
    assert_eq!(
        sample(&text, "lb_sync_proxy_rules_errors_total", "mode=\"full\""),
        Some("0")
    );

    for w in watchers {
        w.abort();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named() {
    let Err(err) = client(Some(Path::new("/nonexistent/kubeconfig"))).await else {
        panic!("a client from a missing file");
    };
    assert_eq!(
        err.to_string(),
        "kubeconfig /nonexistent/kubeconfig does not exist"
    );
}

#[tokio::test]
async fn a_broken_kubeconfig_is_named_with_its_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "this: [is not a kubeconfig").expect("write");
    let Err(err) = client(Some(&path)).await else {
        panic!("a client from a broken file");
    };
    assert!(
        err.to_string().starts_with("cannot use kubeconfig"),
        "{err}"
    );
}
