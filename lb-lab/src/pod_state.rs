//! Pod readiness and termination, which the lab tracks in `<state_dir>/pods.json` in place of
//! kubelet and the API server.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// What the EndpointSlice controller would read from a pod's status and metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// The pod's Ready condition.
    pub ready: bool,
    /// Whether the pod has a deletion timestamp.
    pub terminating: bool,
}

impl Default for PodState {
    /// A running pod passing its readiness probe.
    fn default() -> Self {
        Self {
            ready: true,
            terminating: false,
        }
    }
}

/// Every pod's state by pod name; pods not listed are in the default state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodStates(BTreeMap<String, PodState>);

impl PodStates {
    /// All `pods` in the default state.
    pub fn all_default<'a>(pods: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            pods.into_iter()
                .map(|p| (p.to_string(), PodState::default()))
                .collect(),
        )
    }

    /// The state of pod `pod`.
    pub fn get(&self, pod: &str) -> PodState {
        self.0.get(pod).copied().unwrap_or_default()
    }

    /// Changes the state of pod `pod`.
    pub fn update(&mut self, pod: &str, change: impl FnOnce(&mut PodState)) {
        change(self.0.entry(pod.to_string()).or_default());
    }

    /// Reads `path`; a missing file means every pod is in the default state.
    ///
    /// # Errors
    /// If the file cannot be read or is not valid.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid pod state file", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes `path` atomically.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        write_atomic(path, &json).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pods_are_ready_and_not_terminating() {
        let states = PodStates::default();
        assert_eq!(states.get("worker-echo-1"), PodState::default());
        assert!(states.get("worker-echo-1").ready);
    }

    #[test]
    fn states_survive_a_save_and_load() {
        let path = std::env::temp_dir().join(format!("lb-lab-pods-{}.json", std::process::id()));
        let mut states = PodStates::all_default(["a", "b"]);
        states.update("b", |s| s.ready = false);
        states.save(&path).unwrap();
        let loaded = PodStates::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded, states);
        assert!(!loaded.get("b").ready);
    }
}
