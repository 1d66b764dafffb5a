//! The deploy/ manifests must be valid Kubernetes objects and a kube-proxy-less Kind config.

use std::path::Path;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(text: &str) -> Vec<serde_norway::Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_norway::Value::deserialize(d).expect("valid YAML document"))
        .collect()
}

#[test]
fn agent_manifest_holds_typed_objects_that_parse() {
    let mut kinds = Vec::new();
    for doc in documents(&deploy("lb-agent.yaml")) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        match kind.as_str() {
            "ServiceAccount" => drop(serde_norway::from_value::<ServiceAccount>(doc).unwrap()),
            "ClusterRole" => {
                let role: ClusterRole = serde_norway::from_value(doc).unwrap();
                let resources: Vec<String> = role
                    .rules
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|r| r.resources.unwrap_or_default())
                    .collect();
                for needed in ["services", "endpointslices", "nodes"] {
                    assert!(resources.iter().any(|r| r == needed), "RBAC lacks {needed}");
                }
            }
            "ClusterRoleBinding" => {
                drop(serde_norway::from_value::<ClusterRoleBinding>(doc).unwrap())
            }
            "DaemonSet" => {
                let ds: DaemonSet = serde_norway::from_value(doc).unwrap();
                let pod = ds.spec.unwrap().template.spec.unwrap();
                assert_eq!(
                    pod.host_network,
                    Some(true),
                    "the agent runs in the node's netns"
                );
                let agent = &pod.containers[0];
                let args = agent.args.clone().unwrap_or_default();
                assert!(args.iter().any(|a| a.starts_with("--pin-dir=/sys/fs/bpf/")));
                // The agent names a missing capability at start from its own list; the
                // manifest must grant exactly that list (the lab runs agents with the
                // manifest's, so a missing one fails the lab's tests too).
                let security = agent.security_context.clone().expect("securityContext");
                assert_ne!(security.privileged, Some(true), "least privilege");
                let caps = security.capabilities.expect("capabilities");
                assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
                let needed: Vec<&str> = lb_agent::datapath::privilege::AGENT_CAPABILITIES
                    .iter()
                    .map(|c| c.name)
                    .collect();
                assert_eq!(caps.add.unwrap_or_default(), needed);
                let mounts = agent.volume_mounts.clone().unwrap_or_default();
                assert!(
                    mounts.iter().any(|m| m.mount_path == "/sys/fs/bpf"),
                    "bpffs mounted"
                );
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "ServiceAccount"
        ]
    );
}

#[test]
fn kind_config_removes_kube_proxy_and_matches_the_lab() {
    let doc = &documents(&deploy("kind-config.yaml"))[0];
    assert_eq!(doc["networking"]["kubeProxyMode"].as_str(), Some("none"));
    assert_eq!(
        doc["networking"]["serviceSubnet"].as_str(),
        Some("10.96.0.0/16")
    );
    assert_eq!(doc["nodes"].as_sequence().map(|n| n.len()), Some(3));
}
