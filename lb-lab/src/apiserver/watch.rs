//! Watch streams: newline-delimited JSON events from a resourceVersion on, with bookmarks,
//! 410 Gone for history that is gone, timeouts, and cuts on demand.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::{Channel, Sender};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use super::resource::{meta_str, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{PauseMode, Shared};
use super::status::ApiError;
use super::store::{Event, EventType};

/// How long a watch lasts when the client gives no timeoutSeconds (the API server's
/// `--min-request-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Frames buffered per watch before the stream waits for the client.
const BUFFER: usize = 64;
/// Annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Which objects a list or watch is about.
#[derive(Clone, Debug)]
pub struct Filter {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta_str(object, "namespace") == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event a watch with this filter sees for `event`, if any: an object that starts
    /// matching is ADDED, one that stops matching is DELETED, as the real API server does.
    pub fn translate<'a>(&self, event: &'a Event) -> Option<(&'static str, &'a Value)> {
        if event.key.resource != self.resource {
            return None;
        }
        let now = self.matches(&event.object);
        let kind = match event.kind {
            EventType::Added | EventType::Deleted => now.then_some(event.kind),
            EventType::Modified => {
                let before = event.previous.as_deref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        };
        kind.map(|k| (k.as_str(), &*event.object))
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// resourceVersion unset or "0": the current state as ADDED events first.
    WithState,
    /// After this resourceVersion.
    After(u64),
}

/// A watch request.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub filter: Filter,
    pub start: Start,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: the initial state ends with a marked bookmark.
    pub send_initial_events: bool,
}

/// Starts the stream for `req`; the returned body is the response's.
pub fn start(shared: Arc<Shared>, req: WatchRequest) -> Channel<Bytes, io::Error> {
    let (sender, body) = Channel::new(BUFFER);
    tokio::spawn(async move {
        shared.watches.fetch_add(1, Ordering::Relaxed);
        Stream {
            shared: Arc::clone(&shared),
            sender: Some(sender),
            req,
        }
        .run()
        .await;
        shared.watches.fetch_sub(1, Ordering::Relaxed);
    });
    body
}

/// Why a stream ends.
enum End {
    /// Close cleanly (timeout, 410 sent).
    Close,
    /// Cut the connection (drop, shutdown, Unavailable).
    Cut,
    /// The client went away.
    Gone,
}

struct Stream {
    shared: Arc<Shared>,
    sender: Option<Sender<Bytes, io::Error>>,
    req: WatchRequest,
}

impl Stream {
    async fn run(mut self) {
        let end = self.serve().await;
        if let (End::Cut, Some(sender)) = (end, self.sender.take()) {
            // An error from the body makes hyper drop the connection without the final chunk,
            // which clients see as a broken stream rather than a clean end.
            sender.abort(io::Error::other("watch cut by the lab"));
        }
    }

    async fn serve(&mut self) -> End {
        let mut signal = self.shared.signal.subscribe();
        let first = *signal.borrow_and_update();
        let deadline = Instant::now() + self.req.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let period = self.shared.bookmark_interval.max(Duration::from_millis(10));
        let mut bookmarks = interval_at(Instant::now() + period, period);
        bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // Where to start, and the initial state, read together so that nothing falls between.
        let (mut seq, initial, rv) = {
            let filter = &self.req.filter;
            let start = self.req.start;
            let opened = self.shared.read(|store| {
                let rv = store.resource_version();
                match start {
                    Start::WithState => {
                        let objects: Vec<_> = store
                            .list(filter.resource, filter.namespace.as_deref())
                            .into_iter()
                            .filter(|o| filter.matches(o))
                            .collect();
                        Ok((store.next_seq(), objects, rv))
                    }
                    Start::After(after) => store.seq_after(after).map(|seq| (seq, Vec::new(), rv)),
                }
            });
            match opened {
                Ok(opened) => opened,
                Err(e) => return self.send_error(&e).await,
            }
        };
        for object in &initial {
            if !self.send_event("ADDED", object).await {
                return End::Gone;
            }
        }
        if self.req.send_initial_events && !self.send_bookmark(rv, true).await {
            return End::Gone;
        }
        let mut caught_up_rv = rv;

        loop {
            let now = *signal.borrow_and_update();
            if now.shutdown || now.drops != first.drops {
                return End::Cut;
            }
            match now.pause {
                Some(PauseMode::Unavailable) => return End::Cut,
                Some(PauseMode::Hang) => {
                    // Silent until resumed: no events, no bookmarks, no timeout.
                    if signal.changed().await.is_err() {
                        return End::Cut;
                    }
                    continue;
                }
                None => {}
            }
            let drained = self.shared.read(|store| {
                store
                    .events_from(seq)
                    .map(|events| (events, store.next_seq(), store.resource_version()))
            });
            match drained {
                Ok((events, next, rv)) => {
                    for event in &events {
                        if let Some((kind, object)) = self.req.filter.translate(event) {
                            if !self.send_event(kind, object).await {
                                return End::Gone;
                            }
                        }
                    }
                    seq = next;
                    caught_up_rv = rv;
                }
                Err(expired) => {
                    // Events this watch still had to send were compacted away.
                    let e = ApiError::Expired {
                        requested: caught_up_rv,
                        oldest: expired.oldest,
                    };
                    return self.send_error(&e).await;
                }
            }
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        return End::Cut;
                    }
                }
                _ = bookmarks.tick(), if self.req.bookmarks => {
                    if !self.send_bookmark(caught_up_rv, false).await {
                        return End::Gone;
                    }
                }
                _ = sleep_until(deadline) => return End::Close,
            }
        }
    }

    async fn send(&mut self, line: Vec<u8>) -> bool {
        match self.sender.as_mut() {
            Some(sender) => sender.send(Frame::data(Bytes::from(line))).await.is_ok(),
            None => false,
        }
    }

    async fn send_event(&mut self, kind: &str, object: &Value) -> bool {
        // Written by hand so that the object is serialized once, not cloned into a wrapper.
        let mut line = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
        if serde_json::to_writer(&mut line, object).is_err() {
            return true;
        }
        line.extend_from_slice(b"}\n");
        self.send(line).await
    }

    async fn send_bookmark(&mut self, rv: u64, initial_events_end: bool) -> bool {
        let resource = self.req.filter.resource;
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
        }
        let object = json!({
            "kind": resource.kind(),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
        });
        self.send_event("BOOKMARK", &object).await
    }

    async fn send_error(&mut self, e: &ApiError) -> End {
        self.send_event("ERROR", &e.to_status()).await;
        End::Close
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resource::ObjectKey;

    fn event(kind: EventType, labels: Value, previous: Option<Value>) -> Event {
        let object = |l: Value| {
            Arc::new(json!({"metadata": {"name": "s", "namespace": "default", "labels": l}}))
        };
        Event {
            seq: 0,
            resource_version: 1,
            key: ObjectKey::new(Resource::Services, "default", "s"),
            kind,
            object: object(labels),
            previous: previous.map(object),
        }
    }

    fn filter(selector: &str) -> Filter {
        Filter {
            resource: Resource::Services,
            namespace: None,
            labels: LabelSelector::parse(selector).unwrap(),
            fields: FieldSelector::default(),
        }
    }

    #[test]
    fn objects_moving_in_and_out_of_a_selector_are_added_and_deleted() {
        let f = filter("!service.kubernetes.io/headless");
        let headless = json!({"service.kubernetes.io/headless": ""});
        let plain = json!({});
        let kind = |e: &Event| f.translate(e).map(|(k, _)| k);
        assert_eq!(
            kind(&event(
                EventType::Modified,
                plain.clone(),
                Some(plain.clone())
            )),
            Some("MODIFIED")
        );
        assert_eq!(
            kind(&event(
                EventType::Modified,
                headless.clone(),
                Some(plain.clone())
            )),
            Some("DELETED")
        );
        assert_eq!(
            kind(&event(
                EventType::Modified,
                plain.clone(),
                Some(headless.clone())
            )),
            Some("ADDED")
        );
        assert_eq!(
            kind(&event(
                EventType::Modified,
                headless.clone(),
                Some(headless.clone())
            )),
            None
        );
        assert_eq!(kind(&event(EventType::Added, headless, None)), None);
        assert_eq!(
            kind(&event(EventType::Deleted, plain, None)),
            Some("DELETED")
        );
    }

    #[test]
    fn other_resources_and_namespaces_are_filtered_out() {
        let mut f = filter("");
        f.resource = Resource::Pods;
        assert!(f
            .translate(&event(EventType::Added, json!({}), None))
            .is_none());
        let mut f = filter("");
        f.namespace = Some("other".into());
        assert!(f
            .translate(&event(EventType::Added, json!({}), None))
            .is_none());
    }
}
