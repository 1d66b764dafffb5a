//! Proxy health as kube-proxy reports it on `:10256/healthz`.
//!
//! Healthy means: the maps have been programmed at least once, and no change has been
//! waiting to be programmed for longer than the bound (kube-proxy uses twice its sync
//! period). An API server outage is not unhealthy: nothing is waiting, and the datapath
//! serves the last state. `/healthz` also reports 503 when the node is being deleted (load
//! balancers then drain it first); `/livez` ignores that.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    /// When the maps last caught up with every queued change.
    pub last_updated: Option<SystemTime>,
    /// When the oldest change not yet programmed was queued.
    pub oldest_pending: Option<SystemTime>,
    pub node_eligible: bool,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            last_updated: None,
            oldest_pending: None,
            node_eligible: true,
        }
    }
}

/// The answer to a health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub healthy: bool,
    /// kube-proxy's JSON body.
    pub body: String,
}

/// kube-proxy's body; field names and order as it prints them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: String,
    current_time: String,
    node_eligible: bool,
}

/// Shared between the pipeline (which reports progress) and the HTTP servers.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
    timeout: Duration,
}

impl Health {
    /// `timeout`: how long a change may wait before the proxy counts as unhealthy.
    pub fn new(timeout: Duration) -> Self {
        Self {
            state: Mutex::new(HealthState::default()),
            timeout,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HealthState) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain data behind: still usable.
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// A change arrived that is not programmed yet.
    pub fn queued(&self, at: SystemTime) {
        self.with(|s| {
            s.oldest_pending.get_or_insert(at);
        });
    }

    /// Everything queued so far is programmed.
    pub fn updated(&self, at: SystemTime) {
        self.with(|s| {
            s.last_updated = Some(at);
            s.oldest_pending = None;
        });
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.with(|s| s.node_eligible = eligible);
    }

    pub fn state(&self) -> HealthState {
        self.with(|s| *s)
    }

    /// `/healthz`.
    pub fn healthz(&self, now: SystemTime) -> Probe {
        evaluate(&self.state(), self.timeout, now, true)
    }

    /// `/livez`: as `/healthz`, but a node being deleted is still alive.
    pub fn livez(&self, now: SystemTime) -> Probe {
        evaluate(&self.state(), self.timeout, now, false)
    }
}

/// Evaluates `state` at `now`, the way kube-proxy's ProxierHealthServer does.
pub fn evaluate(
    state: &HealthState,
    timeout: Duration,
    now: SystemTime,
    check_node: bool,
) -> Probe {
    let stuck = state
        .oldest_pending
        .is_some_and(|at| now.duration_since(at).unwrap_or_default() > timeout);
    let synced = state.last_updated.is_some();
    let mut healthy = synced && !stuck;
    if check_node {
        healthy &= state.node_eligible;
    }
    // kube-proxy reports lastUpdated as the current time when healthy, for clients that
    // judge freshness by it.
    let last_updated = if healthy {
        Some(now)
    } else {
        state.last_updated
    };
    let body = Body {
        last_updated: last_updated.map_or_else(|| rfc3339(SystemTime::UNIX_EPOCH), rfc3339),
        current_time: rfc3339(now),
        node_eligible: state.node_eligible,
    };
    Probe {
        healthy,
        body: serde_json::to_string(&body).unwrap_or_default(),
    }
}

/// RFC 3339 in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn body(p: &Probe) -> serde_json::Value {
        serde_json::from_str(&p.body).expect("json body")
    }

    #[test]
    fn not_synced_yet_is_unhealthy() {
        let h = Health::new(BOUND);
        let p = h.healthz(at(0));
        assert!(!p.healthy);
        assert_eq!(body(&p)["lastUpdated"], "1970-01-01T00:00:00Z");
        assert_eq!(body(&p)["nodeEligible"], true);
    }

    #[test]
    fn synced_is_healthy_and_reports_the_current_time_as_last_updated() {
        let h = Health::new(BOUND);
        h.queued(at(0));
        h.updated(at(1));
        let p = h.healthz(at(500));
        assert!(p.healthy);
        let b = body(&p);
        assert_eq!(b["lastUpdated"], b["currentTime"]);
        assert_eq!(b["currentTime"], "2023-11-14T22:21:40Z");
        assert_eq!(
            b.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "currentTime".to_string(),
                "lastUpdated".into(),
                "nodeEligible".into()
            ])
        );
    }

    #[test]
    fn a_change_pending_longer_than_the_bound_is_unhealthy_until_programmed() {
        let h = Health::new(BOUND);
        h.updated(at(0));
        h.queued(at(10));
        h.queued(at(20)); // the oldest pending change counts
        assert!(h.healthz(at(70)).healthy);
        let stuck = h.healthz(at(71));
        assert!(!stuck.healthy);
        assert_eq!(body(&stuck)["lastUpdated"], "2023-11-14T22:13:20Z");
        h.updated(at(80));
        assert!(h.healthz(at(81)).healthy);
    }

    #[test]
    fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let h = Health::new(BOUND);
        h.updated(at(0));
        h.set_node_eligible(false);
        let p = h.healthz(at(1));
        assert!(!p.healthy);
        assert_eq!(body(&p)["nodeEligible"], false);
        assert!(h.livez(at(1)).healthy);
    }
}
