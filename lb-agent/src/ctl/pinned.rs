//! Reads back the maps an agent pinned (it may be running or stopped; the maps outlive it),
//! and deletes conntrack entries for `lbctl conntrack flush`.
//!
//! Each map is opened on its own, so one that is missing (a datapath older than this
//! `lbctl`) or unreadable is reported and the others are still shown.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapError, PerCpuArray},
    sys::SyscallError,
    Pod,
};
use lb_common::{maps as names, CtEntry, CtKey, ServiceName, SourceRange};

use super::{
    map_id::MapId,
    snapshot::{Snapshot, Unavailable},
};
use crate::error_chain::error_chain;

/// Iterating a hash map that the datapath changes at the same time can restart from the
/// first key when the current one is deleted underneath; this bounds a walk to a few passes
/// over the largest conntrack table there can be.
const WALK_LIMIT: usize = 4 * names::CONNTRACK_LIMIT as usize;

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("pin directory {} does not exist: lb-agent may not be running, or runs with another --pin-dir", .0.display())]
    NoPinDir(PathBuf),
    #[error("no lb maps are pinned in {}: lb-agent may not be running, or runs with another --pin-dir", .0.display())]
    NoMaps(PathBuf),
    #[error("{map} is needed here but cannot be read: {reason}")]
    Required { map: MapId, reason: String },
    #[error("cannot open {}", .path.display())]
    Open { path: PathBuf, source: MapError },
    #[error("{map} does not have the layout this lbctl expects (built from another version?)")]
    Layout { map: MapId, source: MapError },
    #[error("not pinned (no {}; a datapath older than this lbctl?)", .0.display())]
    NotPinned(PathBuf),
    #[error("reading {map} failed")]
    Read { map: MapId, source: MapError },
    #[error("deleting from {map} failed")]
    Delete { map: MapId, source: MapError },
}

/// Reads `maps` from `dir`. Maps that cannot be read are listed in
/// [`Snapshot::unavailable`]; it is an error only when the directory or every lb map is
/// missing.
pub fn read(dir: &Path, maps: &[MapId]) -> Result<Snapshot, PinnedError> {
    ensure_pinned(dir)?;
    let mut snapshot = Snapshot::default();
    // Backends are read before their stats, whatever order the caller gave.
    for map in MapId::ALL.into_iter().filter(|m| maps.contains(m)) {
        if let Err(e) = read_one(dir, map, &mut snapshot) {
            snapshot.unavailable.push(Unavailable {
                map,
                reason: error_chain(&e),
            });
        }
    }
    Ok(snapshot)
}

/// Fails with [`PinnedError::Required`] if any of `maps` could not be read: views that
/// cannot say anything useful without them.
pub fn require(snapshot: &Snapshot, maps: &[MapId]) -> Result<(), PinnedError> {
    match maps.iter().find_map(|m| snapshot.unavailable(*m)) {
        Some(u) => Err(PinnedError::Required {
            map: u.map,
            reason: u.reason.clone(),
        }),
        None => Ok(()),
    }
}

/// The conntrack tables (TCP, then the other protocols), open for deleting entries.
pub struct ConntrackMap([HashMap<MapData, CtKey, CtEntry>; 2]);

impl ConntrackMap {
    pub fn open(dir: &Path) -> Result<Self, PinnedError> {
        ensure_pinned(dir)?;
        let [tcp, any] = names::CONNTRACK;
        Ok(Self([
            open_named(dir, MapId::Conntrack, tcp)?,
            open_named(dir, MapId::Conntrack, any)?,
        ]))
    }
}

/// Deletes conntrack entries; `lbctl conntrack flush` is written against this so it can be
/// tested without a kernel.
pub trait DeleteConntrack {
    /// Deletes `key`; false if it was not there.
    fn delete(&mut self, key: &CtKey) -> Result<bool, PinnedError>;
}

impl DeleteConntrack for ConntrackMap {
    fn delete(&mut self, key: &CtKey) -> Result<bool, PinnedError> {
        let table = &mut self.0[usize::from(key.proto != lb_common::proto::TCP)];
        match table.remove(key) {
            Ok(()) => Ok(true),
            // The datapath may have evicted it since it was listed: gone is gone.
            Err(e) if is_absent(&e) => Ok(false),
            Err(source) => Err(PinnedError::Delete {
                map: MapId::Conntrack,
                source,
            }),
        }
    }
}

/// Distinguishes "no agent here" from "this one map is missing".
fn ensure_pinned(dir: &Path) -> Result<(), PinnedError> {
    if !dir.is_dir() {
        return Err(PinnedError::NoPinDir(dir.to_owned()));
    }
    if MapId::ALL
        .iter()
        .flat_map(|m| m.pinned_names())
        .any(|name| dir.join(name).exists())
    {
        Ok(())
    } else {
        Err(PinnedError::NoMaps(dir.to_owned()))
    }
}

/// The map pinned as `dir/<name>`, viewed as the typed map it must be.
fn open<T: TryFrom<Map, Error = MapError>>(dir: &Path, map: MapId) -> Result<T, PinnedError> {
    open_named(dir, map, map.pinned_names()[0])
}

/// [`open`] for one of the names `map` is pinned under.
fn open_named<T: TryFrom<Map, Error = MapError>>(
    dir: &Path,
    map: MapId,
    name: &str,
) -> Result<T, PinnedError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .map_err(|source| PinnedError::Open { path, source })?;
    T::try_from(data).map_err(|source| PinnedError::Layout { map, source })
}

/// Fills `snapshot`'s part for `map`.
fn read_one(dir: &Path, map: MapId, snapshot: &mut Snapshot) -> Result<(), PinnedError> {
    for name in map.pinned_names() {
        let path = dir.join(name);
        if !path.exists() {
            return Err(PinnedError::NotPinned(path));
        }
    }
    let read = |source| PinnedError::Read { map, source };
    match map {
        MapId::ServiceNames => {
            let m: HashMap<MapData, u32, ServiceName> = open(dir, map)?;
            snapshot.service_names = entries(&m)
                .map_err(read)?
                .into_iter()
                .map(|(id, name)| (id, decode_name(&name)))
                .collect();
        }
        MapId::Frontends => snapshot.frontends = entries(&open(dir, map)?).map_err(read)?,
        MapId::Slots => snapshot.slots = entries(&open(dir, map)?).map_err(read)?,
        MapId::Backends => snapshot.backends = entries(&open(dir, map)?).map_err(read)?,
        MapId::BackendStats => {
            // The array has a slot for every possible backend id; reading only the ids in
            // use keeps this to a few syscalls instead of a quarter million.
            let m: Array<MapData, lb_common::BackendStats> = open(dir, map)?;
            let mut stats = BTreeMap::new();
            for &id in snapshot.backends.keys() {
                match m.get(&id, 0) {
                    Ok(s) => {
                        stats.insert(id, s);
                    }
                    // An id beyond the array (a resized map) has no stats.
                    Err(MapError::OutOfBounds { .. }) => {}
                    Err(e) => return Err(read(e)),
                }
            }
            snapshot.backend_stats = stats;
        }
        MapId::Conntrack => {
            snapshot.conntrack.clear();
            for name in map.pinned_names() {
                let table: HashMap<MapData, CtKey, CtEntry> = open_named(dir, map, name)?;
                snapshot.conntrack.extend(entries(&table).map_err(read)?);
            }
        }
        MapId::Affinity => snapshot.affinity = entries(&open(dir, map)?).map_err(read)?,
        MapId::Counters => {
            let m: PerCpuArray<MapData, u64> = open(dir, map)?;
            snapshot.counters = m
                .iter()
                .map(|per_cpu| {
                    per_cpu.map(|values| values.iter().copied().fold(0u64, u64::wrapping_add))
                })
                .collect::<Result<_, _>>()
                .map_err(read)?;
        }
        MapId::Config => {
            let m: Array<MapData, lb_common::Config> = open(dir, map)?;
            snapshot.config = Some(m.get(&0, 0).map_err(read)?);
        }
        MapId::SourceRanges => {
            let m: LpmTrie<MapData, SourceRange, u32> = open(dir, map)?;
            snapshot.source_ranges = m
                .keys()
                .take(WALK_LIMIT)
                .map(|k| k.map(|k| (k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()
                .map_err(read)?;
        }
        MapId::SockRev => snapshot.sock_rev = entries(&open(dir, map)?).map_err(read)?,
    }
    Ok(())
}

/// Every entry of a hash map; a key seen twice (the walk restarted) is kept once.
fn entries<K: Pod + Ord, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<BTreeMap<K, V>, MapError> {
    map.iter().take(WALK_LIMIT).collect()
}

/// The name up to its first NUL; bytes that are not UTF-8 are shown replaced rather than
/// hiding the name.
fn decode_name(name: &ServiceName) -> String {
    match name.as_str() {
        Some(s) => s.to_owned(),
        None => {
            let end = name
                .bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name.bytes.len());
            String::from_utf8_lossy(&name.bytes[..end]).into_owned()
        }
    }
}

/// True when the kernel said the key was not there.
fn is_absent(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(SyscallError { io_error, .. })
            if io_error.kind() == io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_dir_says_the_agent_may_not_be_running() {
        let e = read(Path::new("/nonexistent/lb"), &MapId::ALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pin directory /nonexistent/lb does not exist: lb-agent may not be running, or runs with another --pin-dir"
        );
    }

    #[test]
    fn a_pin_dir_without_lb_maps_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read(dir.path(), &MapId::ALL).unwrap_err();
        assert!(matches!(e, PinnedError::NoMaps(_)), "{e}");
    }

    #[test]
    fn names_that_are_not_utf8_are_shown_replaced() {
        let mut name = ServiceName::new("ns/a:b");
        name.bytes[2] = 0xff;
        assert_eq!(decode_name(&name), "ns\u{fffd}a:b");
        assert_eq!(decode_name(&ServiceName::new("ns/a:b")), "ns/a:b");
    }
}
