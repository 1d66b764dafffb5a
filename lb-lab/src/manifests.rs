//! Applied manifests: what the agents read from `<state_dir>/manifests`, with EndpointSlices
//! derived for every Service in place of an API server and controller.

use std::fmt;
use std::fs;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;
use serde_norway::Value;

use crate::plan::{Pod, POD_NAMESPACE};
use crate::pod_state::PodStates;
use crate::slices::endpoint_slices;
use crate::state::{remove_file_if_exists, write_atomic, StateDir};

/// A manifest that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error(
        "document {index}: not a Kubernetes object (needs apiVersion, kind and metadata.name)"
    )]
    NotAnObject { index: usize },
    #[error("document {index}: invalid Service {name}: {source}")]
    InvalidService {
        index: usize,
        name: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("`{0}` is not a valid manifest name (letters, digits, '.', '_' and '-'; not starting with '.')")]
    BadName(String),
    #[error("the manifest holds no objects")]
    Empty,
}

/// One object of a manifest, identified as kubectl would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// File-name stem for this object alone, e.g. `service-default-echo`.
    pub fn manifest_name(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        if self.namespace.is_empty() {
            format!("{kind}-{}", self.name)
        } else {
            format!("{kind}-{}-{}", self.namespace, self.name)
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A manifest with its Services' slices added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Multi-document YAML for the agents.
    pub yaml: String,
    /// The objects as given (after namespace defaulting).
    pub objects: Vec<ObjectId>,
    /// Per Service: (id, number of slices, number of endpoints).
    pub derived: Vec<(ObjectId, usize, usize)>,
}

/// A parsed document: its identity and its (namespace-defaulted) content.
#[derive(Clone, Debug)]
pub struct Document {
    pub id: ObjectId,
    pub value: Value,
}

/// Parses multi-document YAML into objects, skipping empty documents and giving Services and
/// EndpointSlices without a namespace the `default` one (as `kubectl apply` would).
///
/// # Errors
/// If the YAML is invalid, a document is not an object, or nothing is left.
pub fn parse(yaml: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for (index, de) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let mut value = Value::deserialize(de).map_err(ManifestError::Yaml)?;
        if value.is_null() {
            continue;
        }
        let id = identify(&mut value).ok_or(ManifestError::NotAnObject { index })?;
        docs.push(Document { id, value });
    }
    if docs.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(docs)
}

fn identify(value: &mut Value) -> Option<ObjectId> {
    let api_version = value.get("apiVersion")?.as_str()?.to_string();
    let kind = value.get("kind")?.as_str()?.to_string();
    let metadata = value.get_mut("metadata")?.as_mapping_mut()?;
    let name = metadata.get("name")?.as_str()?.to_string();
    let namespaced = matches!(kind.as_str(), "Service" | "EndpointSlice");
    let namespace = match metadata.get("namespace").and_then(Value::as_str) {
        Some(ns) => ns.to_string(),
        None if namespaced => {
            metadata.insert("namespace".into(), POD_NAMESPACE.into());
            POD_NAMESPACE.to_string()
        }
        None => String::new(),
    };
    Some(ObjectId {
        api_version,
        kind,
        namespace,
        name,
    })
}

fn is_service(id: &ObjectId) -> bool {
    id.api_version == "v1" && id.kind == "Service"
}

/// Renders `yaml` for the agents: every document as given, each v1 Service followed by the
/// EndpointSlices the controller would make for it from `pods` and their `states`.
///
/// # Errors
/// As [`parse`], or if a Service does not parse as a Service.
pub fn render(yaml: &str, pods: &[Pod], states: &PodStates) -> Result<Rendered, ManifestError> {
    let docs = parse(yaml)?;
    let mut out = Vec::new();
    let mut derived = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        out.push(to_yaml(&doc.value)?);
        if !is_service(&doc.id) {
            continue;
        }
        let svc: Service = serde_norway::from_value(doc.value.clone()).map_err(|source| {
            ManifestError::InvalidService {
                index,
                name: doc.id.name.clone(),
                source,
            }
        })?;
        let slices = endpoint_slices(&svc, pods, states);
        let endpoints = slices.iter().map(|s| s.endpoints.len()).sum();
        derived.push((doc.id.clone(), slices.len(), endpoints));
        for slice in &slices {
            out.push(to_yaml(slice)?);
        }
    }
    Ok(Rendered {
        yaml: out.join("---\n"),
        objects: docs.into_iter().map(|d| d.id).collect(),
        derived,
    })
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, ManifestError> {
    serde_norway::to_string(value).map_err(ManifestError::Yaml)
}

/// Splits `yaml` into one manifest per object, named by [`ObjectId::manifest_name`], so that
/// applying a file twice replaces rather than duplicates, and deleting it removes exactly its
/// objects.
///
/// # Errors
/// As [`parse`].
pub fn split_by_object(yaml: &str) -> Result<Vec<(ObjectId, String)>, ManifestError> {
    parse(yaml)?
        .into_iter()
        .map(|doc| Ok((doc.id, to_yaml(&doc.value)?)))
        .collect()
}

/// Checks that `name` can be a file name in the manifests directory.
///
/// # Errors
/// [`ManifestError::BadName`].
pub fn check_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadName(name.to_string()))
    }
}

/// The manifests of one lab: applied sources and their rendered output.
pub struct Store<'a> {
    pub state: &'a StateDir,
    pub pods: &'a [Pod],
}

impl Store<'_> {
    /// Renders `yaml` and writes it as manifest `name` (replacing any earlier one), keeping the
    /// source to re-derive slices from when pod states change.
    ///
    /// # Errors
    /// If the name or YAML is invalid, or the files cannot be written.
    pub fn apply(&self, name: &str, yaml: &str) -> Result<Rendered> {
        check_name(name)?;
        let states = PodStates::load(&self.state.pod_states())?;
        let rendered = render(yaml, self.pods, &states)?;
        self.create_dirs()?;
        let source = self.state.applied_source(name);
        write_atomic(&source, yaml.as_bytes())
            .with_context(|| format!("cannot write {}", source.display()))?;
        let manifest = self.state.manifest(name);
        write_atomic(&manifest, rendered.yaml.as_bytes())
            .with_context(|| format!("cannot write {}", manifest.display()))?;
        Ok(rendered)
    }

    /// Removes manifest `name`; whether it existed.
    ///
    /// # Errors
    /// If the name is invalid or a file cannot be removed.
    pub fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        // The agents' input first, so a failure never leaves objects the lab no longer tracks.
        let manifest = self.state.manifest(name);
        let existed = remove_file_if_exists(&manifest)
            .with_context(|| format!("cannot remove {}", manifest.display()))?;
        let source = self.state.applied_source(name);
        let had_source = remove_file_if_exists(&source)
            .with_context(|| format!("cannot remove {}", source.display()))?;
        Ok(existed || had_source)
    }

    /// Names of every applied manifest, sorted.
    ///
    /// # Errors
    /// If the directory cannot be read.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = self.state.applied();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let file = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".yaml") {
                if check_name(stem).is_ok() {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Re-renders every applied manifest, after pod states changed.
    ///
    /// # Errors
    /// If a source cannot be read or rendered, or output cannot be written.
    pub fn rerender_all(&self) -> Result<()> {
        for name in self.names()? {
            let source = self.state.applied_source(&name);
            let yaml = fs::read_to_string(&source)
                .with_context(|| format!("cannot read {}", source.display()))?;
            self.apply(&name, &yaml)
                .with_context(|| format!("re-deriving manifest {name}"))?;
        }
        Ok(())
    }

    fn create_dirs(&self) -> Result<()> {
        for dir in [self.state.manifests(), self.state.applied()] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::plan::Plan;

    const TWO_SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
# an empty document, as editors leave them
---
apiVersion: v1
kind: Service
metadata: {name: clients, namespace: default}
spec:
  selector: {app: client}
  ports: [{port: 8080, protocol: UDP}]
";

    #[test]
    fn render_adds_slices_after_each_service_and_defaults_the_namespace() {
        let plan = Plan::kind();
        let rendered = render(TWO_SERVICES, &plan.pods, &PodStates::default()).unwrap();
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&rendered.yaml)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["Service", "EndpointSlice", "Service", "EndpointSlice"]
        );
        assert_eq!(docs[0]["metadata"]["namespace"].as_str(), Some("default"));
        let slice: EndpointSlice = serde_norway::from_value(docs[1].clone()).unwrap();
        assert_eq!(slice.endpoints.len(), 6);
        assert_eq!(docs[3]["apiVersion"].as_str(), Some("discovery.k8s.io/v1"));
        assert_eq!(rendered.derived[1].2, 3);
    }

    #[test]
    fn other_objects_pass_through_unchanged() {
        let plan = Plan::kind();
        let yaml = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
endpoints: [{addresses: [172.18.0.1]}]
";
        let rendered = render(yaml, &plan.pods, &PodStates::default()).unwrap();
        assert!(rendered.derived.is_empty());
        assert!(rendered.yaml.contains("172.18.0.1"));
        assert!(rendered.yaml.contains("namespace: default"));
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let plan = Plan::kind();
        let states = PodStates::default();
        let err = |yaml| render(yaml, &plan.pods, &states).unwrap_err().to_string();
        assert!(err("a: [").contains("not valid YAML"));
        assert!(err("kind: Service").contains("not a Kubernetes object"));
        assert!(err("---\n").contains("no objects"));
        let bad = "{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: 3}}";
        assert!(err(bad).contains("invalid Service s"), "{}", err(bad));
    }

    #[test]
    fn split_names_one_manifest_per_object() {
        let names: Vec<_> = split_by_object(TWO_SERVICES)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id.manifest_name())
            .collect();
        assert_eq!(names, ["service-default-echo", "service-default-clients"]);
    }

    #[test]
    fn manifest_names_cannot_escape_the_directory() {
        for bad in ["", ".hidden", "../x", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("service-default-echo.v2_x").unwrap();
    }

    #[test]
    fn store_rederives_slices_when_pod_states_change() {
        let plan = Plan::kind();
        let root = std::env::temp_dir().join(format!("lb-lab-store-{}", std::process::id()));
        let state = StateDir::new(&root);
        let store = Store {
            state: &state,
            pods: &plan.pods,
        };
        store.apply("echo", TWO_SERVICES).unwrap();
        let ready_count = |s: &str| s.matches("ready: true").count();
        let before = fs::read_to_string(state.manifest("echo")).unwrap();
        assert_eq!(ready_count(&before), 9);

        let mut states = PodStates::default();
        states.update("worker-echo-1", |s| s.ready = false);
        states.save(&state.pod_states()).unwrap();
        store.rerender_all().unwrap();
        let after = fs::read_to_string(state.manifest("echo")).unwrap();
        assert_eq!(ready_count(&after), 8);

        assert_eq!(store.names().unwrap(), ["echo"]);
        assert!(store.delete("echo").unwrap());
        assert!(!store.delete("echo").unwrap());
        assert!(!state.manifest("echo").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
