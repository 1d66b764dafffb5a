//! The conntrack garbage collector: what to delete from the datapath's conntrack tables,
//! and how often to look.
//!
//! The tables are preallocated hashes, not LRU ones, so that a full table refuses new flows
//! (`drop_ct_full`) instead of evicting live ones; nothing in the datapath removes an entry
//! merely because it expired. The collector does, as Cilium's agent does for its tables:
//! [`run`] walks both tables in batches, and for each entry [`decide`] says, from the entry
//! and the other half of its flow, whether it goes, stays, or (a live flow that lost its
//! reply entry) gets that entry back.
//!
//! A flow is its FORWARD entry. Its REPLY entry is alive exactly while the forward entry
//! exists, has not expired and still maps onto it ([`CtKey::owns_reply`]); the collector
//! never deletes an entry of a live flow, and never a reply entry younger than
//! [`ORPHAN_GRACE_NS`]: the datapath writes a new flow's reply entry before its forward
//! entry, and when a new flow replaces an expired one on the same client tuple, the new
//! reply entry stands next to the old forward entry until the new one overwrites it.
//!
//! How often: [`Interval`], Cilium's adaptive rule plus a floor for fuller tables.

pub mod run;

use std::{sync::Mutex, time::Duration};

use lb_common::{
    conntrack::{dir, CtTimeouts},
    CtEntry, CtKey,
};

pub use lb_common::conntrack::ORPHAN_GRACE_NS;

/// Why an entry was deleted (the `reason` label of `lb_conntrack_gc_deleted_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeleteReason {
    /// Its flow was idle longer than its state's timeout (both entries of the flow).
    Expired,
    /// A reply entry no live flow owns: its forward entry is gone, or has moved on to
    /// another reply tuple.
    Orphan,
}

impl DeleteReason {
    pub const ALL: [DeleteReason; 2] = [DeleteReason::Expired, DeleteReason::Orphan];

    pub const fn label(self) -> &'static str {
        match self {
            DeleteReason::Expired => "expired",
            DeleteReason::Orphan => "orphan",
        }
    }
}

/// What becomes of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Delete the entry, and `with` as well (key and the value it was decided on): the
    /// other half of the same dead flow.
    Delete {
        reason: DeleteReason,
        with: Option<(CtKey, CtEntry)>,
    },
    /// A live flow whose reply entry is missing: insert this one, only if the key is still
    /// free (a racing datapath insert wins).
    Repair {
        key: CtKey,
        entry: CtEntry,
    },
}

/// The key of the other half of `key`'s flow: the reply key a forward entry maps onto, or
/// the forward key of the flow a reply entry belongs to. Both live in the same table. None
/// for an entry of no known direction, which the collector leaves alone.
pub fn partner_of(key: &CtKey, entry: &CtEntry) -> Option<CtKey> {
    match key.dir {
        dir::FORWARD => Some(key.reply_of_forward(entry)),
        dir::REPLY => Some(key.forward_of_reply(entry)),
        _ => None,
    }
}

/// What to do with `entry` (at `key`) at `now` (CLOCK_MONOTONIC ns), given the entry at
/// [`partner_of`] its key (`partner`, as looked up) and the datapath's timeouts `t`.
pub fn decide(
    key: &CtKey,
    entry: &CtEntry,
    partner: Option<&CtEntry>,
    now: u64,
    t: &CtTimeouts,
) -> Decision {
    match key.dir {
        dir::FORWARD => decide_forward(key, entry, partner, now, t),
        dir::REPLY => decide_reply(key, entry, partner, now, t),
        _ => Decision::Keep,
    }
}

/// True when `key` (with `entry`) and its partner (`partner_key`, with `partner`) are both
/// halves of one live flow, pointing at each other: then [`decide`] keeps the partner too
/// when its own turn comes, so a walk that has seen this pair need not look it up again.
pub fn live_pair(
    key: &CtKey,
    entry: &CtEntry,
    partner_key: &CtKey,
    partner: &CtEntry,
    now: u64,
    t: &CtTimeouts,
) -> bool {
    match key.dir {
        dir::FORWARD => {
            !entry.is_expired(key.proto, now, t) && partner_key.forward_of_reply(partner) == *key
        }
        dir::REPLY => {
            key.forward_of_reply(entry) == *partner_key
                && partner_key.owns_reply(partner, key)
                && !partner.is_expired(key.proto, now, t)
        }
        _ => false,
    }
}

/// True when a reply entry is too young to be judged: it may belong to a flow the datapath
/// is creating right now.
fn in_grace(reply: &CtEntry, now: u64) -> bool {
    now.saturating_sub(reply.created_ns) < ORPHAN_GRACE_NS
}

fn decide_forward(
    key: &CtKey,
    fwd: &CtEntry,
    reply: Option<&CtEntry>,
    now: u64,
    t: &CtTimeouts,
) -> Decision {
    let reply_key = key.reply_of_forward(fwd);
    if fwd.is_expired(key.proto, now, t) {
        // The reply entry goes with it only if it is still this flow's: once a closed flow
        // released its reply tuple, a new flow may have claimed it (same backend, same
        // client port) while the old forward entry waited out its close timeout.
        let with = reply
            .filter(|r| reply_key.forward_of_reply(r) == *key && !in_grace(r, now))
            .map(|r| (reply_key, *r));
        return Decision::Delete {
            reason: DeleteReason::Expired,
            with,
        };
    }
    match reply {
        Some(_) => Decision::Keep,
        // A closed flow is finishing: the datapath itself gives its reply tuple up when the
        // client reopens the tuple, and a repair would only fight that.
        None if fwd.state(key.proto).is_closed() => Decision::Keep,
        None => Decision::Repair {
            key: reply_key,
            entry: key.reply_entry(fwd),
        },
    }
}

fn decide_reply(
    key: &CtKey,
    reply: &CtEntry,
    fwd: Option<&CtEntry>,
    now: u64,
    t: &CtTimeouts,
) -> Decision {
    if in_grace(reply, now) {
        return Decision::Keep;
    }
    let fwd_key = key.forward_of_reply(reply);
    let orphan = Decision::Delete {
        reason: DeleteReason::Orphan,
        with: None,
    };
    let Some(fwd) = fwd else {
        return orphan;
    };
    if !fwd_key.owns_reply(fwd, key) {
        // The forward entry is another flow's now (a reopened tuple with another backend or
        // source port), or maps elsewhere: this reply entry belongs to nobody. The forward
        // entry is judged on its own.
        return orphan;
    }
    if fwd.is_expired(key.proto, now, t) {
        return Decision::Delete {
            reason: DeleteReason::Expired,
            with: Some((fwd_key, *fwd)),
        };
    }
    Decision::Keep
}

/// How the pause between two rounds (walks of both tables) is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalPolicy {
    /// A fixed pause (`--conntrack-gc-interval`), or None for the adaptive one.
    pub fixed: Option<Duration>,
    /// The adaptive pause's first value.
    pub start: Duration,
    pub min: Duration,
    /// `--conntrack-gc-max-interval`.
    pub max: Duration,
}

impl IntervalPolicy {
    pub const START: Duration = Duration::from_secs(10);
    pub const MIN: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(300);

    /// The policy of the agent's flags: `interval` zero means adaptive, up to `max`.
    pub fn from_flags(interval: Duration, max: Duration) -> Self {
        let max = max.max(Self::MIN);
        Self {
            fixed: (!interval.is_zero()).then_some(interval),
            start: Self::START.clamp(Self::MIN, max),
            min: Self::MIN,
            max,
        }
    }
}

impl Default for IntervalPolicy {
    fn default() -> Self {
        Self::from_flags(Duration::ZERO, Self::MAX)
    }
}

/// A table fuller than this, whose last round deleted something, gets the next round after
/// the minimum pause: with a preallocated table, running full means refusing new flows, so
/// expired entries must not wait out a long interval.
pub const FULL_FILL: f64 = 0.5;

/// The adaptive pause between rounds, as Cilium's `calculateInterval`
/// (pkg/maps/ctmap/gc): shorter when a round deleted much of a table, longer when it
/// deleted little.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    policy: IntervalPolicy,
    current: Duration,
}

impl Interval {
    pub fn new(policy: IntervalPolicy) -> Self {
        Self {
            current: policy.fixed.unwrap_or(policy.start),
            policy,
        }
    }

    /// The adaptive interval as it stands (what a round without news would wait).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The pause before the next round, after a round that deleted `delete_ratio` (deleted
    /// / max_entries, the highest over the tables) and left the fullest table at `fill`.
    /// `since_last` is how long the round's deletions had to accumulate (since the end of
    /// the previous round); a round woken early by the datapath's drop counters has its
    /// ratio scaled up to what a full interval would have collected, as Cilium does, so
    /// early rounds do not stretch the interval.
    pub fn after_round(
        &mut self,
        delete_ratio: f64,
        fill: f64,
        since_last: Option<Duration>,
    ) -> Duration {
        if let Some(fixed) = self.policy.fixed {
            return fixed;
        }
        let mut ratio = delete_ratio;
        if let Some(actual) = since_last.filter(|a| !a.is_zero() && *a < self.current) {
            ratio *= self.current.as_secs_f64() / actual.as_secs_f64();
        }
        self.current = next_interval(self.current, ratio, self.policy.min, self.policy.max);
        // Only while rounds still find something to delete: a table full of live flows is
        // not helped by walking it every second (the drop counters wake the GC anyway).
        if fill > FULL_FILL && delete_ratio > 0.0 {
            self.policy.min
        } else {
            self.current
        }
    }
}

/// Cilium's rule. Unlike Cilium, a round that deleted nothing lengthens the interval too
/// (Cilium keeps it): an idle table costs a walk per interval for nothing, and a table that
/// fills up is caught by [`FULL_FILL`] and the datapath's drop counters instead.
pub fn next_interval(prev: Duration, ratio: f64, min: Duration, max: Duration) -> Duration {
    let secs = prev.as_secs_f64();
    let next = if ratio > 0.25 {
        // 25 % .. 90 % deleted: 1.3 to 10 times shorter.
        secs * (1.0 - ratio.min(0.9))
    } else if ratio < 0.05 {
        // Grows slowly: a new node's tables are empty before its workloads arrive.
        secs * 1.5
    } else {
        secs
    };
    // Whole seconds, as Cilium rounds.
    Duration::from_secs(next.round() as u64).clamp(min, max.max(min))
}

/// One table's share of a pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableReport {
    /// lb_common::maps::CONNTRACK_TCP or CONNTRACK_ANY.
    pub name: &'static str,
    pub max_entries: u32,
    /// Entries the walk read in this pass.
    pub seen: u64,
    pub deleted_expired: u64,
    pub deleted_orphan: u64,
    pub repaired: u64,
    /// The walk reached the end of the table in this pass.
    pub finished: bool,
    /// Entries the table's last complete walk found and left in place (set in the pass
    /// that finished it, and kept until the next one does); None before the first.
    pub entries: Option<u64>,
    /// Entries deleted over the table's whole walk (which may span passes), set when
    /// `finished`.
    pub walk_deleted: u64,
}

impl TableReport {
    pub fn deleted(&self) -> u64 {
        self.deleted_expired + self.deleted_orphan
    }

    pub fn deleted_for(&self, reason: DeleteReason) -> u64 {
        match reason {
            DeleteReason::Expired => self.deleted_expired,
            DeleteReason::Orphan => self.deleted_orphan,
        }
    }

    /// `entries` / `max_entries`.
    pub fn fill(&self) -> Option<f64> {
        let n = self.entries?;
        Some(n as f64 / f64::from(self.max_entries.max(1)))
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// TCP, then every other protocol.
    pub tables: Vec<TableReport>,
    /// Wall-clock time of the pass.
    pub duration: Duration,
    /// CPU time of the pass's thread (user and system), syscalls included.
    pub cpu: Duration,
    /// Every table's walk is complete: the next pass starts a new round.
    pub round_complete: bool,
}

impl PassReport {
    pub fn seen(&self) -> u64 {
        self.tables.iter().map(|t| t.seen).sum()
    }

    pub fn deleted(&self) -> u64 {
        self.tables.iter().map(TableReport::deleted).sum()
    }

    pub fn repaired(&self) -> u64 {
        self.tables.iter().map(|t| t.repaired).sum()
    }

    /// The round's highest deleted / max_entries over the tables (meaningful when the
    /// round is complete).
    pub fn delete_ratio(&self) -> f64 {
        self.tables
            .iter()
            .map(|t| t.walk_deleted as f64 / f64::from(t.max_entries.max(1)))
            .fold(0.0, f64::max)
    }

    /// The fullest table's fill, from the last complete walks.
    pub fn max_fill(&self) -> f64 {
        self.tables
            .iter()
            .filter_map(TableReport::fill)
            .fold(0.0, f64::max)
    }
}

/// The collector's latest entry count per table, shared with the metrics' map fill levels
/// (`lb_map_entries`), which used to walk the tables themselves.
#[derive(Debug, Default)]
pub struct EntryCounts(Mutex<Vec<(&'static str, u64)>>);

impl EntryCounts {
    pub fn set(&self, table: &'static str, entries: u64) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match counts.iter_mut().find(|(name, _)| *name == table) {
            Some(slot) => slot.1 = entries,
            None => counts.push((table, entries)),
        }
    }

    /// `(table, entries)` of every table counted so far.
    pub fn get(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests;
