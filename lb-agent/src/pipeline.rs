//! The agent's core: source events in, map writes out.
//!
//! Events update the [`Store`] and mark the services they touch. A sync then either
//! - recomputes only the touched services and writes only their frontends (incremental:
//!   one endpoint change costs a few point writes whatever the cluster's size), or
//! - recomputes everything and diffs against what the maps hold (full: at the first sync,
//!   after a relist or file snapshot, a node change, a failed sync, and periodically to
//!   repair anything else that touched the maps).
//!
//! [`run`] drives it: it takes every event already queued before syncing, so a burst is
//! programmed in one sync, and never starts syncs closer together than the minimum sync
//! period. Nothing is synced until every kind of object has been listed once, and nothing
//! is ever removed because the source went quiet.

#[cfg(test)]
mod bench;
mod heap;
mod skipped;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::jiff::Timestamp;
use lb_common::FrontendKey;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::{
    datapath::{config::DatapathSettings, maps::DatapathMaps},
    error_chain::error_chain,
    model::{
        health_check,
        node::{NodeInfo, NodeOverrides, ThisNode},
        service_frontends, DesiredFrontend, DesiredIndex, HealthCheck, ObjectId, ObjectKind,
        Parsed, Skipped,
    },
    serve::{
        health::Health,
        metrics::{Metrics, SkipLabels},
        report::{self, AttachmentsReport, NodeReport, SkippedReport, State, STATE_VERSION},
    },
    source::{Change, EventReceiver, Snapshot, SourceEvent, Update},
    store::Store,
    sync::{SyncError, SyncMode, SyncReport, Syncer},
};

/// What the pipeline needs to know at start.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub node_name: String,
    pub overrides: NodeOverrides,
    /// The source reports this node's Node: wait for it before the first sync.
    pub expect_node: bool,
    /// LB_CONFIG settings; the node address is replaced by this node's.
    pub datapath: DatapathSettings,
}

/// The health check every externalTrafficPolicy=Local service with a healthCheckNodePort
/// needs on this node, by service.
pub type HealthChecks = std::collections::BTreeMap<ObjectId, HealthCheck>;

/// When a change reached the agent, and when it happened if the object says so.
#[derive(Clone, Copy, Debug)]
struct Pending {
    received: Instant,
    trigger: Option<Timestamp>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.received = self.received.min(other.received);
        self.trigger = match (self.trigger, other.trigger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Which kinds of object have been listed at least once.
#[derive(Clone, Copy, Debug, Default)]
struct Listed {
    services: bool,
    slices: bool,
    node: bool,
}

pub struct Pipeline<M> {
    config: PipelineConfig,
    api_node: Option<NodeInfo>,
    node: ThisNode,
    store: Store,
    index: DesiredIndex,
    syncer: Syncer<M>,
    /// Services to recompute, with the earliest change that touched each.
    dirty: HashMap<ObjectId, Pending>,
    /// A full resync is due (and since when, for the health check).
    full: Option<Instant>,
    listed: Listed,
    synced_once: bool,
    /// Trigger times before this are about changes the agent never saw happen.
    started: Timestamp,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// What the healthCheckNodePort servers must answer; follows every sync.
    health_checks: watch::Sender<HealthChecks>,
    /// This node as last merged, for whoever attaches to its uplink.
    node_tx: watch::Sender<ThisNode>,
    /// Where the node-side programs are attached, for `/state`.
    attachments: watch::Receiver<AttachmentsReport>,
    /// What is left out now, for `/state`.
    skips: skipped::SkipRecord,
}

impl<M: DatapathMaps> Pipeline<M> {
    pub fn new(
        syncer: Syncer<M>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let node = ThisNode::merge(&config.node_name, None, &config.overrides);
        let node_tx = watch::Sender::new(node.clone());
        let mut syncer = syncer;
        syncer.set_settings(config.datapath.for_node(&node));
        let listed = Listed {
            node: !config.expect_node,
            ..Default::default()
        };
        Self {
            config,
            api_node: None,
            node,
            store: Store::default(),
            index: DesiredIndex::default(),
            syncer,
            dirty: HashMap::new(),
            full: Some(Instant::now()),
            listed,
            synced_once: false,
            started: Timestamp::now(),
            metrics,
            health,
            health_checks: watch::Sender::new(HealthChecks::new()),
            node_tx,
            attachments: watch::channel(AttachmentsReport::default()).1,
            skips: skipped::SkipRecord::default(),
        }
    }

    /// Follows this node (its addresses decide the uplink).
    pub fn subscribe_node(&self) -> watch::Receiver<ThisNode> {
        self.node_tx.subscribe()
    }

    /// Where `/state` reads the attachments from.
    pub fn set_attachments(&mut self, attachments: watch::Receiver<AttachmentsReport>) {
        self.attachments = attachments;
    }

    /// Follows the health checks this node must answer (see
    /// [`crate::serve::health_check_ports`]).
    pub fn subscribe_health_checks(&self) -> watch::Receiver<HealthChecks> {
        self.health_checks.subscribe()
    }

    pub fn syncer(&self) -> &Syncer<M> {
        &self.syncer
    }

    pub fn syncer_mut(&mut self) -> &mut Syncer<M> {
        &mut self.syncer
    }

    pub fn node(&self) -> &ThisNode {
        &self.node
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// True once every kind of object has been listed (or the wait for the Node is over).
    pub fn is_ready(&self) -> bool {
        self.listed.services && self.listed.slices && self.listed.node
    }

    pub fn node_listed(&self) -> bool {
        self.listed.node
    }

    /// True when a sync would do something.
    pub fn has_work(&self) -> bool {
        self.full.is_some() || !self.dirty.is_empty()
    }

    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// Makes the next sync a full one.
    pub fn request_full_resync(&mut self) {
        self.full.get_or_insert_with(Instant::now);
    }

    /// Gives up waiting for the Node: the flags are all there is.
    pub fn stop_waiting_for_node(&mut self) {
        if !self.listed.node {
            warn!(
                node = %self.config.node_name,
                "the Node was not listed in time; serving with --node-ip/--pod-cidr/--zone only until it is"
            );
            self.listed.node = true;
        }
    }

    /// Takes one event into the store; nothing is written to the maps.
    pub fn apply(&mut self, event: SourceEvent) {
        let at = Pending {
            received: event.received,
            trigger: None,
        };
        let before = self.has_work();
        match event.update {
            Update::Services(change) => self.apply_services(change, at),
            Update::Slices(change) => self.apply_slices(change, at),
            Update::Node(change) => self.apply_node(change),
            Update::Snapshot(snapshot) => {
                let Snapshot { services, slices } = *snapshot;
                self.apply_services(services, at);
                self.apply_slices(slices, at);
            }
        }
        if !before && self.has_work() {
            self.health.queued(SystemTime::now());
        }
    }

    fn apply_services(&mut self, change: Change<crate::model::ServiceInfo>, at: Pending) {
        match change {
            Change::Replace(items) => {
                let values = self.take_values(ObjectKind::Service, items);
                let changed = self.store.replace_services(values);
                for id in changed {
                    self.touch(id, at);
                }
                self.listed.services = true;
                self.request_full_resync();
            }
            Change::Apply(parsed) => {
                self.note(&parsed.skipped);
                self.skips
                    .read(ObjectKind::Service, parsed.id.as_ref(), &parsed.skipped);
                if let Some(id) = parsed.id {
                    if self.store.apply_service(&id, parsed.value) {
                        self.touch(id, at);
                    }
                }
            }
            Change::Delete(id) => {
                self.skips.deleted(ObjectKind::Service, &id);
                if self.store.apply_service(&id, None) {
                    self.touch(id, at);
                }
            }
        }
    }

    fn apply_slices(&mut self, change: Change<crate::model::SliceInfo>, at: Pending) {
        let touched = match change {
            Change::Replace(items) => {
                let values = self.take_values(ObjectKind::EndpointSlice, items);
                self.listed.slices = true;
                self.request_full_resync();
                self.store.replace_slices(values)
            }
            Change::Apply(parsed) => {
                self.note(&parsed.skipped);
                self.skips.read(
                    ObjectKind::EndpointSlice,
                    parsed.id.as_ref(),
                    &parsed.skipped,
                );
                match parsed.id {
                    Some(id) => self.store.apply_slice(&id, parsed.value),
                    None => Default::default(),
                }
            }
            Change::Delete(id) => {
                self.skips.deleted(ObjectKind::EndpointSlice, &id);
                self.store.apply_slice(&id, None)
            }
        };
        for (service, trigger) in touched {
            self.touch(service, Pending { trigger, ..at });
        }
    }

    fn apply_node(&mut self, change: Change<NodeInfo>) {
        match change {
            Change::Replace(mut items) => {
                let found = items.pop();
                self.skips.relisted(ObjectKind::Node);
                if let Some(parsed) = &found {
                    self.note(&parsed.skipped);
                    self.skips
                        .read(ObjectKind::Node, parsed.id.as_ref(), &parsed.skipped);
                }
                match found.and_then(|p| p.value) {
                    Some(info) => self.api_node = Some(info),
                    None => {
                        if self.config.expect_node && !self.listed.node {
                            warn!(
                                node = %self.config.node_name,
                                "no Node of this name in the API; serving with --node-ip/--pod-cidr/--zone only"
                            );
                        }
                    }
                }
                self.listed.node = true;
            }
            Change::Apply(parsed) => {
                if let Some(info) = parsed.value {
                    self.api_node = Some(info);
                }
            }
            Change::Delete(_) => {
                // The node is going away: keep what it said, but stop calling it eligible.
                let mut last = self.api_node.take().unwrap_or_default();
                last.eligible = false;
                self.api_node = Some(last);
            }
        }
        let node = ThisNode::merge(
            &self.config.node_name,
            self.api_node.as_ref(),
            &self.config.overrides,
        );
        self.health.set_node_eligible(node.eligible);
        if node != self.node {
            info!(
                node = %node.name,
                zone = node.zone.as_deref().unwrap_or("-"),
                addresses = ?node.ips,
                pod_cidrs = ?node.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                eligible = node.eligible,
                "node"
            );
            let settings = self.config.datapath.for_node(&node);
            if node.changes_frontends(&self.node) || settings != *self.syncer.settings() {
                self.request_full_resync();
            }
            self.syncer.set_settings(settings);
            self.node_tx.send_replace(node.clone());
            self.node = node;
        }
    }

    /// The values of a relist of `kind`, noting and recording what each left out.
    fn take_values<T>(&mut self, kind: ObjectKind, items: Vec<Parsed<T>>) -> Vec<T> {
        self.skips.relisted(kind);
        items
            .into_iter()
            .filter_map(|p| {
                self.note(&p.skipped);
                self.skips.read(kind, p.id.as_ref(), &p.skipped);
                p.value
            })
            .collect()
    }

    fn touch(&mut self, service: ObjectId, at: Pending) {
        self.dirty
            .entry(service)
            .and_modify(|p| p.merge(at))
            .or_insert(at);
    }

    /// Logs what was left out, and counts what was invalid.
    fn note(&self, skipped: &[Skipped]) {
        for s in skipped {
            if s.reason.is_by_design() {
                debug!("skipping {s}");
            } else {
                warn!("skipping {s}");
                self.metrics
                    .invalid_objects
                    .get_or_create(&SkipLabels {
                        kind: s.kind.name(),
                        reason: s.reason.label(),
                    })
                    .inc();
            }
        }
    }

    /// Brings the maps up to date, if the inputs are complete and anything changed.
    pub fn sync(&mut self) -> Result<Option<SyncReport>, SyncError> {
        if !self.is_ready() || !self.has_work() {
            return Ok(None);
        }
        let mode = if self.full.is_some() || !self.syncer.has_record() {
            SyncMode::Full
        } else {
            SyncMode::Incremental
        };
        let result = match mode {
            SyncMode::Full => self.sync_full(),
            SyncMode::Incremental => self.sync_incremental(),
        };
        if mode == SyncMode::Full {
            heap::trim();
        }
        match result {
            Ok(report) => {
                // As kube-proxy: the first programming is not a change being propagated.
                if self.synced_once {
                    self.observe_latencies(&report);
                }
                self.dirty.clear();
                self.full = None;
                self.synced_once = true;
                self.metrics
                    .sync_done(report.mode, report.duration, self.syncer.counts());
                self.health.updated(SystemTime::now());
                Ok(Some(report))
            }
            Err(e) => {
                // The maps are consistent but not current; start over from what they hold.
                self.full.get_or_insert_with(Instant::now);
                self.metrics.sync_failed(mode);
                Err(e)
            }
        }
    }

    fn sync_full(&mut self) -> Result<SyncReport, SyncError> {
        let mut index = DesiredIndex::default();
        let mut notes = Vec::new();
        let mut checks = HealthChecks::new();
        self.skips.clear_frontends();
        for svc in self.store.services() {
            let slices = self.store.slices_of(&svc.id);
            let (frontends, n) = service_frontends(svc, &slices, &self.node);
            self.skips.frontends(&svc.id, Some(&n));
            notes.extend(n);
            index.set_service(&svc.id, frontends);
            if let Some(check) = health_check(svc, &slices) {
                checks.insert(svc.id.clone(), check);
            }
        }
        self.publish_health_checks(|all| *all = checks);
        notes.extend(index.conflicts());
        self.note(&notes);
        self.index = index;
        let view = self.index.programmed();
        let report = self.syncer.full_sync(&view)?;
        if !self.syncer.has_record() {
            warn!("the maps did not match the plan after a full sync; the next sync is full again");
            self.full = Some(Instant::now());
        }
        Ok(report)
    }

    fn sync_incremental(&mut self) -> Result<SyncReport, SyncError> {
        let mut keys: BTreeSet<FrontendKey> = BTreeSet::new();
        let mut notes = Vec::new();
        let dirty: Vec<ObjectId> = self.dirty.keys().cloned().collect();
        let mut checks: Vec<(ObjectId, Option<HealthCheck>)> = Vec::new();
        for id in &dirty {
            match self.store.service(id) {
                Some(svc) => {
                    let slices = self.store.slices_of(id);
                    let (frontends, n) = service_frontends(svc, &slices, &self.node);
                    self.skips.frontends(id, Some(&n));
                    notes.extend(n);
                    keys.extend(self.index.set_service(id, frontends));
                    checks.push((id.clone(), health_check(svc, &slices)));
                }
                None => {
                    self.skips.frontends(id, None);
                    keys.extend(self.index.remove_service(id));
                    checks.push((id.clone(), None));
                }
            }
        }
        self.publish_health_checks(|all| {
            for (id, check) in checks {
                match check {
                    Some(c) => all.insert(id, c),
                    None => all.remove(&id),
                };
            }
        });
        notes.extend(self.index.conflicts_in(&keys));
        self.note(&notes);
        let index = &self.index;
        let changes: Vec<(FrontendKey, Option<&DesiredFrontend>)> = keys
            .iter()
            .map(|k| (*k, index.get(k).filter(|f| f.is_programmed())))
            .collect();
        self.syncer.sync_changes(&changes)
    }

    /// Applies `change` to the health checks; subscribers hear of it only if it changed
    /// anything.
    fn publish_health_checks(&self, change: impl FnOnce(&mut HealthChecks)) {
        self.health_checks.send_if_modified(|all| {
            let before = all.clone();
            change(all);
            *all != before
        });
    }

    /// One sample per touched service: from its trigger time (wall clock) when the slice
    /// had one, else from when the agent received the change, to the end of the writes. As
    /// kube-proxy does, trigger times from before the agent started are ignored (they date
    /// changes made while nothing was watching).
    fn observe_latencies(&self, report: &SyncReport) {
        let since_written = report.written_at.elapsed();
        let written_wall = Timestamp::now()
            .checked_sub(jiff_duration(since_written))
            .unwrap_or_else(|_| Timestamp::now());
        for pending in self.dirty.values() {
            let latency = match pending.trigger {
                Some(trigger) if trigger < self.started => continue,
                Some(trigger) => {
                    let d = written_wall.duration_since(trigger);
                    // A trigger time from a skewed clock in the future says nothing.
                    match Duration::try_from(d) {
                        Ok(d) => d,
                        Err(_) => continue,
                    }
                }
                None => report
                    .written_at
                    .saturating_duration_since(pending.received),
            };
            self.metrics
                .network_programming
                .observe(latency.as_secs_f64());
        }
    }

    /// The desired state, for `/state`.
    pub fn state(&self) -> State {
        let programmed = self.syncer.programmed();
        State {
            version: STATE_VERSION,
            node: NodeReport::new(&self.node),
            synced: self.synced_once,
            services: self.index.service_count(),
            frontends: self
                .index
                .frontends()
                .iter()
                .map(|(k, f)| {
                    let id = f
                        .is_programmed()
                        .then(|| programmed.and_then(|p| p.frontend(k)).map(|v| v.service_id))
                        .flatten();
                    report::frontend_report(k, f, id)
                })
                .collect(),
            attachments: self.attachments.borrow().clone(),
            skipped: self
                .skips
                .all(self.index.conflicts())
                .iter()
                .map(SkippedReport::from)
                .collect(),
        }
    }
}

fn jiff_duration(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO)
}

/// A request for the desired state, answered with it.
pub type StateRequest = oneshot::Sender<State>;

/// How [`run`] paces syncs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// No two syncs start closer together than this; changes meanwhile are batched.
    pub min_sync_period: Duration,
    /// A full resync every so often, to repair anything that edited the maps.
    pub full_resync_period: Option<Duration>,
    /// How soon a failed sync is retried.
    pub retry_interval: Duration,
    /// How long to wait for the Node before serving with the flags' node information.
    pub node_wait: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::ZERO,
            full_resync_period: Some(Duration::from_secs(3600)),
            retry_interval: Duration::from_secs(1),
            node_wait: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the source stopped")]
    SourceStopped,
}

/// Runs the pipeline until `shutdown` resolves: applies events as they come, syncs, and
/// answers state requests. `synced` turns true after the first successful sync.
pub async fn run<M: DatapathMaps>(
    pipeline: &mut Pipeline<M>,
    events: &mut EventReceiver,
    requests: &mut mpsc::Receiver<StateRequest>,
    options: &RunOptions,
    synced: &watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    tokio::pin!(shutdown);
    let node_deadline = Instant::now() + options.node_wait;
    let mut next_full = options.full_resync_period.map(|p| Instant::now() + p);
    let mut next_allowed = Instant::now();
    let mut retry_at = Instant::now();
    loop {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if !pipeline.node_listed() {
            at(node_deadline);
        }
        if let (Some(t), true) = (next_full, pipeline.synced_once()) {
            at(t);
        }
        if pipeline.has_work() && pipeline.is_ready() {
            at(next_allowed.max(retry_at));
        }
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            event = events.recv() => match event {
                Some(e) => {
                    pipeline.apply(e);
                    // Everything already queued goes into the same sync.
                    while let Ok(e) = events.try_recv() {
                        pipeline.apply(e);
                    }
                }
                None => return Err(PipelineError::SourceStopped),
            },
            Some(request) = requests.recv() => {
                let _ = request.send(pipeline.state());
            }
            () = sleep => {}
        }

        let now = Instant::now();
        if !pipeline.node_listed() && now >= node_deadline {
            pipeline.stop_waiting_for_node();
        }
        if let Some(t) = next_full {
            if pipeline.synced_once() && now >= t {
                pipeline.request_full_resync();
                next_full = options.full_resync_period.map(|p| now + p);
            }
        }
        if !(pipeline.has_work() && pipeline.is_ready()) || now < next_allowed || now < retry_at {
            continue;
        }
        next_allowed = now + options.min_sync_period;
        let first = !pipeline.synced_once();
        match blocking(|| pipeline.sync()) {
            Ok(Some(r)) => {
                log_sync(&r, pipeline);
                if first {
                    synced.send_replace(true);
                }
            }
            Ok(None) => {}
            Err(e) => {
                error!(
                    "sync failed, retrying in {:?}: {}",
                    options.retry_interval,
                    error_chain(&e)
                );
                retry_at = now + options.retry_interval;
            }
        }
    }
}

fn log_sync<M: DatapathMaps>(r: &SyncReport, pipeline: &Pipeline<M>) {
    let store = pipeline.store();
    let message = format!(
        "{} sync: {} frontends, {} backends: {} writes, {} conntrack entries cleared, in {:?} ({} services, {} slices)",
        r.mode.name(),
        r.frontends,
        r.backends,
        r.writes,
        r.conntrack_deleted,
        r.duration,
        store.service_count(),
        store.slice_count()
    );
    match r.mode {
        SyncMode::Full => info!("{message}"),
        SyncMode::Incremental => debug!("{message}"),
    }
}

/// Runs `f`, which may block for a while (a full sync of a large cluster), without stalling
/// the other tasks when the runtime has threads to spare.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
