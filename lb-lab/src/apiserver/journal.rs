//! Persistence of the store across restarts: a snapshot file (`--state`) plus a journal of
//! the changes since (`<state>.journal`, one JSON line per change), folded into a new snapshot
//! when it grows. Appending a line per write keeps writes cheap however many objects there are,
//! and a killed server loses nothing it acknowledged (the page cache outlives the process).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resource::ObjectKey;
use crate::state::write_atomic;

/// Journal lines before a snapshot is due, at the least.
const MIN_ENTRIES_BEFORE_SNAPSHOT: usize = 1000;

/// One change: an object stored (`object` set), removed (`object` absent), or only a bump of
/// the resourceVersion (no `key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "rv")]
    pub resource_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ObjectKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    resource_version: u64,
    objects: Vec<Stored>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    key: ObjectKey,
    object: Value,
}

/// The open journal of a state file.
#[derive(Debug)]
pub struct Journal {
    state: PathBuf,
    log: File,
    entries: usize,
}

/// The journal that goes with state file `state`.
pub fn journal_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    state.with_file_name(name)
}

impl Journal {
    /// Opens the state file `state` and its journal (either may be missing: a fresh store),
    /// and returns the changes to replay, oldest first: the snapshot's objects, then the
    /// journal's later records. A torn last line (the process died mid-write) ends the replay.
    ///
    /// # Errors
    /// If a file cannot be read or created, or the snapshot is not valid.
    pub fn open(state: &Path) -> Result<(Journal, Vec<Record>)> {
        let mut records = Vec::new();
        let mut snapshot_rv = 0;
        match fs::read(state) {
            Ok(bytes) => {
                let snapshot: Snapshot = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a valid state file", state.display()))?;
                snapshot_rv = snapshot.resource_version;
                records.push(Record {
                    resource_version: snapshot_rv,
                    key: None,
                    object: None,
                });
                records.extend(snapshot.objects.into_iter().map(|s| Record {
                    resource_version: snapshot_rv,
                    key: Some(s.key),
                    object: Some(s.object),
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", state.display())),
        }
        let path = journal_path(state);
        match File::open(&path) {
            Ok(file) => {
                for (n, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                    match serde_json::from_str::<Record>(&line) {
                        Ok(r) if r.resource_version > snapshot_rv => records.push(r),
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!(
                                "apiserver: {} line {}: {e}; ignoring it and what follows",
                                path.display(),
                                n + 1
                            );
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let journal = Journal {
            state: state.to_path_buf(),
            log,
            entries: records.len(),
        };
        Ok((journal, records))
    }

    /// Appends `record` as one line.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        // One write call per line: a kill leaves at most one torn line, at the end.
        self.log.write_all(&line)?;
        self.entries += 1;
        Ok(())
    }

    /// Whether the journal has grown enough, for a store of `objects` objects, to be folded
    /// into a snapshot.
    pub fn wants_snapshot(&self, objects: usize) -> bool {
        self.entries > MIN_ENTRIES_BEFORE_SNAPSHOT.max(objects.saturating_mul(2))
    }

    /// Writes a snapshot of `objects` at `resource_version` (atomically), then empties the
    /// journal. A crash between the two is harmless: replay skips lines the snapshot covers.
    ///
    /// # Errors
    /// If a file cannot be written.
    pub fn snapshot<'a>(
        &mut self,
        resource_version: u64,
        objects: impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)>,
    ) -> Result<()> {
        let snapshot = Snapshot {
            resource_version,
            objects: objects
                .map(|(k, v)| Stored {
                    key: k.clone(),
                    object: (**v).clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&snapshot)?;
        write_atomic(&self.state, &bytes)
            .with_context(|| format!("cannot write {}", self.state.display()))?;
        self.log
            .set_len(0)
            .context("cannot truncate the state journal")?;
        self.entries = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resource::Resource;

    fn temp_state(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lb-lab-journal-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("state.json")
    }

    fn put(rv: u64, name: &str) -> Record {
        Record {
            resource_version: rv,
            key: Some(ObjectKey::new(Resource::Services, "default", name)),
            object: Some(json!({"metadata": {"name": name}})),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_snapshot_replaces_the_journal() {
        let state = temp_state("reopen");
        let (mut journal, records) = Journal::open(&state).unwrap();
        assert!(records.is_empty());
        journal.append(&put(1, "a")).unwrap();
        journal.append(&put(2, "b")).unwrap();
        drop(journal);

        let (mut journal, records) = Journal::open(&state).unwrap();
        assert_eq!(records, [put(1, "a"), put(2, "b")]);
        let key = ObjectKey::new(Resource::Services, "default", "a");
        let obj = Arc::new(json!({"metadata": {"name": "a"}}));
        journal.snapshot(2, [(&key, &obj)].into_iter()).unwrap();
        assert_eq!(fs::read(journal_path(&state)).unwrap().len(), 0);
        journal.append(&put(3, "c")).unwrap();
        drop(journal);

        let (_, records) = Journal::open(&state).unwrap();
        let rvs: Vec<_> = records.iter().map(|r| r.resource_version).collect();
        assert_eq!(rvs, [2, 2, 3]);
        assert_eq!(records[1].key.as_ref().unwrap().name, "a");
        fs::remove_dir_all(state.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let state = temp_state("torn");
        let (mut journal, _) = Journal::open(&state).unwrap();
        journal.append(&put(1, "a")).unwrap();
        drop(journal);
        let mut log = OpenOptions::new()
            .append(true)
            .open(journal_path(&state))
            .unwrap();
        log.write_all(b"{\"rv\":2,\"key\":{\"reso").unwrap();
        let (_, records) = Journal::open(&state).unwrap();
        assert_eq!(records, [put(1, "a")]);
        fs::remove_dir_all(state.parent().unwrap()).unwrap();
    }

    #[test]
    fn lines_older_than_the_snapshot_are_skipped() {
        let state = temp_state("older");
        let (mut journal, _) = Journal::open(&state).unwrap();
        journal.append(&put(1, "a")).unwrap();
        // As if the process died after writing the snapshot but before truncating.
        let bytes = serde_json::to_vec(&json!({"resourceVersion": 5, "objects": []})).unwrap();
        fs::write(&state, bytes).unwrap();
        drop(journal);
        let (_, records) = Journal::open(&state).unwrap();
        assert_eq!(
            records.len(),
            1,
            "only the snapshot's resourceVersion: {records:?}"
        );
        assert_eq!(records[0].resource_version, 5);
        fs::remove_dir_all(state.parent().unwrap()).unwrap();
    }
}
