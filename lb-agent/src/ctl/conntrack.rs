//! `lbctl conntrack list|flush`: conntrack entries paired into flows, filtered by service
//! or backend.
//!
//! A translated flow has a forward entry (keyed by the client's tuple) and a reply entry
//! (keyed by the backend's reply tuple); see [`lb_common::conntrack`]. Either may be gone
//! (LRU eviction), so a flow is keyed by its forward tuple, which both entries lead to.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use lb_common::{
    addr_from_be,
    conntrack::{ct_flags, dir},
    CtEntry, CtKey,
};
use serde::Serialize;

use super::{
    format::{endpoint, human_duration, protocol_name, seen_flags},
    map_id::MapId,
    pinned::{DeleteConntrack, PinnedError},
    snapshot::{Snapshot, UnavailableRecord},
    table::Table,
};

/// One connection: its forward entry and its reply entries, either possibly missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The forward tuple (client -> service address).
    pub key: CtKey,
    pub forward: Option<CtEntry>,
    /// Normally one; a tuple reused for a new connection to another backend can leave the
    /// old one behind until it expires.
    pub replies: Vec<(CtKey, CtEntry)>,
}

/// The forward key of the flow an entry belongs to; `None` for an unknown direction.
pub fn forward_key(key: &CtKey, entry: &CtEntry) -> Option<CtKey> {
    match key.dir {
        dir::FORWARD => Some(*key),
        dir::REPLY => Some(key.forward_of_reply(entry)),
        _ => None,
    }
}

/// The reply key the datapath writes beside a forward entry: replies come from the chosen
/// backend back to the client, or, for a masqueraded flow, back to the address and port the
/// client was given.
pub fn reply_key(forward: &CtKey, entry: &CtEntry) -> CtKey {
    let (to, to_port) = if entry.flags & ct_flags::SNAT != 0 {
        (entry.snat_addr, entry.snat_port)
    } else {
        (forward.saddr, forward.sport)
    };
    CtKey::new(
        entry.nat_addr,
        to,
        entry.nat_port,
        to_port,
        forward.proto,
        dir::REPLY,
    )
}

impl Flow {
    /// The entry that speaks for the flow: the forward one, else a reply.
    fn entry(&self) -> CtEntry {
        self.forward
            .or_else(|| self.replies.first().map(|(_, e)| *e))
            .unwrap_or_default()
    }

    pub fn service_id(&self) -> u32 {
        self.entry().service_id
    }

    pub fn backend_id(&self) -> u32 {
        self.entry().backend_id
    }

    /// The backend's address and port (network order).
    pub fn backend(&self) -> (u32, u16) {
        match (self.forward, self.replies.first()) {
            (Some(f), _) => (f.nat_addr, f.nat_port),
            (None, Some((k, _))) => (k.saddr, k.sport),
            (None, None) => (0, 0),
        }
    }

    /// The masquerade source (host-order port): the forward entry's, else the reply
    /// entry's destination.
    pub fn snat(&self) -> Option<(Ipv4Addr, u16)> {
        match (self.forward, self.replies.first()) {
            (Some(f), _) => super::dump::snat(&f),
            (None, Some((k, e))) if e.flags & ct_flags::SNAT != 0 => {
                Some((addr_from_be(k.daddr), u16::from_be(k.dport)))
            }
            _ => None,
        }
    }

    /// Every key the flow has or may have: the forward key, the reply key its forward entry
    /// implies, and the reply keys found.
    pub fn keys(&self) -> Vec<CtKey> {
        let mut keys = vec![self.key];
        if let Some(f) = &self.forward {
            keys.push(reply_key(&self.key, f));
        }
        keys.extend(self.replies.iter().map(|(k, _)| *k));
        keys.sort();
        keys.dedup();
        keys
    }

    /// Which entries are present: `forward+reply`, `forward`, `reply`, ...
    pub fn entries_label(&self) -> String {
        let replies = match self.replies.len() {
            0 => None,
            1 => Some("reply".to_owned()),
            n => Some(format!("{n} replies")),
        };
        match (self.forward.is_some(), replies) {
            (true, Some(r)) => format!("forward+{r}"),
            (true, None) => "forward".into(),
            (false, Some(r)) => r,
            (false, None) => "-".into(),
        }
    }
}

/// The entries grouped into flows, in forward-key order.
pub fn flows(conntrack: &BTreeMap<CtKey, CtEntry>) -> Vec<Flow> {
    let mut flows: BTreeMap<CtKey, Flow> = BTreeMap::new();
    for (k, e) in conntrack {
        let Some(fk) = forward_key(k, e) else {
            continue;
        };
        let flow = flows.entry(fk).or_insert_with(|| Flow {
            key: fk,
            forward: None,
            replies: Vec::new(),
        });
        if k.dir == dir::FORWARD {
            flow.forward = Some(*e);
        } else {
            flow.replies.push((*k, *e));
        }
    }
    flows.into_values().collect()
}

/// `--service`: a service id (`7`, `svc#7`) or name. A name without a port
/// (`default/echo`) selects every port of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceSelector {
    Id(u32),
    Name(String),
}

impl FromStr for ServiceSelector {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = s.strip_prefix("svc#").unwrap_or(s);
        Ok(match id.parse() {
            Ok(id) => ServiceSelector::Id(id),
            Err(_) => ServiceSelector::Name(s.to_owned()),
        })
    }
}

/// `--backend`: a backend id, `address:port` or `address` (every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendSelector {
    Id(u32),
    Endpoint(SocketAddrV4),
    Address(Ipv4Addr),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--backend {0:?} is neither a backend id, ADDRESS:PORT nor ADDRESS")]
    BadBackend(String),
    #[error("no service named {0:?} in LB_SVC_NAMES (names are namespace/name:port; a service id works too)")]
    UnknownService(String),
    #[error("cannot select a service by name: {0}; use its id")]
    NoNames(String),
}

impl FromStr for BackendSelector {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse() {
            Ok(BackendSelector::Id(id))
        } else if let Ok(ep) = s.parse() {
            Ok(BackendSelector::Endpoint(ep))
        } else if let Ok(addr) = s.parse() {
            Ok(BackendSelector::Address(addr))
        } else {
            Err(FilterError::BadBackend(s.to_owned()))
        }
    }
}

/// Which flows a command applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// `None`: every service.
    services: Option<BTreeSet<u32>>,
    backend: Option<BackendSelector>,
}

impl FlowFilter {
    /// Resolves a service name to its ids through the snapshot's service names.
    pub fn new(
        service: Option<&ServiceSelector>,
        backend: Option<BackendSelector>,
        snapshot: &Snapshot,
    ) -> Result<Self, FilterError> {
        let services = match service {
            None => None,
            Some(ServiceSelector::Id(id)) => Some(BTreeSet::from([*id])),
            Some(ServiceSelector::Name(name)) => {
                if let Some(u) = snapshot.unavailable(MapId::ServiceNames) {
                    return Err(FilterError::NoNames(u.to_string()));
                }
                let port_prefix = format!("{name}:");
                let ids: BTreeSet<u32> = snapshot
                    .service_names
                    .iter()
                    .filter(|(_, n)| *n == name || n.starts_with(&port_prefix))
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    return Err(FilterError::UnknownService(name.clone()));
                }
                Some(ids)
            }
        };
        Ok(Self { services, backend })
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let service_ok = self
            .services
            .as_ref()
            .is_none_or(|ids| ids.contains(&flow.service_id()));
        let (addr, port) = flow.backend();
        let backend_ok = match self.backend {
            None => true,
            Some(BackendSelector::Id(id)) => flow.backend_id() == id,
            Some(BackendSelector::Endpoint(ep)) => {
                addr_from_be(addr) == *ep.ip() && u16::from_be(port) == ep.port()
            }
            Some(BackendSelector::Address(a)) => addr_from_be(addr) == a,
        };
        service_ok && backend_ok
    }
}

/// A flow as `conntrack list -o json` prints it. Ports are host order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub service_address: Ipv4Addr,
    pub service_port: u16,
    pub protocol: String,
    pub backend_address: Ipv4Addr,
    pub backend_port: u16,
    /// The source the client was masqueraded to (`None`: the backend sees the client).
    pub snat_address: Option<Ipv4Addr>,
    pub snat_port: Option<u16>,
    /// `snat`, `north-south`, `hairpin`.
    pub flags: Vec<&'static str>,
    pub service_id: u32,
    /// `None` when the agent recorded no name for the service.
    pub service: Option<String>,
    pub backend_id: u32,
    /// [`lb_common::CtState`] name; `None` without a forward entry (the state lives there).
    pub state: Option<&'static str>,
    /// Idle longer than its state's timeout: the datapath will treat the next packet as a
    /// new flow.
    pub expired: Option<bool>,
    pub seen: Vec<&'static str>,
    pub age_s: u64,
    pub idle_s: Option<u64>,
    /// Whether the forward entry is present.
    pub forward: bool,
    /// How many reply entries are present (normally 1).
    pub replies: usize,
}

impl FlowRecord {
    pub fn new(flow: &Flow, snapshot: &Snapshot, now_ns: u64) -> Self {
        let k = flow.key;
        let entry = flow.entry();
        let (backend_addr, backend_port) = flow.backend();
        let forward = flow.forward;
        Self {
            client: addr_from_be(k.saddr),
            client_port: u16::from_be(k.sport),
            service_address: addr_from_be(k.daddr),
            service_port: u16::from_be(k.dport),
            protocol: protocol_name(k.proto),
            backend_address: addr_from_be(backend_addr),
            backend_port: u16::from_be(backend_port),
            snat_address: flow.snat().map(|(a, _)| a),
            snat_port: flow.snat().map(|(_, p)| p),
            flags: ct_flags::names(entry.flags).collect(),
            service_id: entry.service_id,
            service: snapshot.service_name(entry.service_id).map(str::to_owned),
            backend_id: entry.backend_id,
            state: forward.map(|f| f.state(k.proto).name()),
            expired: forward.map(|f| f.is_expired(k.proto, now_ns, &snapshot.ct_timeouts())),
            seen: forward.map(|f| seen_flags(f.seen)).unwrap_or_default(),
            age_s: now_ns.saturating_sub(entry.created_ns) / 1_000_000_000,
            idle_s: forward.map(|f| now_ns.saturating_sub(f.last_seen_ns) / 1_000_000_000),
            forward: forward.is_some(),
            replies: flow.replies.len(),
        }
    }
}

/// `lbctl conntrack list -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowList {
    pub flows: Vec<FlowRecord>,
    pub unavailable: Vec<UnavailableRecord>,
}

/// The flows `filter` selects, as records.
pub fn list(snapshot: &Snapshot, filter: &FlowFilter, now_ns: u64) -> FlowList {
    FlowList {
        flows: flows(&snapshot.conntrack)
            .iter()
            .filter(|f| filter.matches(f))
            .map(|f| FlowRecord::new(f, snapshot, now_ns))
            .collect(),
        unavailable: snapshot.unavailable_records(&[MapId::Conntrack, MapId::ServiceNames]),
    }
}

/// `lbctl conntrack list` as a table.
pub fn list_table(snapshot: &Snapshot, filter: &FlowFilter, now_ns: u64) -> Table {
    let mut t = Table::titled(
        "FLOWS",
        &[
            "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "STATE", "AGE", "IDLE", "ENTRIES",
        ],
    );
    if let Some(u) = snapshot.unavailable(MapId::Conntrack) {
        t.unavailable(u.to_string());
        return t;
    }
    for flow in flows(&snapshot.conntrack)
        .iter()
        .filter(|f| filter.matches(f))
    {
        let k = flow.key;
        let entry = flow.entry();
        let (backend_addr, backend_port) = flow.backend();
        let (state, idle) = match flow.forward {
            Some(f) => {
                let mut state = f.state(k.proto).name().to_owned();
                if f.is_expired(k.proto, now_ns, &snapshot.ct_timeouts()) {
                    state.push_str(" (expired)");
                }
                (state, human_duration(now_ns.saturating_sub(f.last_seen_ns)))
            }
            None => ("-".into(), "-".into()),
        };
        t.row(vec![
            endpoint(k.saddr, k.sport, None),
            endpoint(k.daddr, k.dport, Some(k.proto)),
            format!(
                "{} (#{})",
                endpoint(backend_addr, backend_port, None),
                entry.backend_id
            ),
            flow.snat()
                .map_or_else(|| "-".into(), |(a, p)| format!("{a}:{p}")),
            snapshot.service_label(entry.service_id),
            state,
            human_duration(now_ns.saturating_sub(entry.created_ns)),
            idle,
            flow.entries_label(),
        ]);
    }
    if let Some(u) = snapshot.unavailable(MapId::ServiceNames) {
        t.note(format!("services shown by id: {u}"));
    }
    t
}

/// What `lbctl conntrack flush` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    /// Flows of which at least one entry was deleted.
    pub flows: usize,
    /// Entries deleted (forward and reply).
    pub entries: usize,
}

impl std::fmt::Display for FlushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        writeln!(
            f,
            "flushed {} ({})",
            plural(self.flows, "flow", "flows"),
            plural(self.entries, "conntrack entry", "conntrack entries")
        )
    }
}

/// Deletes both entries of every flow `filter` selects. Flows that start after `snapshot`
/// was read are left alone; an entry evicted meanwhile is simply not counted.
pub fn flush(
    snapshot: &Snapshot,
    filter: &FlowFilter,
    map: &mut impl DeleteConntrack,
) -> Result<FlushReport, PinnedError> {
    let mut report = FlushReport::default();
    for flow in flows(&snapshot.conntrack)
        .iter()
        .filter(|f| filter.matches(f))
    {
        let mut deleted = 0;
        for key in flow.keys() {
            if map.delete(&key)? {
                deleted += 1;
            }
        }
        if deleted > 0 {
            report.flows += 1;
            report.entries += deleted;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{self, sample, DNS, ECHO, NOW};

    impl DeleteConntrack for BTreeMap<CtKey, CtEntry> {
        fn delete(&mut self, key: &CtKey) -> Result<bool, PinnedError> {
            Ok(self.remove(key).is_some())
        }
    }

    fn filter(service: Option<&str>, backend: Option<&str>) -> Result<FlowFilter, FilterError> {
        let service = service.map(|s| s.parse().expect("infallible"));
        let backend = backend.map(str::parse).transpose()?;
        FlowFilter::new(service.as_ref(), backend, &sample())
    }

    fn listed(service: Option<&str>, backend: Option<&str>) -> Vec<u16> {
        let f = filter(service, backend).expect("filter");
        list(&sample(), &f, NOW)
            .flows
            .iter()
            .map(|r| r.client_port)
            .collect()
    }

    #[test]
    fn both_entries_of_a_flow_pair_up_whichever_comes_first() {
        let flows = flows(&sample().conntrack);
        assert_eq!(flows.len(), 2);
        let tcp = &flows[0];
        assert_eq!(tcp.entries_label(), "forward+reply");
        assert_eq!(tcp.keys().len(), 2);
        assert_eq!(tcp.replies[0].0, reply_key(&tcp.key, &tcp.forward.unwrap()));
        assert_eq!(flows[1].entries_label(), "forward");
    }

    #[test]
    fn a_reply_entry_alone_still_makes_a_flow() {
        let mut s = sample();
        s.conntrack.retain(|k, _| k.dir == dir::REPLY);
        let flows = flows(&s.conntrack);
        assert_eq!(flows.len(), 1);
        let record = FlowRecord::new(&flows[0], &s, NOW);
        assert_eq!(
            (record.client_port, record.service_port, record.backend_port),
            (40000, 80, 8080)
        );
        assert_eq!(
            (record.state, record.idle_s, record.forward),
            (None, None, false)
        );
        // Flushing it still deletes both keys: the forward one may come back meanwhile.
        assert_eq!(flows[0].keys().len(), 2);
    }

    #[test]
    fn services_are_selected_by_id_or_name_with_or_without_port() {
        assert_eq!(listed(None, None), [40000, 33000]);
        assert_eq!(listed(Some("1"), None), [40000]);
        assert_eq!(listed(Some("svc#2"), None), [33000]);
        assert_eq!(listed(Some("default/echo:http"), None), [40000]);
        assert_eq!(listed(Some("kube-system/dns"), None), [33000]);
        assert_eq!(listed(Some("9"), None), Vec::<u16>::new());
        assert_eq!(
            filter(Some("default/nope"), None),
            Err(FilterError::UnknownService("default/nope".into()))
        );
        // A name prefix that is not a whole service name selects nothing.
        assert!(filter(Some("default/ech"), None).is_err());
    }

    #[test]
    fn names_cannot_be_resolved_without_the_names_map() {
        let mut s = sample();
        s.unavailable.push(crate::ctl::snapshot::Unavailable {
            map: MapId::ServiceNames,
            reason: "not pinned".into(),
        });
        let by_name = ServiceSelector::Name("default/echo".into());
        assert!(matches!(
            FlowFilter::new(Some(&by_name), None, &s),
            Err(FilterError::NoNames(_))
        ));
        assert!(FlowFilter::new(Some(&ServiceSelector::Id(1)), None, &s).is_ok());
    }

    #[test]
    fn backends_are_selected_by_id_endpoint_or_address() {
        assert_eq!(listed(None, Some("3")), [33000]);
        assert_eq!(listed(None, Some("10.244.1.2:8080")), [40000]);
        assert_eq!(listed(None, Some("10.244.1.2:9999")), Vec::<u16>::new());
        assert_eq!(listed(None, Some("10.244.1.3")), [33000]);
        assert_eq!(listed(Some("1"), Some("3")), Vec::<u16>::new());
        assert_eq!(
            "10.244.1".parse::<BackendSelector>(),
            Err(FilterError::BadBackend("10.244.1".into()))
        );
    }

    #[test]
    fn records_carry_state_ages_and_names() {
        let f = FlowFilter::default();
        let records = list(&sample(), &f, NOW).flows;
        let tcp = &records[0];
        assert_eq!(tcp.service.as_deref(), Some("default/echo:http"));
        assert_eq!(tcp.state, Some("ESTABLISHED"));
        assert_eq!((tcp.age_s, tcp.idle_s), (100, Some(10)));
        assert_eq!(tcp.seen, ["syn", "reply"]);
        assert_eq!(tcp.backend_address, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(records[1].state, Some("UDP"));
        assert_eq!(records[1].service_id, DNS);
    }

    #[test]
    fn the_list_table_shows_one_row_per_flow() {
        let t = list_table(&sample(), &FlowFilter::default(), NOW).to_string();
        let expected = "\
FLOWS (2)
CLIENT            FRONTEND           BACKEND               SNAT  SERVICE              STATE        AGE    IDLE  ENTRIES
10.244.1.5:40000  10.96.0.10:80/TCP  10.244.1.2:8080 (#1)  -     default/echo:http    ESTABLISHED  1m40s  10s   forward+reply
10.244.2.9:33000  10.96.0.53:53/UDP  10.244.1.3:53 (#3)    -     kube-system/dns:dns  UDP          50s    5s    forward
";
        assert_eq!(t, expected);
    }

    #[test]
    fn flush_deletes_both_entries_of_each_selected_flow() {
        let s = sample();
        let mut ct = s.conntrack.clone();
        let f = FlowFilter::new(Some(&ServiceSelector::Id(ECHO)), None, &s).expect("filter");
        let report = flush(&s, &f, &mut ct).expect("flush");
        assert_eq!(
            report,
            FlushReport {
                flows: 1,
                entries: 2
            }
        );
        assert_eq!(report.to_string(), "flushed 1 flow (2 conntrack entries)\n");
        assert_eq!(ct.len(), 1);
        assert!(ct.values().all(|e| e.service_id == DNS));
    }

    #[test]
    fn flush_without_filters_removes_everything_and_counts_what_was_there() {
        let s = sample();
        let mut ct = s.conntrack.clone();
        let report = flush(&s, &FlowFilter::default(), &mut ct).expect("flush");
        // The DNS flow's reply entry was already gone: 3 entries for 2 flows.
        assert_eq!(
            report,
            FlushReport {
                flows: 2,
                entries: 3
            }
        );
        assert!(ct.is_empty());
        // A second flush finds nothing left to remove.
        let again = flush(&s, &FlowFilter::default(), &mut ct).expect("flush");
        assert_eq!(again, FlushReport::default());
    }

    #[test]
    fn a_stale_reply_of_a_reused_tuple_is_flushed_with_its_flow() {
        let mut s = sample();
        let [_, b2] = fixtures::echo_backends();
        // The same client tuple once went to backend 2; its reply entry lingers.
        let [_, stale_reply] = fixtures::flow(
            [10, 244, 1, 5],
            40000,
            fixtures::echo_vip(),
            b2,
            ECHO,
            (10, 20),
            0,
        );
        s.conntrack.insert(stale_reply.0, stale_reply.1);
        let flows = flows(&s.conntrack);
        assert_eq!(flows[0].entries_label(), "forward+2 replies");
        let mut ct = s.conntrack.clone();
        let report = flush(&s, &FlowFilter::default(), &mut ct).expect("flush");
        assert_eq!(report.entries, 4);
        assert!(ct.is_empty());
    }

    #[test]
    fn masqueraded_flows_show_their_snat_source_and_pair_up() {
        let mut s = sample();
        s.conntrack.clear();
        let [(b1_id, b1), _] = fixtures::echo_backends();
        let client = lb_common::addr_be([172, 18, 0, 1].into());
        let node = lb_common::addr_be([172, 18, 0, 3].into());
        let vip = fixtures::echo_vip();
        let forward_key = CtKey::new(
            client,
            vip.addr,
            40000u16.to_be(),
            vip.port,
            vip.proto,
            dir::FORWARD,
        );
        let forward = CtEntry {
            nat_addr: b1.addr,
            nat_port: b1.port,
            flags: ct_flags::SNAT | ct_flags::NORTH_SOUTH,
            snat_addr: node,
            snat_port: 61000u16.to_be(),
            service_id: ECHO,
            backend_id: b1_id,
            created_ns: 100 * fixtures::S,
            last_seen_ns: 190 * fixtures::S,
            seen: lb_common::conntrack::seen::SYN | lb_common::conntrack::seen::REPLY,
            ..Default::default()
        };
        // The reply comes back to the node's address and port, and restores the client.
        let back_key = CtKey::new(
            b1.addr,
            node,
            b1.port,
            61000u16.to_be(),
            vip.proto,
            dir::REPLY,
        );
        let reply = CtEntry {
            nat_addr: vip.addr,
            nat_port: vip.port,
            snat_addr: client,
            snat_port: 40000u16.to_be(),
            seen: 0,
            ..forward
        };
        s.conntrack.insert(forward_key, forward);
        s.conntrack.insert(back_key, reply);
        let flows = flows(&s.conntrack);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].entries_label(), "forward+reply");
        assert_eq!(reply_key(&forward_key, &forward), back_key);
        let t = list_table(&s, &FlowFilter::default(), NOW).to_string();
        let expected = "\
FLOWS (1)
CLIENT            FRONTEND           BACKEND               SNAT              SERVICE            STATE        AGE    IDLE  ENTRIES
172.18.0.1:40000  10.96.0.10:80/TCP  10.244.1.2:8080 (#1)  172.18.0.3:61000  default/echo:http  ESTABLISHED  1m40s  10s   forward+reply
";
        assert_eq!(t, expected);
        let record = &list(&s, &FlowFilter::default(), NOW).flows[0];
        assert_eq!(record.flags, ["snat", "north-south"]);
        assert_eq!(
            (record.snat_address, record.snat_port),
            (Some(Ipv4Addr::new(172, 18, 0, 3)), Some(61000))
        );
        // Reply entry alone: the SNAT source is its destination.
        s.conntrack.remove(&forward_key);
        assert_eq!(
            flows_of(&s)[0].snat(),
            Some((Ipv4Addr::new(172, 18, 0, 3), 61000))
        );
    }

    fn flows_of(s: &Snapshot) -> Vec<Flow> {
        flows(&s.conntrack)
    }
}
