//! Where Services and EndpointSlices come from: full snapshots, whatever the source.
//!
//! Every source publishes complete [`Snapshot`]s on a watch channel rather than deltas: the
//! model is rebuilt from scratch each time, so a missed or coalesced update can never leave
//! stale state behind, and a slow consumer only ever sees the latest snapshot. The channel
//! holds `None` until the source has read everything once, so the agent never programs an
//! empty state over the maps of a previous run just because it started before its source.
//!
//! A Kubernetes source (a kube-rs watcher feeding reflector stores) fits the same shape: it
//! publishes a snapshot of its stores after the initial list and after each change.

pub mod file;

use std::{path::PathBuf, str::FromStr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tokio::sync::watch;

/// Everything a source knows at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// The receiving end of a source: `None` until the first complete read.
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Which source to read, as given to `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `file:DIR`: every `*.yaml`/`*.yml` in DIR, reread when the directory changes.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("`--source file:` needs a directory, e.g. `file:/etc/lb/services`")]
    EmptyPath,
    #[error(
        "unsupported source {0:?}: expected `file:DIR` (a Kubernetes source is not available yet)"
    )]
    Unsupported(String),
}

impl FromStr for SourceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", "")) => Err(SpecError::EmptyPath),
            Some(("file", dir)) => Ok(SourceSpec::File(PathBuf::from(dir))),
            _ => Err(SpecError::Unsupported(s.to_owned())),
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::File(dir) => write!(f, "file:{}", dir.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] file::FileSourceError),
}

/// Starts the source in the background and returns where its snapshots arrive. The source
/// stops when the receiver is dropped.
pub fn spawn(spec: &SourceSpec) -> Result<SnapshotReceiver, SourceError> {
    match spec {
        SourceSpec::File(dir) => Ok(file::FileSource::new(dir.clone())?.spawn()?),
    }
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
    fn other_sources_are_rejected_with_the_value() {
        assert_eq!(
            "kube".parse::<SourceSpec>(),
            Err(SpecError::Unsupported("kube".into()))
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
    }
}
