//! The desired datapath state: a pure function of Services and EndpointSlices.
//!
//! It follows kube-proxy's reading of the API so that a cluster behaves the same with lb as
//! without it: slices are tied to their Service by the `kubernetes.io/service-name` label,
//! slice ports are matched to service ports by name and protocol (which is also how a named
//! `targetPort` resolves, per endpoint), ready endpoints are used, and terminating-but-serving
//! endpoints only when nothing is ready. Anything that cannot be programmed is returned as a
//! [`Skipped`] with its reason instead of failing the whole model.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use lb_common::{backend, frontend, proto, Backend, FrontendKey};

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Objects carrying this label belong to another service proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Objects carrying this label are headless (kube-proxy skips them too).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The most backends one frontend can have: the frontend's backend count is 16 bits.
pub const MAX_BACKENDS_PER_FRONTEND: usize = u16::MAX as usize;

/// What the datapath should hold.
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
}

/// One frontend and the backends behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// `namespace/name:port`, the port by name or, when unnamed, by number.
    pub name: String,
    /// [`lb_common::frontend::flags`] bits.
    pub flags: u16,
    /// Sorted by address, port and protocol, without duplicates.
    pub backends: Vec<Backend>,
}

/// An object, or part of one, that the model left out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// e.g. `Service shop/web`, `Service shop/web port http`, `EndpointSlice shop/web-abc
    /// endpoint 3`.
    pub object: String,
    pub reason: SkipReason,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    #[error("address already served for {0}")]
    DuplicateFrontend(String),
    #[error("{0} backends is more than the {MAX_BACKENDS_PER_FRONTEND} a frontend can hold; extra ones left out")]
    TooManyBackends(usize),
}

impl SkipReason {
    /// True when the object is left out by design (another proxy's, headless, a type or
    /// family not served) rather than because it is malformed: the first is worth a debug
    /// line, the second a warning.
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
}

/// Builds the desired state. `node_name` marks the backends running on this node
/// ([`backend::flags::LOCAL`]). Never fails: what cannot be used is skipped and listed.
pub fn desired_state(
    services: &[Service],
    slices: &[EndpointSlice],
    node_name: &str,
) -> (DesiredState, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let slices_by_service = index_slices(slices, &mut skipped);

    // Sorted, so that which of two conflicting services wins does not depend on input order.
    let mut services: Vec<(String, String, &Service)> = services
        .iter()
        .filter_map(|svc| match identity(&svc.metadata) {
            Ok((ns, name)) => Some((ns, name, svc)),
            Err(reason) => {
                skipped.push(Skipped {
                    object: "Service".into(),
                    reason,
                });
                None
            }
        })
        .collect();
    services.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

    let mut state = DesiredState::default();
    for (ns, name, svc) in services {
        let object = format!("Service {ns}/{name}");
        let slices = slices_by_service
            .get(&(ns.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ctx = ServiceContext {
            ns: &ns,
            name: &name,
            object: &object,
            slices,
            node_name,
        };
        if let Err(reason) = add_service(&ctx, svc, &mut state, &mut skipped) {
            skipped.push(Skipped { object, reason });
        }
    }
    skipped.sort();
    skipped.dedup();
    (state, skipped)
}

/// The service being modelled and the slices that belong to it.
struct ServiceContext<'a> {
    ns: &'a str,
    name: &'a str,
    object: &'a str,
    slices: &'a [(String, &'a EndpointSlice)],
    node_name: &'a str,
}

/// `namespace` and `name`, which every object must have.
fn identity(meta: &ObjectMeta) -> Result<(String, String), SkipReason> {
    let present = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let name = present(&meta.name).ok_or(SkipReason::MissingField("metadata.name"))?;
    let ns = present(&meta.namespace).ok_or(SkipReason::MissingField("metadata.namespace"))?;
    Ok((ns, name))
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Why an object's labels put it out of our hands, if they do.
fn label_filter(meta: &ObjectMeta) -> Option<SkipReason> {
    if let Some(proxy) = label(meta, SERVICE_PROXY_NAME_LABEL) {
        return Some(SkipReason::OtherProxy(proxy.to_owned()));
    }
    label(meta, HEADLESS_LABEL).map(|_| SkipReason::HeadlessLabel)
}

/// Slices by (namespace, service name), each with its own name, sorted by it.
type SlicesByService<'a> = BTreeMap<(String, String), Vec<(String, &'a EndpointSlice)>>;

fn index_slices<'a>(
    slices: &'a [EndpointSlice],
    skipped: &mut Vec<Skipped>,
) -> SlicesByService<'a> {
    let mut by_service = SlicesByService::new();
    for slice in slices {
        let (ns, name) = match identity(&slice.metadata) {
            Ok(id) => id,
            Err(reason) => {
                skipped.push(Skipped {
                    object: "EndpointSlice".into(),
                    reason,
                });
                continue;
            }
        };
        let object = format!("EndpointSlice {ns}/{name}");
        let reason = if let Some(reason) = label_filter(&slice.metadata) {
            reason
        } else if slice.address_type != "IPv4" {
            SkipReason::UnsupportedAddressType("EndpointSlice", slice.address_type.clone())
        } else if let Some(service) =
            label(&slice.metadata, SERVICE_NAME_LABEL).filter(|s| !s.is_empty())
        {
            by_service
                .entry((ns, service.to_owned()))
                .or_default()
                .push((name, slice));
            continue;
        } else {
            SkipReason::NoServiceLabel
        };
        skipped.push(Skipped { object, reason });
    }
    for slices in by_service.values_mut() {
        slices.sort_by(|a, b| a.0.cmp(&b.0));
    }
    by_service
}

/// Adds every frontend of one service. An `Err` skips the whole service.
fn add_service(
    ctx: &ServiceContext<'_>,
    svc: &Service,
    state: &mut DesiredState,
    skipped: &mut Vec<Skipped>,
) -> Result<(), SkipReason> {
    if let Some(reason) = label_filter(&svc.metadata) {
        return Err(reason);
    }
    let spec = svc.spec.as_ref().ok_or(SkipReason::MissingField("spec"))?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(SkipReason::ExternalName);
    }
    let addresses = cluster_ipv4s(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref())?;
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);

    for port in spec.ports.iter().flatten() {
        let port_name = port.name.as_deref().unwrap_or_default();
        let port_label = if port_name.is_empty() {
            port.port.to_string()
        } else {
            port_name.to_owned()
        };
        let port_object = format!("{} port {port_label}", ctx.object);
        let skip = |skipped: &mut Vec<Skipped>, reason| {
            skipped.push(Skipped {
                object: port_object.clone(),
                reason,
            })
        };
        let (number, protocol) = match port_and_protocol(port.port, port.protocol.as_deref()) {
            Ok(p) => p,
            Err(reason) => {
                skip(skipped, reason);
                continue;
            }
        };
        let mut backends = backends_for(ctx, port, protocol, publish_not_ready, skipped);
        if backends.len() > MAX_BACKENDS_PER_FRONTEND {
            skip(skipped, SkipReason::TooManyBackends(backends.len()));
            backends.truncate(MAX_BACKENDS_PER_FRONTEND);
        }
        let name = format!("{}/{}:{port_label}", ctx.ns, ctx.name);
        for &addr in &addresses {
            let key = FrontendKey::new(addr, number, protocol);
            if let Some(owner) = state.frontends.get(&key) {
                skip(skipped, SkipReason::DuplicateFrontend(owner.name.clone()));
                continue;
            }
            state.frontends.insert(
                key,
                DesiredFrontend {
                    name: name.clone(),
                    flags: frontend::flags::CLUSTER_IP,
                    backends: backends.clone(),
                },
            );
        }
    }
    Ok(())
}

/// The service's IPv4 cluster addresses. `clusterIPs` is authoritative when set (dual-stack
/// services list one address per family); IPv6 ones are passed over.
fn cluster_ipv4s(
    cluster_ip: Option<&str>,
    cluster_ips: Option<&[String]>,
) -> Result<Vec<Ipv4Addr>, SkipReason> {
    let listed: Vec<&str> = match cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => cluster_ip.into_iter().collect(),
    };
    if listed.contains(&"None") {
        return Err(SkipReason::Headless);
    }
    if listed.iter().all(|ip| ip.is_empty()) {
        return Err(SkipReason::MissingField("spec.clusterIP"));
    }
    let mut v4 = Vec::new();
    for ip in listed {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => v4.push(a),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => {
                return Err(SkipReason::BadAddress {
                    field: "spec.clusterIP",
                    value: ip.to_owned(),
                })
            }
        }
    }
    v4.sort();
    v4.dedup();
    if v4.is_empty() {
        return Err(SkipReason::NoIpv4ClusterIp);
    }
    Ok(v4)
}

/// A port number and protocol as the maps store them; the protocol defaults to TCP as the
/// API server defaults it.
fn port_and_protocol(port: i32, protocol: Option<&str>) -> Result<(u16, u8), SkipReason> {
    let proto = match protocol.unwrap_or("TCP") {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => return Err(SkipReason::Sctp),
        other => return Err(SkipReason::UnknownProtocol(other.to_owned())),
    };
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok((p, proto)),
        _ => Err(SkipReason::BadPort(port)),
    }
}

/// The backends of one service port: from every slice port with the same name and protocol,
/// the ready endpoints, or when none is ready, the serving and terminating ones.
fn backends_for(
    ctx: &ServiceContext<'_>,
    port: &ServicePort,
    protocol: u8,
    publish_not_ready: bool,
    skipped: &mut Vec<Skipped>,
) -> Vec<Backend> {
    let want_name = port.name.as_deref().unwrap_or_default();
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for (slice_name, slice) in ctx.slices {
        let object = format!("EndpointSlice {}/{slice_name}", ctx.ns);
        for slice_port in slice.ports.iter().flatten() {
            if slice_port.name.as_deref().unwrap_or_default() != want_name {
                continue;
            }
            let target = match slice_port.port {
                None => Err(SkipReason::MissingField("ports[].port")),
                Some(n) => port_and_protocol(n, slice_port.protocol.as_deref()),
            };
            let target_port = match target {
                Ok((n, p)) if p == protocol => n,
                // Same name, other protocol: belongs to the service port of that protocol.
                Ok(_) | Err(SkipReason::Sctp) | Err(SkipReason::UnknownProtocol(_)) => continue,
                Err(reason) => {
                    skipped.push(Skipped {
                        object: format!("{object} port {want_name}"),
                        reason,
                    });
                    continue;
                }
            };
            for (i, endpoint) in slice.endpoints.iter().enumerate() {
                let addr = match endpoint_address(endpoint) {
                    Ok(a) => a,
                    Err(reason) => {
                        skipped.push(Skipped {
                            object: format!("{object} endpoint {}", i + 1),
                            reason,
                        });
                        continue;
                    }
                };
                let mut backend = Backend::new(addr, target_port, protocol);
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                // Nil conditions mean ready and serving, not terminating (API docs).
                let is_terminating = conditions.terminating.unwrap_or(false);
                if is_terminating {
                    backend.flags |= backend::flags::TERMINATING;
                }
                if endpoint.node_name.as_deref() == Some(ctx.node_name) {
                    backend.flags |= backend::flags::LOCAL;
                }
                if publish_not_ready || conditions.ready.unwrap_or(true) {
                    ready.push(backend);
                } else if conditions.serving.unwrap_or(true) && is_terminating {
                    terminating.push(backend);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    sorted_unique(chosen)
}

/// Endpoints list up to 100 fungible addresses; like kube-proxy, the first one is used.
fn endpoint_address(endpoint: &Endpoint) -> Result<Ipv4Addr, SkipReason> {
    let first = endpoint
        .addresses
        .first()
        .ok_or(SkipReason::MissingField("endpoints[].addresses"))?;
    first.parse().map_err(|_| SkipReason::BadAddress {
        field: "endpoints[].addresses",
        value: first.clone(),
    })
}

/// What identifies a backend: the same pod port seen twice is one backend.
fn backend_tuple(b: &Backend) -> (Ipv4Addr, u16, u8) {
    (b.ip(), b.port_host(), b.proto)
}

/// Sorts by address, port and protocol, and merges duplicates (an endpoint listed by two
/// slices, as during slice rebalancing) keeping every flag either copy carries.
fn sorted_unique(mut backends: Vec<Backend>) -> Vec<Backend> {
    backends.sort_by_key(backend_tuple);
    let mut out: Vec<Backend> = Vec::with_capacity(backends.len());
    for b in backends {
        match out.last_mut() {
            Some(last) if backend_tuple(last) == backend_tuple(&b) => last.flags |= b.flags,
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests;
