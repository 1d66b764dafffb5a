//! A Service read into what the model needs of it, validated once as it arrives.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use lb_common::proto;

use super::{
    node::Ipv4Cidr, ObjectId, ObjectKind, Parsed, SkipReason, Skipped, HEADLESS_LABEL,
    SERVICE_PROXY_NAME_LABEL,
};

/// The annotation that lists LoadBalancer source ranges (comma-separated) when
/// spec.loadBalancerSourceRanges is empty; kube-proxy and the cloud providers honour it.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (the API server's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The largest timeout the API server accepts.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// spec.type, less ExternalName (which is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// Empty when unnamed.
    pub name: String,
    pub port: u16,
    /// [`lb_common::proto`] number.
    pub protocol: u8,
    /// Present on NodePort and LoadBalancer services (unless allocation is turned off).
    pub node_port: Option<u16>,
}

impl PortSpec {
    /// The port by name or, when unnamed, by number.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.port.to_string()
        } else {
            self.name.clone()
        }
    }
}

/// What the model needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: ObjectId,
    pub type_: ServiceType,
    /// IPv4 cluster addresses, sorted, at least one.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Only the ports that can be served.
    pub ports: Vec<PortSpec>,
    /// spec.externalIPs, IPv4 only.
    pub external_ips: Vec<Ipv4Addr>,
    /// status.loadBalancer.ingress[].ip, IPv4 only, leaving out those in Proxy mode (the
    /// load balancer delivers to the node's address, not to this one).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// 0 when session affinity is off.
    pub affinity_timeout_s: u32,
    pub external_local: bool,
    pub internal_local: bool,
    pub publish_not_ready: bool,
    /// loadBalancerSourceRanges (or the annotation), IPv4 only, masked, sorted. `None` when
    /// the service gives none (everyone may connect); `Some(empty)` when it gives ranges
    /// but none is usable here: then nobody may connect (fail closed).
    pub source_ranges: Option<Vec<Ipv4Cidr>>,
    /// spec.healthCheckNodePort, for externalTrafficPolicy=Local LoadBalancer services.
    pub health_check_node_port: Option<u16>,
}

/// Reads a Service. A Service that cannot be served at all has no value; ports and
/// addresses that cannot be served are left out and listed.
pub fn parse_service(svc: &Service) -> Parsed<ServiceInfo> {
    Parsed::object(ObjectKind::Service, &svc.metadata, |id, object, notes| {
        read(svc, id, object, notes)
    })
}

fn skipped(object: String, reason: SkipReason) -> Skipped {
    Skipped {
        object,
        kind: ObjectKind::Service,
        reason,
    }
}

fn read(
    svc: &Service,
    id: &ObjectId,
    object: &str,
    notes: &mut Vec<Skipped>,
) -> Result<ServiceInfo, SkipReason> {
    let labels = svc.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return Err(SkipReason::OtherProxy(proxy.clone()));
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Err(SkipReason::HeadlessLabel);
    }
    let spec = svc.spec.as_ref().ok_or(SkipReason::MissingField("spec"))?;
    let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" | "" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => return Err(SkipReason::ExternalName),
        other => return Err(SkipReason::UnknownType(other.to_owned())),
    };
    let cluster_ips = cluster_ipv4s(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref())?;
    let affinity_timeout_s = affinity_timeout(spec)?;

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let name = port.name.clone().unwrap_or_default();
        let label = if name.is_empty() {
            port.port.to_string()
        } else {
            name.clone()
        };
        let parsed = port_and_protocol(port.port, port.protocol.as_deref()).and_then(
            |(number, protocol)| {
                let node_port = match port.node_port {
                    None | Some(0) => None,
                    Some(n) => Some(u16::try_from(n).map_err(|_| SkipReason::BadNodePort(n))?),
                };
                Ok(PortSpec {
                    name,
                    port: number,
                    protocol,
                    node_port,
                })
            },
        );
        match parsed {
            Ok(p) => ports.push(p),
            Err(reason) => notes.push(skipped(format!("{object} port {label}"), reason)),
        }
    }

    let external_ips = ipv4s(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs",
        object,
        notes,
    );
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let load_balancer_ips = ipv4s(
        ingress
            .iter()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()),
        "status.loadBalancer.ingress[].ip",
        object,
        notes,
    );
    let source_ranges = source_ranges(svc, spec, object, notes);
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    Ok(ServiceInfo {
        id: id.clone(),
        type_,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        affinity_timeout_s,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        source_ranges,
        health_check_node_port,
    })
}

/// The source ranges the service gives: spec.loadBalancerSourceRanges, or the annotation
/// when the field is empty (as kube-proxy reads them). Unparsable ranges are noted and left
/// out, IPv6 ones passed over (another family's proxy applies them). If ranges were given
/// and none is usable for IPv4, the result is an empty list, which admits nobody: kube-proxy
/// would then admit everyone, but a restriction the operator asked for must not silently
/// vanish because of a typo.
fn source_ranges(
    svc: &Service,
    spec: &ServiceSpec,
    object: &str,
    notes: &mut Vec<Skipped>,
) -> Option<Vec<Ipv4Cidr>> {
    let field: Vec<&str> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    let (listed, origin) = if field.is_empty() {
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(String::as_str)
            .unwrap_or_default();
        let listed: Vec<&str> = annotation
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        (listed, SOURCE_RANGES_ANNOTATION)
    } else {
        (field, "spec.loadBalancerSourceRanges")
    };
    if listed.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for range in &listed {
        match range.parse::<Ipv4Cidr>() {
            Ok(c) => out.push(c.masked()),
            Err(super::node::CidrError::NotIpv4(_)) => {}
            Err(_) => notes.push(skipped(
                object.to_owned(),
                SkipReason::BadSourceRange {
                    field: origin,
                    value: (*range).to_owned(),
                },
            )),
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        notes.push(skipped(
            object.to_owned(),
            SkipReason::NoUsableSourceRange(origin),
        ));
    }
    Some(out)
}

/// The ClientIP stickiness, 0 when affinity is off.
fn affinity_timeout(spec: &ServiceSpec) -> Result<u32, SkipReason> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" | "" => Ok(0),
        "ClientIP" => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Ok(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_S).contains(t))
                    .ok_or(SkipReason::BadAffinityTimeout(t)),
            }
        }
        other => Err(SkipReason::UnknownAffinity(other.to_owned())),
    }
}

/// The IPv4 addresses among `listed`; IPv6 ones are passed over, unparsable ones noted.
fn ipv4s<'a>(
    listed: impl Iterator<Item = &'a str>,
    field: &'static str,
    object: &str,
    notes: &mut Vec<Skipped>,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in listed {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => out.push(a),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => notes.push(skipped(
                object.to_owned(),
                SkipReason::BadAddress {
                    field,
                    value: ip.to_owned(),
                },
            )),
        }
    }
    out.sort();
    out.dedup();
    out
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
pub(crate) fn port_and_protocol(
    port: i32,
    protocol: Option<&str>,
) -> Result<(u16, u8), SkipReason> {
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
