//! `lbctl maps dump`: every map decoded, one section per map, as tables or JSON.

use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_common::{
    addr_from_be,
    conntrack::{ct_flags, dir},
    reason::Kind,
    Reason,
};
use serde::Serialize;

use super::{
    conntrack::forward_key,
    format::{
        backend_flags, endpoint, frontend_flags, human_bytes, human_seconds, joined, protocol_name,
        scope_name, seen_flags,
    },
    map_id::MapId,
    snapshot::{Snapshot, UnavailableRecord},
    table::Table,
};

/// A part of the dump. Backend stats are shown with the backends they count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Services,
    Frontends,
    Slots,
    Backends,
    Conntrack,
    Affinity,
    Counters,
    Config,
    SourceRanges,
    SockRev,
}

impl Section {
    pub const ALL: [Section; 10] = [
        Section::Services,
        Section::Frontends,
        Section::Slots,
        Section::Backends,
        Section::Conntrack,
        Section::Affinity,
        Section::SourceRanges,
        Section::SockRev,
        Section::Counters,
        Section::Config,
    ];

    /// The section that shows `map`.
    pub fn of(map: MapId) -> Section {
        match map {
            MapId::ServiceNames => Section::Services,
            MapId::Frontends => Section::Frontends,
            MapId::Slots => Section::Slots,
            MapId::Backends | MapId::BackendStats => Section::Backends,
            MapId::Conntrack => Section::Conntrack,
            MapId::Affinity => Section::Affinity,
            MapId::Counters => Section::Counters,
            MapId::Config => Section::Config,
            MapId::SourceRanges => Section::SourceRanges,
            MapId::SockRev => Section::SockRev,
        }
    }

    /// The map the section decodes, without which it has nothing to show.
    fn primary(self) -> MapId {
        match self {
            Section::Services => MapId::ServiceNames,
            Section::Frontends => MapId::Frontends,
            Section::Slots => MapId::Slots,
            Section::Backends => MapId::Backends,
            Section::Conntrack => MapId::Conntrack,
            Section::Affinity => MapId::Affinity,
            Section::Counters => MapId::Counters,
            Section::Config => MapId::Config,
            Section::SourceRanges => MapId::SourceRanges,
            Section::SockRev => MapId::SockRev,
        }
    }

    /// Every map the section reads: its own and those it takes names and details from.
    pub fn maps(self) -> &'static [MapId] {
        match self {
            Section::Services => &[MapId::ServiceNames, MapId::Frontends],
            Section::Frontends => &[MapId::Frontends, MapId::ServiceNames],
            Section::Slots => &[MapId::Slots, MapId::Backends],
            Section::Backends => &[MapId::Backends, MapId::BackendStats],
            // The config gives the timeouts that say whether a flow has expired.
            Section::Conntrack => &[MapId::Conntrack, MapId::ServiceNames, MapId::Config],
            Section::Affinity => &[
                MapId::Affinity,
                MapId::ServiceNames,
                MapId::Frontends,
                MapId::Backends,
            ],
            Section::Counters => &[MapId::Counters],
            Section::Config => &[MapId::Config],
            Section::SourceRanges => &[MapId::SourceRanges, MapId::ServiceNames],
            Section::SockRev => &[MapId::SockRev],
        }
    }
}

/// The maps `sections` need, without duplicates.
pub fn maps_for(sections: &[Section]) -> Vec<MapId> {
    let set: BTreeSet<MapId> = sections
        .iter()
        .flat_map(|s| s.maps().iter().copied())
        .collect();
    set.into_iter().collect()
}

/// `lbctl maps dump -o json`. A section not asked for (`--map`) is left out; one whose map
/// could not be read is empty (`null` for config) and its map is listed in `unavailable`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dump {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontends: Option<Vec<FrontendRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<SlotRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Vec<ConntrackRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<AffinityRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Vec<CounterRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Option<ConfigRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<Vec<SourceRangeRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_rev: Option<Vec<SockRevRecord>>,
    pub unavailable: Vec<UnavailableRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceRangeRecord {
    pub service_id: u32,
    pub service: Option<String>,
    /// `address/prefix`.
    pub range: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SockRevRecord {
    /// The socket's cookie.
    pub cookie: u64,
    /// The backend the socket was sent to, `address:port`.
    pub backend: String,
    /// The service address it shows as its peer, `address:port`.
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    pub id: u32,
    /// `namespace/name:port`; `None` when the agent recorded no name for the id.
    pub name: Option<String>,
    /// How many frontends point at the service.
    pub frontends: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendRecord {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// [`lb_common::frontend::scope`]: `external` or `internal`.
    pub scope: String,
    pub service_id: u32,
    pub service: Option<String>,
    pub backend_count: u16,
    /// `ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer`.
    pub flags: Vec<&'static str>,
    /// 0: no session affinity.
    pub affinity_timeout_s: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotRecord {
    pub service_id: u32,
    pub slot: u32,
    pub backend_id: u32,
    /// False when the slot points at a backend LB_BACKENDS does not hold.
    pub backend_exists: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRecord {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// `local`, `terminating`.
    pub flags: Vec<&'static str>,
    /// Both directions since the id was allocated; `None` when LB_BE_STATS is unavailable.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackRecord {
    /// `forward` (client -> service) or `reply` (backend -> client).
    pub direction: &'static str,
    /// The tuple the entry is keyed by, as packets carry it.
    pub source: Ipv4Addr,
    pub source_port: u16,
    pub destination: Ipv4Addr,
    pub destination_port: u16,
    pub protocol: String,
    /// Forward: the backend the destination becomes. Reply: the service address the
    /// source becomes.
    pub nat_address: Ipv4Addr,
    pub nat_port: u16,
    /// `snat`, `north-south`, `hairpin`.
    pub flags: Vec<&'static str>,
    /// With `snat`. Forward: the source the packet gets. Reply: the client's own address,
    /// restored as the reply's destination.
    pub snat_address: Option<Ipv4Addr>,
    pub snat_port: Option<u16>,
    pub service_id: u32,
    pub service: Option<String>,
    pub backend_id: u32,
    /// The flow's state, from its forward entry; `None` if that entry is gone.
    pub state: Option<&'static str>,
    pub expired: Option<bool>,
    pub seen: Vec<&'static str>,
    pub age_s: u64,
    pub idle_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRecord {
    pub service_id: u32,
    pub service: Option<String>,
    pub client: Ipv4Addr,
    pub backend_id: u32,
    /// `address:port/PROTO`; `None` if the backend is gone.
    pub backend: Option<String>,
    pub slot: u32,
    pub idle_s: u64,
    /// The service's affinity timeout; `None` if no frontend serves the service any more.
    pub timeout_s: Option<u32>,
    /// Seconds of stickiness left; 0 once expired.
    pub remaining_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRecord {
    /// The counter's index in LB_COUNTERS ([`Reason`] as a number).
    pub index: u32,
    /// [`Reason::name`], or `reason_<index>` for one this lbctl does not know.
    pub reason: String,
    /// `translated`, `passed`, `dropped`, or `unknown`.
    pub kind: &'static str,
    /// Summed over CPUs.
    pub packets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigRecord {
    pub hash_seed: u32,
    /// The masquerade source; `None`: masquerading off.
    pub node_addr: Option<Ipv4Addr>,
    /// `address/prefix`; `None`: unknown.
    pub cluster_cidr: Option<String>,
    /// `min-max`.
    pub snat_port_range: String,
    /// The conntrack timeouts in force, per state, in seconds.
    pub ct_timeouts_s: TimeoutsRecord,
}

/// Conntrack timeouts in seconds, the defaults filled in where the agent set none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeoutsRecord {
    pub syn_sent: u64,
    pub established: u64,
    pub half_closed: u64,
    pub closing: u64,
    pub reset: u64,
    pub udp: u64,
}

impl TimeoutsRecord {
    pub fn new(t: &lb_common::CtTimeouts) -> Self {
        use lb_common::CtState::*;
        let s = |state| t.of(state) / 1_000_000_000;
        Self {
            syn_sent: s(SynSent),
            established: s(Established),
            half_closed: s(HalfClosed),
            closing: s(Closing),
            reset: s(Reset),
            udp: s(Udp),
        }
    }
}

impl ConfigRecord {
    pub fn new(c: &lb_common::Config) -> Self {
        Self {
            hash_seed: c.hash_seed,
            node_addr: (c.node_addr != 0).then(|| addr_from_be(c.node_addr)),
            cluster_cidr: (c.cluster_cidr_mask != 0).then(|| {
                format!(
                    "{}/{}",
                    addr_from_be(c.cluster_cidr_addr),
                    u32::from_be(c.cluster_cidr_mask).count_ones()
                )
            }),
            snat_port_range: format!("{}-{}", c.snat_port_min, c.snat_port_max),
            ct_timeouts_s: TimeoutsRecord::new(&c.ct_timeouts),
        }
    }
}

pub fn kind_name(kind: Kind) -> &'static str {
    kind.name()
}

/// The JSON form of the selected sections.
pub fn dump(snapshot: &Snapshot, sections: &[Section], now_ns: u64) -> Dump {
    let want = |s: Section| sections.contains(&s);
    Dump {
        services: want(Section::Services).then(|| services(snapshot)),
        frontends: want(Section::Frontends).then(|| frontends(snapshot)),
        slots: want(Section::Slots).then(|| slots(snapshot)),
        backends: want(Section::Backends).then(|| backends(snapshot)),
        conntrack: want(Section::Conntrack).then(|| conntrack(snapshot, now_ns)),
        affinity: want(Section::Affinity).then(|| affinity(snapshot, now_ns)),
        counters: want(Section::Counters).then(|| counters(&snapshot.counters)),
        config: want(Section::Config).then(|| snapshot.config.as_ref().map(ConfigRecord::new)),
        source_ranges: want(Section::SourceRanges).then(|| source_ranges(snapshot)),
        sock_rev: want(Section::SockRev).then(|| sock_rev(snapshot)),
        unavailable: snapshot.unavailable_records(&maps_for(sections)),
    }
}

/// Every id that has a name or a frontend.
pub fn services(s: &Snapshot) -> Vec<ServiceRecord> {
    let ids: BTreeSet<u32> = s
        .service_names
        .keys()
        .copied()
        .chain(s.frontends.values().map(|f| f.service_id))
        .collect();
    ids.into_iter()
        .map(|id| ServiceRecord {
            id,
            name: s.service_name(id).map(str::to_owned),
            frontends: s.frontends.values().filter(|f| f.service_id == id).count(),
        })
        .collect()
}

pub fn frontends(s: &Snapshot) -> Vec<FrontendRecord> {
    let mut rows: Vec<_> = s.frontends.iter().collect();
    rows.sort_by_key(|(k, _)| (k.ip(), k.port_host(), k.proto, k.scope));
    rows.into_iter()
        .map(|(k, f)| FrontendRecord {
            address: k.ip(),
            port: k.port_host(),
            protocol: protocol_name(k.proto),
            scope: scope_name(k.scope),
            service_id: f.service_id,
            service: s.service_name(f.service_id).map(str::to_owned),
            backend_count: f.backend_count,
            flags: frontend_flags(f.flags),
            affinity_timeout_s: f.affinity_timeout_s,
        })
        .collect()
}

pub fn slots(s: &Snapshot) -> Vec<SlotRecord> {
    s.slots
        .iter()
        .map(|(k, id)| SlotRecord {
            service_id: k.service_id,
            slot: k.slot,
            backend_id: *id,
            backend_exists: s.backends.contains_key(id),
        })
        .collect()
}

pub fn backends(s: &Snapshot) -> Vec<BackendRecord> {
    s.backends
        .iter()
        .map(|(id, b)| {
            let stats = s.stats(*id);
            BackendRecord {
                id: *id,
                address: b.ip(),
                port: b.port_host(),
                protocol: protocol_name(b.proto),
                flags: backend_flags(b.flags),
                packets: stats.map(|st| st.packets),
                bytes: stats.map(|st| st.bytes),
            }
        })
        .collect()
}

/// Entries in flow order (forward, then its reply). A reply entry carries no state of its
/// own: it shows its flow's, from the forward entry.
pub fn conntrack(s: &Snapshot, now_ns: u64) -> Vec<ConntrackRecord> {
    let mut rows: Vec<_> = s.conntrack.iter().collect();
    rows.sort_by_key(|(k, e)| (forward_key(k, e), k.dir, **k));
    rows.into_iter()
        .map(|(k, e)| {
            let forward = forward_key(k, e).and_then(|fk| s.conntrack.get(&fk));
            ConntrackRecord {
                direction: match k.dir {
                    dir::FORWARD => "forward",
                    dir::REPLY => "reply",
                    _ => "unknown",
                },
                source: addr_from_be(k.saddr),
                source_port: u16::from_be(k.sport),
                destination: addr_from_be(k.daddr),
                destination_port: u16::from_be(k.dport),
                protocol: protocol_name(k.proto),
                nat_address: addr_from_be(e.nat_addr),
                nat_port: u16::from_be(e.nat_port),
                flags: ct_flags::names(e.flags).collect(),
                snat_address: snat(e).map(|(a, _)| a),
                snat_port: snat(e).map(|(_, p)| p),
                service_id: e.service_id,
                service: s.service_name(e.service_id).map(str::to_owned),
                backend_id: e.backend_id,
                state: forward.map(|f| f.state(k.proto).name()),
                expired: forward.map(|f| f.is_expired(k.proto, now_ns, &s.ct_timeouts())),
                seen: forward.map(|f| seen_flags(f.seen)).unwrap_or_default(),
                age_s: now_ns.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_s: forward.map(|f| now_ns.saturating_sub(f.last_seen_ns) / 1_000_000_000),
            }
        })
        .collect()
}

/// The entry's masquerade address and port (host order), when it has the SNAT flag.
pub fn snat(e: &lb_common::CtEntry) -> Option<(Ipv4Addr, u16)> {
    (e.flags & ct_flags::SNAT != 0).then(|| (addr_from_be(e.snat_addr), u16::from_be(e.snat_port)))
}

pub fn source_ranges(s: &Snapshot) -> Vec<SourceRangeRecord> {
    s.source_ranges
        .iter()
        .map(|(len, r)| {
            let (addr, prefix) = r.cidr(*len);
            SourceRangeRecord {
                service_id: r.service_id(),
                service: s.service_name(r.service_id()).map(str::to_owned),
                range: format!("{addr}/{prefix}"),
            }
        })
        .collect()
}

pub fn sock_rev(s: &Snapshot) -> Vec<SockRevRecord> {
    s.sock_rev
        .iter()
        .map(|(k, e)| SockRevRecord {
            cookie: k.cookie,
            backend: endpoint(k.addr, k.port, None),
            service: endpoint(e.addr, e.port, None),
        })
        .collect()
}

pub fn affinity(s: &Snapshot, now_ns: u64) -> Vec<AffinityRecord> {
    s.affinity
        .iter()
        .map(|(k, e)| {
            let timeout_s = s.affinity_timeout_s(k.service_id);
            let idle_ns = now_ns.saturating_sub(e.last_used_ns);
            AffinityRecord {
                service_id: k.service_id,
                service: s.service_name(k.service_id).map(str::to_owned),
                client: addr_from_be(k.client_addr),
                backend_id: e.backend_id,
                backend: s
                    .backends
                    .get(&e.backend_id)
                    .map(|b| endpoint(b.addr, b.port, Some(b.proto))),
                slot: e.slot,
                idle_s: idle_ns / 1_000_000_000,
                timeout_s,
                remaining_s: timeout_s.map(|t| {
                    (u64::from(t) * 1_000_000_000).saturating_sub(idle_ns) / 1_000_000_000
                }),
            }
        })
        .collect()
}

/// Every reason this lbctl knows (zero or not), then any other non-zero counter (a newer
/// datapath's), by index.
pub fn counters(values: &[u64]) -> Vec<CounterRecord> {
    let known = Reason::ALL.iter().map(|r| CounterRecord {
        index: *r as u32,
        reason: r.name().to_owned(),
        kind: kind_name(r.kind()),
        packets: values.get(*r as usize).copied().unwrap_or(0),
    });
    let unknown = (0u32..)
        .zip(values)
        .filter(|(i, n)| Reason::from_index(*i).is_none() && **n != 0)
        .map(|(i, n)| CounterRecord {
            index: i,
            reason: format!("reason_{i}"),
            kind: "unknown",
            packets: *n,
        });
    known.chain(unknown).collect()
}

/// The selected sections as tables, separated by blank lines.
pub fn tables(snapshot: &Snapshot, sections: &[Section], now_ns: u64) -> String {
    let d = dump(snapshot, sections, now_ns);
    let mut out = Vec::new();
    for section in sections {
        let mut t = match section {
            Section::Services => services_table(d.services.as_deref().unwrap_or_default()),
            Section::Frontends => frontends_table(d.frontends.as_deref().unwrap_or_default()),
            Section::Slots => slots_table(d.slots.as_deref().unwrap_or_default()),
            Section::Backends => backends_table(d.backends.as_deref().unwrap_or_default()),
            Section::Conntrack => conntrack_table(d.conntrack.as_deref().unwrap_or_default()),
            Section::Affinity => affinity_table(d.affinity.as_deref().unwrap_or_default()),
            Section::Counters => counters_table(d.counters.as_deref().unwrap_or_default()),
            Section::Config => config_table(d.config.clone().flatten().as_ref()),
            Section::SourceRanges => {
                source_ranges_table(d.source_ranges.as_deref().unwrap_or_default())
            }
            Section::SockRev => sock_rev_table(d.sock_rev.as_deref().unwrap_or_default()),
        };
        // The section's own map missing makes its table meaningless; a map it only takes
        // details from leaves a note.
        for map in section.maps() {
            if let Some(u) = snapshot.unavailable(*map) {
                if *map == section.primary() {
                    t.unavailable(u.to_string());
                } else {
                    t.note(format!("{u} ({} not shown)", detail_of(*map)));
                }
            }
        }
        out.push(t.to_string());
    }
    out.join("\n")
}

/// What a section loses when `map` is missing.
fn detail_of(map: MapId) -> &'static str {
    match map {
        MapId::ServiceNames => "service names",
        MapId::BackendStats => "packets and bytes",
        MapId::Frontends => "frontends and affinity timeouts",
        MapId::Backends => "backend addresses",
        _ => "details",
    }
}

fn name_or_dash(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "-".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn services_table(rows: &[ServiceRecord]) -> Table {
    let mut t = Table::titled("SERVICES", &["ID", "NAME", "FRONTENDS"]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            name_or_dash(&r.name),
            r.frontends.to_string(),
        ]);
    }
    t
}

fn frontends_table(rows: &[FrontendRecord]) -> Table {
    let mut t = Table::titled(
        "FRONTENDS",
        &[
            "ADDRESS", "SCOPE", "SERVICE", "NAME", "BACKENDS", "FLAGS", "AFFINITY",
        ],
    );
    for r in rows {
        t.row(vec![
            format!("{}:{}/{}", r.address, r.port, r.protocol),
            r.scope.clone(),
            r.service_id.to_string(),
            name_or_dash(&r.service),
            r.backend_count.to_string(),
            joined(&r.flags),
            affinity_label(r.affinity_timeout_s),
        ]);
    }
    t
}

/// `-` for no affinity, else `ClientIP 3h00m`.
pub fn affinity_label(timeout_s: u32) -> String {
    match timeout_s {
        0 => "-".into(),
        t => format!("ClientIP {}", human_seconds(t.into())),
    }
}

fn slots_table(rows: &[SlotRecord]) -> Table {
    let mut t = Table::titled("BACKEND SLOTS", &["SERVICE", "SLOT", "BACKEND"]);
    for r in rows {
        let mut backend = r.backend_id.to_string();
        if !r.backend_exists {
            backend.push_str(" (missing from LB_BACKENDS)");
        }
        t.row(vec![r.service_id.to_string(), r.slot.to_string(), backend]);
    }
    t
}

fn backends_table(rows: &[BackendRecord]) -> Table {
    let mut t = Table::titled("BACKENDS", &["ID", "ADDRESS", "FLAGS", "PACKETS", "BYTES"]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            format!("{}:{}/{}", r.address, r.port, r.protocol),
            joined(&r.flags),
            opt(r.packets),
            opt(r.bytes.map(human_bytes)),
        ]);
    }
    t
}

fn conntrack_table(rows: &[ConntrackRecord]) -> Table {
    let mut t = Table::titled(
        "CONNTRACK",
        &[
            "DIR",
            "TUPLE",
            "TRANSLATION",
            "SERVICE",
            "BACKEND",
            "STATE",
            "AGE",
            "IDLE",
        ],
    );
    for r in rows {
        let mut translation = match r.direction {
            "forward" => format!("dst {}:{}", r.nat_address, r.nat_port),
            "reply" => format!("src {}:{}", r.nat_address, r.nat_port),
            _ => "-".into(),
        };
        if let (Some(a), Some(p)) = (r.snat_address, r.snat_port) {
            translation.push_str(&match r.direction {
                "forward" => format!(", src {a}:{p}"),
                _ => format!(", dst {a}:{p}"),
            });
        }
        let state = match (r.state, r.expired) {
            (Some(s), Some(true)) => format!("{s} (expired)"),
            (Some(s), _) => s.to_owned(),
            (None, _) => "-".into(),
        };
        t.row(vec![
            r.direction.into(),
            format!(
                "{}:{} -> {}:{}/{}",
                r.source, r.source_port, r.destination, r.destination_port, r.protocol
            ),
            translation,
            r.service
                .clone()
                .unwrap_or_else(|| r.service_id.to_string()),
            r.backend_id.to_string(),
            state,
            human_seconds(r.age_s),
            opt(r.idle_s.map(human_seconds)),
        ]);
    }
    t
}

fn affinity_table(rows: &[AffinityRecord]) -> Table {
    let mut t = Table::titled(
        "AFFINITY",
        &["SERVICE", "CLIENT", "BACKEND", "SLOT", "IDLE", "REMAINING"],
    );
    for r in rows {
        let backend = match &r.backend {
            Some(b) => format!("{b} (#{})", r.backend_id),
            None => format!("#{} (gone)", r.backend_id),
        };
        let remaining = match r.remaining_s {
            Some(0) => "expired".into(),
            other => opt(other.map(human_seconds)),
        };
        t.row(vec![
            r.service
                .clone()
                .unwrap_or_else(|| r.service_id.to_string()),
            r.client.to_string(),
            backend,
            r.slot.to_string(),
            human_seconds(r.idle_s),
            remaining,
        ]);
    }
    t
}

fn counters_table(rows: &[CounterRecord]) -> Table {
    let mut t = Table::titled("COUNTERS", &["REASON", "KIND", "PACKETS"]);
    for r in rows {
        t.row(vec![r.reason.clone(), r.kind.into(), r.packets.to_string()]);
    }
    t
}

fn config_table(config: Option<&ConfigRecord>) -> Table {
    let mut t = Table::titled("CONFIG", &["SETTING", "VALUE"]);
    if let Some(c) = config {
        t.row(vec!["hash_seed".into(), format!("{:#010x}", c.hash_seed)]);
        t.row(vec![
            "node_addr".into(),
            c.node_addr
                .map_or_else(|| "- (no masquerading)".into(), |a| a.to_string()),
        ]);
        t.row(vec![
            "cluster_cidr".into(),
            c.cluster_cidr
                .clone()
                .unwrap_or_else(|| "- (unknown)".into()),
        ]);
        t.row(vec!["snat_port_range".into(), c.snat_port_range.clone()]);
        let ct = &c.ct_timeouts_s;
        t.row(vec![
            "ct_timeouts".into(),
            format!(
                "syn_sent {}s, established {}s, half_closed {}s, closing {}s, reset {}s, udp {}s",
                ct.syn_sent, ct.established, ct.half_closed, ct.closing, ct.reset, ct.udp
            ),
        ]);
    }
    t
}

fn source_ranges_table(rows: &[SourceRangeRecord]) -> Table {
    let mut t = Table::titled("SOURCE RANGES", &["SERVICE", "NAME", "RANGE"]);
    for r in rows {
        t.row(vec![
            r.service_id.to_string(),
            name_or_dash(&r.service),
            r.range.clone(),
        ]);
    }
    t
}

fn sock_rev_table(rows: &[SockRevRecord]) -> Table {
    let mut t = Table::titled("SOCKETS", &["COOKIE", "BACKEND", "SHOWN AS"]);
    for r in rows {
        t.row(vec![
            r.cookie.to_string(),
            r.backend.clone(),
            r.service.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{
        fixtures::{sample, NOW, S},
        snapshot::Unavailable,
    };

    #[test]
    fn the_dump_shows_every_map() {
        let out = tables(&sample(), &Section::ALL, NOW);
        let expected = "\
SERVICES (2)
ID  NAME                 FRONTENDS
1   default/echo:http    1
2   kube-system/dns:dns  1

FRONTENDS (2)
ADDRESS            SCOPE     SERVICE  NAME                 BACKENDS  FLAGS      AFFINITY
10.96.0.10:80/TCP  external  1        default/echo:http    2         ClusterIP  -
10.96.0.53:53/UDP  external  2        kube-system/dns:dns  1         ClusterIP  ClientIP 3h00m

BACKEND SLOTS (3)
SERVICE  SLOT  BACKEND
1        1     1
1        2     2
2        1     3

BACKENDS (3)
ID  ADDRESS              FLAGS              PACKETS  BYTES
1   10.244.1.2:8080/TCP  local              12       1.5KiB
2   10.244.2.2:8080/TCP  -                  0        0B
3   10.244.1.3:53/UDP    local,terminating  2        140B

CONNTRACK (3)
DIR      TUPLE                                    TRANSLATION          SERVICE              BACKEND  STATE        AGE    IDLE
forward  10.244.1.5:40000 -> 10.96.0.10:80/TCP    dst 10.244.1.2:8080  default/echo:http    1        ESTABLISHED  1m40s  10s
reply    10.244.1.2:8080 -> 10.244.1.5:40000/TCP  src 10.96.0.10:80    default/echo:http    1        ESTABLISHED  1m40s  10s
forward  10.244.2.9:33000 -> 10.96.0.53:53/UDP    dst 10.244.1.3:53    kube-system/dns:dns  3        UDP          50s    5s

AFFINITY (1)
SERVICE              CLIENT      BACKEND                 SLOT  IDLE  REMAINING
kube-system/dns:dns  10.244.2.9  10.244.1.3:53/UDP (#3)  1     50s   2h59m

SOURCE RANGES (0)
  (none)

SOCKETS (0)
  (none)

COUNTERS (28)
REASON                 KIND        PACKETS
new_flow               translated  5
established_flow       translated  0
reply_translated       translated  4
pass_malformed         passed      0
pass_fragment          passed      0
drop_no_backend        dropped     1
drop_no_backend_slot   dropped     0
drop_backend_missing   dropped     0
drop_ct_insert         dropped     0
drop_rewrite           dropped     0
reject_no_backend      rejected    0
drop_no_local_backend  dropped     0
drop_source_range      dropped     0
drop_snat_exhausted    dropped     0
pass_no_route          passed      0
icmp_error_translated  translated  0
xdp_tx                 translated  0
pass_to_tc             passed      0
sock_translated        translated  0
xdp_redirect           translated  0
drop_ct_full           dropped     0
port_remapped          translated  0
ct_repaired            translated  0
pass_csum_partial      passed      0
pass_frag_unknown      passed      0
drop_ttl_exceeded      dropped     0
reject_frag_needed     rejected    0
pass_mtu               passed      0

CONFIG (5)
SETTING          VALUE
hash_seed        0x00005eed
node_addr        172.18.0.3
cluster_cidr     10.244.0.0/16
snat_port_range  61000-65535
ct_timeouts      syn_sent 60s, established 86400s, half_closed 3600s, closing 10s, reset 10s, udp 60s
";
        assert_eq!(out, expected);
    }

    #[test]
    fn a_missing_map_is_named_and_the_rest_is_shown() {
        let mut s = sample();
        s.backend_stats.clear();
        s.unavailable.push(Unavailable {
            map: MapId::BackendStats,
            reason: "not pinned".into(),
        });
        s.affinity.clear();
        s.unavailable.push(Unavailable {
            map: MapId::Affinity,
            reason: "not pinned".into(),
        });
        let out = tables(&s, &[Section::Backends, Section::Affinity], NOW);
        let expected = "\
BACKENDS (3)
ID  ADDRESS              FLAGS              PACKETS  BYTES
1   10.244.1.2:8080/TCP  local              -        -
2   10.244.2.2:8080/TCP  -                  -        -
3   10.244.1.3:53/UDP    local,terminating  -        -
  note: LB_BE_STATS: not pinned (packets and bytes not shown)

AFFINITY
  unavailable: LB_AFFINITY: not pinned
";
        assert_eq!(out, expected);
        let json = serde_json::to_value(dump(&s, &[Section::Backends], NOW)).expect("json");
        assert_eq!(json["backends"][0]["packets"], serde_json::Value::Null);
        assert_eq!(
            json["unavailable"],
            serde_json::json!([{"map": "LB_BE_STATS", "reason": "not pinned"}])
        );
    }

    #[test]
    fn json_has_only_the_selected_sections_in_a_stable_shape() {
        let d = dump(&sample(), &[Section::Frontends, Section::Config], NOW);
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "frontends": [
                    {"address": "10.96.0.10", "port": 80, "protocol": "TCP", "scope": "external",
                     "service_id": 1, "service": "default/echo:http", "backend_count": 2,
                     "flags": ["ClusterIP"], "affinity_timeout_s": 0},
                    {"address": "10.96.0.53", "port": 53, "protocol": "UDP", "scope": "external",
                     "service_id": 2, "service": "kube-system/dns:dns", "backend_count": 1,
                     "flags": ["ClusterIP"], "affinity_timeout_s": 10800},
                ],
                "config": {"hash_seed": 0x5eed, "node_addr": "172.18.0.3",
                           "cluster_cidr": "10.244.0.0/16", "snat_port_range": "61000-65535",
                    "ct_timeouts_s": {"syn_sent": 60, "established": 86400, "half_closed": 3600,
                                      "closing": 10, "reset": 10, "udp": 60}},
                "unavailable": [],
            })
        );
    }

    #[test]
    fn conntrack_json_pairs_reply_entries_with_their_flow_state() {
        let rows = conntrack(&sample(), NOW);
        let json = serde_json::to_value(&rows[1]).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "direction": "reply", "source": "10.244.1.2", "source_port": 8080,
                "destination": "10.244.1.5", "destination_port": 40000, "protocol": "TCP",
                "nat_address": "10.96.0.10", "nat_port": 80, "flags": [],
                "snat_address": null, "snat_port": null, "service_id": 1,
                "service": "default/echo:http", "backend_id": 1, "state": "ESTABLISHED",
                "expired": false, "seen": ["syn", "reply"], "age_s": 100, "idle_s": 10,
            })
        );
    }

    #[test]
    fn idle_flows_past_their_timeout_are_marked_expired() {
        let t = tables(&sample(), &[Section::Conntrack], 190 * S + 86_401 * S);
        assert!(t.contains("ESTABLISHED (expired)"), "{t}");
    }

    #[test]
    fn expired_affinity_has_nothing_remaining() {
        let rows = affinity(&sample(), 150 * S + 10_801 * S);
        assert_eq!(rows[0].remaining_s, Some(0));
        assert!(tables(&sample(), &[Section::Affinity], 150 * S + 10_801 * S).contains("expired"));
    }

    #[test]
    fn slots_pointing_at_missing_backends_are_marked() {
        let mut s = sample();
        s.backends.remove(&2);
        let t = tables(&s, &[Section::Slots], NOW);
        assert!(
            t.contains("1        2     2 (missing from LB_BACKENDS)"),
            "{t}"
        );
    }

    #[test]
    fn unknown_counter_indices_are_shown_by_number() {
        let unknown = Reason::COUNT as usize + 1;
        let mut values = vec![0; unknown + 1];
        values[unknown] = 7;
        let rows = counters(&values);
        assert_eq!(rows.len(), Reason::COUNT as usize + 1);
        let last = rows.last().expect("a row");
        assert_eq!(
            (last.reason.as_str(), last.kind, last.packets),
            (format!("reason_{unknown}").as_str(), "unknown", 7)
        );
    }

    #[test]
    fn services_include_ids_that_only_a_frontend_knows() {
        let mut s = sample();
        s.service_names.remove(&2);
        let rows = services(&s);
        assert_eq!(rows[1].name, None);
        assert_eq!(rows[1].frontends, 1);
    }

    #[test]
    fn every_map_has_a_section() {
        for map in MapId::ALL {
            assert!(Section::of(map).maps().contains(&map), "{map}");
        }
        assert_eq!(maps_for(&Section::ALL).len(), MapId::ALL.len());
    }
}
