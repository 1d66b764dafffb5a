//! The agent's desired state as served on `GET /state` (metrics port), for `lbctl diff`.
//!
//! # Schema (version 1)
//!
//! ```json
//! {
//!   "version": 1,
//!   "node": {"name": "worker", "addresses": ["172.18.0.3"], "podCIDRs": ["10.244.1.0/24"],
//!            "zone": "zone-a", "eligible": true},
//!   "synced": true,
//!   "services": 12,
//!   "frontends": [
//!     {"address": "10.96.0.10", "port": 80, "protocol": "TCP", "scope": "external",
//!      "service": "shop/web", "name": "shop/web:http", "type": "ClusterIP",
//!      "programmed": true, "serviceId": 3, "flags": 1, "flagNames": ["ClusterIP"],
//!      "affinityTimeoutSeconds": 0,
//!      "policy": {"externalTrafficLocal": false, "internalTrafficLocal": false,
//!                 "publishNotReadyAddresses": false, "topologyAware": false},
//!      "backends": [{"address": "10.244.1.2", "port": 8080, "protocol": "TCP",
//!                    "flags": 2, "terminating": false, "local": true}]}
//!   ]
//! }
//! ```
//!
//! - `frontends` are sorted by (address, port, protocol, scope); one entry per frontend
//!   key. Only entries with `programmed: true` are written to the maps today (ClusterIP);
//!   the others are what later datapath work will program.
//! - For a programmed frontend, the maps must hold `LB_FRONTENDS[(address, port,
//!   protocol, scope)] = {service_id, backend_count: backends.len(), flags,
//!   affinity_timeout_s: affinityTimeoutSeconds}`, and slot `i` (1-based) of that service
//!   id must name a backend equal to `backends[i-1]` (address, port, protocol, `flags` —
//!   a backend shared by several frontends carries the union of their flags in the map).
//! - `serviceId` is the id the agent's last write gave the frontend; absent before the first
//!   sync and for frontends not programmed.
//! - `flags` are the raw [`lb_common::frontend::flags`] / [`lb_common::backend::flags`]
//!   bits; `flagNames`, `terminating` and `local` decode them.
//! - `synced` is false until the first full sync; the desired state may then be partial.
//! - `sourceRanges` (LoadBalancer frontends with the `SourceRanges` flag) lists the client
//!   prefixes LB_SRC_RANGES holds under the frontend's service id.
//! - `attachments`: `{"uplink": "eth0", "xdpMode": "native", "socketLbCgroup":
//!   "/sys/fs/cgroup"}`; `xdpMode` is `native`, `generic`, `off` or `none`.
//! - `skipped`: what the agent leaves out now, and why, sorted by object:
//!   `[{"object": "Service shop/web port huge", "kind": "Service", "reason": "bad_port",
//!   "message": "port 70000 is outside 1..=65535", "byDesign": false}]`. `object` names the
//!   object or the part of it (a port, an endpoint); `reason` is
//!   [`crate::model::SkipReason::label`] (the `reason` label of `lb_invalid_objects_total`,
//!   which counts the ones not `byDesign`). Absent from older agents.
//!
//! New fields may be added without changing `version`; readers must ignore unknown fields.

use std::net::Ipv4Addr;

use lb_common::{backend, frontend, proto, FrontendKey};
use serde::{Deserialize, Serialize};

use crate::model::{node::ThisNode, DesiredFrontend, FrontendKind, Skipped};

/// [`State::version`] of this schema.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: u32,
    pub node: NodeReport,
    pub synced: bool,
    /// Services the agent serves (parsed and not skipped).
    pub services: usize,
    pub frontends: Vec<FrontendReport>,
    /// Where the node-side programs are attached (absent from older agents).
    #[serde(default)]
    pub attachments: AttachmentsReport,
    /// What the agent leaves out, and why (absent from older agents).
    #[serde(default)]
    pub skipped: Vec<SkippedReport>,
}

/// An object, or part of one, that the agent does not program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedReport {
    /// e.g. `Service shop/web port http`, `EndpointSlice shop/web-abc endpoint 3`.
    pub object: String,
    /// `Service`, `EndpointSlice` or `Node`.
    pub kind: String,
    /// [`crate::model::SkipReason::label`].
    pub reason: String,
    /// The reason in words.
    pub message: String,
    /// Left out by design (another proxy's, headless, a family not served) rather than
    /// invalid.
    pub by_design: bool,
}

impl From<&Skipped> for SkippedReport {
    fn from(s: &Skipped) -> Self {
        Self {
            object: s.object.clone(),
            kind: s.kind.name().to_owned(),
            reason: s.reason.label().to_owned(),
            message: s.reason.to_string(),
            by_design: s.reason.is_by_design(),
        }
    }
}

/// The uplink, XDP and socket-level attachments of the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentsReport {
    /// The interface `lb_from_net` (and `lb_xdp`) are attached to; absent until known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// `native`, `generic`, `off` (as asked), or `none` (not attached yet, or failed).
    pub xdp_mode: String,
    /// The cgroup the socket programs are attached to; absent when socket LB is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_lb_cgroup: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub eligible: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub fn from_number(p: u8) -> Option<Self> {
        match p {
            proto::TCP => Some(Protocol::Tcp),
            proto::UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    External,
    Internal,
}

impl Scope {
    pub fn from_number(s: u8) -> Self {
        if s == frontend::scope::INTERNAL {
            Scope::Internal
        } else {
            Scope::External
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Scope::External => frontend::scope::EXTERNAL,
            Scope::Internal => frontend::scope::INTERNAL,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendReport {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
    /// `namespace/name` of the Service.
    pub service: String,
    /// `namespace/name:port`.
    pub name: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    #[serde(rename = "type")]
    pub kind: String,
    pub programmed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<u32>,
    pub flags: u16,
    pub flag_names: Vec<String>,
    pub affinity_timeout_seconds: u32,
    pub policy: PolicyReport,
    /// In slot order: `backends[i]` belongs in slot `i + 1`.
    pub backends: Vec<BackendReport>,
    /// With the `SourceRanges` flag: the admitted client prefixes (`192.0.2.0/24`), all
    /// in LB_SRC_RANGES under the frontend's service id; none admits nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
}

impl FrontendReport {
    /// The map key this entry describes.
    pub fn key(&self) -> FrontendKey {
        FrontendKey {
            scope: self.scope.number(),
            ..FrontendKey::new(self.address, self.port, self.protocol.number())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    pub publish_not_ready_addresses: bool,
    pub topology_aware: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendReport {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub flags: u8,
    pub terminating: bool,
    pub local: bool,
}

impl NodeReport {
    pub fn new(node: &ThisNode) -> Self {
        Self {
            name: node.name.clone(),
            addresses: node.ips.clone(),
            pod_cidrs: node.pod_cidrs.iter().map(ToString::to_string).collect(),
            zone: node.zone.clone(),
            eligible: node.eligible,
        }
    }
}

/// One frontend's report; `service_id` from the syncer's record, when programmed.
pub fn frontend_report(
    key: &FrontendKey,
    f: &DesiredFrontend,
    service_id: Option<u32>,
) -> FrontendReport {
    let protocol = Protocol::from_number(key.proto).unwrap_or(Protocol::Tcp);
    FrontendReport {
        address: key.ip(),
        port: key.port_host(),
        protocol,
        scope: Scope::from_number(key.scope),
        service: f.service.to_string(),
        name: f.name.clone(),
        kind: kind_name(f.kind).to_owned(),
        programmed: f.is_programmed(),
        service_id,
        flags: f.flags,
        flag_names: frontend::flags::names(f.flags).map(str::to_owned).collect(),
        affinity_timeout_seconds: f.affinity_timeout_s,
        policy: PolicyReport {
            external_traffic_local: f.policy.external_local,
            internal_traffic_local: f.policy.internal_local,
            publish_not_ready_addresses: f.policy.publish_not_ready,
            topology_aware: f.policy.topology_aware,
        },
        backends: f
            .backends
            .iter()
            .map(|b| BackendReport {
                address: b.ip(),
                port: b.port_host(),
                protocol: Protocol::from_number(b.proto).unwrap_or(protocol),
                flags: b.flags,
                terminating: b.flags & backend::flags::TERMINATING != 0,
                local: b.flags & backend::flags::LOCAL != 0,
            })
            .collect(),
        source_ranges: f.source_ranges.iter().map(ToString::to_string).collect(),
    }
}

fn kind_name(kind: FrontendKind) -> &'static str {
    kind.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{service, slice},
        model::desired_state,
    };

    #[test]
    fn the_state_serializes_to_the_documented_schema_and_back() {
        let svc = service("shop", "web", "10.96.0.10")
            .port("http", 80, "TCP")
            .client_ip_affinity(Some(30))
            .build();
        let s = slice("shop", "web-1", "web")
            .port("http", 8080, "TCP")
            .ready("10.244.1.2")
            .on_node("worker")
            .build();
        let node = ThisNode {
            ips: vec![Ipv4Addr::new(172, 18, 0, 3)],
            pod_cidrs: vec!["10.244.1.0/24".parse().expect("cidr")],
            zone: Some("zone-a".into()),
            ..ThisNode::named("worker")
        };
        let (desired, _) = desired_state(&[svc], &[s], &node);
        let state = State {
            version: STATE_VERSION,
            node: NodeReport::new(&node),
            synced: true,
            services: 1,
            frontends: desired
                .frontends
                .iter()
                .map(|(k, f)| frontend_report(k, f, Some(3)))
                .collect(),
            attachments: AttachmentsReport {
                uplink: Some("eth0".into()),
                xdp_mode: "native".into(),
                socket_lb_cgroup: None,
            },
            skipped: vec![SkippedReport::from(&Skipped {
                object: "Service shop/web port huge".into(),
                kind: crate::model::ObjectKind::Service,
                reason: crate::model::SkipReason::BadPort(70000),
            })],
        };
        let json: serde_json::Value = serde_json::to_value(&state).expect("serialize");
        let expected = serde_json::json!({
            "version": 1,
            "node": {"name": "worker", "addresses": ["172.18.0.3"],
                     "podCIDRs": ["10.244.1.0/24"], "zone": "zone-a", "eligible": true},
            "synced": true,
            "services": 1,
            "frontends": [{
                "address": "10.96.0.10", "port": 80, "protocol": "TCP", "scope": "external",
                "service": "shop/web", "name": "shop/web:http", "type": "ClusterIP",
                "programmed": true, "serviceId": 3, "flags": 1, "flagNames": ["ClusterIP"],
                "affinityTimeoutSeconds": 30,
                "policy": {"externalTrafficLocal": false, "internalTrafficLocal": false,
                           "publishNotReadyAddresses": false, "topologyAware": false},
                "backends": [{"address": "10.244.1.2", "port": 8080, "protocol": "TCP",
                              "flags": 2, "terminating": false, "local": true}]
            }],
            "attachments": {"uplink": "eth0", "xdpMode": "native"},
            "skipped": [{"object": "Service shop/web port huge", "kind": "Service",
                         "reason": "bad_port", "message": "port 70000 is outside 1..=65535",
                         "byDesign": false}]
        });
        assert_eq!(json, expected);
        let back: State = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, state);
        assert_eq!(
            back.frontends[0].key(),
            FrontendKey::new(Ipv4Addr::new(10, 96, 0, 10), 80, proto::TCP)
        );
    }

    #[test]
    fn unknown_fields_are_ignored_by_readers() {
        let json = r#"{"version": 1, "node": {"name": "n", "addresses": [], "podCIDRs": [],
            "eligible": true, "future": 1}, "synced": false, "services": 0, "frontends": [],
            "somethingNew": [1, 2]}"#;
        let state: State = serde_json::from_str(json).expect("deserialize");
        assert!(state.frontends.is_empty() && state.node.zone.is_none());
        assert!(state.skipped.is_empty());
    }
}
