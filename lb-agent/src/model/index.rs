//! Every service's frontends, and which service owns an address that several claim.
//!
//! Two services can claim the same address (a ClusterIP reused before the old Service is
//! gone from our view, two Services listing one externalIP). The one first by
//! namespace/name wins, whatever order they arrived in, so that the outcome never depends
//! on event order and the loser takes over when the winner goes. Each service's frontends
//! are kept even where it loses, so that a change of owner needs no recomputation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::FrontendKey;

use super::{DesiredFrontend, DesiredState, ObjectId, ObjectKind, SkipReason, Skipped};

#[derive(Clone, Debug, Default)]
pub struct DesiredIndex {
    by_service: HashMap<ObjectId, Vec<(FrontendKey, DesiredFrontend)>>,
    /// Services claiming each key, sorted: the first owns it.
    claims: HashMap<FrontendKey, Vec<ObjectId>>,
}

impl DesiredIndex {
    /// Replaces the frontends of `service`; returns the keys whose owning frontend may have
    /// changed (every key it had or has).
    pub fn set_service(
        &mut self,
        service: &ObjectId,
        frontends: Vec<(FrontendKey, DesiredFrontend)>,
    ) -> BTreeSet<FrontendKey> {
        let mut changed = self.remove_service(service);
        if frontends.is_empty() {
            return changed;
        }
        for (key, _) in &frontends {
            changed.insert(*key);
            let claimants = self.claims.entry(*key).or_default();
            if let Err(at) = claimants.binary_search(service) {
                claimants.insert(at, service.clone());
            }
        }
        self.by_service.insert(service.clone(), frontends);
        changed
    }

    /// Forgets `service`; returns the keys it claimed.
    pub fn remove_service(&mut self, service: &ObjectId) -> BTreeSet<FrontendKey> {
        let Some(old) = self.by_service.remove(service) else {
            return BTreeSet::new();
        };
        let mut keys = BTreeSet::new();
        for (key, _) in old {
            keys.insert(key);
            if let Some(claimants) = self.claims.get_mut(&key) {
                claimants.retain(|s| s != service);
                if claimants.is_empty() {
                    self.claims.remove(&key);
                }
            }
        }
        keys
    }

    /// The frontend that owns `key`, if any service claims it.
    pub fn get(&self, key: &FrontendKey) -> Option<&DesiredFrontend> {
        let owner = self.claims.get(key)?.first()?;
        self.by_service
            .get(owner)?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f)
    }

    /// Every owned frontend, by key.
    pub fn frontends(&self) -> BTreeMap<FrontendKey, &DesiredFrontend> {
        self.claims
            .keys()
            .filter_map(|k| self.get(k).map(|f| (*k, f)))
            .collect()
    }

    /// The programmed frontends ([`DesiredFrontend::is_programmed`]), by key.
    pub fn programmed(&self) -> BTreeMap<FrontendKey, &DesiredFrontend> {
        let mut all = self.frontends();
        all.retain(|_, f| f.is_programmed());
        all
    }

    pub fn service_count(&self) -> usize {
        self.by_service.len()
    }

    /// An owned copy of every owned frontend.
    pub fn to_state(&self) -> DesiredState {
        DesiredState {
            frontends: self
                .frontends()
                .into_iter()
                .map(|(k, f)| (k, f.clone()))
                .collect(),
        }
    }

    /// The frontends that lost `keys` (all keys when `None`) to another service.
    pub fn conflicts_in<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a FrontendKey>,
    ) -> Vec<Skipped> {
        let mut out = Vec::new();
        for key in keys {
            let Some(claimants) = self.claims.get(key) else {
                continue;
            };
            let Some(winner) = self.get(key) else {
                continue;
            };
            for loser in claimants.iter().skip(1) {
                let Some(f) = self
                    .by_service
                    .get(loser)
                    .and_then(|fs| fs.iter().find(|(k, _)| k == key))
                    .map(|(_, f)| f)
                else {
                    continue;
                };
                out.push(Skipped {
                    object: format!("Service {} port {}", f.service, f.port_label()),
                    kind: ObjectKind::Service,
                    reason: SkipReason::DuplicateFrontend(winner.name.clone()),
                });
            }
        }
        out
    }

    /// Every frontend that lost its key to another service.
    pub fn conflicts(&self) -> Vec<Skipped> {
        let keys: Vec<FrontendKey> = self
            .claims
            .iter()
            .filter(|(_, c)| c.len() > 1)
            .map(|(k, _)| *k)
            .collect();
        self.conflicts_in(&keys)
    }
}
