//! Where Services, EndpointSlices and this node's Node come from, as a stream of updates.
//!
//! Every source sends [`SourceEvent`]s down one channel: a [`Change::Replace`] carries the
//! complete set of one kind of object (a relist, or a file snapshot) and is applied as a
//! full resync; [`Change::Apply`] and [`Change::Delete`] carry single objects and are
//! applied incrementally. Objects are parsed into the model's small form
//! ([`crate::model::Parsed`]) by the source, as they arrive, so that neither a relist nor
//! the store ever holds the API objects themselves.
//!
//! The agent never programs anything before every kind has been replaced once, so a source
//! that starts slowly cannot make the agent write an empty state over the maps of an
//! earlier run. A source that loses its connection keeps quiet: nothing is flushed because
//! the API is unreachable, and the next relist resyncs whatever changed meanwhile.

pub mod file;
pub mod kube;

use std::{path::PathBuf, str::FromStr, time::Instant};

use tokio::sync::mpsc;

use crate::model::{node::NodeInfo, ObjectId, Parsed, ServiceInfo, SliceInfo};

/// How many events may wait for the agent before a source waits in turn.
pub const EVENT_QUEUE: usize = 4096;

/// A change to the store, and when the agent received it (programming latency is measured
/// from there when the object carries no trigger time).
#[derive(Debug)]
pub struct SourceEvent {
    pub received: Instant,
    pub update: Update,
}

impl SourceEvent {
    pub fn now(update: Update) -> Self {
        Self {
            received: Instant::now(),
            update,
        }
    }
}

#[derive(Debug)]
pub enum Update {
    Services(Change<ServiceInfo>),
    Slices(Change<SliceInfo>),
    /// This node's Node: at most one object (the source filters by name).
    Node(Change<NodeInfo>),
    /// Services and slices together (a file snapshot), so that no sync sees the new
    /// Services with the old slices or the other way round.
    Snapshot(Box<Snapshot>),
}

/// Both kinds of object at once.
#[derive(Debug)]
pub struct Snapshot {
    pub services: Change<ServiceInfo>,
    pub slices: Change<SliceInfo>,
}

impl Update {
    /// A [`Update::Snapshot`].
    pub fn snapshot(services: Change<ServiceInfo>, slices: Change<SliceInfo>) -> Self {
        Update::Snapshot(Box::new(Snapshot { services, slices }))
    }
}

#[derive(Debug)]
pub enum Change<T> {
    /// Every object of the kind: what the store holds is replaced.
    Replace(Vec<Parsed<T>>),
    /// One object added or changed.
    Apply(Parsed<T>),
    /// One object gone.
    Delete(ObjectId),
}

pub type EventSender = mpsc::Sender<SourceEvent>;
pub type EventReceiver = mpsc::Receiver<SourceEvent>;

/// Which source to read, as given to `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `file:DIR`: every `*.yaml`/`*.yml` in DIR, reread when the directory changes.
    File(PathBuf),
    /// `kube`: the Kubernetes API, from `--kubeconfig` or the usual places.
    Kube,
}

impl SourceSpec {
    /// True when the source also says what this node's Node holds.
    pub fn has_nodes(&self) -> bool {
        matches!(self, SourceSpec::Kube)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("`--source file:` needs a directory, e.g. `file:/etc/lb/services`")]
    EmptyPath,
    #[error("unsupported source {0:?}: expected `kube` or `file:DIR`")]
    Unsupported(String),
}

impl FromStr for SourceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", "")) => Err(SpecError::EmptyPath),
            Some(("file", dir)) => Ok(SourceSpec::File(PathBuf::from(dir))),
            None if s == "kube" => Ok(SourceSpec::Kube),
            _ => Err(SpecError::Unsupported(s.to_owned())),
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::File(dir) => write!(f, "file:{}", dir.display()),
            SourceSpec::Kube => f.write_str("kube"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] file::FileSourceError),
    #[error(transparent)]
    Kube(#[from] kube::KubeSourceError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_spec_takes_the_rest_as_a_directory() {
        assert_eq!(
            "file:/etc/lb/svc".parse(),
            Ok(SourceSpec::File(PathBuf::from("/etc/lb/svc")))
        );
        // Only the first colon separates the scheme.
        assert_eq!(
            "file:a:b".parse(),
            Ok(SourceSpec::File(PathBuf::from("a:b")))
        );
    }

    #[test]
    fn kube_is_a_source_and_others_are_rejected_with_the_value() {
        assert_eq!("kube".parse(), Ok(SourceSpec::Kube));
        assert_eq!(
            "kubernetes".parse::<SourceSpec>(),
            Err(SpecError::Unsupported("kubernetes".into()))
        );
        assert_eq!(
            "/etc/lb".parse::<SourceSpec>(),
            Err(SpecError::Unsupported("/etc/lb".into()))
        );
        assert_eq!("file:".parse::<SourceSpec>(), Err(SpecError::EmptyPath));
    }

    #[test]
    fn spec_displays_as_it_is_written() {
        assert_eq!(SourceSpec::File("/x".into()).to_string(), "file:/x");
        assert_eq!(SourceSpec::Kube.to_string(), "kube");
        assert!(SourceSpec::Kube.has_nodes());
        assert!(!SourceSpec::File("/x".into()).has_nodes());
    }
}
