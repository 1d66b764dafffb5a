//! The object store: every object by key, one global resourceVersion, and a bounded history of
//! change events for watches to resume from.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde_json::Value;

use super::index::Indexes;
use super::journal::{Journal, Record};
use super::resource::{meta_mut, ObjectKey, Resource};
use super::status::ApiError;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The watch event's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches deliver it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Position in the store's event sequence (watch cursors count these, not RVs).
    pub seq: u64,
    pub resource_version: u64,
    pub key: ObjectKey,
    pub kind: EventType,
    /// The object after the change (for a delete: as it was, with the delete's RV).
    pub object: Arc<Value>,
    /// The object before a modification, so that a filtered watch can tell an object that
    /// stopped matching (sent as DELETED) from one that started to (ADDED).
    pub previous: Option<Arc<Value>>,
}

/// A watch position that is no longer in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    pub oldest: u64,
}

/// The store. Not thread-safe by itself: the server keeps it behind a mutex.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    resource_version: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Sequence number the next event gets.
    next_seq: u64,
    /// A watch may start from this resourceVersion or any later one; older ones are gone.
    oldest_resource_version: u64,
    journal: Option<Journal>,
    uid_seed: u64,
    uid_counter: u64,
    indexes: Indexes,
}

impl Store {
    /// An empty in-memory store keeping `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            resource_version: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            next_seq: 0,
            oldest_resource_version: 0,
            journal: None,
            // A random seed so that uids differ across restarts, without a dependency on a
            // random number crate.
            uid_seed: RandomState::new().hash_one(std::process::id()),
            uid_counter: 0,
            indexes: Indexes::default(),
        }
    }

    /// A store persisted by `journal`, starting from what it holds; the history starts empty,
    /// as after a real API server restart.
    pub fn with_journal(history_limit: usize, journal: Journal, records: Vec<Record>) -> Self {
        let mut store = Self::new(history_limit);
        for record in records {
            store.resource_version = store.resource_version.max(record.resource_version);
            match (record.key, record.object) {
                (Some(key), Some(object)) => {
                    let old = store.objects.insert(key.clone(), Arc::new(object));
                    let new = store.objects.get(&key).map(|o| &**o);
                    store.indexes.update(&key, old.as_deref(), new);
                }
                (Some(key), None) => {
                    let old = store.objects.remove(&key);
                    store.indexes.update(&key, old.as_deref(), None);
                }
                (None, _) => {}
            }
        }
        store.oldest_resource_version = store.resource_version;
        store.journal = Some(journal);
        // Start from a clean snapshot: this also drops a torn journal line, which later
        // appends would otherwise follow.
        store.snapshot(true);
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_resource_version(&self) -> u64 {
        self.oldest_resource_version
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// What the indexes say (kept in step with every write).
    pub fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// Objects of `resource`, in `namespace` if given, sorted by namespace and name.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let start = ObjectKey {
            resource,
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(|(k, _)| {
                k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| Arc::clone(v))
            .collect()
    }

    /// Objects of `resource` in `namespace` whose name starts with `prefix`: a range of the
    /// ordered store, not a scan.
    pub fn list_prefix(
        &self,
        resource: Resource,
        namespace: &str,
        prefix: &str,
    ) -> Vec<Arc<Value>> {
        let start = ObjectKey {
            resource,
            namespace: namespace.to_string(),
            name: prefix.to_string(),
        };
        self.objects
            .range(start..)
            .take_while(|(k, _)| {
                k.resource == resource && k.namespace == namespace && k.name.starts_with(prefix)
            })
            .map(|(_, v)| Arc::clone(v))
            .collect()
    }

    /// Every object with its key (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<Value>)> {
        self.objects.iter()
    }

    /// A fresh uid in the UUID format.
    pub fn new_uid(&mut self) -> String {
        self.uid_counter += 1;
        let a = self.uid_seed;
        let b = RandomState::new().hash_one((self.uid_seed, self.uid_counter));
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    /// Stores `object` under `key` (created or replaced), giving it the next resourceVersion,
    /// and records the event. Returns the stored object.
    pub fn put(&mut self, key: ObjectKey, mut object: Value) -> Arc<Value> {
        self.resource_version += 1;
        let rv = self.resource_version;
        if let Some(meta) = meta_mut(&mut object) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let object = Arc::new(object);
        let previous = self.objects.insert(key.clone(), Arc::clone(&object));
        self.indexes
            .update(&key, previous.as_deref(), Some(&*object));
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.journal_write(&Record {
            resource_version: rv,
            key: Some(key.clone()),
            object: Some((*object).clone()),
        });
        self.record(key, kind, Arc::clone(&object), previous);
        object
    }

    /// Removes the object under `key`, recording a DELETED event that carries the object with
    /// the deletion's resourceVersion (as the real API server does). Returns that object.
    pub fn delete(&mut self, key: &ObjectKey) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.indexes.update(key, Some(&*old), None);
        self.resource_version += 1;
        let rv = self.resource_version;
        let mut object = (*old).clone();
        if let Some(meta) = meta_mut(&mut object) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let object = Arc::new(object);
        self.journal_write(&Record {
            resource_version: rv,
            key: Some(key.clone()),
            object: None,
        });
        self.record(key.clone(), EventType::Deleted, Arc::clone(&object), None);
        Some(object)
    }

    fn record(
        &mut self,
        key: ObjectKey,
        kind: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let event = Event {
            seq: self.next_seq,
            resource_version: self.resource_version,
            key,
            kind,
            object,
            previous,
        };
        self.next_seq += 1;
        self.history.push_back(Arc::new(event));
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.oldest_resource_version = evicted.resource_version;
            }
        }
    }

    /// Forgets the whole history, as an etcd compaction does, and bumps the resourceVersion
    /// (etcd's compaction writes a key of its own): a watch from any earlier resourceVersion
    /// now gets 410 Gone. Watches already open and caught up are not affected.
    pub fn compact(&mut self) -> u64 {
        self.resource_version += 1;
        self.journal_write(&Record {
            resource_version: self.resource_version,
            key: None,
            object: None,
        });
        self.history.clear();
        self.oldest_resource_version = self.resource_version;
        self.resource_version
    }

    /// The sequence number the next event will get: a watch that starts now resumes there.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Where a watch from resourceVersion `rv` starts: the sequence number of the first event
    /// after `rv`.
    ///
    /// # Errors
    /// [`ApiError::Expired`] if events after `rv` are no longer in the history.
    pub fn seq_after(&self, rv: u64) -> Result<u64, ApiError> {
        if rv < self.oldest_resource_version {
            return Err(ApiError::Expired {
                requested: rv,
                oldest: self.oldest_resource_version,
            });
        }
        Ok(self
            .history
            .iter()
            .find(|e| e.resource_version > rv)
            .map_or(self.next_seq, |e| e.seq))
    }

    /// Every event from sequence number `seq` on.
    ///
    /// # Errors
    /// [`Expired`] if some of them have been dropped from the history.
    pub fn events_from(&self, seq: u64) -> Result<Vec<Arc<Event>>, Expired> {
        let first = self.history.front().map_or(self.next_seq, |e| e.seq);
        if seq < first {
            return Err(Expired {
                oldest: self.oldest_resource_version,
            });
        }
        let skip = usize::try_from(seq - first).unwrap_or(usize::MAX);
        Ok(self.history.iter().skip(skip).cloned().collect())
    }

    /// Rewrites the state file from the current objects if the journal has grown enough
    /// (or `force`).
    pub fn snapshot(&mut self, force: bool) {
        let Some(journal) = &self.journal else {
            return;
        };
        if !force && !journal.wants_snapshot(self.objects.len()) {
            return;
        }
        let rv = self.resource_version;
        let result = match self.journal.as_mut() {
            Some(journal) => journal.snapshot(rv, self.objects.iter()),
            None => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("apiserver: cannot write the state snapshot: {e:#}");
        }
    }

    fn journal_write(&mut self, record: &Record) {
        if let Some(journal) = self.journal.as_mut() {
            if let Err(e) = journal.append(record) {
                // The change is served anyway; a test that restarts the server will notice.
                eprintln!(
                    "apiserver: cannot persist resourceVersion {}: {e:#}",
                    record.resource_version
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Resource::Services, "default", name)
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn every_write_gets_the_next_resource_version_and_an_event() {
        let mut store = Store::new(10);
        let a = store.put(key("a"), svc("a"));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        store.put(key("a"), svc("a"));
        let gone = store.delete(&key("a")).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "3");
        let events = store.events_from(0).unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
        assert!(events[1].previous.is_some());
        assert!(store.delete(&key("a")).is_none());
        assert_eq!(store.resource_version(), 3);
    }

    #[test]
    fn a_watch_resumes_after_its_resource_version() {
        let mut store = Store::new(10);
        for name in ["a", "b", "c"] {
            store.put(key(name), svc(name));
        }
        let seq = store.seq_after(1).unwrap();
        let names: Vec<_> = store
            .events_from(seq)
            .unwrap()
            .iter()
            .map(|e| e.key.name.clone())
            .collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(store.seq_after(3).unwrap(), store.next_seq());
        assert_eq!(store.seq_after(99).unwrap(), store.next_seq());
    }

    #[test]
    fn history_is_bounded_and_older_versions_expire() {
        let mut store = Store::new(2);
        for name in ["a", "b", "c", "d"] {
            store.put(key(name), svc(name));
        }
        assert_eq!(store.history_len(), 2);
        assert_eq!(store.oldest_resource_version(), 2);
        assert!(matches!(
            store.seq_after(1),
            Err(ApiError::Expired {
                requested: 1,
                oldest: 2
            })
        ));
        assert!(store.seq_after(2).is_ok());
        assert!(store.events_from(0).is_err());
    }

    #[test]
    fn compaction_expires_every_earlier_version_but_not_caught_up_cursors() {
        let mut store = Store::new(10);
        store.put(key("a"), svc("a"));
        let cursor = store.next_seq();
        let rv = store.compact();
        assert_eq!(rv, 2);
        assert!(store.seq_after(1).is_err());
        assert!(store.seq_after(2).is_ok());
        assert!(store.events_from(cursor).unwrap().is_empty());
        store.put(key("b"), svc("b"));
        assert_eq!(store.events_from(cursor).unwrap().len(), 1);
        assert!(store.events_from(0).is_err());
    }

    #[test]
    fn lists_are_per_resource_and_namespace() {
        let mut store = Store::new(10);
        store.put(key("a"), svc("a"));
        store.put(ObjectKey::new(Resource::Services, "other", "b"), svc("b"));
        store.put(ObjectKey::new(Resource::Nodes, "", "n"), json!({}));
        assert_eq!(store.list(Resource::Services, None).len(), 2);
        assert_eq!(store.list(Resource::Services, Some("default")).len(), 1);
        assert_eq!(store.list(Resource::Nodes, None).len(), 1);
        assert_eq!(store.list(Resource::Pods, None).len(), 0);
    }

    #[test]
    fn uids_are_unique() {
        let mut store = Store::new(1);
        let a = store.new_uid();
        assert_eq!(a.len(), 36);
        assert_ne!(a, store.new_uid());
    }
}
