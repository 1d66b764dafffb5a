//! An EndpointSlice read into what the model needs of it, validated once as it arrives.
//!
//! Only what decides backends is kept (an endpoint is about 32 bytes instead of the API
//! object's several hundred): 10k services with 10 endpoints each must fit in the agent's
//! memory budget next to everything else.

use std::net::Ipv4Addr;

use k8s_openapi::{api::discovery::v1::EndpointSlice, jiff::Timestamp};

use super::{
    service::port_and_protocol, ObjectId, ObjectKind, Parsed, SkipReason, Skipped, HEADLESS_LABEL,
    SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
};

/// When the change that produced this version of the slice happened (set by the
/// EndpointSlice controller); programming latency is measured from it, as kube-proxy does.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// One slice port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Empty when unnamed; matches the service port of the same name.
    pub name: String,
    pub port: u16,
    pub protocol: u8,
}

/// One endpoint's address and conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: Ipv4Addr,
    /// Unset conditions mean ready and serving, not terminating (API docs).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    /// hints.forZones, when the slice controller set any.
    pub zone_hints: Option<Box<[Box<str>]>>,
}

/// What the model needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub id: ObjectId,
    /// The Service it belongs to (same namespace, `kubernetes.io/service-name`).
    pub service: ObjectId,
    /// Only the ports that can be served.
    pub ports: Vec<SlicePort>,
    /// Only the endpoints with a usable address.
    pub endpoints: Vec<EndpointInfo>,
    pub trigger_time: Option<Timestamp>,
}

/// Reads an EndpointSlice; `node_name` marks this node's endpoints. A slice that cannot be
/// used at all has no value; ports and endpoints that cannot be used are left out and
/// listed.
pub fn parse_slice(slice: &EndpointSlice, node_name: &str) -> Parsed<SliceInfo> {
    Parsed::object(
        ObjectKind::EndpointSlice,
        &slice.metadata,
        |id, object, notes| read(slice, id, object, node_name, notes),
    )
}

fn skipped(object: String, reason: SkipReason) -> Skipped {
    Skipped {
        object,
        kind: ObjectKind::EndpointSlice,
        reason,
    }
}

fn read(
    slice: &EndpointSlice,
    id: &ObjectId,
    object: &str,
    node_name: &str,
    notes: &mut Vec<Skipped>,
) -> Result<SliceInfo, SkipReason> {
    let labels = slice.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return Err(SkipReason::OtherProxy(proxy.clone()));
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Err(SkipReason::HeadlessLabel);
    }
    if slice.address_type != "IPv4" {
        return Err(SkipReason::UnsupportedAddressType(
            "EndpointSlice",
            slice.address_type.clone(),
        ));
    }
    let service = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .ok_or(SkipReason::NoServiceLabel)?;

    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        let parsed = match p.port {
            None => Err(SkipReason::MissingField("ports[].port")),
            Some(n) => port_and_protocol(n, p.protocol.as_deref()),
        };
        match parsed {
            Ok((port, protocol)) => ports.push(SlicePort {
                name,
                port,
                protocol,
            }),
            // A port of a protocol we do not serve belongs to a service port we skip.
            Err(SkipReason::Sctp | SkipReason::UnknownProtocol(_)) => {}
            Err(reason) => notes.push(skipped(format!("{object} port {name}"), reason)),
        }
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Endpoints list up to 100 fungible addresses; like kube-proxy, the first is used.
        let addr = match ep.addresses.first() {
            None => Err(SkipReason::MissingField("endpoints[].addresses")),
            Some(a) => a.parse::<Ipv4Addr>().map_err(|_| SkipReason::BadAddress {
                field: "endpoints[].addresses",
                value: a.clone(),
            }),
        };
        let addr = match addr {
            Ok(a) => a,
            Err(reason) => {
                notes.push(skipped(format!("{object} endpoint {}", i + 1), reason));
                continue;
            }
        };
        let conditions = ep.conditions.as_ref();
        let zone_hints = ep
            .hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .filter(|z| !z.is_empty())
            .map(|zones| zones.iter().map(|z| z.name.as_str().into()).collect());
        endpoints.push(EndpointInfo {
            addr,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            local: ep.node_name.as_deref() == Some(node_name),
            zone_hints,
        });
    }

    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
        .and_then(|t| t.parse::<Timestamp>().ok());
    Ok(SliceInfo {
        id: id.clone(),
        service: ObjectId::new(&id.namespace, service),
        ports,
        endpoints,
        trigger_time,
    })
}
