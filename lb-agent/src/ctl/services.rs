//! `lbctl services`: a kubectl-like view of each Service, by namespace/name and then port:
//! every frontend of the port as one row, and each distinct set of backends behind them once,
//! with the backends' traffic.
//!
//! The maps know frontends by service id (each frontend key has its own) and name each id
//! `namespace/name:port` in LB_SVC_NAMES; this view groups the ids back by that name. An
//! externalTrafficPolicy=Local LoadBalancer port on a node with three addresses has a dozen
//! frontends (the LB IP, a NodePort per node address and 127.0.0.1, the ClusterIP, and the
//! internal-scope twins), but usually one or two backend sets: all endpoints, and the local
//! ones.

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::{backend, frontend, BackendId};
use serde::Serialize;

use super::{
    dump::affinity_label,
    format::{backend_flags, human_bytes, joined, protocol_name, scope_name},
    map_id::MapId,
    snapshot::{Snapshot, UnavailableRecord},
    table::Table,
};

/// The maps the view reads.
pub const MAPS: [MapId; 6] = [
    MapId::ServiceNames,
    MapId::Frontends,
    MapId::Slots,
    MapId::Backends,
    MapId::BackendStats,
    MapId::SourceRanges,
];

/// `lbctl services -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicesView {
    /// By `namespace/name`; ids without a recorded name last.
    pub services: Vec<ServiceView>,
    pub unavailable: Vec<UnavailableRecord>,
}

/// One Service: its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    /// `namespace/name`; `None` for the service ids the agent recorded no name for (each
    /// of them is a port of its own, `svc#<id>`).
    pub service: Option<String>,
    pub ports: Vec<PortView>,
}

/// One service port: its frontends and the distinct backend sets behind them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortView {
    /// The port's name, or its number when unnamed; `svc#<id>` without a recorded name.
    pub port: String,
    /// `namespace/name:port`, as LB_SVC_NAMES holds it.
    pub name: Option<String>,
    /// By (address, port, protocol, scope).
    pub frontends: Vec<FrontendView>,
    /// Numbered from 1 in the order the frontends first use them.
    pub backend_sets: Vec<BackendSet>,
    /// What is inconsistent in the maps for this port (a slot missing, a slot pointing at
    /// a backend that does not exist): normal for an instant during an update, a fault if
    /// it stays.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// `external` or `internal`.
    pub scope: String,
    /// The service type this address comes from: `ClusterIP`, `NodePort`, `ExternalIP`,
    /// `LoadBalancer`.
    #[serde(rename = "type")]
    pub kind: Vec<&'static str>,
    /// The policy flags: `ExternalLocal`, `InternalLocal`, `SourceRanges`.
    pub flags: Vec<&'static str>,
    pub affinity_timeout_s: u32,
    /// The id its slots and counters are kept under.
    pub service_id: u32,
    pub backend_count: u16,
    /// The number of its set in [`PortView::backend_sets`].
    pub backend_set: usize,
    /// LB_SRC_RANGES under its service id (`address/prefix`); only meaningful with the
    /// `SourceRanges` flag, and then empty means nobody is admitted.
    pub source_ranges: Vec<String>,
}

/// Backends in slot order, shared by one or more frontends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendSet {
    pub set: usize,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub slot: u32,
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// `ready`, or `terminating` (serving only because nothing is ready).
    pub state: &'static str,
    /// `local` (on this node), `host` (this node's own address), `terminating`.
    pub flags: Vec<&'static str>,
    /// `None` when LB_BE_STATS is unavailable. Counted per backend, so a backend that two
    /// services share shows the traffic of both.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// What `--service` selects: `namespace/name` (every port) or `namespace/name:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFilter {
    pub service: String,
    pub port: Option<String>,
}

impl std::str::FromStr for ServiceFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, port) = match s.rsplit_once(':') {
            Some((service, port)) => (service, Some(port.to_owned())),
            None => (s, None),
        };
        match service.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    service: service.to_owned(),
                    port: port.filter(|p| !p.is_empty()),
                })
            }
            _ => Err(format!(
                "{s:?} is not namespace/name or namespace/name:port"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServicesError {
    #[error("no service {0} in LB_SVC_NAMES (names are namespace/name or namespace/name:port; `lbctl services --skipped` shows what the agent left out)")]
    Unknown(String),
}

impl ServicesView {
    /// Keeps only what `filter` selects; an error if that is nothing.
    pub fn filtered(mut self, filter: &ServiceFilter) -> Result<Self, ServicesError> {
        self.services
            .retain(|s| s.service.as_deref() == Some(filter.service.as_str()));
        if let Some(port) = &filter.port {
            for s in &mut self.services {
                s.ports.retain(|p| &p.port == port);
            }
            self.services.retain(|s| !s.ports.is_empty());
        }
        if self.services.is_empty() {
            let mut wanted = filter.service.clone();
            if let Some(port) = &filter.port {
                wanted.push_str(&format!(":{port}"));
            }
            return Err(ServicesError::Unknown(wanted));
        }
        Ok(self)
    }
}

/// Every service that has a frontend, by name, then port.
pub fn view(snapshot: &Snapshot) -> ServicesView {
    // Service id -> its frontends' keys and values, in key order.
    let mut by_id: BTreeMap<u32, Vec<FrontendView>> = BTreeMap::new();
    for (k, f) in &snapshot.frontends {
        by_id.entry(f.service_id).or_default().push(FrontendView {
            address: k.ip(),
            port: k.port_host(),
            protocol: protocol_name(k.proto),
            scope: scope_name(k.scope),
            kind: frontend::flags::names(f.flags & KIND_FLAGS).collect(),
            flags: frontend::flags::names(f.flags & !KIND_FLAGS).collect(),
            affinity_timeout_s: f.affinity_timeout_s,
            service_id: f.service_id,
            backend_count: f.backend_count,
            backend_set: 0,
            source_ranges: snapshot.source_ranges_of(f.service_id),
        });
    }
    // (service, port) -> the ids named so; unnamed ids are ports of their own.
    let mut ports: BTreeMap<(Option<String>, String), Vec<u32>> = BTreeMap::new();
    for &id in by_id.keys() {
        let key = match snapshot.service_name(id) {
            Some(name) => match name.rsplit_once(':') {
                Some((service, port)) => (Some(service.to_owned()), port.to_owned()),
                None => (Some(name.to_owned()), String::new()),
            },
            None => (None, format!("svc#{id}")),
        };
        ports.entry(key).or_default().push(id);
    }
    let mut services: Vec<ServiceView> = Vec::new();
    for ((service, port), ids) in ports {
        let name = ids.first().and_then(|id| snapshot.service_name(*id));
        let port = port_view(snapshot, port, name.map(str::to_owned), &ids, &by_id);
        match services.last_mut() {
            Some(s) if s.service.is_some() && s.service == service => s.ports.push(port),
            _ => services.push(ServiceView {
                service,
                ports: vec![port],
            }),
        }
    }
    // Named first (BTreeMap puts None first).
    services.sort_by_key(|s| s.service.is_none());
    ServicesView {
        services,
        unavailable: snapshot.unavailable_records(&MAPS),
    }
}

/// The type bits of [`lb_common::frontend::flags`]; the others are policies.
const KIND_FLAGS: u16 = frontend::flags::CLUSTER_IP
    | frontend::flags::NODE_PORT
    | frontend::flags::EXTERNAL_IP
    | frontend::flags::LOAD_BALANCER;

fn port_view(
    snapshot: &Snapshot,
    port: String,
    name: Option<String>,
    ids: &[u32],
    by_id: &BTreeMap<u32, Vec<FrontendView>>,
) -> PortView {
    let mut frontends: Vec<FrontendView> = ids
        .iter()
        .flat_map(|id| by_id.get(id).into_iter().flatten().cloned())
        .collect();
    frontends.sort_by(|a, b| {
        (a.address, a.port, &a.protocol, &a.scope).cmp(&(b.address, b.port, &b.protocol, &b.scope))
    });
    let mut problems = Vec::new();
    // Backend ids in slot order -> set number.
    let mut sets: Vec<(Vec<BackendId>, BackendSet)> = Vec::new();
    let mut set_of_id: BTreeMap<u32, usize> = BTreeMap::new();
    for f in &mut frontends {
        let set = *set_of_id.entry(f.service_id).or_insert_with(|| {
            let of_id: Vec<&FrontendView> = by_id[&f.service_id].iter().collect();
            let (backends, mut p) = backends_of(snapshot, f.service_id, &of_id);
            problems.append(&mut p);
            let key: Vec<BackendId> = backends.iter().map(|b| b.id).collect();
            match sets.iter().find(|(k, _)| *k == key) {
                Some((_, s)) => s.set,
                None => {
                    let set = sets.len() + 1;
                    sets.push((key, BackendSet { set, backends }));
                    set
                }
            }
        });
        f.backend_set = set;
    }
    PortView {
        port,
        name,
        frontends,
        backend_sets: sets.into_iter().map(|(_, s)| s).collect(),
        problems,
    }
}

/// The backends in slots 1..=n of `service_id`, n being the largest count among its
/// frontends (they agree outside an update), and what is wrong with them.
fn backends_of(
    snapshot: &Snapshot,
    service_id: u32,
    frontends: &[&FrontendView],
) -> (Vec<BackendView>, Vec<String>) {
    let count = frontends.iter().map(|f| f.backend_count).max().unwrap_or(0);
    let mut backends = Vec::new();
    let mut problems = Vec::new();
    if frontends.iter().any(|f| f.backend_count != count) {
        problems.push(format!(
            "service id {service_id}: frontends disagree on the backend count ({})",
            frontends
                .iter()
                .map(|f| f.backend_count.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for slot in 1..=u32::from(count) {
        let key = lb_common::BackendSlotKey { service_id, slot };
        let Some(&id) = snapshot.slots.get(&key) else {
            problems.push(format!(
                "service id {service_id}: slot {slot} is missing from LB_SLOTS"
            ));
            continue;
        };
        let Some(b) = snapshot.backends.get(&id) else {
            problems.push(format!(
                "service id {service_id}: slot {slot} points at backend {id}, which LB_BACKENDS does not hold"
            ));
            continue;
        };
        let stats = snapshot.stats(id);
        backends.push(BackendView {
            slot,
            id,
            address: b.ip(),
            port: b.port_host(),
            protocol: protocol_name(b.proto),
            state: if b.flags & backend::flags::TERMINATING != 0 {
                "terminating"
            } else {
                "ready"
            },
            flags: backend_flags(b.flags & !backend::flags::TERMINATING),
            packets: stats.map(|s| s.packets),
            bytes: stats.map(|s| s.bytes),
        });
    }
    (backends, problems)
}

/// One block per service, one sub-block per port:
///
/// ```text
/// default/echo
///   port http
///     FRONTEND           SCOPE     TYPE       FLAGS  AFFINITY  BACKENDS
///     10.96.0.10:80/TCP  external  ClusterIP  -      -         #1
///     Backends #1:
///       ADDRESS              STATE  FLAGS  PACKETS  BYTES
///       10.244.1.2:8080/TCP  ready  local  12       1.5KiB
/// ```
///
/// `wide` adds each frontend's service id and backend count, and each backend's slot and
/// id.
pub fn render(view: &ServicesView, wide: bool) -> String {
    let mut blocks = Vec::new();
    for s in &view.services {
        let mut out = match &s.service {
            Some(name) => format!("{name}\n"),
            None => "(no name recorded)\n".to_owned(),
        };
        for p in &s.ports {
            out.push_str(&format!("  port {}\n", p.port));
            out.push_str(&frontends_table(&p.frontends, wide).indented(4));
            out.push_str(&source_ranges_line(&p.frontends));
            for set in &p.backend_sets {
                if set.backends.is_empty() {
                    out.push_str(&format!("    Backends #{}: none\n", set.set));
                } else {
                    out.push_str(&format!("    Backends #{}:\n", set.set));
                    out.push_str(&backends_table(&set.backends, wide).indented(6));
                }
            }
            for problem in &p.problems {
                out.push_str(&format!("    ! {problem}\n"));
            }
        }
        blocks.push(out);
    }
    let mut out = if blocks.is_empty() {
        "No services.\n".to_owned()
    } else {
        blocks.join("\n")
    };
    for u in &view.unavailable {
        out.push_str(&format!("note: {}: {}\n", u.map, u.reason));
    }
    out
}

fn frontends_table(frontends: &[FrontendView], wide: bool) -> Table {
    let mut headers = vec!["FRONTEND", "SCOPE", "TYPE", "FLAGS", "AFFINITY", "BACKENDS"];
    if wide {
        headers.extend(["COUNT", "SERVICE-ID"]);
    }
    let mut t = Table::new(&headers);
    for f in frontends {
        let mut row = vec![
            format!("{}:{}/{}", f.address, f.port, f.protocol),
            f.scope.clone(),
            joined(&f.kind),
            joined(&f.flags),
            affinity_label(f.affinity_timeout_s),
            format!("#{}", f.backend_set),
        ];
        if wide {
            row.extend([f.backend_count.to_string(), f.service_id.to_string()]);
        }
        t.row(row);
    }
    t
}

/// The admitted prefixes, when a frontend restricts its clients; each distinct list once.
fn source_ranges_line(frontends: &[FrontendView]) -> String {
    let mut lists: Vec<&Vec<String>> = Vec::new();
    for f in frontends {
        let restricted = f.flags.contains(&"SourceRanges") || !f.source_ranges.is_empty();
        if restricted && !lists.contains(&&f.source_ranges) {
            lists.push(&f.source_ranges);
        }
    }
    lists
        .into_iter()
        .map(|ranges| match ranges.as_slice() {
            [] => "    Source ranges: none (no client admitted)\n".to_owned(),
            r => format!("    Source ranges: {}\n", r.join(", ")),
        })
        .collect()
}

fn backends_table(backends: &[BackendView], wide: bool) -> Table {
    let mut headers = vec!["ADDRESS", "STATE", "FLAGS", "PACKETS", "BYTES"];
    if wide {
        headers.splice(0..0, ["SLOT", "ID"]);
    }
    let mut t = Table::new(&headers);
    for b in backends {
        let mut row = vec![
            format!("{}:{}/{}", b.address, b.port, b.protocol),
            b.state.to_owned(),
            joined(&b.flags),
            b.packets.map_or_else(|| "-".into(), |p| p.to_string()),
            b.bytes.map_or_else(|| "-".into(), human_bytes),
        ];
        if wide {
            row.splice(0..0, [b.slot.to_string(), b.id.to_string()]);
        }
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{
        fixtures::{sample, with_local_load_balancer, DNS},
        snapshot::Unavailable,
    };

    #[test]
    fn each_service_shows_its_ports_frontends_and_backends_with_traffic() {
        let expected = "\
default/echo
  port http
    FRONTEND           SCOPE     TYPE       FLAGS  AFFINITY  BACKENDS
    10.96.0.10:80/TCP  external  ClusterIP  -      -         #1
    Backends #1:
      ADDRESS              STATE  FLAGS  PACKETS  BYTES
      10.244.1.2:8080/TCP  ready  local  12       1.5KiB
      10.244.2.2:8080/TCP  ready  -      0        0B

kube-system/dns
  port dns
    FRONTEND           SCOPE     TYPE       FLAGS  AFFINITY        BACKENDS
    10.96.0.53:53/UDP  external  ClusterIP  -      ClientIP 3h00m  #1
    Backends #1:
      ADDRESS            STATE        FLAGS  PACKETS  BYTES
      10.244.1.3:53/UDP  terminating  local  2        140B
";
        assert_eq!(render(&view(&sample()), false), expected);
    }

    #[test]
    fn a_local_load_balancer_port_is_one_group_with_one_backend_set() {
        let s = with_local_load_balancer(sample());
        let v = view(&s);
        let web: Vec<_> = v
            .services
            .iter()
            .filter(|s| s.service.as_deref() == Some("shop/web"))
            .collect();
        assert_eq!(web.len(), 1, "{v:#?}");
        let [port] = web[0].ports.as_slice() else {
            panic!("one port expected: {:#?}", web[0]);
        };
        assert_eq!(port.port, "http");
        // LB IP, a NodePort per node address and 127.0.0.1, the ClusterIP, and the
        // internal twins of the external ones: eleven service ids, one backend set.
        assert_eq!(port.frontends.len(), 11, "{port:#?}");
        assert_eq!(port.backend_sets.len(), 1, "{port:#?}");
        assert_eq!(port.backend_sets[0].backends.len(), 1);
        assert!(port.frontends.iter().all(|f| f.backend_set == 1));
        assert!(port.problems.is_empty(), "{:?}", port.problems);
        let out = render(
            &v.filtered(&"shop/web".parse().expect("filter"))
                .expect("shop/web"),
            false,
        );
        assert_eq!(out.matches("shop/web").count(), 1, "{out}");
        assert_eq!(out.matches("Backends #").count(), 1, "{out}");
        assert!(
            out.contains(
                "    172.18.255.10:80/TCP  external  LoadBalancer  ExternalLocal,SourceRanges  -         #1\n"
            ),
            "{out}"
        );
        assert!(out.contains("    Source ranges: 172.18.0.0/16\n"), "{out}");
        assert!(
            out.contains("      10.244.1.7:8080/TCP  ready  local  0        0B\n"),
            "{out}"
        );
    }

    #[test]
    fn frontends_with_other_backends_get_a_set_of_their_own() {
        let mut s = with_local_load_balancer(sample());
        // A remote endpoint appears: the internal twins and the ClusterIP now have two
        // backends, the external (Local) frontends still have the local one.
        let remote = crate::ctl::fixtures::backend([10, 244, 2, 7], 8080, lb_common::proto::TCP, 0);
        s.backends.insert(21, remote);
        for (_, f) in s.frontends.iter_mut() {
            if f.service_id >= 100 && f.flags & frontend::flags::EXTERNAL_LOCAL == 0 {
                f.backend_count = 2;
                s.slots
                    .insert(crate::ctl::fixtures::slot(f.service_id, 2), 21);
            }
        }
        let v = view(&s)
            .filtered(&"shop/web".parse().expect("filter"))
            .expect("shop/web");
        let port = &v.services[0].ports[0];
        assert_eq!(port.backend_sets.len(), 2, "{port:#?}");
        let sizes: Vec<usize> = port.backend_sets.iter().map(|s| s.backends.len()).collect();
        // Numbered in frontend order: 10.0.0.3:30080 (external, Local) comes first.
        assert_eq!(sizes, [1, 2]);
        for f in &port.frontends {
            let local = f.flags.contains(&"ExternalLocal");
            assert_eq!(f.backend_set, if local { 1 } else { 2 }, "{f:?}");
        }
    }

    #[test]
    fn the_service_filter_selects_a_service_or_one_port() {
        let s = with_local_load_balancer(sample());
        let only = |f: &str| view(&s).filtered(&f.parse().expect("filter"));
        let web = only("shop/web").expect("shop/web");
        assert_eq!(web.services.len(), 1);
        assert_eq!(web.services[0].service.as_deref(), Some("shop/web"));
        let dns = only("kube-system/dns:dns").expect("dns");
        assert_eq!(dns.services[0].ports[0].port, "dns");
        assert_eq!(
            only("kube-system/dns:other").unwrap_err(),
            ServicesError::Unknown("kube-system/dns:other".into())
        );
        // A name is matched whole, never as a prefix.
        assert!(only("shop/we").is_err());
        assert!("web".parse::<ServiceFilter>().is_err());
        assert!("a/b/c".parse::<ServiceFilter>().is_err());
    }

    #[test]
    fn wide_adds_ids_slots_and_counts() {
        let out = render(&view(&sample()), true);
        assert!(
            out.contains(
                "    FRONTEND           SCOPE     TYPE       FLAGS  AFFINITY  BACKENDS  COUNT  SERVICE-ID\n    10.96.0.10:80/TCP  external  ClusterIP  -      -         #1        2      1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("      SLOT  ID  ADDRESS              STATE  FLAGS  PACKETS  BYTES\n      1     1   10.244.1.2:8080/TCP  ready  local  12       1.5KiB\n"),
            "{out}"
        );
    }

    #[test]
    fn unnamed_services_and_broken_slots_are_shown_not_hidden() {
        let mut s = sample();
        s.service_names.remove(&DNS);
        s.backends.remove(&2);
        let v = view(&s);
        assert_eq!(v.services[1].service, None);
        assert_eq!(v.services[1].ports[0].port, "svc#2");
        assert_eq!(
            v.services[0].ports[0].problems,
            ["service id 1: slot 2 points at backend 2, which LB_BACKENDS does not hold"]
        );
        let out = render(&v, false);
        assert!(out.contains("(no name recorded)\n  port svc#2\n"), "{out}");
        assert!(
            out.contains("    ! service id 1: slot 2 points at backend 2"),
            "{out}"
        );
    }

    #[test]
    fn missing_stats_show_as_unknown_and_are_named() {
        let mut s = sample();
        s.backend_stats.clear();
        s.unavailable.push(Unavailable {
            map: MapId::BackendStats,
            reason: "not pinned".into(),
        });
        let v = view(&s);
        assert_eq!(
            v.services[0].ports[0].backend_sets[0].backends[0].packets,
            None
        );
        let out = render(&v, false);
        assert!(
            out.contains("      10.244.1.2:8080/TCP  ready  local  -        -\n"),
            "{out}"
        );
        assert!(out.ends_with("note: LB_BE_STATS: not pinned\n"), "{out}");
    }

    #[test]
    fn json_nests_ports_frontends_and_backend_sets() {
        let json = serde_json::to_value(view(&sample())).expect("json");
        let echo = &json["services"][0];
        assert_eq!(echo["service"], "default/echo");
        assert_eq!(echo["ports"][0]["name"], "default/echo:http");
        assert_eq!(
            echo["ports"][0]["frontends"][0],
            serde_json::json!({
                "address": "10.96.0.10", "port": 80, "protocol": "TCP", "scope": "external",
                "type": ["ClusterIP"], "flags": [], "affinity_timeout_s": 0, "service_id": 1,
                "backend_count": 2, "backend_set": 1, "source_ranges": [],
            })
        );
        assert_eq!(
            echo["ports"][0]["backend_sets"][0]["backends"][0],
            serde_json::json!({
                "slot": 1, "id": 1, "address": "10.244.1.2", "port": 8080, "protocol": "TCP",
                "state": "ready", "flags": ["local"], "packets": 12, "bytes": 1536,
            })
        );
        assert_eq!(
            json["services"][1]["ports"][0]["frontends"][0]["affinity_timeout_s"],
            10800
        );
        assert_eq!(json["unavailable"], serde_json::json!([]));
    }

    #[test]
    fn no_frontends_means_no_services() {
        let mut s = sample();
        s.frontends.clear();
        assert_eq!(render(&view(&s), false), "No services.\n");
    }
}
