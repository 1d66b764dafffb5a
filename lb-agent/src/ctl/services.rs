//! `lbctl services`: a kubectl-like view of each service, its frontends and its backends
//! with their traffic.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use super::{
    dump::affinity_label,
    format::{backend_flags, frontend_flags, human_bytes, joined, protocol_name, scope_name},
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
    pub services: Vec<ServiceView>,
    pub unavailable: Vec<UnavailableRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    pub id: u32,
    /// `namespace/name:port`; `None` when the agent recorded no name.
    pub name: Option<String>,
    pub frontends: Vec<FrontendView>,
    /// In slot order.
    pub backends: Vec<BackendView>,
    /// LB_SRC_RANGES under this id (`address/prefix`); only meaningful when a frontend
    /// has the `SourceRanges` flag, and then empty means nobody is admitted.
    pub source_ranges: Vec<String>,
    /// What is inconsistent in the maps for this service (a slot missing, a slot pointing at
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
    pub flags: Vec<&'static str>,
    pub affinity_timeout_s: u32,
    pub backend_count: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub slot: u32,
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub flags: Vec<&'static str>,
    /// `None` when LB_BE_STATS is unavailable.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// Every service that has a frontend, by name (unnamed ones last, by id).
pub fn view(snapshot: &Snapshot) -> ServicesView {
    let mut by_service: BTreeMap<u32, Vec<FrontendView>> = BTreeMap::new();
    let mut frontends: Vec<_> = snapshot.frontends.iter().collect();
    frontends.sort_by_key(|(k, _)| (k.ip(), k.port_host(), k.proto, k.scope));
    for (k, f) in frontends {
        by_service
            .entry(f.service_id)
            .or_default()
            .push(FrontendView {
                address: k.ip(),
                port: k.port_host(),
                protocol: protocol_name(k.proto),
                scope: scope_name(k.scope),
                flags: frontend_flags(f.flags),
                affinity_timeout_s: f.affinity_timeout_s,
                backend_count: f.backend_count,
            });
    }
    let mut services: Vec<ServiceView> = by_service
        .into_iter()
        .map(|(id, frontends)| {
            let (backends, problems) = backends_of(snapshot, id, &frontends);
            ServiceView {
                id,
                name: snapshot.service_name(id).map(str::to_owned),
                source_ranges: snapshot.source_ranges_of(id),
                frontends,
                backends,
                problems,
            }
        })
        .collect();
    services
        .sort_by(|a, b| (a.name.is_none(), &a.name, a.id).cmp(&(b.name.is_none(), &b.name, b.id)));
    ServicesView {
        services,
        unavailable: snapshot.unavailable_records(&MAPS),
    }
}

/// The backends in slots 1..=n, n being the largest count among the service's frontends
/// (they agree outside an update).
fn backends_of(
    snapshot: &Snapshot,
    service_id: u32,
    frontends: &[FrontendView],
) -> (Vec<BackendView>, Vec<String>) {
    let count = frontends.iter().map(|f| f.backend_count).max().unwrap_or(0);
    let mut backends = Vec::new();
    let mut problems = Vec::new();
    if frontends.iter().any(|f| f.backend_count != count) {
        problems.push(format!(
            "frontends disagree on the backend count ({})",
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
            problems.push(format!("slot {slot} is missing from LB_SLOTS"));
            continue;
        };
        let Some(b) = snapshot.backends.get(&id) else {
            problems.push(format!(
                "slot {slot} points at backend {id}, which LB_BACKENDS does not hold"
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
            flags: backend_flags(b.flags),
            packets: stats.map(|s| s.packets),
            bytes: stats.map(|s| s.bytes),
        });
    }
    (backends, problems)
}

/// One block per service:
///
/// ```text
/// default/echo:http  (service 1)
///   Frontends:
///     ADDRESS            SCOPE     TYPE       AFFINITY
///     10.96.0.10:80/TCP  external  ClusterIP  -
///   Backends:
///     SLOT  ID  ADDRESS              FLAGS  PACKETS  BYTES
///     1     1   10.244.1.2:8080/TCP  local  12       1.5KiB
/// ```
pub fn render(view: &ServicesView) -> String {
    let mut blocks = Vec::new();
    for s in &view.services {
        let mut out = match &s.name {
            Some(name) => format!("{name}  (service {})\n", s.id),
            None => format!("svc#{}  (no name recorded)\n", s.id),
        };
        out.push_str("  Frontends:\n");
        let mut t = Table::new(&["ADDRESS", "SCOPE", "TYPE", "AFFINITY"]);
        for f in &s.frontends {
            t.row(vec![
                format!("{}:{}/{}", f.address, f.port, f.protocol),
                f.scope.clone(),
                joined(&f.flags),
                affinity_label(f.affinity_timeout_s),
            ]);
        }
        out.push_str(&t.indented(4));
        let restricted = s
            .frontends
            .iter()
            .any(|f| f.flags.contains(&"SourceRanges"));
        if restricted || !s.source_ranges.is_empty() {
            if s.source_ranges.is_empty() {
                out.push_str("  Source ranges: none (no client admitted)\n");
            } else {
                out.push_str(&format!(
                    "  Source ranges: {}\n",
                    s.source_ranges.join(", ")
                ));
            }
        }
        if s.backends.is_empty() {
            out.push_str("  Backends: none\n");
        } else {
            out.push_str("  Backends:\n");
            let mut t = Table::new(&["SLOT", "ID", "ADDRESS", "FLAGS", "PACKETS", "BYTES"]);
            for b in &s.backends {
                t.row(vec![
                    b.slot.to_string(),
                    b.id.to_string(),
                    format!("{}:{}/{}", b.address, b.port, b.protocol),
                    joined(&b.flags),
                    b.packets.map_or_else(|| "-".into(), |p| p.to_string()),
                    b.bytes.map_or_else(|| "-".into(), human_bytes),
                ]);
            }
            out.push_str(&t.indented(4));
        }
        for p in &s.problems {
            out.push_str(&format!("  ! {p}\n"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{
        fixtures::{sample, DNS},
        snapshot::Unavailable,
    };

    #[test]
    fn each_service_shows_its_frontends_and_backends_with_traffic() {
        let expected = "\
default/echo:http  (service 1)
  Frontends:
    ADDRESS            SCOPE     TYPE       AFFINITY
    10.96.0.10:80/TCP  external  ClusterIP  -
  Backends:
    SLOT  ID  ADDRESS              FLAGS  PACKETS  BYTES
    1     1   10.244.1.2:8080/TCP  local  12       1.5KiB
    2     2   10.244.2.2:8080/TCP  -      0        0B

kube-system/dns:dns  (service 2)
  Frontends:
    ADDRESS            SCOPE     TYPE       AFFINITY
    10.96.0.53:53/UDP  external  ClusterIP  ClientIP 3h00m
  Backends:
    SLOT  ID  ADDRESS            FLAGS              PACKETS  BYTES
    1     3   10.244.1.3:53/UDP  local,terminating  2        140B
";
        assert_eq!(render(&view(&sample())), expected);
    }

    #[test]
    fn unnamed_services_and_broken_slots_are_shown_not_hidden() {
        let mut s = sample();
        s.service_names.remove(&DNS);
        s.backends.remove(&2);
        let v = view(&s);
        assert_eq!(v.services[1].name, None);
        assert_eq!(
            v.services[0].problems,
            ["slot 2 points at backend 2, which LB_BACKENDS does not hold"]
        );
        let out = render(&v);
        assert!(out.contains("svc#2  (no name recorded)"), "{out}");
        assert!(out.contains("  ! slot 2 points at backend 2"), "{out}");
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
        assert_eq!(v.services[0].backends[0].packets, None);
        let out = render(&v);
        assert!(
            out.contains("1     1   10.244.1.2:8080/TCP  local  -        -"),
            "{out}"
        );
        assert!(out.ends_with("note: LB_BE_STATS: not pinned\n"), "{out}");
    }

    #[test]
    fn json_lists_services_with_nested_frontends_and_backends() {
        let json = serde_json::to_value(view(&sample())).expect("json");
        assert_eq!(json["services"][0]["name"], "default/echo:http");
        assert_eq!(
            json["services"][0]["backends"][0],
            serde_json::json!({
                "slot": 1, "id": 1, "address": "10.244.1.2", "port": 8080, "protocol": "TCP",
                "flags": ["local"], "packets": 12, "bytes": 1536,
            })
        );
        assert_eq!(
            json["services"][1]["frontends"][0]["affinity_timeout_s"],
            10800
        );
        assert_eq!(json["unavailable"], serde_json::json!([]));
    }

    #[test]
    fn no_frontends_means_no_services() {
        let mut s = sample();
        s.frontends.clear();
        assert_eq!(render(&view(&s)), "No services.\n");
    }
}
