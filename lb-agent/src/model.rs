//! The desired datapath state: a pure function of Services, EndpointSlices and this node.
//!
//! It follows kube-proxy's reading of the API so that a cluster behaves the same with lb as
//! without it: slices are tied to their Service by the `kubernetes.io/service-name` label,
//! slice ports are matched to service ports by name and protocol (which is also how a named
//! `targetPort` resolves, per endpoint), ready endpoints are used, and terminating-but-serving
//! endpoints only when nothing is ready; traffic policies, topology hints and session
//! affinity are applied as kube-proxy applies them. Anything that cannot be programmed is
//! returned as a [`Skipped`] with its reason instead of failing the whole model.
//!
//! It runs in two steps so that the agent can work incrementally and keep little memory:
//! [`service::parse_service`] and [`slice::parse_slice`] turn an API object into the small
//! validated form the model needs ([`ServiceInfo`], [`SliceInfo`]) as it arrives, and
//! [`frontends::service_frontends`] turns one service and its slices into frontends.
//! [`DesiredIndex`] holds every service's frontends and settles which service owns an
//! address two of them claim. [`desired_state`] chains the three for whole object lists.
//! [`node`] is this node as the model sees it (from its Node and the command line).

pub mod frontends;
pub mod health_check;
pub mod index;
pub mod node;
pub mod service;
pub mod slice;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use lb_common::{Backend, FrontendKey};

pub use frontends::service_frontends;
pub use health_check::{health_check, HealthCheck};
pub use index::DesiredIndex;
pub use service::{parse_service, ServiceInfo};
pub use slice::{parse_slice, SliceInfo};

use node::{Ipv4Cidr, ThisNode};

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Objects carrying this label belong to another service proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Objects carrying this label are headless (kube-proxy skips them too).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-proxy's server-side filter for Services and EndpointSlices: the two labels above
/// must be absent.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The most backends one frontend can have: the frontend's backend count is 16 bits.
pub const MAX_BACKENDS_PER_FRONTEND: usize = u16::MAX as usize;

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `namespace` and `name`, which every object must have.
    pub fn of(meta: &ObjectMeta) -> Result<Self, SkipReason> {
        let present =
            |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let name = present(&meta.name).ok_or(SkipReason::MissingField("metadata.name"))?;
        let namespace =
            present(&meta.namespace).ok_or(SkipReason::MissingField("metadata.namespace"))?;
        Ok(Self { namespace, name })
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the datapath should hold: every frontend, programmed or not yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
}

impl DesiredState {
    /// Number of distinct backends (address, port, protocol) over all frontends.
    pub fn backend_count(&self) -> usize {
        self.frontends
            .values()
            .flat_map(|f| f.backends.iter().map(backend_tuple))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The frontends the agent writes into the maps today ([`DesiredFrontend::is_programmed`]).
    pub fn programmed(&self) -> DesiredView<'_> {
        self.frontends
            .iter()
            .filter(|(_, f)| f.is_programmed())
            .map(|(k, f)| (*k, f))
            .collect()
    }
}

/// Frontends by key, borrowed: what the syncer is asked to program.
pub type DesiredView<'a> = BTreeMap<FrontendKey, &'a DesiredFrontend>;

/// Which kind of service address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// The [`lb_common::frontend::flags`] bit for this kind.
    pub fn flag(self) -> u16 {
        use lb_common::frontend::flags;
        match self {
            FrontendKind::ClusterIp => flags::CLUSTER_IP,
            FrontendKind::NodePort => flags::NODE_PORT,
            FrontendKind::ExternalIp => flags::EXTERNAL_IP,
            FrontendKind::LoadBalancer => flags::LOAD_BALANCER,
        }
    }

    /// As the Kubernetes API spells the service type.
    pub fn name(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The per-service settings that decide how traffic to a frontend is handled. The backends
/// of a frontend already reflect them; the datapath will need them too (to tell "drop" from
/// "reject", to pin clients, to keep the client address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// externalTrafficPolicy: Local (only meaningful for NodePort, ExternalIP and
    /// LoadBalancer frontends).
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// publishNotReadyAddresses: unready endpoints serve.
    pub publish_not_ready: bool,
    /// The backends were narrowed to this node's zone by topology hints.
    pub topology_aware: bool,
}

/// One frontend and the backends behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// `namespace/name:port`, the port by name or, when unnamed, by number.
    pub name: String,
    /// The Service it belongs to.
    pub service: ObjectId,
    pub kind: FrontendKind,
    /// [`lb_common::frontend::flags`] bits.
    pub flags: u16,
    /// Session affinity (ClientIP) stickiness in seconds; 0 when affinity is off.
    pub affinity_timeout_s: u32,
    pub policy: Policy,
    /// Sorted by address, port and protocol, without duplicates.
    pub backends: Vec<Backend>,
    /// The client prefixes admitted when `flags` has
    /// [`lb_common::frontend::flags::SOURCE_RANGES`] (masked, sorted, without duplicates);
    /// empty with that flag means nobody is admitted. Empty without it.
    pub source_ranges: Vec<Ipv4Cidr>,
}

impl DesiredFrontend {
    /// Every frontend kind is written to the maps: ClusterIP, NodePort, ExternalIP and
    /// LoadBalancer (the flags tell the datapath which it is). Kept as the one place to
    /// hold a kind back should a datapath not serve it.
    pub fn is_programmed(&self) -> bool {
        true
    }

    /// The port part of [`Self::name`].
    pub fn port_label(&self) -> &str {
        self.name.rsplit_once(':').map_or("", |(_, p)| p)
    }
}

/// The kind of object a [`Skipped`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
        }
    }
}

/// An object, or part of one, that the model left out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// e.g. `Service shop/web`, `Service shop/web port http`, `EndpointSlice shop/web-abc
    /// endpoint 3`.
    pub object: String,
    pub kind: ObjectKind,
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum SkipReason {
    #[error("labelled {SERVICE_PROXY_NAME_LABEL}={0}: another proxy serves it")]
    OtherProxy(String),
    #[error("labelled {HEADLESS_LABEL}")]
    HeadlessLabel,
    #[error("headless (clusterIP None): no virtual address to serve")]
    Headless,
    #[error("type ExternalName has no virtual address to serve")]
    ExternalName,
    #[error("has only IPv6 cluster IPs, and only IPv4 is served")]
    NoIpv4ClusterIp,
    #[error("{0} is IPv4-only here, got addressType {1}")]
    UnsupportedAddressType(&'static str, String),
    #[error("has no {SERVICE_NAME_LABEL} label, so belongs to no Service")]
    NoServiceLabel,
    #[error("protocol SCTP is not supported")]
    Sctp,
    #[error("missing {0}")]
    MissingField(&'static str),
    #[error("{field} {value:?} is not an IP address")]
    BadAddress { field: &'static str, value: String },
    #[error("port {0} is outside 1..=65535")]
    BadPort(i32),
    #[error("nodePort {0} is outside 1..=65535")]
    BadNodePort(i32),
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    #[error("unknown service type {0:?}")]
    UnknownType(String),
    #[error("unknown sessionAffinity {0:?}")]
    UnknownAffinity(String),
    #[error("sessionAffinityConfig.clientIP.timeoutSeconds {0} is outside 1..=86400")]
    BadAffinityTimeout(i32),
    #[error("address already served for {0}")]
    DuplicateFrontend(String),
    #[error("{0} backends is more than the {MAX_BACKENDS_PER_FRONTEND} a frontend can hold; extra ones left out")]
    TooManyBackends(usize),
    #[error("{field} entry {value:?} is not a CIDR; left out")]
    BadSourceRange { field: &'static str, value: String },
    #[error("{0} has no usable IPv4 range: the LoadBalancer admits no client until it is fixed (fail closed)")]
    NoUsableSourceRange(&'static str),
}

impl SkipReason {
    /// True when the object is left out by design (another proxy's, headless, a type or
    /// family not served) rather than because it is malformed: the first is worth a debug
    /// line, the second a warning and the invalid-objects metric.
    pub fn is_by_design(&self) -> bool {
        matches!(
            self,
            SkipReason::OtherProxy(_)
                | SkipReason::HeadlessLabel
                | SkipReason::Headless
                | SkipReason::ExternalName
                | SkipReason::NoIpv4ClusterIp
                | SkipReason::UnsupportedAddressType(..)
                | SkipReason::NoServiceLabel
                | SkipReason::Sctp
        )
    }

    /// A stable short name, the `reason` label of the invalid-objects metric.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::OtherProxy(_) => "other_proxy",
            SkipReason::HeadlessLabel => "headless_label",
            SkipReason::Headless => "headless",
            SkipReason::ExternalName => "external_name",
            SkipReason::NoIpv4ClusterIp => "no_ipv4_cluster_ip",
            SkipReason::UnsupportedAddressType(..) => "unsupported_address_type",
            SkipReason::NoServiceLabel => "no_service_label",
            SkipReason::Sctp => "sctp",
            SkipReason::MissingField(_) => "missing_field",
            SkipReason::BadAddress { .. } => "bad_address",
            SkipReason::BadPort(_) => "bad_port",
            SkipReason::BadNodePort(_) => "bad_node_port",
            SkipReason::UnknownProtocol(_) => "unknown_protocol",
            SkipReason::UnknownType(_) => "unknown_type",
            SkipReason::UnknownAffinity(_) => "unknown_affinity",
            SkipReason::BadAffinityTimeout(_) => "bad_affinity_timeout",
            SkipReason::DuplicateFrontend(_) => "duplicate_frontend",
            SkipReason::TooManyBackends(_) => "too_many_backends",
            SkipReason::BadSourceRange { .. } => "bad_source_range",
            SkipReason::NoUsableSourceRange(_) => "no_usable_source_range",
        }
    }
}

/// An API object read into the model's form: the value, or nothing when the whole object
/// is skipped, and everything left out along the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed<T> {
    /// Known whenever the object has a namespace and name, even when it is skipped: a
    /// skipped update of a known object removes the old version.
    pub id: Option<ObjectId>,
    pub value: Option<T>,
    pub skipped: Vec<Skipped>,
}

impl<T> Parsed<T> {
    /// Reads an object of `kind` with metadata `meta` through `read`, which gets its id, its
    /// name for messages ("Service ns/name") and a list for the parts it leaves out. An
    /// object without namespace and name, or one `read` refuses, is skipped whole with the
    /// reason.
    pub(crate) fn object(
        kind: ObjectKind,
        meta: &ObjectMeta,
        read: impl FnOnce(&ObjectId, &str, &mut Vec<Skipped>) -> Result<T, SkipReason>,
    ) -> Self {
        let skip = |object: String, reason| Skipped {
            object,
            kind,
            reason,
        };
        let id = match ObjectId::of(meta) {
            Ok(id) => id,
            Err(reason) => {
                return Parsed {
                    id: None,
                    value: None,
                    skipped: vec![skip(kind.name().to_string(), reason)],
                }
            }
        };
        let object = format!("{} {id}", kind.name());
        let mut notes = Vec::new();
        let value = match read(&id, &object, &mut notes) {
            Ok(value) => Some(value),
            Err(reason) => {
                notes.push(skip(object, reason));
                None
            }
        };
        Parsed {
            id: Some(id),
            value,
            skipped: notes,
        }
    }
}

/// Builds the desired state from whole object lists. Never fails: what cannot be used is
/// skipped and listed.
pub fn desired_state(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &ThisNode,
) -> (DesiredState, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut by_service: BTreeMap<ObjectId, Vec<SliceInfo>> = BTreeMap::new();
    for slice in slices {
        let parsed = parse_slice(slice, &node.name);
        skipped.extend(parsed.skipped);
        if let Some(s) = parsed.value {
            by_service.entry(s.service.clone()).or_default().push(s);
        }
    }
    let mut index = DesiredIndex::default();
    for svc in services {
        let parsed = parse_service(svc);
        skipped.extend(parsed.skipped);
        let Some(svc) = parsed.value else { continue };
        let mut slices: Vec<&SliceInfo> = by_service
            .get(&svc.id)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        slices.sort_by(|a, b| a.id.cmp(&b.id));
        let (frontends, notes) = service_frontends(&svc, &slices, node);
        skipped.extend(notes);
        index.set_service(&svc.id, frontends);
    }
    skipped.extend(index.conflicts());
    skipped.sort();
    skipped.dedup();
    (index.to_state(), skipped)
}

/// What identifies a backend: the same pod port seen twice is one backend.
pub(crate) fn backend_tuple(b: &Backend) -> (Ipv4Addr, u16, u8) {
    (b.ip(), b.port_host(), b.proto)
}

#[cfg(test)]
mod tests;
