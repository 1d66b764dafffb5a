//! One service's frontends: its addresses × ports, each with the backends that may serve it.
//!
//! Backends are chosen as kube-proxy's `CategorizeEndpoints` chooses them:
//! - cluster endpoints: the ready ones (narrowed to this zone when topology hints apply),
//!   else, when none is ready, the serving-and-terminating ones;
//! - local endpoints (for a Local traffic policy): this node's ready ones, else this node's
//!   serving-and-terminating ones;
//! - topology hints are used only when every ready endpoint has hints and at least one hint
//!   names this node's zone (otherwise traffic would be lopsided or blackholed).
//!
//! A ClusterIP frontend uses the local endpoints when internalTrafficPolicy is Local (and
//! carries `INTERNAL_LOCAL`, so that none means drop rather than reject). A NodePort,
//! ExternalIP or LoadBalancer frontend uses them when externalTrafficPolicy is Local (and
//! carries `EXTERNAL_LOCAL`: keep the client address, drop when there is no local
//! endpoint), and then also gets an internal-scope twin with the cluster endpoints, because
//! traffic from inside the cluster to those addresses is not subject to the policy.
//!
//! NodePorts are served on every address of this node and on 127.0.0.1, as kube-proxy
//! serves them. LoadBalancer frontends of a service with source ranges carry
//! `SOURCE_RANGES` (both scopes: kube-proxy's firewall chain applies to every client of
//! the LoadBalancer address) and the ranges themselves.
//!
//! Every frontend is produced whatever its backends: an empty set is programmed with a
//! count of 0, which the datapath rejects (or drops, under a Local policy).

use std::net::Ipv4Addr;

use lb_common::{
    backend,
    frontend::{flags, scope},
    Backend, FrontendKey,
};

use super::{
    backend_tuple,
    node::ThisNode,
    service::{PortSpec, ServiceInfo, ServiceType},
    slice::SliceInfo,
    DesiredFrontend, FrontendKind, ObjectKind, Policy, SkipReason, Skipped,
    MAX_BACKENDS_PER_FRONTEND,
};

/// The frontends of `svc` given its `slices` (in name order) and this node. Keys a service
/// claims twice itself go to its first port; the notes say what was left out.
pub fn service_frontends(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    node: &ThisNode,
) -> (Vec<(FrontendKey, DesiredFrontend)>, Vec<Skipped>) {
    let mut out: Vec<(FrontendKey, DesiredFrontend)> = Vec::new();
    let mut notes = Vec::new();
    let object = format!("Service {}", svc.id);
    for port in &svc.ports {
        let label = port.label();
        let port_object = format!("{object} port {label}");
        let mut sets = backend_sets(svc, port, slices, node);
        for set in [&mut sets.cluster, &mut sets.local] {
            if set.len() > MAX_BACKENDS_PER_FRONTEND {
                notes.push(Skipped {
                    object: port_object.clone(),
                    kind: ObjectKind::Service,
                    reason: SkipReason::TooManyBackends(set.len()),
                });
                set.truncate(MAX_BACKENDS_PER_FRONTEND);
            }
        }
        let name = format!("{}:{label}", svc.id);
        // Source ranges restrict LoadBalancer addresses only, as in kube-proxy.
        let make = |kind: FrontendKind, backends: &Vec<Backend>, topology: bool, extra: u16| {
            let ranges = match (kind, &svc.source_ranges) {
                (FrontendKind::LoadBalancer, Some(ranges)) => Some(ranges),
                _ => None,
            };
            DesiredFrontend {
                name: name.clone(),
                service: svc.id.clone(),
                kind,
                flags: kind.flag()
                    | extra
                    | if ranges.is_some() {
                        flags::SOURCE_RANGES
                    } else {
                        0
                    },
                source_ranges: ranges.cloned().unwrap_or_default(),
                affinity_timeout_s: svc.affinity_timeout_s,
                policy: Policy {
                    external_local: svc.external_local,
                    internal_local: svc.internal_local,
                    publish_not_ready: svc.publish_not_ready,
                    topology_aware: topology,
                },
                backends: backends.clone(),
            }
        };
        let mut add = |key: FrontendKey, f: DesiredFrontend| {
            if let Some((_, owner)) = out.iter().find(|(k, _)| *k == key) {
                notes.push(Skipped {
                    object: port_object.clone(),
                    kind: ObjectKind::Service,
                    reason: SkipReason::DuplicateFrontend(owner.name.clone()),
                });
            } else {
                out.push((key, f));
            }
        };

        let (internal, internal_topology, internal_flags) = if svc.internal_local {
            (&sets.local, false, flags::INTERNAL_LOCAL)
        } else {
            (&sets.cluster, sets.topology, 0)
        };
        for &ip in &svc.cluster_ips {
            let key = FrontendKey::new(ip, port.port, port.protocol);
            add(
                key,
                make(
                    FrontendKind::ClusterIp,
                    internal,
                    internal_topology,
                    internal_flags,
                ),
            );
        }

        let mut external: Vec<(FrontendKind, std::net::Ipv4Addr, u16)> = Vec::new();
        if let (ServiceType::NodePort | ServiceType::LoadBalancer, Some(np)) =
            (svc.type_, port.node_port)
        {
            external.extend(node_port_addresses(node).map(|ip| (FrontendKind::NodePort, ip, np)));
        }
        external.extend(
            svc.external_ips
                .iter()
                .map(|&ip| (FrontendKind::ExternalIp, ip, port.port)),
        );
        if svc.type_ == ServiceType::LoadBalancer {
            external.extend(
                svc.load_balancer_ips
                    .iter()
                    .map(|&ip| (FrontendKind::LoadBalancer, ip, port.port)),
            );
        }
        for (kind, ip, number) in external {
            let key = FrontendKey::new(ip, number, port.protocol);
            if svc.external_local {
                add(key, make(kind, &sets.local, false, flags::EXTERNAL_LOCAL));
                let internal_key = FrontendKey {
                    scope: scope::INTERNAL,
                    ..key
                };
                add(internal_key, make(kind, &sets.cluster, sets.topology, 0));
            } else {
                add(key, make(kind, &sets.cluster, sets.topology, 0));
            }
        }
    }
    (out, notes)
}

/// Where NodePorts are served: every address of this node, then 127.0.0.1 (kube-proxy
/// serves NodePorts on localhost too), without duplicates.
fn node_port_addresses(node: &ThisNode) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let localhost = (!node.ips.contains(&Ipv4Addr::LOCALHOST)).then_some(Ipv4Addr::LOCALHOST);
    node.ips.iter().copied().chain(localhost)
}

/// The candidate backend sets of one service port.
struct BackendSets {
    cluster: Vec<Backend>,
    local: Vec<Backend>,
    /// `cluster` was narrowed by topology hints.
    topology: bool,
}

/// An endpoint as a backend of one service port, with the conditions that choose it.
struct Candidate<'a> {
    backend: Backend,
    ready: bool,
    serving_terminating: bool,
    local: bool,
    zone_hints: Option<&'a [Box<str>]>,
}

fn backend_sets(
    svc: &ServiceInfo,
    port: &PortSpec,
    slices: &[&SliceInfo],
    node: &ThisNode,
) -> BackendSets {
    let mut candidates = Vec::new();
    for slice in slices {
        for slice_port in &slice.ports {
            // Same name and protocol: also how a named targetPort resolves per endpoint.
            if slice_port.name != port.name || slice_port.protocol != port.protocol {
                continue;
            }
            for ep in &slice.endpoints {
                let mut b = Backend::new(ep.addr, slice_port.port, port.protocol);
                if ep.terminating {
                    b.flags |= backend::flags::TERMINATING;
                }
                if ep.local {
                    b.flags |= backend::flags::LOCAL;
                }
                // A hostNetwork pod (or the node itself) serves from this node's address.
                if node.ips.contains(&ep.addr) {
                    b.flags |= backend::flags::HOST;
                }
                candidates.push(Candidate {
                    backend: b,
                    ready: svc.publish_not_ready || ep.ready,
                    serving_terminating: ep.serving && ep.terminating,
                    local: ep.local,
                    zone_hints: ep.zone_hints.as_deref(),
                });
            }
        }
    }

    let zone = node.zone.as_deref();
    let topology = zone.is_some_and(|zone| use_topology(&candidates, zone));
    let in_zone = |c: &Candidate| {
        !topology
            || c.zone_hints
                .is_some_and(|h| h.iter().any(|z| Some(&**z) == zone))
    };
    let pick = |keep: &dyn Fn(&Candidate) -> bool| {
        sorted_unique(
            candidates
                .iter()
                .filter(|c| keep(c))
                .map(|c| c.backend)
                .collect(),
        )
    };
    let mut cluster = pick(&|c| c.ready && in_zone(c));
    if cluster.is_empty() {
        cluster = pick(&|c| c.serving_terminating);
    }
    let mut local = pick(&|c| c.local && c.ready);
    if local.is_empty() {
        local = pick(&|c| c.local && c.serving_terminating);
    }
    BackendSets {
        cluster,
        local,
        topology,
    }
}

/// kube-proxy's rule: hints are trusted only when every ready endpoint carries them and at
/// least one is for `zone`.
fn use_topology(candidates: &[Candidate], zone: &str) -> bool {
    let mut for_zone = false;
    for c in candidates.iter().filter(|c| c.ready) {
        match c.zone_hints {
            None => return false,
            Some(hints) => for_zone |= hints.iter().any(|z| &**z == zone),
        }
    }
    for_zone
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
