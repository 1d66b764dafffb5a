//! The EndpointSlice controller: keeps each selector Service's slices in line with its pods,
//! updating slices in place and stamping the time of the change that triggered them.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use serde_json::{json, Value};

use super::resource::{labels, meta_mut, meta_str, ObjectKey, Resource};
use super::store::Store;
use crate::slices::{self, PodFacts, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};

/// Annotation kube-proxy computes network programming latency from.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What changed, and so which Services need their slices looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// One Service (created, changed or deleted).
    Service { namespace: String, name: String },
    /// A pod: the Services that select it or whose slices list it.
    Pod { namespace: String, name: String },
    /// A node (zones): every Service.
    All,
}

impl Trigger {
    /// What a write to the object under `key` triggers, if anything.
    pub fn of(key: &ObjectKey) -> Option<Trigger> {
        match key.resource {
            Resource::Services => Some(Trigger::Service {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
            Resource::Pods => Some(Trigger::Pod {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
            Resource::Nodes => Some(Trigger::All),
            Resource::EndpointSlices => None,
        }
    }
}

/// Brings the slices of every Service `trigger` concerns up to date; `now` is the trigger time
/// stamped on the slices that change.
pub fn reconcile(store: &mut Store, trigger: &Trigger, now: Timestamp) {
    let services: Vec<(String, String)> = match trigger {
        Trigger::Service { namespace, name } => vec![(namespace.clone(), name.clone())],
        Trigger::Pod { namespace, name } => pod_services(store, namespace, name),
        Trigger::All => names(store.list(Resource::Services, None)),
    };
    if services.is_empty() {
        return;
    }
    let zones = node_zones(store);
    let mut pods_by_ns: BTreeMap<String, Vec<PodFacts>> = BTreeMap::new();
    for (namespace, name) in services {
        let pods = pods_by_ns
            .entry(namespace.clone())
            .or_insert_with(|| pod_facts(store, &namespace, &zones))
            .clone();
        let existing = managed_slices(store, &namespace, &name);
        reconcile_service(store, &namespace, &name, &pods, existing, now);
    }
}

/// The Services a change to pod `pod` can concern: those whose selector matches it now, and
/// those whose slices list it (it may have left their selector, or been deleted). The store's
/// indexes give both without a pass over every Service or slice of the namespace.
fn pod_services(store: &Store, namespace: &str, pod: &str) -> Vec<(String, String)> {
    let mut names = std::collections::BTreeSet::new();
    if let Some(p) = store.get(&ObjectKey::new(Resource::Pods, namespace, pod)) {
        let pod_labels = labels(p);
        let candidates = store
            .indexes()
            .services_selecting_any(namespace, pod_labels.iter().map(|(k, v)| (*k, *v)));
        for name in candidates {
            let Some(svc) = store.get(&ObjectKey::new(Resource::Services, namespace, &name)) else {
                continue;
            };
            let Some(selector) = svc["spec"]["selector"].as_object() else {
                continue;
            };
            let selects = !selector.is_empty()
                && selector.iter().all(|(k, v)| {
                    v.as_str().is_some() && pod_labels.get(k.as_str()).copied() == v.as_str()
                });
            if selects {
                names.insert(name);
            }
        }
    }
    for slice_name in store.indexes().slices_listing(namespace, pod) {
        let key = ObjectKey::new(Resource::EndpointSlices, namespace, &slice_name);
        let Some(slice) = store.get(&key) else {
            continue;
        };
        let l = labels(slice);
        if l.get(MANAGED_BY_LABEL) != Some(&MANAGED_BY) {
            continue;
        }
        if let Some(service) = l.get(SERVICE_NAME_LABEL) {
            names.insert(service.to_string());
        }
    }
    names
        .into_iter()
        .map(|name| (namespace.to_string(), name))
        .collect()
}

fn names(objects: Vec<Arc<Value>>) -> Vec<(String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            Some((
                meta_str(o, "namespace")?.to_string(),
                meta_str(o, "name")?.to_string(),
            ))
        })
        .collect()
}

fn node_zones(store: &Store) -> BTreeMap<String, String> {
    store
        .list(Resource::Nodes, None)
        .iter()
        .filter_map(|n| serde_json::from_value::<Node>((**n).clone()).ok())
        .filter_map(|n| {
            let zone = slices::zone_label(n.metadata.labels.as_ref())?;
            Some((n.metadata.name?, zone))
        })
        .collect()
}

fn pod_facts(store: &Store, namespace: &str, zones: &BTreeMap<String, String>) -> Vec<PodFacts> {
    store
        .list(Resource::Pods, Some(namespace))
        .iter()
        // A pod that does not parse is one the controller cannot use; the rest still count.
        .filter_map(|p| serde_json::from_value::<Pod>((**p).clone()).ok())
        .filter_map(|pod| {
            let zone = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .and_then(|n| zones.get(n))
                .cloned();
            PodFacts::from_pod(&pod, zone)
        })
        .collect()
}

/// The slices this controller manages for Service `namespace/name`. Their names start with
/// the Service's name (as generateName makes them), so this is a range of the store rather
/// than a scan of every slice: creating N services stays linear.
fn managed_slices(store: &Store, namespace: &str, name: &str) -> Vec<Arc<Value>> {
    store
        .list_prefix(Resource::EndpointSlices, namespace, &format!("{name}-"))
        .into_iter()
        .filter(|s| {
            let l = labels(s);
            l.get(SERVICE_NAME_LABEL) == Some(&name) && l.get(MANAGED_BY_LABEL) == Some(&MANAGED_BY)
        })
        .collect()
}

fn reconcile_service(
    store: &mut Store,
    namespace: &str,
    name: &str,
    pods: &[PodFacts],
    existing: Vec<Arc<Value>>,
    now: Timestamp,
) {
    let key = ObjectKey::new(Resource::Services, namespace, name);
    let desired = match store.get(&key) {
        None => Vec::new(),
        Some(svc) => match serde_json::from_value::<Service>((**svc).clone()) {
            Ok(svc) => desired_slices(&svc, pods),
            // A Service stored without validation that does not even parse: leave its slices
            // as they are rather than guess.
            Err(_) => return,
        },
    };
    let mut existing: BTreeMap<String, Arc<Value>> = existing
        .into_iter()
        .filter_map(|s| Some((meta_str(&s, "name")?.to_string(), s)))
        .collect();
    for mut slice in desired {
        let Some(slice_name) = meta_str(&slice, "name").map(str::to_string) else {
            continue;
        };
        let old = existing.remove(&slice_name);
        if old.as_ref().is_some_and(|old| same_content(old, &slice)) {
            continue;
        }
        let uid = match &old {
            Some(old) => meta_str(old, "uid").map(str::to_string),
            None => None,
        };
        let uid = uid.unwrap_or_else(|| store.new_uid());
        let (created, generation) = match &old {
            Some(old) => (
                old["metadata"]["creationTimestamp"].clone(),
                old["metadata"]["generation"].as_i64().unwrap_or(0) + 1,
            ),
            None => (json!(super::api::timestamp_seconds(now)), 1),
        };
        if let Some(meta) = meta_mut(&mut slice) {
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), created);
            meta.insert("generation".into(), json!(generation));
            meta.insert(
                "annotations".into(),
                json!({ TRIGGER_TIME_ANNOTATION: super::api::timestamp_nanos(now) }),
            );
        }
        let slice_key = ObjectKey::new(Resource::EndpointSlices, namespace, &slice_name);
        store.put(slice_key, slice);
    }
    for stale in existing.keys() {
        store.delete(&ObjectKey::new(Resource::EndpointSlices, namespace, stale));
    }
}

/// The desired slices as JSON, with apiVersion, kind and the owner reference to the Service.
fn desired_slices(svc: &Service, pods: &[PodFacts]) -> Vec<Value> {
    let owner = json!([{
        "apiVersion": "v1",
        "kind": "Service",
        "name": svc.metadata.name,
        "uid": svc.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    slices::derive(svc, pods)
        .into_iter()
        .filter_map(|slice| serde_json::to_value(slice).ok())
        .map(|mut value| {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("apiVersion".into(), json!("discovery.k8s.io/v1"));
                obj.insert("kind".into(), json!("EndpointSlice"));
            }
            if let Some(meta) = meta_mut(&mut value) {
                meta.insert("ownerReferences".into(), owner.clone());
            }
            value
        })
        .collect()
}

/// Whether the stored slice already says what the desired one does.
fn same_content(old: &Value, new: &Value) -> bool {
    ["addressType", "endpoints", "ports"]
        .iter()
        .all(|f| old.get(f) == new.get(f))
        && ["labels", "ownerReferences"]
            .iter()
            .all(|f| old["metadata"].get(f) == new["metadata"].get(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::seed;
    use crate::plan::Plan;

    fn seeded() -> Store {
        let mut store = Store::new(1000);
        let apiserver = Some("172.18.0.2:6443".parse().unwrap());
        seed::seed(&mut store, &Plan::kind(), apiserver, Timestamp::UNIX_EPOCH).unwrap();
        store
    }

    fn add_service(store: &mut Store, yaml: &str, now: Timestamp) -> Arc<Value> {
        let body: Value = serde_norway::from_str(yaml).unwrap();
        super::super::api::create(store, Resource::Services, Some("default"), body, now).unwrap()
    }

    fn slices_of(store: &Store, name: &str) -> Vec<Arc<Value>> {
        managed_slices(store, "default", name)
    }

    fn ready_addresses(slice: &Value) -> Vec<String> {
        slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| e["addresses"][0].as_str().unwrap().to_string())
            .collect()
    }

    const ECHO: &str = "{apiVersion: v1, kind: Service, metadata: {name: echo}, spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: http}]}}";

    #[test]
    fn a_selector_service_gets_a_slice_of_its_pods_with_zones_and_owner() {
        let mut store = seeded();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let svc = add_service(&mut store, ECHO, t);
        let slices = slices_of(&store, "echo");
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(ready_addresses(slice).len(), 6);
        assert_eq!(slice["ports"][0]["port"], 8080);
        assert_eq!(slice["endpoints"][0]["zone"], "zone-a");
        assert_eq!(slice["endpoints"][4]["zone"], "zone-b");
        assert!(slice["endpoints"][0]["targetRef"]["uid"].is_string());
        assert_eq!(
            slice["metadata"]["ownerReferences"][0]["uid"],
            svc["metadata"]["uid"]
        );
        assert_eq!(
            slice["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(slice["kind"], "EndpointSlice");
    }

    #[test]
    fn a_pod_change_updates_the_slice_in_place_and_stamps_the_trigger_time() {
        let mut store = seeded();
        add_service(&mut store, ECHO, Timestamp::UNIX_EPOCH);
        let before = slices_of(&store, "echo")[0].clone();
        let rv = store.resource_version();

        let key = ObjectKey::new(Resource::Pods, "default", "worker-echo-1");
        let mut pod = (**store.get(&key).unwrap()).clone();
        for c in pod["status"]["conditions"].as_array_mut().unwrap() {
            if c["type"] == "Ready" {
                c["status"] = json!("False");
            }
        }
        let later = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        super::super::api::replace(&mut store, &key, pod, true, later).unwrap();

        let after = slices_of(&store, "echo")[0].clone();
        assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
        assert_eq!(after["metadata"]["generation"], 2);
        assert_eq!(ready_addresses(&after).len(), 5);
        assert_eq!(
            after["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION],
            "2023-11-14T22:13:20.123456789Z"
        );
        // The pod status write and the slice update: two events, nothing else.
        assert_eq!(store.resource_version(), rv + 2);
    }

    #[test]
    fn a_pod_change_concerns_the_services_selecting_or_listing_it_only() {
        let mut store = seeded();
        add_service(&mut store, ECHO, Timestamp::UNIX_EPOCH);
        let clients = "{apiVersion: v1, kind: Service, metadata: {name: clients}, spec: {selector: {app: client}, ports: [{name: http, port: 80, targetPort: 8080}]}}";
        add_service(&mut store, clients, Timestamp::UNIX_EPOCH);
        let names = |store: &Store| -> Vec<String> {
            pod_services(store, "default", "worker-echo-1")
                .into_iter()
                .map(|(_, n)| n)
                .collect()
        };
        assert_eq!(names(&store), ["echo"]);

        // Relabelled out of echo's selector and into clients': echo still lists it (and must
        // drop it), clients now selects it.
        let key = ObjectKey::new(Resource::Pods, "default", "worker-echo-1");
        let mut pod = (**store.get(&key).unwrap()).clone();
        pod["metadata"]["labels"]["app"] = json!("client");
        store.put(key.clone(), pod);
        assert_eq!(names(&store), ["clients", "echo"]);

        // Once reconciled, echo no longer lists it.
        reconcile(
            &mut store,
            &Trigger::Pod {
                namespace: "default".into(),
                name: "worker-echo-1".into(),
            },
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(names(&store), ["clients"]);
        assert_eq!(ready_addresses(&slices_of(&store, "echo")[0]).len(), 5);
    }

    #[test]
    fn an_unrelated_change_leaves_slices_alone() {
        let mut store = seeded();
        add_service(&mut store, ECHO, Timestamp::UNIX_EPOCH);
        let rv = store.resource_version();
        reconcile(&mut store, &Trigger::All, Timestamp::UNIX_EPOCH);
        assert_eq!(store.resource_version(), rv);
    }

    #[test]
    fn deleting_the_service_deletes_its_slices_but_not_hand_made_ones() {
        let mut store = seeded();
        add_service(&mut store, ECHO, Timestamp::UNIX_EPOCH);
        let key = ObjectKey::new(Resource::Services, "default", "echo");
        super::super::api::delete(&mut store, &key, None, Timestamp::UNIX_EPOCH).unwrap();
        assert!(slices_of(&store, "echo").is_empty());
        // The seeded `kubernetes` slice belongs to no controller and stays.
        let kubernetes = ObjectKey::new(Resource::EndpointSlices, "default", "kubernetes");
        assert!(store.get(&kubernetes).is_some());
    }

    #[test]
    fn more_than_a_hundred_endpoints_are_split_across_slices() {
        let mut store = Store::new(10_000);
        for i in 0..150u32 {
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {"app": "big"}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"podIP": format!("10.1.{}.{}", i / 200, i % 200), "conditions": [{"type": "Ready", "status": "True"}]},
            });
            super::super::api::put_raw(&mut store, pod, Timestamp::UNIX_EPOCH).unwrap();
        }
        add_service(
            &mut store,
            "{apiVersion: v1, kind: Service, metadata: {name: big}, spec: {selector: {app: big}, ports: [{port: 80}]}}",
            Timestamp::UNIX_EPOCH,
        );
        let sizes: Vec<usize> = slices_of(&store, "big")
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 150);
        assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    }
}
