//! EndpointSlices for a Service from pods, as kube-controller-manager's EndpointSlice
//! controller would write them: used for the file source's manifests and by the lab's API
//! server.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{ObjectReference, Pod as KubePod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::plan::{Pod, POD_NAMESPACE, ZONE_LABEL};
use crate::pod_state::{PodState, PodStates};

/// Label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller's value for [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label the controller puts on slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The controller's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// One resolved slice port: name, protocol, port, appProtocol. (k8s-openapi's `EndpointPort`
/// is not `Ord`, and ports are grouping keys.)
type PortKey = (String, String, i32, Option<String>);
/// A slice's port set; pods whose ports resolve the same way share slices.
type PortSet = Vec<PortKey>;

/// A container port a named targetPort can resolve to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: String,
    pub port: i32,
}

/// What the controller reads of a pod that may back a Service: the lab's pods and API `Pod`
/// objects both become this, so that there is one derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `status.podIP`.
    pub ip: String,
    pub node_name: Option<String>,
    /// The zone label of the pod's node.
    pub zone: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Whether the pod has a deletion timestamp.
    pub terminating: bool,
    /// Every container port that has a name.
    pub ports: Vec<NamedPort>,
}

impl PodFacts {
    /// A lab pod in `state`, on a node in `zone`.
    pub fn from_lab(pod: &Pod, state: PodState, zone: Option<&str>) -> Self {
        Self {
            name: pod.name.clone(),
            namespace: POD_NAMESPACE.to_string(),
            uid: None,
            labels: pod.labels.clone(),
            ip: pod.ip.to_string(),
            node_name: Some(pod.node.clone()),
            zone: zone.map(str::to_string),
            ready: state.ready,
            terminating: state.terminating,
            ports: pod
                .ports()
                .iter()
                .map(|p| NamedPort {
                    name: p.name.to_string(),
                    protocol: p.protocol.to_string(),
                    port: i32::from(p.port),
                })
                .collect(),
        }
    }

    /// An API `Pod` whose node is in `zone`; `None` for a pod the controller would leave out
    /// (`ShouldPodBeInEndpoints`): no name or IP yet, or finished (phase Succeeded or Failed).
    pub fn from_pod(pod: &KubePod, zone: Option<String>) -> Option<Self> {
        let status = pod.status.as_ref()?;
        let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let spec = pod.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    port: p.container_port,
                })
            })
            .collect();
        Some(Self {
            name: pod.metadata.name.clone()?,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| POD_NAMESPACE.to_string()),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            node_name: spec.and_then(|s| s.node_name.clone()),
            zone,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ports,
        })
    }

    /// Whether every `key=value` of `selector` is among the pod's labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// The EndpointSlices the controller would maintain for `svc`, given the lab's `pods` and
/// their `states` (the file source's view; see [`derive`]).
pub fn endpoint_slices(svc: &Service, pods: &[Pod], states: &PodStates) -> Vec<EndpointSlice> {
    let plan = crate::plan::Plan::kind();
    let facts: Vec<PodFacts> = pods
        .iter()
        .map(|p| PodFacts::from_lab(p, states.get(&p.name), plan.zone_of(&p.node)))
        .collect();
    derive(svc, &facts)
}

/// The EndpointSlices the controller would maintain for `svc`, given `pods`.
///
/// Follows the controller: no slices for a Service without a selector (someone else manages
/// them) or of type ExternalName; only pods in the Service's namespace whose labels match the
/// selector; `ready` is the pod's readiness (or true with `publishNotReadyAddresses`) and false
/// while terminating, `serving` is the pod's readiness, `terminating` the deletion mark; named
/// targetPorts resolve per pod by name and protocol, and a port that does not resolve is left
/// out for that pod; a Service with no matching pods gets one empty placeholder slice; at most
/// [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice.
/// Slice names are `<service>-<5 chars>` like `generateName`, but derived from the port set so
/// that re-deriving gives the same names.
pub fn derive(svc: &Service, pods: &[PodFacts]) -> Vec<EndpointSlice> {
    let Some(svc_name) = svc.metadata.name.as_deref() else {
        return Vec::new();
    };
    let namespace = svc.metadata.namespace.as_deref().unwrap_or(POD_NAMESPACE);
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let selector = match &spec.selector {
        Some(selector) if !selector.is_empty() => selector,
        _ => return Vec::new(),
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.as_deref().unwrap_or_default();

    let mut groups: BTreeMap<PortSet, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if pod.namespace != namespace || !pod.matches(selector) {
            continue;
        }
        let ports = service_ports
            .iter()
            .filter_map(|sp| endpoint_port(sp, pod))
            .collect();
        groups
            .entry(ports)
            .or_default()
            .push(endpoint(pod, publish_not_ready));
    }

    let labels = slice_labels(svc, svc_name);
    let make = |ports: &PortSet, endpoints: &[Endpoint], chunk: usize| EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(svc_name, ports, chunk)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_string(),
        endpoints: endpoints.to_vec(),
        ports: (!ports.is_empty()).then(|| ports.iter().map(to_endpoint_port).collect()),
    };
    if groups.is_empty() {
        return vec![make(&Vec::new(), &[], 0)];
    }
    groups
        .iter()
        .flat_map(|(ports, endpoints)| {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .enumerate()
                .map(move |(chunk, eps)| make(ports, eps, chunk))
        })
        .collect()
}

/// The slice port for service port `sp` on `pod`, if its targetPort resolves there.
fn endpoint_port(sp: &ServicePort, pod: &PodFacts) -> Option<PortKey> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    let port = target_port(sp, protocol, pod)?;
    // The controller always sets the name, "" for an unnamed (single) port.
    let name = sp.name.clone().unwrap_or_default();
    Some((name, protocol.to_string(), port, sp.app_protocol.clone()))
}

fn to_endpoint_port((name, protocol, port, app_protocol): &PortKey) -> EndpointPort {
    EndpointPort {
        name: Some(name.clone()),
        protocol: Some(protocol.clone()),
        port: Some(*port),
        app_protocol: app_protocol.clone(),
    }
}

/// Resolves a service port's targetPort for `pod` (Kubernetes' `FindPort`).
pub fn target_port(sp: &ServicePort, protocol: &str, pod: &PodFacts) -> Option<i32> {
    match &sp.target_port {
        // The API server defaults an unset targetPort to the port.
        None | Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::String(name)) if name.is_empty() => Some(sp.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => pod
            .ports
            .iter()
            .find(|p| &p.name == name && p.protocol == protocol)
            .map(|p| p.port),
    }
}

fn endpoint(pod: &PodFacts, publish_not_ready: bool) -> Endpoint {
    // For compatibility the controller never marks a terminating pod ready, unless
    // publishNotReadyAddresses says every address is to be published.
    let ready = publish_not_ready || (pod.ready && !pod.terminating);
    Endpoint {
        addresses: vec![pod.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(pod.ready),
            terminating: Some(pod.terminating),
        }),
        node_name: pod.node_name.clone(),
        zone: pod.zone.clone(),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_string()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: pod.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// The zone label of a Node object's labels.
pub fn zone_label(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    labels.and_then(|l| l.get(ZONE_LABEL)).cloned()
}

fn slice_labels(svc: &Service, svc_name: &str) -> BTreeMap<String, String> {
    // The controller copies the Service's labels, then sets its own on top.
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.to_string(), svc_name.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

fn slice_name(svc_name: &str, ports: &PortSet, chunk: usize) -> String {
    // generateName's alphabet (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut key = chunk.to_string();
    for (name, protocol, port, _) in ports {
        let _ = write!(key, "|{name}/{protocol}/{port}");
    }
    let mut hash = fnv1a(key.as_bytes());
    let mut suffix = String::with_capacity(5);
    for _ in 0..5 {
        suffix.push(char::from(
            ALPHABET[(hash % ALPHABET.len() as u64) as usize],
        ));
        hash /= ALPHABET.len() as u64;
    }
    format!("{svc_name}-{suffix}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn service(yaml: &str) -> Service {
        serde_norway::from_str(yaml).unwrap()
    }

    const ECHO: &str = "
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default, labels: {team: lb}}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: udp}
";

    fn addresses(slice: &EndpointSlice) -> Vec<&str> {
        slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect()
    }

    #[test]
    fn a_selector_service_gets_one_slice_with_every_matching_pod() {
        let plan = Plan::kind();
        let slices = endpoint_slices(&service(ECHO), &plan.pods, &PodStates::default());
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.metadata.namespace.as_deref(), Some("default"));
        assert!(slice.metadata.name.as_deref().unwrap().starts_with("echo-"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "echo");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["team"], "lb");
        assert_eq!(
            addresses(slice),
            [
                "10.244.0.2",
                "10.244.0.3",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.2.2",
                "10.244.2.3"
            ]
        );
        let first = &slice.endpoints[0];
        assert_eq!(first.node_name.as_deref(), Some("control-plane"));
        assert_eq!(first.zone.as_deref(), Some("zone-a"));
        let target = first.target_ref.as_ref().unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("control-plane-echo-1"));
        assert_eq!(
            first.conditions,
            Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false)
            })
        );
    }

    #[test]
    fn ports_carry_service_port_names_and_resolved_target_ports() {
        let plan = Plan::kind();
        let slices = endpoint_slices(&service(ECHO), &plan.pods, &PodStates::default());
        let ports: Vec<_> = slices[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.name.as_deref().unwrap(),
                    p.protocol.as_deref().unwrap(),
                    p.port.unwrap(),
                )
            })
            .collect();
        assert_eq!(ports, [("http", "TCP", 8080), ("dns", "UDP", 8080)]);
    }

    #[test]
    fn named_target_port_resolves_by_name_and_protocol_and_unset_means_port() {
        let pod = &PodFacts::from_lab(&Plan::kind().pods[0], PodState::default(), None);
        let port = |target: Option<IntOrString>, port| ServicePort {
            port,
            target_port: target,
            ..ServicePort::default()
        };
        let named = |n: &str| Some(IntOrString::String(n.to_string()));
        assert_eq!(
            target_port(&port(named("http"), 80), "TCP", pod),
            Some(8080)
        );
        assert_eq!(target_port(&port(named("http"), 80), "UDP", pod), None);
        assert_eq!(target_port(&port(named("udp"), 53), "UDP", pod), Some(8080));
        assert_eq!(target_port(&port(named("nope"), 80), "TCP", pod), None);
        assert_eq!(target_port(&port(None, 8080), "TCP", pod), Some(8080));
        assert_eq!(
            target_port(&port(Some(IntOrString::Int(9000)), 80), "TCP", pod),
            Some(9000)
        );
    }

    #[test]
    fn unresolvable_named_port_is_left_out() {
        let plan = Plan::kind();
        let svc = service(
            "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: echo}
  ports: [{name: a, port: 80, targetPort: http}, {name: b, port: 81, targetPort: metrics}]
",
        );
        let slices = endpoint_slices(&svc, &plan.pods, &PodStates::default());
        assert_eq!(slices.len(), 1);
        let ports = slices[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("a"));
    }

    #[test]
    fn not_ready_and_terminating_pods_get_the_controllers_conditions() {
        let plan = Plan::kind();
        let mut states = PodStates::default();
        states.update("worker-echo-1", |s| s.ready = false);
        states.update("worker-echo-2", |s| s.terminating = true);
        let slices = endpoint_slices(&service(ECHO), &plan.pods, &states);
        let conditions = |name: &str| {
            let ep = slices[0]
                .endpoints
                .iter()
                .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some(name))
                .unwrap();
            let c = ep.conditions.as_ref().unwrap();
            (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
        };
        assert_eq!(conditions("worker-echo-1"), (false, false, false));
        assert_eq!(conditions("worker-echo-2"), (false, true, true));
        assert_eq!(conditions("worker2-echo-1"), (true, true, false));
    }

    #[test]
    fn publish_not_ready_addresses_marks_everything_ready() {
        let plan = Plan::kind();
        let mut svc = service(ECHO);
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut states = PodStates::default();
        states.update("worker-echo-1", |s| s.ready = false);
        states.update("worker-echo-2", |s| s.terminating = true);
        let slices = endpoint_slices(&svc, &plan.pods, &states);
        assert!(slices[0]
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().unwrap().ready == Some(true)));
    }

    #[test]
    fn services_without_selector_or_of_type_external_name_get_no_slices() {
        let plan = Plan::kind();
        let states = PodStates::default();
        let manual = service(
            "{apiVersion: v1, kind: Service, metadata: {name: m}, spec: {ports: [{port: 80}]}}",
        );
        assert!(endpoint_slices(&manual, &plan.pods, &states).is_empty());
        let empty =
            service("{apiVersion: v1, kind: Service, metadata: {name: m}, spec: {selector: {}}}");
        assert!(endpoint_slices(&empty, &plan.pods, &states).is_empty());
        let external = service(
            "{apiVersion: v1, kind: Service, metadata: {name: x}, spec: {type: ExternalName, externalName: a.example, selector: {app: echo}}}",
        );
        assert!(endpoint_slices(&external, &plan.pods, &states).is_empty());
    }

    #[test]
    fn no_matching_pods_or_another_namespace_gives_one_empty_placeholder() {
        let plan = Plan::kind();
        let states = PodStates::default();
        for yaml in [
            "{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {selector: {app: nothing}, ports: [{port: 80}]}}",
            "{apiVersion: v1, kind: Service, metadata: {name: s, namespace: other}, spec: {selector: {app: echo}, ports: [{port: 80}]}}",
        ] {
            let slices = endpoint_slices(&service(yaml), &plan.pods, &states);
            assert_eq!(slices.len(), 1, "{yaml}");
            assert!(slices[0].endpoints.is_empty());
        }
    }

    #[test]
    fn headless_services_are_labelled_and_names_are_stable() {
        let plan = Plan::kind();
        let mut svc = service(ECHO);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".to_string());
        let a = endpoint_slices(&svc, &plan.pods, &PodStates::default());
        let b = endpoint_slices(&svc, &plan.pods, &PodStates::default());
        assert_eq!(a[0].metadata.labels.as_ref().unwrap()[HEADLESS_LABEL], "");
        assert_eq!(a[0].metadata.name, b[0].metadata.name);
        let suffix = &a[0].metadata.name.as_deref().unwrap()["echo-".len()..];
        assert_eq!(suffix.len(), 5);
    }

    #[test]
    fn api_pods_without_an_ip_or_finished_are_left_out_and_ports_default_to_tcp() {
        let pod = |status: &str| -> KubePod {
            serde_norway::from_str(&format!(
                "{{metadata: {{name: p, namespace: default, uid: u1, labels: {{app: x}}}},
                  spec: {{nodeName: worker, containers: [{{name: c, ports: [{{name: web, containerPort: 80}}, {{containerPort: 81}}]}}]}},
                  status: {status}}}"
            ))
            .unwrap()
        };
        let running = PodFacts::from_pod(
            &pod(
                "{phase: Running, podIP: 10.244.1.9, conditions: [{type: Ready, status: 'True'}]}",
            ),
            Some("zone-a".into()),
        )
        .unwrap();
        assert!(running.ready && !running.terminating);
        assert_eq!(running.uid.as_deref(), Some("u1"));
        assert_eq!(running.node_name.as_deref(), Some("worker"));
        assert_eq!(
            running.ports,
            [NamedPort {
                name: "web".into(),
                protocol: "TCP".into(),
                port: 80
            }]
        );
        assert!(PodFacts::from_pod(&pod("{phase: Pending}"), None).is_none());
        assert!(PodFacts::from_pod(&pod("{phase: Succeeded, podIP: 10.244.1.9}"), None).is_none());
        let unready =
            PodFacts::from_pod(&pod("{phase: Running, podIP: 10.244.1.9}"), None).unwrap();
        assert!(!unready.ready);
    }

    #[test]
    fn client_selector_picks_the_three_clients() {
        let plan = Plan::kind();
        let svc = service(
            "{apiVersion: v1, kind: Service, metadata: {name: c}, spec: {selector: {app: client}, ports: [{port: 80, targetPort: 8080}]}}",
        );
        let slices = endpoint_slices(&svc, &plan.pods, &PodStates::default());
        assert_eq!(
            addresses(&slices[0]),
            ["10.244.0.4", "10.244.1.4", "10.244.2.4"]
        );
    }
}
