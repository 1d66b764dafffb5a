//! Running the collector: bounded passes over the pinned tables, and the thread that
//! schedules them.
//!
//! A pass walks each table with batch lookups from where the previous pass stopped, looks
//! each entry's partner up (the other half of its flow, in the same table), and deletes
//! what [`decide`] condemns in batches. A pass ends when its time budget is spent; the
//! walks resume there next time (a bucket index, which no concurrent change invalidates).
//! A round is one complete walk of every table: the interval is chosen between rounds, and
//! an unfinished round continues after the minimum pause.
//!
//! Deleting races the datapath, which may touch or replace an entry between the walk's
//! read and the delete. Each entry to delete is therefore read again just before it is
//! deleted and kept if it changed at all (a packet stamped it, or a new flow took the key):
//! a live flow is never deleted on the strength of an old read. What is left is the few
//! microseconds between that read and the delete, which nothing closes: BPF hash maps have
//! no compare-and-delete.

use std::{
    collections::HashSet,
    io,
    path::Path,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{maps as names, Config, CtEntry, CtKey, CtTimeouts, Reason};
use tracing::{debug, info, warn};

use super::{
    decide, live_pair, partner_of, Decision, DeleteReason, EntryCounts, Interval, IntervalPolicy,
    PassReport, TableReport,
};
use crate::{
    ctl::monotonic_ns,
    datapath::maps::{
        aya::{open_pinned, typed},
        batch::{BatchMap, Cursor, Walk, BPF_NOEXIST},
        MapsError,
    },
    error_chain::error_chain,
    serve::metrics::Metrics,
};

/// Entries read per batch lookup: large enough that syscalls are a small part of a pass,
/// small enough that the buffers stay near 256 KiB and a budget is checked often.
pub const BATCH: usize = 4096;
/// How long one pass may run by default ([`GcOptions::budget`]): a million entries fit in
/// well under that, and a larger table is finished by the next passes.
pub const BUDGET: Duration = Duration::from_secs(1);
/// Entries confirmed (read again) and then deleted together: few enough that the first of
/// them is deleted well under a millisecond after its confirming read.
const DELETE_GROUP: usize = 256;
/// The most keys a round remembers as vouched for ([`Collector`]'s `vouched`), about 16 MiB:
/// past that the walk looks partners up, as it would without.
const VOUCHED_MAX: usize = 1 << 19;
/// How often the datapath's drop counters are read between passes.
const PRESSURE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("{op} on {map} failed")]
    Io {
        map: &'static str,
        op: &'static str,
        source: io::Error,
    },
    #[error("cannot read the datapath's config ({map})", map = names::CONFIG)]
    Config(#[source] aya::maps::MapError),
    #[error("cannot read CLOCK_MONOTONIC")]
    Clock(#[source] nix::Error),
    #[error("cannot start the conntrack GC thread")]
    Spawn(#[source] io::Error),
}

fn io_err(map: &'static str, op: &'static str) -> impl FnOnce(io::Error) -> GcError {
    move |source| GcError::Io { map, op, source }
}

/// One table and where its walk stands.
#[derive(Debug)]
struct Table {
    name: &'static str,
    map: BatchMap<CtKey, CtEntry>,
    cursor: Cursor,
    /// This round's walk has reached the end of the table.
    done: bool,
    /// Entries this round's walk deleted, and entries it read and left in place.
    walk_deleted: u64,
    walk_kept: u64,
    /// What the last complete walk left in place.
    entries: Option<u64>,
}

/// An entry to delete, with the value it was condemned on.
#[derive(Clone, Copy, Debug)]
struct Doomed {
    key: CtKey,
    entry: CtEntry,
    reason: DeleteReason,
    /// Read by this chunk's batch lookup (rather than looked up as a partner).
    in_chunk: bool,
}

/// Buffers reused from chunk to chunk.
#[derive(Debug, Default)]
struct Scratch {
    keys: Vec<CtKey>,
    values: Vec<CtEntry>,
    doomed: Vec<Doomed>,
    repairs: Vec<(CtKey, CtEntry)>,
    confirmed: Vec<CtKey>,
    confirmed_at: Vec<usize>,
}

/// The collector over the tables pinned in one directory, with its own file descriptors.
pub struct Collector {
    tables: Vec<Table>,
    config: Array<MapData, Config>,
    batch: usize,
    scratch: Scratch,
    /// Keys ahead of the walk whose partner the walk has already seen as one live flow
    /// with them ([`live_pair`]): they are kept without a lookup when their turn comes,
    /// which halves the lookups of a table of live flows. Cleared with each round.
    vouched: HashSet<CtKey>,
}

impl Collector {
    /// Opens both conntrack tables and the config pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, GcError> {
        let tables = names::CONNTRACK
            .into_iter()
            .map(|name| {
                Ok(Table {
                    name,
                    map: BatchMap::open_pinned(pin_dir, name)?,
                    cursor: Cursor::START,
                    done: false,
                    walk_deleted: 0,
                    walk_kept: 0,
                    entries: None,
                })
            })
            .collect::<Result<_, MapsError>>()?;
        Ok(Self {
            tables,
            config: typed(names::CONFIG, open_pinned(pin_dir, names::CONFIG)?)?,
            batch: BATCH,
            scratch: Scratch::default(),
            vouched: HashSet::new(),
        })
    }

    /// Entries per batch lookup instead of [`BATCH`].
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The timeouts the datapath applies now (the agent writes them with its config).
    fn timeouts(&self) -> Result<CtTimeouts, GcError> {
        Ok(self.config.get(&0, 0).map_err(GcError::Config)?.ct_timeouts)
    }

    /// One pass: continues each table's walk for a share of `budget` (at least one batch
    /// each, so every pass makes progress). Starts a new round when the last one is
    /// complete.
    pub fn pass(&mut self, budget: Duration) -> Result<PassReport, GcError> {
        let started = Instant::now();
        let cpu_started = thread_cpu_time();
        if self.tables.iter().all(|t| t.done) {
            for t in &mut self.tables {
                t.done = false;
                t.walk_deleted = 0;
                t.walk_kept = 0;
            }
            self.vouched.clear();
        }
        let timeouts = self.timeouts()?;
        let deadline = started + budget;
        let mut reports = Vec::with_capacity(self.tables.len());
        for i in 0..self.tables.len() {
            let left = self.tables[i..].iter().filter(|t| !t.done).count() as u32;
            let table = &mut self.tables[i];
            let mut report = TableReport {
                name: table.name,
                max_entries: table.map.max_entries(),
                ..Default::default()
            };
            if !table.done {
                // An even share of what is left, so a huge first table cannot starve the
                // second; what one table leaves unused goes to the next.
                let now = Instant::now();
                let share = deadline.saturating_duration_since(now) / left.max(1);
                walk(
                    table,
                    now + share,
                    &timeouts,
                    self.batch,
                    &mut self.scratch,
                    &mut self.vouched,
                    &mut report,
                )?;
            }
            report.entries = table.entries;
            reports.push(report);
        }
        Ok(PassReport {
            round_complete: self.tables.iter().all(|t| t.done),
            tables: reports,
            duration: started.elapsed(),
            cpu: thread_cpu_time().saturating_sub(cpu_started),
        })
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("tables", &self.tables)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// One pass over the tables pinned under `pin_dir`, from their start, for benchmarks and
/// tools: the agent keeps one [`Collector`] so that its walks resume.
pub fn pass(pin_dir: &Path, budget: Duration) -> Result<PassReport, GcError> {
    Collector::open(pin_dir)?.pass(budget)
}

/// Continues `table`'s walk until `deadline` (after at least one batch) or its end.
fn walk(
    table: &mut Table,
    deadline: Instant,
    t: &CtTimeouts,
    batch: usize,
    s: &mut Scratch,
    vouched: &mut HashSet<CtKey>,
    report: &mut TableReport,
) -> Result<(), GcError> {
    let name = table.name;
    loop {
        let step = table
            .map
            .lookup_batch(&mut table.cursor, batch, &mut s.keys, &mut s.values)
            .map_err(io_err(name, "batch lookup"))?;
        let now = monotonic_ns().map_err(GcError::Clock)?;
        report.seen += s.keys.len() as u64;
        s.doomed.clear();
        s.repairs.clear();
        for (key, entry) in s.keys.iter().zip(&s.values) {
            // Its partner, seen earlier in this round, showed the two as one live flow. That
            // was at most a pass ago, far below any timeout: a flow that expired since is
            // collected next round.
            if vouched.remove(key) {
                continue;
            }
            let Some(partner_key) = partner_of(key, entry) else {
                continue;
            };
            let partner = table
                .map
                .lookup(&partner_key)
                .map_err(io_err(name, "lookup"))?;
            match decide(key, entry, partner.as_ref(), now, t) {
                Decision::Keep => {
                    if let Some(p) = &partner {
                        if vouched.len() < VOUCHED_MAX
                            && live_pair(key, entry, &partner_key, p, now, t)
                        {
                            vouched.insert(partner_key);
                        }
                    }
                }
                Decision::Delete { reason, with } => {
                    s.doomed.push(Doomed {
                        key: *key,
                        entry: *entry,
                        reason,
                        in_chunk: true,
                    });
                    if let Some((key, entry)) = with {
                        s.doomed.push(Doomed {
                            key,
                            entry,
                            reason,
                            in_chunk: false,
                        });
                    }
                }
                Decision::Repair { key, entry } => s.repairs.push((key, entry)),
            }
        }
        for (key, entry) in &s.repairs {
            // NOEXIST: a flow the datapath created on that tuple meanwhile keeps it. A full
            // table refuses the insert (E2BIG); the flow's next packet repairs it once room
            // is made.
            match table.map.update(key, entry, BPF_NOEXIST) {
                Ok(true) => report.repaired += 1,
                Ok(false) => {}
                Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {}
                Err(e) => return Err(io_err(name, "update")(e)),
            }
        }
        let deleted_in_chunk = delete_confirmed(table, s, report)?;
        table.walk_kept += s.keys.len() as u64 - deleted_in_chunk;
        if step == Walk::End {
            table.done = true;
            table.entries = Some(table.walk_kept);
            report.finished = true;
            report.walk_deleted = table.walk_deleted;
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// Deletes the chunk's doomed entries that are still exactly as they were decided on.
/// Returns how many of the deleted ones the chunk itself had read.
fn delete_confirmed(
    table: &mut Table,
    s: &mut Scratch,
    report: &mut TableReport,
) -> Result<u64, GcError> {
    let name = table.name;
    // Both halves of a flow can be condemned twice when both are in the chunk.
    s.doomed.sort_unstable_by_key(|d| d.key);
    s.doomed.dedup_by(|later, first| {
        let same = later.key == first.key;
        if same {
            first.in_chunk |= later.in_chunk;
        }
        same
    });
    let mut deleted_in_chunk = 0;
    for group in s.doomed.chunks(DELETE_GROUP) {
        s.confirmed.clear();
        s.confirmed_at.clear();
        for (i, d) in group.iter().enumerate() {
            if table
                .map
                .lookup(&d.key)
                .map_err(io_err(name, "lookup"))?
                .is_some_and(|now| now == d.entry)
            {
                s.confirmed.push(d.key);
                s.confirmed_at.push(i);
            }
        }
        let absent = table
            .map
            .delete_batch(&s.confirmed)
            .map_err(io_err(name, "batch delete"))?;
        for (j, &i) in s.confirmed_at.iter().enumerate() {
            // Gone already: the datapath (or a flush) deleted it between the two calls.
            if absent.contains(&j) {
                continue;
            }
            let d = &group[i];
            match d.reason {
                DeleteReason::Expired => report.deleted_expired += 1,
                DeleteReason::Orphan => report.deleted_orphan += 1,
            }
            table.walk_deleted += 1;
            deleted_in_chunk += u64::from(d.in_chunk);
        }
    }
    Ok(deleted_in_chunk)
}

/// CPU time of the calling thread (user and system).
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// The collector's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcOptions {
    pub interval: IntervalPolicy,
    /// How long one pass may run.
    pub budget: Duration,
    /// Entries per batch lookup.
    pub batch: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            interval: IntervalPolicy::default(),
            budget: BUDGET,
            batch: BATCH,
        }
    }
}

/// The datapath's signals that a table needs room now: new flows refused because a
/// conntrack table is full, or because every source port of a backend is held (expired
/// flows may hold some), as Cilium's datapath signals wake its GC.
struct Pressure {
    counters: PerCpuArray<MapData, u64>,
    last: Option<u64>,
}

impl Pressure {
    fn open(pin_dir: &Path) -> Result<Self, MapsError> {
        let mut p = Self {
            counters: typed(names::COUNTERS, open_pinned(pin_dir, names::COUNTERS)?)?,
            last: None,
        };
        p.last = p.read();
        Ok(p)
    }

    fn read(&self) -> Option<u64> {
        [Reason::DropCtFull, Reason::DropSnatExhausted]
            .into_iter()
            .map(|r| {
                let per_cpu = self.counters.get(&(r as u32), 0).ok()?;
                Some(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
            })
            .sum()
    }

    /// True when either counter grew since the last call.
    fn grew(&mut self) -> bool {
        let now = self.read();
        let grew = matches!((self.last, now), (Some(last), Some(now)) if now > last);
        if now.is_some() {
            self.last = now;
        }
        grew
    }
}

/// The running collector; dropping it stops the thread (after the pass under way).
#[derive(Debug)]
pub struct GcHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for GcHandle {
    fn drop(&mut self) {
        // Disconnecting the channel is the stop signal.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the collector on the tables pinned under `pin_dir`, on a thread of its own (a
/// pass is a second of syscalls, which must not hold an async worker). The first pass runs
/// at once: the datapath may have run for long without an agent collecting.
pub fn spawn(
    pin_dir: &Path,
    options: GcOptions,
    metrics: Arc<Metrics>,
    counts: Arc<EntryCounts>,
) -> Result<GcHandle, GcError> {
    let collector = Collector::open(pin_dir)?.with_batch(options.batch);
    let pressure = Pressure::open(pin_dir)
        .inspect_err(|e| {
            warn!(
                "{}; the conntrack GC runs on its interval only",
                error_chain(e)
            )
        })
        .ok();
    let (stop, stopped) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("conntrack-gc".into())
        .spawn(move || run(collector, pressure, options, &metrics, &counts, &stopped))
        .map_err(GcError::Spawn)?;
    Ok(GcHandle {
        stop: Some(stop),
        thread: Some(thread),
    })
}

enum Wake {
    Due,
    Pressure,
    Stop,
}

/// Waits `wait`, or less when the datapath signals pressure or the handle is dropped.
fn sleep(stopped: &mpsc::Receiver<()>, wait: Duration, pressure: &mut Option<Pressure>) -> Wake {
    let until = Instant::now() + wait;
    loop {
        match stopped.try_recv() {
            Err(mpsc::TryRecvError::Empty) => {}
            _ => return Wake::Stop,
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wake::Due;
        }
        match stopped.recv_timeout(left.min(PRESSURE_POLL)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return Wake::Stop,
        }
        if pressure.as_mut().is_some_and(Pressure::grew) {
            return Wake::Pressure;
        }
    }
}

fn run(
    mut collector: Collector,
    mut pressure: Option<Pressure>,
    options: GcOptions,
    metrics: &Metrics,
    counts: &EntryCounts,
    stopped: &mpsc::Receiver<()>,
) {
    let mut interval = Interval::new(options.interval);
    let mut wait = Duration::ZERO;
    let mut last_round: Option<Instant> = None;
    metrics.conntrack_gc.set_interval(interval.current());
    loop {
        let woken = match sleep(stopped, wait, &mut pressure) {
            Wake::Stop => return,
            Wake::Due => false,
            Wake::Pressure => true,
        };
        let report = match collector.pass(options.budget) {
            Ok(report) => report,
            Err(e) => {
                warn!("conntrack GC: {}", error_chain(&e));
                wait = interval.current();
                continue;
            }
        };
        metrics.conntrack_gc.record(&report);
        for t in report.tables.iter().filter(|t| t.finished) {
            if let Some(n) = t.entries {
                counts.set(t.name, n);
            }
        }
        wait = if report.round_complete {
            let now = Instant::now();
            let since = last_round.map(|at| now - at);
            last_round = Some(now);
            interval.after_round(report.delete_ratio(), report.max_fill(), since)
        } else {
            // The walks stopped on the budget: finish the round soon.
            options.interval.min
        };
        metrics.conntrack_gc.set_interval(wait);
        log_pass(&report, woken, wait);
    }
}

fn log_pass(report: &PassReport, woken: bool, wait: Duration) {
    let [tcp, any] = [0, 1].map(|i| report.tables.get(i).cloned().unwrap_or_default());
    debug!(
        seen = report.seen(),
        deleted = report.deleted(),
        repaired = report.repaired(),
        ms = report.duration.as_millis() as u64,
        cpu_ms = report.cpu.as_millis() as u64,
        round_complete = report.round_complete,
        woken_by_drops = woken,
        next_s = wait.as_secs_f64(),
        "conntrack GC pass"
    );
    if report.deleted() > 0 {
        info!(
            tcp_expired = tcp.deleted_expired,
            tcp_orphan = tcp.deleted_orphan,
            other_expired = any.deleted_expired,
            other_orphan = any.deleted_orphan,
            repaired = report.repaired(),
            tcp_entries = tcp.entries,
            other_entries = any.entries,
            "conntrack GC deleted entries"
        );
    }
}

#[cfg(test)]
mod tests;
