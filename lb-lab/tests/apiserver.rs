//! The lab's API server against the real kube-rs client the agent uses: lists, the watcher's
//! Init/InitDone and Apply/Delete, bookmarks, 410 Gone and relists after compaction and cut
//! connections, restarts from the state file, label selectors, pauses, and EndpointSlices
//! derived from pods. No root needed: the server runs in-process on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use lb_lab::apiserver::{kubeconfig, ApiServer, Config, PauseMode};
use serde_json::json;

/// How long a test waits for something the server should do at once.
const PATIENCE: Duration = Duration::from_secs(15);

fn config(seed: bool) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.seed_lab = seed;
    config.bookmark_interval = Duration::from_millis(200);
    config
}

fn client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-lab-apiserver-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn service(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap()
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A watcher driven by a task of its own (so that it keeps watching while the test does other
/// things), its events described as strings; watcher errors, expected while faults are
/// injected, are left out.
type Events = tokio::sync::mpsc::UnboundedReceiver<String>;

fn watch_services(client: &kube::Client, labels: &str) -> Events {
    let api: Api<Service> = Api::all(client.clone());
    let mut cfg = watcher::Config::default();
    if !labels.is_empty() {
        cfg = cfg.labels(labels);
    }
    // Backoff as an agent would use it; errors (cut connections) are then retried.
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if let Ok(event) = item {
                if tx.send(describe(&event)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn describe(event: &Event<Service>) -> String {
    match event {
        Event::Init => "Init".into(),
        Event::InitApply(s) => format!("InitApply({})", s.name_any()),
        Event::InitDone => "InitDone".into(),
        Event::Apply(s) => format!("Apply({})", s.name_any()),
        Event::Delete(s) => format!("Delete({})", s.name_any()),
    }
}

/// Events up to and including the first one that is `until`.
async fn events_until(events: &mut Events, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, events.recv()).await {
            Ok(Some(event)) => {
                seen.push(event.clone());
                if event == until {
                    return seen;
                }
            }
            Ok(None) => panic!("watcher ended; saw {seen:?}"),
            Err(_) => panic!("no {until} within {PATIENCE:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn crud_errors_and_discovery_speak_the_kubernetes_api() {
    let server = ApiServer::start(config(true)).await.unwrap();
    let client = client(&server);
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = services
        .create(&PostParams::default(), &service("web", json!({})))
        .await
        .unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.255.254"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());

    let err = services
        .create(&PostParams::default(), &service("web", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);
    let err = services.get("nope").await.unwrap_err();
    assert_eq!(api_code(&err), 404);
    let mut bad = service("bad", json!({}));
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 70000;
    let err = services
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 422);
    let mut bad_ip = service("bad-ip", json!({}));
    bad_ip.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.300".into());
    assert_eq!(
        api_code(
            &services
                .create(&PostParams::default(), &bad_ip)
                .await
                .unwrap_err()
        ),
        422
    );

    let patched = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "lb"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels()["team"], "lb");
    assert_eq!(patched.spec.unwrap().cluster_ip, spec.cluster_ip);

    let all: Api<Service> = Api::all(client.clone());
    let names: Vec<String> = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(names, ["kubernetes", "web"]);

    let nodes: Api<Node> = Api::all(client.clone());
    let worker = nodes
        .list(&ListParams::default().fields("metadata.name=worker2"))
        .await
        .unwrap();
    assert_eq!(worker.items.len(), 1);
    assert_eq!(
        worker.items[0].labels()["topology.kubernetes.io/zone"],
        "zone-b"
    );

    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_code(&services.get("web").await.unwrap_err()), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn a_kubeconfig_from_the_lab_works_with_kube_rs() {
    let server = ApiServer::start(config(false)).await.unwrap();
    let dir = temp_dir("kubeconfig");
    let path = dir.join("kubeconfig");
    kubeconfig::write(&path, &server.url()).unwrap();
    let file = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    assert_eq!(cfg.default_namespace, "default");
    let client = kube::Client::try_from(cfg).unwrap();
    let services: Api<Service> = Api::default_namespaced(client);
    assert!(services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_watcher_lists_then_follows_changes_through_a_label_selector() {
    let server = ApiServer::start(config(false)).await.unwrap();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();

    // kube-proxy's filter.
    let mut events = watch_services(
        &client,
        "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
    );
    assert_eq!(
        events_until(&mut events, "InitDone").await,
        ["Init", "InitApply(a)", "InitDone"]
    );

    services
        .create(
            &PostParams::default(),
            &service("hidden", json!({"service.kubernetes.io/headless": ""})),
        )
        .await
        .unwrap();
    services
        .create(&PostParams::default(), &service("b", json!({})))
        .await
        .unwrap();
    assert_eq!(
        events_until(&mut events, "Apply(b)").await,
        ["Apply(b)"],
        "the headless one is filtered"
    );

    // Labelled away: the watch reports it deleted, as the real API server does.
    services
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "other"}}})))
        .await
        .unwrap();
    assert_eq!(events_until(&mut events, "Delete(a)").await, ["Delete(a)"]);
    services
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(events_until(&mut events, "Delete(b)").await, ["Delete(b)"]);
    server.shutdown().await;
}

#[tokio::test]
async fn raw_watches_get_bookmarks_and_410_for_compacted_history() {
    let server = ApiServer::start(config(false)).await.unwrap();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let a = services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();
    let rv = a.resource_version().unwrap();

    let params = WatchParams::default().timeout(5);
    let mut stream = services.watch(&params, "0").await.unwrap().boxed();
    let mut saw_added = false;
    let bookmark_rv = loop {
        match tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => saw_added |= s.name_any() == "a",
            Some(WatchEvent::Bookmark(b)) => break b.metadata.resource_version,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_added, "resourceVersion 0 starts with the current state");
    // The Service and its (empty) EndpointSlice: the bookmark is at the latest.
    assert_eq!(bookmark_rv, server.handle().resource_version().to_string());

    server.handle().compact();
    let mut stream = services
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(PATIENCE, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // A list tells the client where to start again.
    let list = services.list(&ListParams::default()).await.unwrap();
    let fresh = list.metadata.resource_version.unwrap();
    assert!(services
        .watch(&WatchParams::default().timeout(1), &fresh)
        .await
        .is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn the_watcher_relists_after_compaction_and_a_cut_connection() {
    let mut cfg = config(false);
    // No bookmark in between: it would move the client past the compaction.
    cfg.bookmark_interval = Duration::from_secs(3600);
    let server = ApiServer::start(cfg).await.unwrap();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();
    let mut events = watch_services(&client, "");
    events_until(&mut events, "InitDone").await;
    // The watch is open once the list is done, give it a moment to connect.
    tokio::time::timeout(PATIENCE, async {
        while server.handle().open_watches() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    server.handle().compact();
    assert_eq!(server.handle().drop_watches(), 1);
    let relist = events_until(&mut events, "InitDone").await;
    assert_eq!(relist, ["Init", "InitApply(a)", "InitDone"]);
    services
        .create(&PostParams::default(), &service("b", json!({})))
        .await
        .unwrap();
    assert_eq!(events_until(&mut events, "Apply(b)").await, ["Apply(b)"]);
    server.shutdown().await;
}

#[tokio::test]
async fn state_survives_a_restart_and_the_watcher_recovers() {
    let dir = temp_dir("restart");
    let mut cfg = config(false);
    cfg.state_file = Some(dir.join("state.json"));
    let server = ApiServer::start(cfg.clone()).await.unwrap();
    cfg.listen = server.addr();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let a = services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();
    let mut events = watch_services(&client, "");
    events_until(&mut events, "InitDone").await;
    let rv_before = server.handle().resource_version();

    server.shutdown().await;
    let server = ApiServer::start(cfg).await.unwrap();
    assert_eq!(
        server.handle().resource_version(),
        rv_before,
        "the resourceVersion sequence continues"
    );
    let again = services.get("a").await.unwrap();
    assert_eq!(again.metadata.uid, a.metadata.uid);
    assert_eq!(again.spec.unwrap().cluster_ip, a.spec.unwrap().cluster_ip);

    let b = services
        .create(&PostParams::default(), &service("b", json!({})))
        .await
        .unwrap();
    assert!(b.resource_version().unwrap().parse::<u64>().unwrap() > rv_before);
    let seen = events_until(&mut events, "Apply(b)").await;
    assert!(seen.iter().all(|e| e != "Delete(a)"), "{seen:?}");
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_paused_server_hangs_or_refuses_and_recovers() {
    let server = ApiServer::start(config(false)).await.unwrap();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    // kube-rs retries 503 with a backoff for minutes, so this is checked with a plain client.
    server.handle().pause(PauseMode::Unavailable);
    let plain = lb_lab::apiserver::Client::new(None, server.addr());
    let refused = tokio::task::spawn_blocking(move || plain.get("/api/v1/services"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Some(503), "{refused}");

    server.handle().pause(PauseMode::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        services.list(&ListParams::default()),
    )
    .await;
    assert!(hung.is_err(), "a hanging server does not answer");
    let pending = tokio::spawn({
        let services = services.clone();
        async move { services.list(&ListParams::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.handle().resume();
    assert!(
        pending.await.unwrap().is_ok(),
        "held requests complete once resumed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn endpoint_slices_follow_pod_readiness() {
    let server = ApiServer::start(config(true)).await.unwrap();
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("echo", json!({})))
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let ready = |list: &[EndpointSlice]| {
        list.iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count()
    };
    let by_service = ListParams::default().labels("kubernetes.io/service-name=echo");
    let before = slices.list(&by_service).await.unwrap().items;
    assert_eq!(ready(&before), 6);
    assert_eq!(before[0].ports.as_ref().unwrap()[0].port, Some(8080));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status(
        "worker-echo-1",
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .unwrap();
    let after = slices.list(&by_service).await.unwrap().items;
    assert_eq!(ready(&after), 5);
    assert_eq!(
        after[0].metadata.uid, before[0].metadata.uid,
        "updated in place"
    );
    let trigger =
        after[0].annotations()["endpoints.kubernetes.io/last-change-trigger-time"].clone();
    assert!(trigger.ends_with('Z') && trigger.contains('.'), "{trigger}");

    services
        .delete("echo", &DeleteParams::default())
        .await
        .unwrap();
    assert!(slices.list(&by_service).await.unwrap().items.is_empty());
    server.shutdown().await;
}
