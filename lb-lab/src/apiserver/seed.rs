//! The lab's cluster as API objects (`--seed-lab`): its Nodes and Pods, and the
//! `default/kubernetes` Service pointing at the API server, as Kind would have them.

use std::net::SocketAddrV4;

use jiff::Timestamp;
use serde_json::{json, Value};

use super::alloc::KUBERNETES_SERVICE_IP;
use super::api;
use super::resource::{ObjectKey, Resource};
use super::status::ApiError;
use super::store::Store;
use crate::plan::{Node, Plan, Pod, POD_NAMESPACE, ZONE_LABEL};
use crate::slices::SERVICE_NAME_LABEL;

/// The lab's Node objects.
pub fn node(node: &Node) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": super::discovery::go_arch(),
        ZONE_LABEL: node.zone,
    });
    if node.name == "control-plane" {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {
            "podCIDR": node.pod_cidr.to_string(),
            "podCIDRs": [node.pod_cidr.to_string()],
            "providerID": format!("kind://lb-lab/{}", node.name),
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    })
}

/// The lab's Pod objects: running, ready, with the echo server's named ports.
pub fn pod(pod: &Pod, node: Option<&Node>) -> Value {
    let ports: Vec<Value> = pod
        .ports()
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol}))
        .collect();
    let ready = json!([
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "PodScheduled", "status": "True"},
    ]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": POD_NAMESPACE, "labels": pod.labels},
        "spec": {
            "nodeName": pod.node,
            "containers": [{"name": "echo", "image": "lb-lab", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "hostIP": node.map(|n| n.ip.to_string()),
            "podIP": pod.ip.to_string(),
            "podIPs": [{"ip": pod.ip.to_string()}],
            "conditions": ready,
        },
    })
}

/// Creates what is missing of the lab's Nodes and Pods and, given the API server's address,
/// the `default/kubernetes` Service (10.96.0.1:443) and its EndpointSlice. Objects that exist
/// are left alone, so seeding a restarted server changes nothing.
///
/// # Errors
/// If an object is refused (a bug in the seed).
pub fn seed(
    store: &mut Store,
    plan: &Plan,
    apiserver: Option<SocketAddrV4>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let mut raw: Vec<Value> = plan.nodes.iter().map(node).collect();
    raw.extend(plan.pods.iter().map(|p| pod(p, plan.node(&p.node))));
    for object in raw {
        let key = ObjectKey::of(&object);
        if key.is_some_and(|k| store.get(&k).is_none()) {
            api::put_raw(store, object, now)?;
        }
    }
    let Some(apiserver) = apiserver else {
        return Ok(());
    };
    let svc_key = ObjectKey::new(Resource::Services, POD_NAMESPACE, "kubernetes");
    if store.get(&svc_key).is_none() {
        let svc = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": KUBERNETES_SERVICE_IP.to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver.port()}],
            },
        });
        api::create(store, Resource::Services, Some(POD_NAMESPACE), svc, now)?;
    }
    let slice_key = ObjectKey::new(Resource::EndpointSlices, POD_NAMESPACE, "kubernetes");
    if store.get(&slice_key).is_none() {
        // Written by the API server itself in a real cluster, for a Service without selector.
        let slice = json!({
            "metadata": {"name": "kubernetes", "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [apiserver.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": apiserver.port(), "protocol": "TCP"}],
        });
        api::create(
            store,
            Resource::EndpointSlices,
            Some(POD_NAMESPACE),
            slice,
            now,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node as KubeNode, Pod as KubePod};

    use super::*;

    #[test]
    fn seeded_objects_parse_as_their_types() {
        let plan = Plan::kind();
        for n in &plan.nodes {
            let parsed: KubeNode = serde_json::from_value(node(n)).unwrap();
            assert_eq!(parsed.spec.unwrap().pod_cidr, Some(n.pod_cidr.to_string()));
        }
        for p in &plan.pods {
            let parsed: KubePod = serde_json::from_value(pod(p, plan.node(&p.node))).unwrap();
            assert_eq!(parsed.status.unwrap().pod_ip, Some(p.ip.to_string()));
        }
    }

    #[test]
    fn seeding_twice_changes_nothing() {
        let mut store = Store::new(100);
        let apiserver = Some(SocketAddrV4::new([172, 18, 0, 2].into(), 6443));
        seed(&mut store, &Plan::kind(), apiserver, Timestamp::UNIX_EPOCH).unwrap();
        // 3 nodes, 9 pods, the kubernetes Service and its slice.
        assert_eq!(store.len(), 14);
        let rv = store.resource_version();
        seed(&mut store, &Plan::kind(), apiserver, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(store.resource_version(), rv);
        let svc = store
            .get(&ObjectKey::new(Resource::Services, "default", "kubernetes"))
            .unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    }
}
