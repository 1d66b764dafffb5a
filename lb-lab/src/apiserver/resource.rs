//! The kinds of object the API server serves, where they live in the URL space, and access to
//! the metadata of objects kept as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A resource (collection) the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    Pods,
}

/// The discovery.k8s.io group.
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
        Resource::Pods,
    ];

    /// The URL segment, e.g. `services`.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
            Resource::Pods => "pods",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Resource::Services => "service",
            Resource::EndpointSlices => "endpointslice",
            Resource::Nodes => "node",
            Resource::Pods => "pod",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::Pods => "Pod",
        }
    }

    /// The API group, `""` for core.
    pub fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => DISCOVERY_GROUP,
            _ => "",
        }
    }

    /// `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes)
    }

    /// Whether the resource has a `status` subresource.
    pub fn has_status(self) -> bool {
        matches!(self, Resource::Services | Resource::Nodes | Resource::Pods)
    }

    /// The kind of a list of these, e.g. `ServiceList`.
    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    /// Short names for discovery (what `kubectl get svc` uses).
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Services => &["svc"],
            Resource::EndpointSlices => &[],
            Resource::Nodes => &["no"],
            Resource::Pods => &["po"],
        }
    }

    /// The resource served at `group_version` (`v1`, `discovery.k8s.io/v1`) under `plural`.
    pub fn from_path(group_version: &str, plural: &str) -> Option<Self> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    /// The URL of the collection, in `namespace` if given (and the resource is namespaced).
    pub fn collection_path(self, namespace: Option<&str>) -> String {
        let prefix = match self.group() {
            "" => "/api/v1".to_string(),
            group => format!("/apis/{group}/v1"),
        };
        match namespace.filter(|_| self.namespaced()) {
            Some(ns) => format!("{prefix}/namespaces/{ns}/{}", self.plural()),
            None => format!("{prefix}/{}", self.plural()),
        }
    }

    /// The resource of objects with this `apiVersion` and `kind`.
    pub fn from_kind(api_version: &str, kind: &str) -> Option<Self> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

/// Where an object lives: resource, namespace (`""` for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: Resource, namespace: &str, name: &str) -> Self {
        // Cluster-scoped objects have no namespace, whatever a caller passes.
        let namespace = if resource.namespaced() { namespace } else { "" };
        Self {
            resource,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The object's URL.
    pub fn path(&self) -> String {
        let ns = (!self.namespace.is_empty()).then_some(self.namespace.as_str());
        format!("{}/{}", self.resource.collection_path(ns), self.name)
    }

    /// The key of `object`, from its `apiVersion`, `kind` and metadata.
    pub fn of(object: &Value) -> Option<Self> {
        let resource = Resource::from_kind(
            object.get("apiVersion")?.as_str()?,
            object.get("kind")?.as_str()?,
        )?;
        let name = meta_str(object, "name")?;
        let namespace = meta_str(object, "namespace").unwrap_or_default();
        Some(Self::new(resource, namespace, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.resource.singular(), self.name)
        } else {
            write!(
                f,
                "{} {}/{}",
                self.resource.singular(),
                self.namespace,
                self.name
            )
        }
    }
}

/// `object.metadata.<field>` as a string.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `object.metadata`, created (and a non-object replaced) if needed; `None` if `object` itself
/// is not a JSON object.
pub fn meta_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = object.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

/// `object.metadata.labels` (string values only).
pub fn labels(object: &Value) -> BTreeMap<&str, &str> {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_are_found_by_path_and_by_kind() {
        assert_eq!(
            Resource::from_path("discovery.k8s.io/v1", "endpointslices"),
            Some(Resource::EndpointSlices)
        );
        assert_eq!(Resource::from_path("v1", "endpointslices"), None);
        assert_eq!(Resource::from_kind("v1", "Node"), Some(Resource::Nodes));
        assert_eq!(Resource::from_kind("apps/v1", "Deployment"), None);
    }

    #[test]
    fn keys_drop_the_namespace_of_cluster_scoped_objects() {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w", "namespace": "x"}});
        assert_eq!(
            ObjectKey::of(&node),
            Some(ObjectKey::new(Resource::Nodes, "", "w"))
        );
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"}});
        assert_eq!(
            ObjectKey::of(&svc).unwrap().to_string(),
            "service default/s"
        );
    }

    #[test]
    fn metadata_is_created_when_missing() {
        let mut obj = json!({"kind": "Service", "metadata": 3});
        meta_mut(&mut obj)
            .unwrap()
            .insert("name".into(), "a".into());
        assert_eq!(meta_str(&obj, "name"), Some("a"));
        assert!(meta_mut(&mut json!([1])).is_none());
    }
}
