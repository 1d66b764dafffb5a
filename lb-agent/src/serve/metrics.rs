//! Prometheus metrics, served on `/metrics` of the metrics port (kube-proxy's 10249).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lb_network_programming_duration_seconds` | histogram | — |
//! | `lb_sync_proxy_rules_duration_seconds` | histogram | `mode` = full, incremental |
//! | `lb_sync_proxy_rules_total` | counter | `mode` |
//! | `lb_sync_proxy_rules_errors_total` | counter | `mode` |
//! | `lb_sync_proxy_rules_last_timestamp_seconds` | gauge | — |
//! | `lb_invalid_objects_total` | counter | `kind`, `reason` ([`crate::model::SkipReason::label`]) |
//! | `lb_watch_errors_total` | counter | `resource` |
//! | `lb_map_entries` | gauge | `map` |
//! | `lb_map_max_entries` | gauge | `map` |
//! | `lb_datapath_packets_total` | counter | `reason` ([`lb_common::Reason::name`]), `kind` = translated, passed, dropped |
//! | `lb_conntrack_insert_failures_total` | counter | — |
//! | `lb_xdp_mode` | gauge | `mode` = native, generic, off, none: 1 for the mode in use |
//! | `lb_conntrack_gc_runs_total` | counter | — |
//! | `lb_conntrack_gc_duration_seconds` | histogram | — |
//! | `lb_conntrack_gc_cpu_seconds_total` | counter | — |
//! | `lb_conntrack_gc_deleted_total` | counter | `table`, `reason` = expired, orphan |
//! | `lb_conntrack_gc_repaired_total` | counter | `table` |
//! | `lb_conntrack_entries` | gauge | `table`: what the GC's last complete walk left |
//! | `lb_conntrack_fill_ratio` | gauge | `table`: the same over max_entries |
//! | `lb_conntrack_gc_interval_seconds` | gauge | — |
//!
//! Programming latency is measured like kube-proxy's `network_programming_duration_seconds`:
//! from the EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` when it has
//! one, else from when the agent received the change, to when the map writes finished.
//! The datapath counters and map fill levels are read at scrape time.

use std::{
    fmt,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, SystemTime},
};

use lb_common::Reason;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::sync::{
    conntrack_gc::{DeleteReason, PassReport},
    programmed::MapCounts,
    SyncMode,
};

/// Latency buckets in seconds: the agent programs in milliseconds, kube-proxy in seconds;
/// both ends must be visible.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// The values of `lb_xdp_mode`'s label.
pub const XDP_MODES: [&str; 4] = ["native", "generic", "off", "none"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// Read at scrape time from the datapath: its per-reason packet counters and the number
/// of conntrack entries. Behind a trait so the rendering is testable without a kernel.
pub trait DatapathStats: fmt::Debug + Send + Sync {
    /// Every counter summed over CPUs, indexed by [`Reason`].
    fn counters(&self) -> Result<Vec<u64>, String>;
    /// Entries in each conntrack table, by name (may be cached; counting walks the map).
    fn conntrack_entries(&self) -> Vec<(&'static str, u64)>;
    /// `(map name, max_entries)` of every map.
    fn max_entries(&self) -> Vec<(&'static str, u64)>;
}

/// Everything the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub network_programming: Histogram,
    pub sync_duration: Family<ModeLabels, Histogram>,
    pub syncs: Family<ModeLabels, Counter>,
    pub sync_errors: Family<ModeLabels, Counter>,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub invalid_objects: Family<SkipLabels, Counter>,
    pub watch_errors: Family<ResourceLabels, Counter>,
    /// 1 for the XDP mode the uplink runs, 0 for the others.
    pub xdp_mode: Family<ModeLabels, Gauge>,
    /// The service maps' fill levels, set after each sync and read at scrape time.
    service_maps: Arc<Mutex<Option<MapCounts>>>,
    pub conntrack_gc: ConntrackGcMetrics,
}

impl Metrics {
    /// Metrics with the datapath's counters read from `datapath` at scrape time (none in
    /// tests without a kernel).
    pub fn new(datapath: Option<Box<dyn DatapathStats>>) -> Arc<Self> {
        let network_programming = Histogram::new(LATENCY_BUCKETS);
        let sync_duration = Family::<ModeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        let syncs = Family::<ModeLabels, Counter>::default();
        let sync_errors = Family::<ModeLabels, Counter>::default();
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let invalid_objects = Family::<SkipLabels, Counter>::default();
        let watch_errors = Family::<ResourceLabels, Counter>::default();
        let service_maps = Arc::new(Mutex::new(None));
        let xdp_mode = Family::<ModeLabels, Gauge>::default();
        // Present from the start (at 0), so that rates and alerts work before the first sync.
        for mode in [SyncMode::Full, SyncMode::Incremental] {
            let labels = ModeLabels { mode: mode.name() };
            let _ = syncs.get_or_create(&labels);
            let _ = sync_errors.get_or_create(&labels);
        }

        let mut registry = Registry::with_prefix("lb");
        let conntrack_gc = ConntrackGcMetrics::register(&mut registry);
        registry.register(
            "network_programming_duration_seconds",
            "Time from a Service or EndpointSlice change to the end of its map writes",
            network_programming.clone(),
        );
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "Duration of one map sync",
            sync_duration.clone(),
        );
        registry.register("sync_proxy_rules", "Map syncs made", syncs.clone());
        registry.register(
            "sync_proxy_rules_errors",
            "Map syncs that failed (retried)",
            sync_errors.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "When the maps last caught up with every change (Unix time)",
            last_sync.clone(),
        );
        registry.register(
            "invalid_objects",
            "API objects or parts of them skipped as invalid",
            invalid_objects.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors from the API watches (each retried with backoff)",
            watch_errors.clone(),
        );
        registry.register(
            "xdp_mode",
            "The XDP mode the uplink's program runs in (1 for the mode in use)",
            xdp_mode.clone(),
        );
        registry.register_collector(Box::new(DatapathCollector {
            service_maps: service_maps.clone(),
            datapath,
        }));
        Arc::new(Self {
            registry,
            network_programming,
            sync_duration,
            syncs,
            sync_errors,
            last_sync,
            invalid_objects,
            watch_errors,
            xdp_mode,
            service_maps,
            conntrack_gc,
        })
    }

    /// Records the XDP mode in use: `native`, `generic`, `off` or `none`.
    pub fn set_xdp_mode(&self, mode: &'static str) {
        for m in XDP_MODES {
            self.xdp_mode
                .get_or_create(&ModeLabels { mode: m })
                .set(i64::from(m == mode));
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Records a finished sync.
    pub fn sync_done(&self, mode: SyncMode, took: Duration, counts: Option<MapCounts>) {
        let labels = ModeLabels { mode: mode.name() };
        self.sync_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.syncs.get_or_create(&labels).inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
        if let Some(counts) = counts {
            *lock(&self.service_maps) = Some(counts);
        }
    }

    pub fn sync_failed(&self, mode: SyncMode) {
        self.sync_errors
            .get_or_create(&ModeLabels { mode: mode.name() })
            .inc();
    }
}

// --- Conntrack GC (crate::sync::conntrack_gc) ---

/// Pass durations in seconds: a small table takes a millisecond, a pass is cut at its
/// budget (a second by default).
const GC_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableReasonLabels {
    pub table: &'static str,
    pub reason: &'static str,
}

/// What the conntrack GC did, pass by pass.
#[derive(Debug)]
pub struct ConntrackGcMetrics {
    pub runs: Counter,
    pub duration: Histogram,
    /// The passes' thread CPU time: mostly syscalls, so it is what the GC costs the node.
    pub cpu: Counter<f64, AtomicU64>,
    pub deleted: Family<TableReasonLabels, Counter>,
    pub repaired: Family<TableLabels, Counter>,
    pub entries: Family<TableLabels, Gauge>,
    pub fill: Family<TableLabels, Gauge<f64, AtomicU64>>,
    /// The pause before the next pass.
    pub interval: Gauge<f64, AtomicU64>,
}

impl ConntrackGcMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            runs: Counter::default(),
            duration: Histogram::new(GC_BUCKETS),
            cpu: Counter::default(),
            deleted: Family::default(),
            repaired: Family::default(),
            entries: Family::default(),
            fill: Family::default(),
            interval: Gauge::default(),
        };
        // Present from the start (at 0), as the sync counters are.
        for table in lb_common::maps::CONNTRACK {
            for reason in DeleteReason::ALL {
                let _ = m.deleted.get_or_create(&TableReasonLabels {
                    table,
                    reason: reason.label(),
                });
            }
            let _ = m.repaired.get_or_create(&TableLabels { table });
        }
        registry.register("conntrack_gc_runs", "Conntrack GC passes", m.runs.clone());
        registry.register(
            "conntrack_gc_duration_seconds",
            "Duration of one conntrack GC pass",
            m.duration.clone(),
        );
        registry.register(
            "conntrack_gc_cpu_seconds",
            "CPU time the conntrack GC's passes used",
            m.cpu.clone(),
        );
        registry.register(
            "conntrack_gc_deleted",
            "Conntrack entries the GC deleted",
            m.deleted.clone(),
        );
        registry.register(
            "conntrack_gc_repaired",
            "Reply entries the GC rebuilt for live flows that had lost them",
            m.repaired.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Entries in each conntrack table, as the GC's last complete walk left them",
            m.entries.clone(),
        );
        registry.register(
            "conntrack_fill_ratio",
            "Entries over max_entries of each conntrack table, after the GC's last complete walk",
            m.fill.clone(),
        );
        registry.register(
            "conntrack_gc_interval_seconds",
            "The pause before the conntrack GC's next pass",
            m.interval.clone(),
        );
        m
    }

    /// Records a finished pass.
    pub fn record(&self, report: &PassReport) {
        self.runs.inc();
        self.duration.observe(report.duration.as_secs_f64());
        self.cpu.inc_by(report.cpu.as_secs_f64());
        for t in &report.tables {
            let table = TableLabels { table: t.name };
            for reason in DeleteReason::ALL {
                self.deleted
                    .get_or_create(&TableReasonLabels {
                        table: t.name,
                        reason: reason.label(),
                    })
                    .inc_by(t.deleted_for(reason));
            }
            self.repaired.get_or_create(&table).inc_by(t.repaired);
            if let (Some(n), Some(fill)) = (t.entries, t.fill()) {
                self.entries
                    .get_or_create(&table)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                self.fill.get_or_create(&table).set(fill);
            }
        }
    }

    pub fn set_interval(&self, interval: Duration) {
        self.interval.set(interval.as_secs_f64());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct DatapathCollector {
    service_maps: Arc<Mutex<Option<MapCounts>>>,
    datapath: Option<Box<dyn DatapathStats>>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut entries: Vec<(&'static str, u64)> = Vec::new();
        if let Some(c) = *lock(&self.service_maps) {
            entries.push((lb_common::maps::FRONTENDS, c.frontends as u64));
            entries.push((lb_common::maps::BACKEND_SLOTS, c.slots as u64));
            entries.push((lb_common::maps::BACKENDS, c.backends as u64));
        }
        let Some(datapath) = &self.datapath else {
            return encode_gauges(
                &mut encoder,
                "map_entries",
                "Entries in each BPF map",
                &entries,
            );
        };
        entries.extend(datapath.conntrack_entries());
        encode_gauges(
            &mut encoder,
            "map_entries",
            "Entries in each BPF map",
            &entries,
        )?;
        encode_gauges(
            &mut encoder,
            "map_max_entries",
            "Capacity of each BPF map",
            &datapath.max_entries(),
        )?;
        // A map that cannot be read is left out of this scrape rather than failing it.
        let Ok(counters) = datapath.counters() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "datapath_packets",
            "Packets the datapath handled, by what happened to them",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in Reason::ALL {
            let value = counters.get(reason as usize).copied().unwrap_or(0);
            let kind = reason.kind().name();
            let labels = [("reason", reason.name()), ("kind", kind)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let failures = counters
            .get(Reason::DropCtInsert as usize)
            .copied()
            .unwrap_or(0);
        let metric = encoder.encode_descriptor(
            "conntrack_insert_failures",
            "New flows dropped because the conntrack map refused the entry",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(failures).encode(metric)
    }
}

fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&'static str, u64)],
) -> Result<(), fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (map, value) in values {
        let labels = [("map", *map)];
        ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A line of the exposition for `name` with `labels` (`k="v"` pairs), for tests.
#[cfg(test)]
pub(crate) fn sample<'a>(text: &'a str, name: &str, labels: &str) -> Option<&'a str> {
    let mut prefix = name.to_owned();
    if !labels.is_empty() {
        prefix.push_str(&format!("{{{labels}}}"));
    }
    prefix.push(' ');
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct FakeDatapath;

    impl DatapathStats for FakeDatapath {
        fn counters(&self) -> Result<Vec<u64>, String> {
            let mut c = vec![0; 64];
            c[Reason::NewFlow as usize] = 7;
            c[Reason::DropCtInsert as usize] = 2;
            Ok(c)
        }

        fn conntrack_entries(&self) -> Vec<(&'static str, u64)> {
            vec![(lb_common::maps::CONNTRACK_TCP, 12)]
        }

        fn max_entries(&self) -> Vec<(&'static str, u64)> {
            vec![(lb_common::maps::CONNTRACK_TCP, 262_144)]
        }
    }

    #[test]
    fn sync_metrics_and_datapath_counters_render() {
        let m = Metrics::new(Some(Box::new(FakeDatapath)));
        m.network_programming.observe(0.003);
        m.sync_done(
            SyncMode::Incremental,
            Duration::from_millis(2),
            Some(MapCounts {
                frontends: 3,
                slots: 5,
                backends: 4,
            }),
        );
        m.sync_failed(SyncMode::Full);
        m.invalid_objects
            .get_or_create(&SkipLabels {
                kind: "Service",
                reason: "bad_port",
            })
            .inc();
        let text = m.encode().expect("encode");
        assert_eq!(
            sample(&text, "lb_network_programming_duration_seconds_count", ""),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "lb_network_programming_duration_seconds_bucket",
                "le=\"0.005\""
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "lb_sync_proxy_rules_duration_seconds_count",
                "mode=\"incremental\""
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, "lb_sync_proxy_rules_errors_total", "mode=\"full\""),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "lb_invalid_objects_total",
                "kind=\"Service\",reason=\"bad_port\""
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, "lb_map_entries", "map=\"LB_SLOTS\""),
            Some("5")
        );
        assert_eq!(
            sample(&text, "lb_map_entries", "map=\"LB_CT4_TCP\""),
            Some("12")
        );
        assert_eq!(
            sample(&text, "lb_map_max_entries", "map=\"LB_CT4_TCP\""),
            Some("262144")
        );
        assert_eq!(
            sample(
                &text,
                "lb_datapath_packets_total",
                "reason=\"new_flow\",kind=\"translated\""
            ),
            Some("7")
        );
        assert_eq!(
            sample(&text, "lb_conntrack_insert_failures_total", ""),
            Some("2")
        );
        assert!(
            text.contains("# TYPE lb_datapath_packets counter"),
            "{text}"
        );
    }

    #[test]
    fn conntrack_gc_passes_render() {
        use crate::sync::conntrack_gc::TableReport;
        let m = Metrics::new(None);
        let text = m.encode().expect("encode");
        // At 0 before the first pass.
        assert_eq!(
            sample(
                &text,
                "lb_conntrack_gc_deleted_total",
                "table=\"LB_CT4_ANY\",reason=\"orphan\""
            ),
            Some("0")
        );
        let report = PassReport {
            tables: vec![
                TableReport {
                    name: lb_common::maps::CONNTRACK_TCP,
                    max_entries: 1000,
                    seen: 300,
                    deleted_expired: 40,
                    deleted_orphan: 2,
                    repaired: 1,
                    finished: true,
                    entries: Some(250),
                    walk_deleted: 42,
                },
                TableReport {
                    name: lb_common::maps::CONNTRACK_ANY,
                    max_entries: 100,
                    ..Default::default()
                },
            ],
            duration: Duration::from_millis(3),
            cpu: Duration::from_millis(2),
            round_complete: false,
        };
        m.conntrack_gc.record(&report);
        m.conntrack_gc.record(&report);
        m.conntrack_gc.set_interval(Duration::from_secs(15));
        let text = m.encode().expect("encode");
        assert_eq!(sample(&text, "lb_conntrack_gc_runs_total", ""), Some("2"));
        assert_eq!(
            sample(&text, "lb_conntrack_gc_duration_seconds_count", ""),
            Some("2")
        );
        assert_eq!(
            sample(&text, "lb_conntrack_gc_cpu_seconds_total", ""),
            Some("0.004")
        );
        assert_eq!(
            sample(
                &text,
                "lb_conntrack_gc_deleted_total",
                "table=\"LB_CT4_TCP\",reason=\"expired\""
            ),
            Some("80")
        );
        assert_eq!(
            sample(
                &text,
                "lb_conntrack_gc_repaired_total",
                "table=\"LB_CT4_TCP\""
            ),
            Some("2")
        );
        assert_eq!(
            sample(&text, "lb_conntrack_entries", "table=\"LB_CT4_TCP\""),
            Some("250")
        );
        assert_eq!(
            sample(&text, "lb_conntrack_fill_ratio", "table=\"LB_CT4_TCP\""),
            Some("0.25")
        );
        // A table no walk has finished yet has no count.
        assert_eq!(
            sample(&text, "lb_conntrack_entries", "table=\"LB_CT4_ANY\""),
            None
        );
        assert_eq!(
            sample(&text, "lb_conntrack_gc_interval_seconds", ""),
            Some("15.0")
        );
    }
}
