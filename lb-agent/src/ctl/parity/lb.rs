//! What lb programs on this node, from its pinned maps, in the shape of a kube-proxy
//! [`View`]: one frontend per ClusterIP, external address and NodePort (the NodePort
//! frontends lb keeps per node address are one here, as kube-proxy's one rule is).
//!
//! How lb's maps say what kube-proxy's rules say:
//! - endpoints: the backends in the frontend's slots, each an equal share (the datapath
//!   hashes a flow onto one of `backend_count` slots);
//! - a Local policy: `INTERNAL_LOCAL` on a ClusterIP, `EXTERNAL_LOCAL` on the others; the
//!   internal-scope twin of an `EXTERNAL_LOCAL` frontend serves clients inside the cluster;
//! - masquerade: a ClusterIP masquerades clients outside `LB_CONFIG`'s cluster CIDR;
//!   external frontends masquerade everyone unless `EXTERNAL_LOCAL`; hairpin traffic is
//!   always masqueraded;
//! - source ranges: `SOURCE_RANGES` and the LB_SRC_RANGES entries of the service id.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    frontend::{flags, scope},
    BackendSlotKey, Frontend, FrontendKey,
};

use super::{
    endpoints_of, sorted, Class, Endpoint, FrontendId, FrontendState, Kind, Masquerade, View,
};
use crate::ctl::{map_id::MapId, snapshot::Snapshot};

/// The maps read.
pub const MAPS: [MapId; 6] = [
    MapId::Frontends,
    MapId::Slots,
    MapId::Backends,
    MapId::ServiceNames,
    MapId::SourceRanges,
    MapId::Config,
];
/// Without these there is nothing to compare.
pub const REQUIRED: [MapId; 3] = [MapId::Frontends, MapId::Slots, MapId::Backends];

/// lb's frontends as a [`View`]. Inconsistencies of lb's own (NodePort frontends that
/// disagree between addresses, slots that are missing) are its `problems`.
pub fn view(snapshot: &Snapshot) -> View {
    let mut view = View {
        shows_empty: true,
        ..View::default()
    };
    let cluster_cidr = snapshot.config.and_then(|c| {
        (c.cluster_cidr_mask != 0).then(|| {
            let prefix = u32::from_be(c.cluster_cidr_mask).leading_ones();
            format!("{}/{prefix}", lb_common::addr_from_be(c.cluster_cidr_addr))
        })
    });
    // NodePort frontends by (port, protocol), each with its addresses.
    let mut node_ports: BTreeMap<FrontendId, Vec<(Ipv4Addr, FrontendState)>> = BTreeMap::new();
    for (key, f) in &snapshot.frontends {
        if key.scope != scope::EXTERNAL {
            continue;
        }
        let Some(protocol) = super::protocol(&key.proto.to_string()) else {
            continue;
        };
        let (class, kind) = match f.flags {
            fl if fl & flags::CLUSTER_IP != 0 => (Class::ClusterIp, Kind::ClusterIP),
            fl if fl & flags::NODE_PORT != 0 => (Class::NodePort, Kind::NodePort),
            fl if fl & flags::EXTERNAL_IP != 0 => (Class::External, Kind::ExternalIP),
            fl if fl & flags::LOAD_BALANCER != 0 => (Class::External, Kind::LoadBalancer),
            _ => continue,
        };
        let (endpoints, problems) = backends(snapshot, f);
        for p in problems {
            view.problems.push(format!("{}: {p}", frontend_label(key)));
        }
        let local = f.flags & (flags::INTERNAL_LOCAL | flags::EXTERNAL_LOCAL) != 0;
        let internal_endpoints = (f.flags & flags::EXTERNAL_LOCAL != 0).then(|| {
            let twin = FrontendKey {
                scope: scope::INTERNAL,
                ..*key
            };
            snapshot
                .frontends
                .get(&twin)
                .map(|t| backends(snapshot, t).0)
                .unwrap_or_default()
        });
        let masquerade = match class {
            Class::ClusterIp => cluster_cidr
                .clone()
                .map_or(Masquerade::None, Masquerade::OffCluster),
            _ if f.flags & flags::EXTERNAL_LOCAL != 0 => Masquerade::None,
            _ => Masquerade::All,
        };
        let state = FrontendState {
            service: snapshot.service_name(f.service_id).map(str::to_owned),
            kind,
            endpoints,
            policy_local: local,
            internal_endpoints,
            affinity_timeout_s: (f.affinity_timeout_s != 0).then_some(f.affinity_timeout_s),
            source_ranges: (f.flags & flags::SOURCE_RANGES != 0)
                .then(|| sorted(&snapshot.source_ranges_of(f.service_id))),
            masquerade,
            hairpin: true,
            addresses: None,
        };
        let id = FrontendId {
            class,
            address: (class != Class::NodePort).then(|| key.ip()),
            port: key.port_host(),
            protocol,
        };
        if class == Class::NodePort {
            node_ports.entry(id).or_default().push((key.ip(), state));
        } else {
            view.frontends.insert(id, state);
        }
    }
    for (id, mut per_address) in node_ports {
        per_address.sort_by_key(|(a, _)| *a);
        let (first_addr, first) = per_address[0].clone();
        let disagree: Vec<String> = per_address[1..]
            .iter()
            .filter(|(_, s)| s != &first)
            .map(|(a, _)| a.to_string())
            .collect();
        if !disagree.is_empty() {
            view.problems.push(format!(
                "NodePort {id}: the frontends on {} differ from the one on {first_addr}",
                disagree.join(", ")
            ));
        }
        let addresses: BTreeSet<String> = per_address.iter().map(|(a, _)| a.to_string()).collect();
        view.frontends.insert(
            id,
            FrontendState {
                addresses: Some(addresses.into_iter().collect()),
                ..first
            },
        );
    }
    view
}

/// The frontend's backends in slot order, sorted, each with an equal share.
fn backends(snapshot: &Snapshot, f: &Frontend) -> (Vec<Endpoint>, Vec<String>) {
    let mut problems = Vec::new();
    let mut shares: BTreeMap<(Ipv4Addr, u16), f64> = BTreeMap::new();
    let n = f64::from(f.backend_count);
    for slot in 1..=u32::from(f.backend_count) {
        let key = BackendSlotKey {
            service_id: f.service_id,
            slot,
        };
        match snapshot
            .slots
            .get(&key)
            .and_then(|id| snapshot.backends.get(id))
        {
            Some(b) => *shares.entry((b.ip(), b.port_host())).or_default() += 1.0 / n,
            None => problems.push(format!("slot {slot} has no backend")),
        }
    }
    (endpoints_of(shares), problems)
}

fn frontend_label(k: &FrontendKey) -> String {
    crate::ctl::format::endpoint(k.addr, k.port, Some(k.proto))
}
