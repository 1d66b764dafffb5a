//! What the agent leaves out now, and why, for `/state` (`lbctl services --skipped`).
//!
//! Skips come from two places: reading an object ([`crate::model::Parsed::skipped`]), kept
//! by the object until it changes, goes or is relisted; and building a service's frontends
//! ([`crate::model::service_frontends`]), kept by service until its next sync. Addresses
//! lost to another service are asked of the index when the report is made.

use std::collections::BTreeMap;

use crate::model::{ObjectId, ObjectKind, Skipped};

#[derive(Debug, Default)]
pub struct SkipRecord {
    /// By the object they are about; an object without namespace/name keeps only its last
    /// version (it cannot be updated or deleted by name).
    parsed: BTreeMap<(ObjectKind, Option<ObjectId>), Vec<Skipped>>,
    /// By service.
    frontends: BTreeMap<ObjectId, Vec<Skipped>>,
}

impl SkipRecord {
    /// An object of `kind` was read (again): what it left out replaces what it did before.
    pub fn read(&mut self, kind: ObjectKind, id: Option<&ObjectId>, skipped: &[Skipped]) {
        let key = (kind, id.cloned());
        if skipped.is_empty() {
            self.parsed.remove(&key);
        } else {
            self.parsed.insert(key, skipped.to_vec());
        }
    }

    pub fn deleted(&mut self, kind: ObjectKind, id: &ObjectId) {
        self.parsed.remove(&(kind, Some(id.clone())));
    }

    /// Every object of `kind` is about to be read again.
    pub fn relisted(&mut self, kind: ObjectKind) {
        self.parsed.retain(|(k, _), _| *k != kind);
    }

    /// What building `service`'s frontends left out (`None`: the service is gone).
    pub fn frontends(&mut self, service: &ObjectId, notes: Option<&[Skipped]>) {
        match notes {
            Some(n) if !n.is_empty() => {
                self.frontends.insert(service.clone(), n.to_vec());
            }
            _ => {
                self.frontends.remove(service);
            }
        }
    }

    /// Before a full sync rebuilds every service.
    pub fn clear_frontends(&mut self) {
        self.frontends.clear();
    }

    /// Everything, with `conflicts` (frontends lost to another service), sorted, once each.
    pub fn all(&self, conflicts: Vec<Skipped>) -> Vec<Skipped> {
        let mut all: Vec<Skipped> = self
            .parsed
            .values()
            .chain(self.frontends.values())
            .flatten()
            .cloned()
            .chain(conflicts)
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
