//! Discovery documents (`/version`, `/api`, `/apis`, resource lists), enough for kube-rs,
//! kubectl-style tools and people with curl.

use serde_json::{json, Value};

use super::resource::{Resource, DISCOVERY_GROUP};

/// The Kubernetes version the server claims (the one k8s-openapi's `v1_34` feature targets).
pub const MINOR: &str = "34";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-lb-lab"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("linux/{}", go_arch()),
    })
}

/// This machine's architecture as Go names it (`GOARCH`), which Kubernetes uses in
/// `/version` and the `kubernetes.io/arch` label.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group() -> Value {
    let version = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
    json!({
        "name": DISCOVERY_GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `/apis`.
pub fn groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})
}

/// `/apis/discovery.k8s.io`.
pub fn discovery_group() -> Value {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/api/v1` or `/apis/discovery.k8s.io/v1`.
pub fn resources(group_version: &str) -> Value {
    let mut list = Vec::new();
    for r in Resource::ALL
        .into_iter()
        .filter(|r| r.api_version() == group_version)
    {
        list.push(json!({
            "name": r.plural(),
            "singularName": r.singular(),
            "namespaced": r.namespaced(),
            "kind": r.kind(),
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names(),
        }));
        if r.has_status() {
            list.push(json!({
                "name": format!("{}/status", r.plural()),
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        APIGroupList, APIResourceList, APIVersions,
    };
    use k8s_openapi::apimachinery::pkg::version::Info;

    use super::*;

    #[test]
    fn documents_parse_as_the_api_types() {
        let info: Info = serde_json::from_value(version()).unwrap();
        assert_eq!(info.minor, MINOR);
        let _: APIVersions = serde_json::from_value(core_versions("127.0.0.1:6443")).unwrap();
        let groups: APIGroupList = serde_json::from_value(groups()).unwrap();
        assert_eq!(groups.groups[0].name, DISCOVERY_GROUP);
        let core: APIResourceList = serde_json::from_value(resources("v1")).unwrap();
        let names: Vec<_> = core.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "services",
                "services/status",
                "nodes",
                "nodes/status",
                "pods",
                "pods/status"
            ]
        );
        let discovery: APIResourceList =
            serde_json::from_value(resources("discovery.k8s.io/v1")).unwrap();
        assert_eq!(discovery.resources[0].kind, "EndpointSlice");
    }
}
