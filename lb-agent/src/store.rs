//! The Services and EndpointSlices the agent knows, in the model's small form, with slices
//! indexed by the Service they belong to.
//!
//! Every change reports which services it touched, so that only those are recomputed. An
//! update that changes nothing the model reads (a status or annotation change, a periodic
//! resync of an unchanged object) touches nothing.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::jiff::Timestamp;

use crate::model::{ObjectId, ServiceInfo, SliceInfo};

/// A service a change touched, and the trigger time of the slice change that touched it
/// (the earliest, when several did).
pub type Touched = HashMap<ObjectId, Option<Timestamp>>;

#[derive(Debug, Default)]
pub struct Store {
    services: HashMap<ObjectId, ServiceInfo>,
    slices: HashMap<ObjectId, SliceInfo>,
    slices_by_service: HashMap<ObjectId, BTreeSet<ObjectId>>,
}

impl Store {
    pub fn service(&self, id: &ObjectId) -> Option<&ServiceInfo> {
        self.services.get(id)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The slices of `service`, by name.
    pub fn slices_of(&self, service: &ObjectId) -> Vec<&SliceInfo> {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slices.get(id))
            .collect()
    }

    /// Stores `value` as the Service `id`, or forgets it when `None` (the object is no
    /// longer servable). True when that changed anything.
    pub fn apply_service(&mut self, id: &ObjectId, value: Option<ServiceInfo>) -> bool {
        match value {
            Some(v) => {
                if self.services.get(id) == Some(&v) {
                    return false;
                }
                self.services.insert(id.clone(), v);
                true
            }
            None => self.services.remove(id).is_some(),
        }
    }

    /// Replaces every Service; returns the ids that were added, changed or removed.
    pub fn replace_services(&mut self, values: Vec<ServiceInfo>) -> BTreeSet<ObjectId> {
        let mut old = std::mem::take(&mut self.services);
        let mut changed = BTreeSet::new();
        for v in values {
            let id = v.id.clone();
            if old.remove(&id).as_ref() != Some(&v) {
                changed.insert(id.clone());
            }
            self.services.insert(id, v);
        }
        changed.extend(old.into_keys());
        changed
    }

    /// Stores `value` as the slice `id`, or forgets it when `None`; returns the services
    /// touched (the old owner too, if the slice moved to another Service).
    pub fn apply_slice(&mut self, id: &ObjectId, value: Option<SliceInfo>) -> Touched {
        let mut touched = Touched::new();
        if value.is_some() && self.slices.get(id) == value.as_ref() {
            return touched;
        }
        if let Some(old) = self.slices.remove(id) {
            self.unindex(&old);
            touched.insert(old.service, None);
        }
        if let Some(new) = value {
            note(&mut touched, new.service.clone(), new.trigger_time);
            self.slices_by_service
                .entry(new.service.clone())
                .or_default()
                .insert(id.clone());
            self.slices.insert(id.clone(), new);
        }
        touched
    }

    /// Replaces every slice; returns the services whose slices were added, changed or
    /// removed.
    pub fn replace_slices(&mut self, values: Vec<SliceInfo>) -> Touched {
        let mut old = std::mem::take(&mut self.slices);
        self.slices_by_service.clear();
        let mut touched = Touched::new();
        for v in values {
            let id = v.id.clone();
            match old.remove(&id) {
                Some(prev) if prev == v => {}
                Some(prev) => {
                    if prev.service != v.service {
                        touched.entry(prev.service).or_insert(None);
                    }
                    note(&mut touched, v.service.clone(), v.trigger_time);
                }
                None => note(&mut touched, v.service.clone(), v.trigger_time),
            }
            self.slices_by_service
                .entry(v.service.clone())
                .or_default()
                .insert(id.clone());
            self.slices.insert(id, v);
        }
        for gone in old.into_values() {
            touched.entry(gone.service).or_insert(None);
        }
        touched
    }

    fn unindex(&mut self, slice: &SliceInfo) {
        if let Some(ids) = self.slices_by_service.get_mut(&slice.service) {
            ids.remove(&slice.id);
            if ids.is_empty() {
                self.slices_by_service.remove(&slice.service);
            }
        }
    }
}

/// Records that `service` was touched, keeping the earliest trigger time.
fn note(touched: &mut Touched, service: ObjectId, trigger: Option<Timestamp>) {
    let entry = touched.entry(service).or_insert(trigger);
    *entry = match (*entry, trigger) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{service, slice},
        model::{parse_service, parse_slice},
    };

    fn svc(name: &str, ip: &str) -> ServiceInfo {
        parse_service(&service("shop", name, ip).port("http", 80, "TCP").build())
            .value
            .expect("valid service")
    }

    fn sl(name: &str, service: &str, addr: &str) -> SliceInfo {
        parse_slice(
            &slice("shop", name, service)
                .port("http", 8080, "TCP")
                .ready(addr)
                .build(),
            "node-a",
        )
        .value
        .expect("valid slice")
    }

    fn id(name: &str) -> ObjectId {
        ObjectId::new("shop", name)
    }

    #[test]
    fn an_unchanged_service_touches_nothing() {
        let mut store = Store::default();
        assert!(store.apply_service(&id("web"), Some(svc("web", "10.96.0.10"))));
        assert!(!store.apply_service(&id("web"), Some(svc("web", "10.96.0.10"))));
        assert!(store.apply_service(&id("web"), Some(svc("web", "10.96.0.11"))));
        assert!(store.apply_service(&id("web"), None));
        assert!(!store.apply_service(&id("web"), None));
    }

    #[test]
    fn slices_are_found_by_their_service_and_moves_touch_both_services() {
        let mut store = Store::default();
        let t = store.apply_slice(&id("web-1"), Some(sl("web-1", "web", "10.244.1.2")));
        assert_eq!(t.keys().collect::<Vec<_>>(), [&id("web")]);
        store.apply_slice(&id("web-2"), Some(sl("web-2", "web", "10.244.1.3")));
        let names: Vec<_> = store
            .slices_of(&id("web"))
            .iter()
            .map(|s| s.id.name.clone())
            .collect();
        assert_eq!(names, ["web-1", "web-2"]);

        let moved = store.apply_slice(&id("web-2"), Some(sl("web-2", "api", "10.244.1.3")));
        let mut touched: Vec<_> = moved.keys().cloned().collect();
        touched.sort();
        assert_eq!(touched, [id("api"), id("web")]);
        assert_eq!(store.slices_of(&id("web")).len(), 1);
        assert_eq!(store.slices_of(&id("api")).len(), 1);

        let gone = store.apply_slice(&id("web-1"), None);
        assert_eq!(gone.keys().collect::<Vec<_>>(), [&id("web")]);
        assert!(store.slices_of(&id("web")).is_empty());
        assert!(store.apply_slice(&id("nothing"), None).is_empty());
    }

    #[test]
    fn replacing_reports_only_what_differs_including_what_vanished() {
        let mut store = Store::default();
        store.replace_services(vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]);
        let changed = store.replace_services(vec![svc("a", "10.96.0.1"), svc("c", "10.96.0.3")]);
        assert_eq!(changed, [id("b"), id("c")].into());
        assert_eq!(store.service_count(), 2);

        store.replace_slices(vec![
            sl("a-1", "a", "10.244.1.2"),
            sl("b-1", "b", "10.244.1.3"),
        ]);
        let touched = store.replace_slices(vec![
            sl("a-1", "a", "10.244.1.2"),
            sl("c-1", "c", "10.244.1.4"),
        ]);
        let mut t: Vec<_> = touched.keys().cloned().collect();
        t.sort();
        assert_eq!(t, [id("b"), id("c")]);
        assert!(store.slices_of(&id("b")).is_empty());
        assert_eq!(store.slice_count(), 2);
    }

    #[test]
    fn the_earliest_trigger_time_of_a_service_is_kept() {
        let early: Timestamp = "2024-05-01T10:00:00Z".parse().expect("time");
        let late: Timestamp = "2024-05-01T10:00:05Z".parse().expect("time");
        let mut a = sl("web-1", "web", "10.244.1.2");
        a.trigger_time = Some(late);
        let mut b = sl("web-2", "web", "10.244.1.3");
        b.trigger_time = Some(early);
        let mut store = Store::default();
        let touched = store.replace_slices(vec![a, b]);
        assert_eq!(touched[&id("web")], Some(early));
    }
}
