//! The `file:DIR` source: Services and EndpointSlices from YAML files, reread on change.
//!
//! The directory is polled rather than watched with inotify: a poll of a few file names
//! and mtimes costs nothing, and it also sees changes that inotify reports awkwardly or not
//! at all (files replaced by rename, ConfigMap volumes that swap a `..data` symlink, network
//! filesystems).
//!
//! Each read is a complete snapshot; [`spawn_events`] sends it as a full resync of Services
//! and EndpointSlices together. A file source has no Node: the node's addresses, pod CIDRs
//! and zone come from the command line.
//!
//! Only what lies inside the directory is read: a manifest that is a symlink must resolve
//! to a regular file below the directory (a ConfigMap volume's `..data` links do), and what
//! is opened is checked again through the open descriptor, so a link swapped between the
//! check and the open cannot lead outside. Links out of the directory, FIFOs, sockets,
//! devices and files above [`MAX_MANIFEST_BYTES`] are skipped with the reason, like a
//! document that does not parse, and counted in `lb_invalid_objects_total{kind="file"}`.

use std::{
    ffi::OsString,
    fmt, fs,
    io::{self, Read},
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_norway::Value;
use tracing::{debug, info, warn};

use super::{Change, EventSender, SourceEvent, Update};

use crate::{
    error_chain::error_chain,
    model::{parse_service, parse_slice},
    serve::metrics::{Metrics, SkipLabels},
};

/// Everything the directory held at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// Starts a file source over `dir` that sends each snapshot as a full resync of Services
/// and EndpointSlices (`node_name` marks this node's endpoints). Its thread stops when the
/// receiving end of `events` is dropped. Files and documents it skips are counted in
/// `metrics` (`lb_invalid_objects_total{kind="file",reason}`) at each read.
///
/// Each snapshot is turned into the model's small form on the source's thread and the API
/// objects are dropped there: nothing keeps the parsed manifests once they are converted
/// (at 10 000 services they weigh several times the model).
pub fn spawn_events(
    dir: PathBuf,
    node_name: String,
    events: EventSender,
    metrics: Option<Arc<Metrics>>,
) -> Result<(), FileSourceError> {
    let closed = events.clone();
    let mut source = FileSource::new(dir)?;
    source.metrics = metrics;
    source.spawn(
        move |snapshot| {
            let update = to_update(snapshot, &node_name);
            events.blocking_send(SourceEvent::now(update)).is_ok()
        },
        move || closed.is_closed(),
    )
}

/// A snapshot as the full resync it stands for, consuming the API objects one by one.
fn to_update(snapshot: Snapshot, node_name: &str) -> Update {
    let Snapshot {
        services,
        endpoint_slices,
    } = snapshot;
    let services = services.into_iter().map(|s| parse_service(&s)).collect();
    let slices = endpoint_slices
        .into_iter()
        .map(|s| parse_slice(&s, node_name))
        .collect();
    Update::snapshot(Change::Replace(services), Change::Replace(slices))
}

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A larger manifest is skipped rather than read into memory (10 000 services with their
/// slices take a few MiB).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The `kind` label of what the file source skips in `lb_invalid_objects_total`.
pub const METRIC_KIND: &str = "file";

/// The namespace `kubectl apply` gives an object whose manifest names none.
const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read source directory {dir}")]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("source {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("could not start the file source thread: {0}")]
    Spawn(io::Error),
}

/// Reads a directory of manifests and notices when it changes.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    last: Option<Fingerprint>,
    metrics: Option<Arc<Metrics>>,
}

impl FileSource {
    /// A source over `dir`, which must exist and be a directory.
    pub fn new(dir: PathBuf) -> Result<Self, FileSourceError> {
        let meta = fs::metadata(&dir).map_err(|source| FileSourceError::ReadDir {
            dir: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FileSourceError::NotADirectory(dir));
        }
        Ok(Self {
            dir,
            last: None,
            metrics: None,
        })
    }

    /// Reads the directory if anything in it changed since the last call (always on the
    /// first), logging every skipped document. `None` when nothing changed.
    pub fn poll(&mut self) -> Result<Option<Snapshot>, FileSourceError> {
        // Fingerprint first: a change made while the files are read shows up next time.
        let fingerprint = fingerprint(&self.dir)?;
        if self.last.as_ref() == Some(&fingerprint) {
            return Ok(None);
        }
        let read = read_dir(&self.dir)?;
        for problem in &read.problems {
            warn!("skipping {problem}");
            if let Some(m) = &self.metrics {
                m.invalid_objects
                    .get_or_create(&SkipLabels {
                        kind: METRIC_KIND,
                        reason: problem.reason.label(),
                    })
                    .inc();
            }
        }
        for ignored in &read.ignored {
            debug!("ignoring {ignored}");
        }
        info!(
            dir = %self.dir.display(),
            services = read.snapshot.services.len(),
            endpoint_slices = read.snapshot.endpoint_slices.len(),
            skipped = read.problems.len(),
            "read source directory"
        );
        self.last = Some(fingerprint);
        Ok(Some(read.snapshot))
    }

    /// Polls on a background thread every [`POLL_INTERVAL`], handing each new snapshot to
    /// `publish`, until `publish` returns false or `closed` returns true. A directory that
    /// cannot be read is logged and the last snapshot stays in force: a transient error must
    /// not look like "every service was deleted".
    pub fn spawn(
        mut self,
        mut publish: impl FnMut(Snapshot) -> bool + Send + 'static,
        closed: impl Fn() -> bool + Send + 'static,
    ) -> Result<(), FileSourceError> {
        thread::Builder::new()
            .name("lb-file-source".into())
            .spawn(move || {
                let mut last_error = None;
                while !closed() {
                    match self.poll() {
                        Ok(Some(snapshot)) => {
                            last_error = None;
                            if !publish(snapshot) {
                                return;
                            }
                        }
                        Ok(None) => last_error = None,
                        Err(e) => {
                            let message = error_chain(&e);
                            if last_error.as_ref() != Some(&message) {
                                warn!("{message}; keeping the last snapshot");
                                last_error = Some(message);
                            }
                        }
                    }
                    thread::sleep(POLL_INTERVAL);
                }
            })
            .map_err(FileSourceError::Spawn)?;
        Ok(())
    }
}

/// What identifies the directory's content without reading it: for every manifest, its
/// name, size, modification time and inode (a file replaced by rename changes inode even
/// when size and mtime match). A link is followed where it can be (a ConfigMap volume's
/// swapped `..data` changes what its files resolve to), else its own entry is taken.
type Fingerprint = Vec<(OsString, u64, i64, i64, u64)>;

fn fingerprint(dir: &Path) -> Result<Fingerprint, FileSourceError> {
    let mut entries = Vec::new();
    for path in manifest_paths(dir)? {
        // A file deleted between listing and stat simply drops out; the next poll agrees.
        if let Ok(m) = fs::metadata(&path).or_else(|_| fs::symlink_metadata(&path)) {
            let name = path.file_name().map(OsString::from).unwrap_or_default();
            entries.push((name, m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
        }
    }
    Ok(entries)
}

/// The `*.yaml`/`*.yml` entries in `dir` that are not directories, sorted by name; whether
/// each may be read is [`open_manifest`]'s to say. Hidden files are editor droppings or
/// ConfigMap-volume internals, never manifests.
fn manifest_paths(dir: &Path) -> Result<Vec<PathBuf>, FileSourceError> {
    let read_dir_error = |source| FileSourceError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_yaml = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if is_yaml && !name.starts_with('.') && !path.is_dir() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Why a file or document was skipped: the `reason` label of
/// `lb_invalid_objects_total{kind="file"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A link (or a path through one) that resolves outside the source directory.
    OutsideDir,
    /// A FIFO, socket or device: reading one could block the source or touch hardware.
    NotRegular,
    /// Above [`MAX_MANIFEST_BYTES`].
    TooLarge,
    /// Cannot be opened or read (a dangling link, permissions, not UTF-8).
    Unreadable,
    InvalidYaml,
    /// A document that is not a Kubernetes object, or a `List` without items.
    NotAnObject,
    /// A Service or EndpointSlice that does not deserialize.
    InvalidObject,
    /// A well-formed object of a kind this source does not take: ignored, not counted.
    OtherKind,
}

impl Problem {
    pub fn label(self) -> &'static str {
        match self {
            Problem::OutsideDir => "outside_source_dir",
            Problem::NotRegular => "not_a_regular_file",
            Problem::TooLarge => "too_large",
            Problem::Unreadable => "unreadable",
            Problem::InvalidYaml => "invalid_yaml",
            Problem::NotAnObject => "not_an_object",
            Problem::InvalidObject => "invalid_object",
            Problem::OtherKind => "other_kind",
        }
    }
}

/// Reads the manifest at `path` (an entry of `dir`, whose canonical form is `dir`) if it is
/// a regular file inside `dir`, following links that stay inside.
fn open_manifest(dir: &Path, path: &Path) -> Result<String, (Problem, String)> {
    let outside = |target: &Path| {
        (
            Problem::OutsideDir,
            format!(
                "resolves to {}, outside the source directory {}",
                target.display(),
                dir.display()
            ),
        )
    };
    let unreadable = |e: io::Error| (Problem::Unreadable, format!("cannot read file: {e}"));
    // Checked before opening: opening a device or FIFO elsewhere is already touching it.
    let target = fs::canonicalize(path).map_err(unreadable)?;
    if !target.starts_with(dir) {
        return Err(outside(&target));
    }
    let kind = fs::metadata(&target).map_err(unreadable)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err((
            Problem::NotRegular,
            format!("is {what}, not a regular file"),
        ));
    }
    // O_NONBLOCK: a FIFO swapped in after the check does not hang the source; O_NOFOLLOW:
    // nor does a link swapped in for the file itself.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&target)
        .map_err(unreadable)?;
    // What was opened, whatever was swapped meanwhile along the path.
    let opened =
        fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(unreadable)?;
    if !opened.starts_with(dir) {
        return Err(outside(&opened));
    }
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err((Problem::NotRegular, "is not a regular file".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err((
            Problem::TooLarge,
            format!(
                "is {} bytes, above the {MAX_MANIFEST_BYTES} a manifest may have",
                meta.len()
            ),
        ));
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    Ok(text)
}

/// The result of reading a directory once.
#[derive(Debug, Default)]
pub struct DirRead {
    pub snapshot: Snapshot,
    /// Documents and files that could not be used, with the reason.
    pub problems: Vec<Located>,
    /// Well-formed documents of kinds this source does not take.
    pub ignored: Vec<Located>,
}

/// Something said about one place in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub origin: Origin,
    pub what: String,
    /// For an ignored document, [`Problem::OtherKind`].
    pub reason: Problem,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.what)
    }
}

/// A file, and optionally a document in it (1-based, counting non-empty documents) and an
/// item of a `List` document (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " document {d}")?;
        }
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// Reads every manifest in `dir` into a snapshot; nothing that is wrong with one file or
/// document stops the others from being served.
///
/// Files are parsed on as many threads as there are CPUs: YAML parsing is most of an
/// agent's start at 10 000 services (the maps are written only after it), and files are
/// independent. The result is merged in file order, so it is the same as a serial read.
pub fn read_dir(dir: &Path) -> Result<DirRead, FileSourceError> {
    // Resolved now, so a directory reached through a link (or replaced) is judged by what
    // it is at this read.
    let dir = &fs::canonicalize(dir).map_err(|source| FileSourceError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let paths = manifest_paths(dir)?;
    let threads = thread::available_parallelism().map_or(1, usize::from);
    let per_thread = paths.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<DirRead>> = thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| scope.spawn(|| chunk.iter().map(|p| read_file(dir, p)).collect()))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut read = DirRead::default();
    for part in parts.into_iter().flatten() {
        read.snapshot.services.extend(part.snapshot.services);
        read.snapshot
            .endpoint_slices
            .extend(part.snapshot.endpoint_slices);
        read.problems.extend(part.problems);
        read.ignored.extend(part.ignored);
    }
    Ok(read)
}

/// One manifest file's objects, problems and ignored documents.
fn read_file(dir: &Path, path: &Path) -> DirRead {
    let mut read = DirRead::default();
    match open_manifest(dir, path) {
        Ok(text) => read_text(path, &text, &mut read),
        Err((reason, what)) => read.problems.push(Located {
            origin: Origin {
                file: path.to_owned(),
                document: None,
                item: None,
            },
            what,
            reason,
        }),
    }
    read
}

fn read_text(file: &Path, text: &str, read: &mut DirRead) {
    for (i, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: Some(i + 1),
            item: None,
        };
        match serde_norway::from_str::<Value>(doc) {
            Ok(mut value) => match value.apply_merge() {
                // `<<: *anchor` merge keys, which kubectl also honours.
                Ok(()) => take_object(value, origin, read),
                Err(e) => read.problems.push(Located {
                    origin,
                    what: format!("invalid YAML merge key: {e}"),
                    reason: Problem::InvalidYaml,
                }),
            },
            Err(_) => {
                // Parsed again behind as many blank lines as precede the document, so the
                // error's line number is the file's, not the document's (only on error:
                // padding every document would cost quadratic time on large files).
                let padded = format!("{}{doc}", "\n".repeat(line));
                let e = serde_norway::from_str::<Value>(&padded).err();
                let what = e.map_or_else(
                    || "invalid YAML".to_owned(),
                    |e| format!("invalid YAML: {e}"),
                );
                read.problems.push(Located {
                    origin,
                    what,
                    reason: Problem::InvalidYaml,
                });
            }
        }
    }
}

/// Splits a multi-document YAML stream at its `---` and `...` marker lines, so that a syntax
/// error in one document cannot hide the documents after it (a YAML parser stops at the
/// first error). Markers at the start of a line always delimit documents, even inside a
/// block scalar, so this agrees with a parser. Each document comes with the number of lines
/// before it. Documents holding nothing but blank lines and comments are dropped, so that
/// numbering counts only real documents.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        // No allocation per line: this runs over every line of every manifest.
        let is_marker = |m: &str| {
            content
                .strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            // The marker line starts the next document: `--- {a: 1}` carries content.
            docs.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, n);
        } else if is_marker("...") {
            docs.push((start_line, &text[start..offset]));
            (start, start_line) = (offset + line.len(), n + 1);
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.retain(|(_, d)| {
        d.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && l != "---"
        })
    });
    docs
}

/// Takes a parsed document: a Service, an EndpointSlice, or a `List` of them.
fn take_object(value: Value, origin: Origin, read: &mut DirRead) {
    let problem = |read: &mut DirRead, origin, reason, what: String| {
        read.problems.push(Located {
            origin,
            what,
            reason,
        })
    };
    if !value.is_mapping() {
        return problem(
            read,
            origin,
            Problem::NotAnObject,
            "not a Kubernetes object (not a mapping)".into(),
        );
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
    match (api_version.as_deref(), kind.as_deref()) {
        (Some("v1"), Some("Service")) => match serde_norway::from_value::<Service>(value) {
            Ok(mut svc) => {
                default_namespace(&mut svc.metadata);
                read.snapshot.services.push(svc);
            }
            Err(e) => problem(
                read,
                origin,
                Problem::InvalidObject,
                format!("invalid Service: {e}"),
            ),
        },
        (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
            match serde_norway::from_value::<EndpointSlice>(value) {
                Ok(mut slice) => {
                    default_namespace(&mut slice.metadata);
                    read.snapshot.endpoint_slices.push(slice);
                }
                Err(e) => problem(
                    read,
                    origin,
                    Problem::InvalidObject,
                    format!("invalid EndpointSlice: {e}"),
                ),
            }
        }
        // What `kubectl get ... -o yaml` prints for more than one object.
        (Some("v1"), Some("List")) => match value.get("items").and_then(Value::as_sequence) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let origin = Origin {
                        item: Some(i + 1),
                        ..origin.clone()
                    };
                    take_object(item.clone(), origin, read);
                }
            }
            None => problem(
                read,
                origin,
                Problem::NotAnObject,
                "List without items".into(),
            ),
        },
        (Some(api_version), Some(kind)) => read.ignored.push(Located {
            origin,
            what: format!("{api_version} {kind}"),
            reason: Problem::OtherKind,
        }),
        _ => problem(
            read,
            origin,
            Problem::NotAnObject,
            "not a Kubernetes object (no apiVersion or kind)".into(),
        ),
    }
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
";

    const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            fs::write(dir.path().join(name), text).expect("write manifest");
        }
        dir
    }

    fn names(read: &DirRead) -> (Vec<String>, Vec<String>) {
        let s = &read.snapshot;
        (
            s.services
                .iter()
                .filter_map(|o| o.metadata.name.clone())
                .collect(),
            s.endpoint_slices
                .iter()
                .filter_map(|o| o.metadata.name.clone())
                .collect(),
        )
    }

    #[test]
    fn reads_services_and_slices_from_multi_document_files() {
        let dir = dir_with(&[
            ("a.yaml", &format!("{SERVICE}---\n{SLICE}")),
            ("b.yml", SERVICE),
        ]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(
            names(&read),
            (vec!["web".into(), "web".into()], vec!["web-abc".into()])
        );
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        let svc = &read.snapshot.services[0];
        assert_eq!(
            svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.10")
        );
    }

    #[test]
    fn a_broken_document_is_skipped_and_named_while_the_rest_is_served() {
        let text = format!("{SERVICE}---\nkind: [unclosed\n---\n{SLICE}");
        let dir = dir_with(&[("a.yaml", &text)]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(names(&read), (vec!["web".into()], vec!["web-abc".into()]));
        assert_eq!(read.problems.len(), 1);
        let p = &read.problems[0];
        assert_eq!(p.origin.document, Some(2));
        assert!(p.origin.file.ends_with("a.yaml"));
        assert!(
            p.to_string().contains("a.yaml document 2: invalid YAML"),
            "{p}"
        );
    }

    #[test]
    fn an_object_that_does_not_deserialize_is_skipped_with_its_reason() {
        let bad = SERVICE.replace("port: 80", "port: eighty");
        let dir = dir_with(&[("a.yaml", &format!("{bad}---\n{SLICE}"))]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(names(&read), (vec![], vec!["web-abc".into()]));
        assert_eq!(read.problems.len(), 1);
        assert!(
            read.problems[0].what.starts_with("invalid Service"),
            "{:?}",
            read.problems
        );
        assert_eq!(read.problems[0].origin.document, Some(1));
    }

    #[test]
    fn other_kinds_are_ignored_not_reported() {
        let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let knative = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n";
        let dir = dir_with(&[("a.yaml", &format!("{deploy}---\n{knative}---\n{SERVICE}"))]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(names(&read).0, vec!["web".to_string()]);
        assert!(read.problems.is_empty());
        let ignored: Vec<_> = read.ignored.iter().map(|l| l.what.as_str()).collect();
        assert_eq!(
            ignored,
            ["apps/v1 Deployment", "serving.knative.dev/v1 Service"]
        );
    }

    #[test]
    fn documents_without_kind_or_not_mappings_are_problems() {
        let dir = dir_with(&[("a.yaml", "just a string\n---\nfoo: bar\n")]);
        let read = read_dir(dir.path()).expect("read");
        let docs: Vec<_> = read.problems.iter().map(|p| p.origin.document).collect();
        assert_eq!(docs, [Some(1), Some(2)]);
    }

    #[test]
    fn only_visible_yaml_files_are_read() {
        let dir = dir_with(&[
            ("svc.YAML", SERVICE),
            ("notes.txt", "kind: [broken"),
            (".svc.yaml", "kind: [broken"),
            ("svc.yaml~", "kind: [broken"),
        ]);
        fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(read.snapshot.services.len(), 1);
        assert!(read.problems.is_empty(), "{:?}", read.problems);
    }

    #[test]
    fn merge_keys_are_applied() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - &http {name: http, port: 80, protocol: TCP}
  - <<: *http
    name: alt
    port: 8080
";
        let dir = dir_with(&[("a.yaml", text)]);
        let read = read_dir(dir.path()).expect("read");
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        let ports = read.snapshot.services[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let got: Vec<_> = ports
            .iter()
            .map(|p| (p.name.as_deref(), p.port, p.protocol.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("http"), 80, Some("TCP")),
                (Some("alt"), 8080, Some("TCP"))
            ]
        );
    }

    #[test]
    fn a_missing_namespace_becomes_default_as_kubectl_does() {
        let text = SERVICE.replace(", namespace: shop", "");
        let dir = dir_with(&[("a.yaml", &text)]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(
            read.snapshot.services[0].metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn list_items_are_taken_and_numbered() {
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n  -\n{}  -\n{}  - kind: Service\n",
            indent(SERVICE),
            indent(SLICE)
        );
        let dir = dir_with(&[("list.yaml", &text)]);
        let read = read_dir(dir.path()).expect("read");
        assert_eq!(names(&read), (vec!["web".into()], vec!["web-abc".into()]));
        assert_eq!(read.problems.len(), 1);
        assert_eq!(read.problems[0].origin.item, Some(3));
        assert!(read.problems[0].to_string().contains("document 1 item 3"));
    }

    #[test]
    fn documents_split_at_markers_and_blank_ones_do_not_count() {
        let text = "# header\n---\na: 1\n--- {b: 2}\n...\n---\n# only a comment\n---\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            [(1, "---\na: 1\n"), (3, "--- {b: 2}\n"), (7, "---\nc: 3\n")]
        );
        assert_eq!(split_documents("a: 1"), [(0, "a: 1")]);
        assert!(split_documents("").is_empty());
        // A marker needs the line to itself or a separator after it.
        assert_eq!(split_documents("a: ---x\n---x: 1\n").len(), 1);
    }

    #[test]
    fn poll_reads_once_then_only_after_a_change() {
        let dir = dir_with(&[("a.yaml", SERVICE)]);
        let mut source = FileSource::new(dir.path().to_owned()).expect("source");
        let first = source.poll().expect("poll").expect("first poll reads");
        assert_eq!(first.services.len(), 1);
        assert_eq!(source.poll().expect("poll"), None);

        fs::write(dir.path().join("b.yaml"), SLICE).expect("write");
        let second = source.poll().expect("poll").expect("new file is seen");
        assert_eq!(second.endpoint_slices.len(), 1);

        // Replacing a file by rename is a change even with the same size and mtime.
        let tmp = dir.path().join(".b.yaml.tmp");
        fs::write(&tmp, SLICE.replace("web-abc", "web-xyz")).expect("write");
        fs::rename(&tmp, dir.path().join("b.yaml")).expect("rename");
        let third = source.poll().expect("poll").expect("renamed file is seen");
        assert_eq!(
            third.endpoint_slices[0].metadata.name.as_deref(),
            Some("web-xyz")
        );

        fs::remove_file(dir.path().join("a.yaml")).expect("remove");
        let fourth = source.poll().expect("poll").expect("removal is seen");
        assert!(fourth.services.is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = FileSource::new("/nonexistent/lb-test".into()).expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/lb-test"), "{err}");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        assert!(matches!(
            FileSource::new(file.path().to_owned()),
            Err(FileSourceError::NotADirectory(_))
        ));
    }

    /// The problems of a read, as (file name, reason label), in file order.
    fn refusals(read: &DirRead) -> Vec<(String, &'static str)> {
        read.problems
            .iter()
            .map(|p| {
                let name = p.origin.file.file_name().unwrap_or_default();
                (name.to_string_lossy().into_owned(), p.reason.label())
            })
            .collect()
    }

    #[test]
    fn links_that_lead_outside_the_directory_are_skipped_with_the_reason() {
        use std::os::unix::fs::symlink;
        let outside = dir_with(&[("secret.yaml", SERVICE)]);
        let dir = dir_with(&[("ok.yaml", SLICE)]);
        let d = dir.path();
        symlink(outside.path().join("secret.yaml"), d.join("abs.yaml")).expect("link");
        let up = format!(
            "../{}/secret.yaml",
            outside.path().file_name().unwrap().to_string_lossy()
        );
        symlink(&up, d.join("dotdot.yaml")).expect("link");
        // A link to a directory outside, and a manifest reached through it.
        symlink(outside.path(), d.join("..data")).expect("link");
        symlink("..data/secret.yaml", d.join("via-data.yaml")).expect("link");
        symlink("/etc/passwd", d.join("passwd.yaml")).expect("link");

        let read = read_dir(d).expect("read");
        assert_eq!(names(&read), (vec![], vec!["web-abc".into()]));
        assert_eq!(
            refusals(&read),
            [
                ("abs.yaml".into(), "outside_source_dir"),
                ("dotdot.yaml".into(), "outside_source_dir"),
                ("passwd.yaml".into(), "outside_source_dir"),
                ("via-data.yaml".into(), "outside_source_dir"),
            ]
        );
        let text = read.problems[0].to_string();
        assert!(
            text.contains("secret.yaml, outside the source directory"),
            "{text}"
        );
    }

    #[test]
    fn links_that_stay_inside_are_followed_as_a_configmap_volume_lays_them_out() {
        use std::os::unix::fs::symlink;
        let dir = dir_with(&[]);
        let d = dir.path();
        fs::create_dir(d.join("..2024_01_01")).expect("mkdir");
        fs::write(d.join("..2024_01_01/svc.yaml"), SERVICE).expect("write");
        symlink("..2024_01_01", d.join("..data")).expect("link");
        symlink("..data/svc.yaml", d.join("svc.yaml")).expect("link");
        fs::create_dir(d.join("sub")).expect("mkdir");
        fs::write(d.join("sub/slice.yaml"), SLICE).expect("write");
        symlink("sub/../sub/slice.yaml", d.join("slice.yaml")).expect("link");
        // Reached through a link to the directory itself.
        let via = dir_with(&[]);
        symlink(d, via.path().join("lb")).expect("link");

        let read = read_dir(&via.path().join("lb")).expect("read");
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        assert_eq!(names(&read), (vec!["web".into()], vec!["web-abc".into()]));
    }

    #[test]
    fn fifos_sockets_dangling_links_and_huge_files_are_skipped_not_read() {
        use std::os::unix::fs::symlink;
        let dir = dir_with(&[("ok.yaml", SERVICE)]);
        let d = dir.path();
        nix::unistd::mkfifo(&d.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let _socket = std::os::unix::net::UnixListener::bind(d.join("sock.yaml")).expect("socket");
        symlink("/dev/zero", d.join("zero.yaml")).expect("link");
        symlink("missing.yaml.orig", d.join("dangling.yaml")).expect("link");
        let big = fs::File::create(d.join("big.yaml")).expect("create");
        big.set_len(MAX_MANIFEST_BYTES + 1).expect("sparse file");
        // A directory with a manifest's name is not a manifest, nor a problem.
        fs::create_dir(d.join("dir.yaml")).expect("mkdir");

        // A FIFO opened for reading would block the source forever: the read must return.
        let read = read_dir(d).expect("read");
        assert_eq!(read.snapshot.services.len(), 1);
        assert_eq!(
            refusals(&read),
            [
                ("big.yaml".into(), "too_large"),
                ("dangling.yaml".into(), "unreadable"),
                ("fifo.yaml".into(), "not_a_regular_file"),
                ("sock.yaml".into(), "not_a_regular_file"),
                ("zero.yaml".into(), "outside_source_dir"),
            ]
        );
        assert!(
            read.problems[2]
                .to_string()
                .ends_with("is a FIFO, not a regular file"),
            "{}",
            read.problems[2]
        );
        // Inside the directory, a device is refused for what it is.
        let dev = dir_with(&[]);
        if nix::sys::stat::mknod(
            &dev.path().join("null.yaml"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::S_IRUSR,
            nix::sys::stat::makedev(1, 3),
        )
        .is_ok()
        {
            let read = read_dir(dev.path()).expect("read");
            assert_eq!(
                refusals(&read),
                [("null.yaml".into(), "not_a_regular_file")]
            );
            assert!(
                read.problems[0].what.contains("a device"),
                "{:?}",
                read.problems
            );
        }
    }

    #[test]
    fn every_problem_has_a_metric_label_and_parse_errors_keep_theirs() {
        let bad = SERVICE.replace("port: 80", "port: eighty");
        let dir = dir_with(&[(
            "a.yaml",
            &format!(
                "{bad}---
kind: [x
---
- 1
"
            ),
        )]);
        let read = read_dir(dir.path()).expect("read");
        let labels: Vec<_> = read.problems.iter().map(|p| p.reason.label()).collect();
        assert_eq!(labels, ["invalid_object", "invalid_yaml", "not_an_object"]);
    }

    #[tokio::test]
    async fn skipped_files_are_counted_in_invalid_objects() {
        use std::os::unix::fs::symlink;
        let outside = dir_with(&[("secret.yaml", SERVICE)]);
        let dir = dir_with(&[("ok.yaml", SERVICE)]);
        symlink(
            outside.path().join("secret.yaml"),
            dir.path().join("x.yaml"),
        )
        .expect("link");
        let metrics = Metrics::new(None);
        let mut source = FileSource::new(dir.path().to_owned()).expect("source");
        source.metrics = Some(metrics.clone());
        source.poll().expect("poll").expect("first poll reads");
        let text = metrics.encode().expect("encode");
        let line = text
            .lines()
            .find(|l| l.starts_with("lb_invalid_objects_total{"))
            .unwrap_or_else(|| panic!("no lb_invalid_objects_total in\n{text}"));
        assert!(
            line.contains("kind=\"file\"") && line.contains("reason=\"outside_source_dir\""),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
    }

    #[tokio::test]
    async fn spawned_source_sends_each_snapshot_as_a_full_resync() {
        let dir = dir_with(&[("a.yaml", SERVICE)]);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        spawn_events(dir.path().to_owned(), "node-a".into(), tx, None).expect("spawn");
        async fn next(rx: &mut crate::source::EventReceiver) -> (usize, usize) {
            let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("snapshot within 5 s")
                .expect("source alive");
            let Update::Snapshot(snapshot) = event.update else {
                panic!("not a snapshot: {:?}", event.update);
            };
            match (snapshot.services, snapshot.slices) {
                (Change::Replace(services), Change::Replace(slices)) => {
                    assert!(services.iter().all(|p| p.value.is_some()));
                    assert!(slices.iter().all(|p| p.value.is_some()));
                    (services.len(), slices.len())
                }
                other => panic!("not a full resync: {other:?}"),
            }
        }
        assert_eq!(next(&mut rx).await, (1, 0));
        fs::write(dir.path().join("b.yaml"), SLICE).expect("write");
        assert_eq!(next(&mut rx).await, (1, 1));
    }
}
