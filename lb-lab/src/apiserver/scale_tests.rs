//! Costs that must not grow with the number of Services: a create, and a pod readiness change,
//! at thousands of Services. Timings are printed, never asserted; what is asserted is the work
//! done (the events a change writes).

use std::time::Instant;

use jiff::Timestamp;
use serde_json::{json, Value};

use super::api;
use super::resource::{ObjectKey, Resource};
use super::store::Store;

const POOL: usize = 20;

fn pod(i: usize, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {format!("g{i}"): "y", format!("g{}", (i + POOL - 1) % POOL): "y"}},
        "spec": {"nodeName": "n", "containers": [{"name": "c"}]},
        "status": {"podIP": format!("10.1.0.{}", i + 1), "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}"), "namespace": "default"},
        "spec": {"selector": {format!("g{}", i % POOL): "y"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// Loads `n` services over a pool of pods; prints the time per create at the end, and the
/// time and event count of one pod readiness change.
fn load(n: usize) -> (f64, f64, u64) {
    let t = Timestamp::UNIX_EPOCH;
    let mut store = Store::new(100_000);
    for i in 0..POOL {
        api::create(&mut store, Resource::Pods, Some("default"), pod(i, true), t).unwrap();
    }
    let mut last = 0.0;
    for i in 0..n {
        let started = Instant::now();
        api::create(
            &mut store,
            Resource::Services,
            Some("default"),
            service(i),
            t,
        )
        .unwrap();
        last = started.elapsed().as_secs_f64();
    }
    // A pod of its own service, as the bench's endpoint change flips.
    let mut change = pod(POOL, true);
    change["metadata"]["labels"] = json!({"change": "y"});
    api::create(
        &mut store,
        Resource::Pods,
        Some("default"),
        change.clone(),
        t,
    )
    .unwrap();
    let mut svc = service(0);
    svc["metadata"]["name"] = json!("change");
    svc["spec"]["selector"] = json!({"change": "y"});
    api::create(&mut store, Resource::Services, Some("default"), svc, t).unwrap();
    change["status"]["conditions"][0]["status"] = json!("False");
    let key = ObjectKey::new(Resource::Pods, "default", &format!("p{POOL}"));
    let rv = store.resource_version();
    let started = Instant::now();
    api::replace(&mut store, &key, change, true, t).unwrap();
    let change = started.elapsed().as_secs_f64();
    (last, change, store.resource_version() - rv)
}

#[test]
fn a_create_and_a_pod_change_cost_the_same_at_any_number_of_services() {
    for n in [100, 1000, 3000] {
        let (create, change, events) = load(n);
        eprintln!(
            "n={n}: last create {:.3} ms, pod change {:.3} ms, {events} events",
            create * 1e3,
            change * 1e3
        );
        // The pod status write and its one service's slice update.
        assert_eq!(events, 2);
    }
}
