//! healthCheckNodePort: what kube-proxy answers on it for an externalTrafficPolicy=Local
//! service, so that an external load balancer sends traffic only to nodes that have a
//! local endpoint.
//!
//! The answer is decided by the number of this node's ready endpoints. Terminating
//! endpoints never count (ready is false for them), so a node whose last endpoints are
//! terminating reports 503 and is drained, while traffic already sent keeps being served
//! by them (the frontends fall back to serving-and-terminating endpoints).

use std::collections::BTreeSet;

use super::{service::ServiceInfo, slice::SliceInfo, ObjectId};

/// One health check server's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub service: ObjectId,
    /// Distinct ready, non-terminating endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// The health check `svc` needs on this node, if any: only services with
/// externalTrafficPolicy=Local and a healthCheckNodePort have one.
pub fn health_check(svc: &ServiceInfo, slices: &[&SliceInfo]) -> Option<HealthCheck> {
    let port = svc.health_check_node_port.filter(|_| svc.external_local)?;
    // By address: an endpoint listed twice (two slices during rebalancing, or one per
    // port) is one endpoint.
    let local: BTreeSet<_> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|ep| ep.local && (ep.ready || svc.publish_not_ready) && !ep.terminating)
        .map(|ep| ep.addr)
        .collect();
    Some(HealthCheck {
        port,
        service: svc.id.clone(),
        local_endpoints: local.len(),
    })
}
