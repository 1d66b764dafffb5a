//! Batched access to BPF hash maps: BPF_MAP_LOOKUP_BATCH, BPF_MAP_DELETE_BATCH and
//! BPF_MAP_UPDATE_BATCH, which aya 0.14 does not wrap, plus the point operations on the same
//! file descriptor.
//!
//! Walking a map with aya's iterator costs two syscalls per entry (get_next_key, then
//! lookup) and starts again from the first key whenever the current one is deleted
//! underneath, which the datapath does all the time. A batch lookup copies whole hash
//! buckets per syscall and resumes from a bucket index, which no concurrent insert or
//! delete invalidates: that is what makes a walk over millions of conntrack entries take a
//! fraction of a second, and lets a walk stop and resume later.
//!
//! Only hash maps (plain and LRU) are supported: for them the kernel's batch position is a
//! `u32` bucket index, whatever the key.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::{
    maps::{MapData, MapError, MapType},
    Pod,
};

use super::MapsError;

// The bpf(2) commands, from include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_int = 26;
const BPF_MAP_DELETE_BATCH: libc::c_int = 27;

/// Update flags.
pub const BPF_ANY: u64 = 0;
/// Insert only if the key is free: a racing writer that got there first keeps its entry.
pub const BPF_NOEXIST: u64 = 1;
/// Update only if the key is present.
pub const BPF_EXIST: u64 = 2;

/// `union bpf_attr` as the BPF_MAP_*_ELEM commands read it.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it (the `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// bpf(2) with `attr`, which the kernel may write back into (batch counts).
fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a live, writable bpf_attr prefix of the size given; every pointer in
    // it was set by the caller to a buffer of the size the command reads or writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn errno_is(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// Where a batch walk stands: the kernel's position (the next hash bucket), or the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor(Option<u32>);

impl Cursor {
    /// The first bucket.
    pub const START: Cursor = Cursor(None);

    pub fn is_start(&self) -> bool {
        self.0.is_none()
    }
}

/// What one batch lookup brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// More buckets follow the cursor.
    More,
    /// The walk reached the end of the map (the cursor is back at the start).
    End,
}

/// A hash map of `K` -> `V`, through its own file descriptor.
#[derive(Debug)]
pub struct BatchMap<K, V> {
    data: MapData,
    max_entries: u32,
    _types: PhantomData<(K, V)>,
}

impl<K: Pod, V: Pod> BatchMap<K, V> {
    /// The map pinned at `dir/name`, checked to be a hash map of `K` -> `V`.
    pub fn open_pinned(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        let path = dir.join(name);
        let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
            path: path.clone(),
            source,
        })?;
        Self::new(name, data)
    }

    /// `data` viewed as a hash map of `K` -> `V`; another type or layout is refused, as
    /// aya's typed maps refuse it.
    pub fn new(name: &'static str, data: MapData) -> Result<Self, MapsError> {
        let layout = |source| MapsError::Layout { map: name, source };
        let info = data.info().map_err(|source| MapsError::Access {
            map: name,
            op: "info",
            source,
        })?;
        match info.map_type() {
            Ok(MapType::Hash | MapType::LruHash) => {}
            _ => {
                return Err(layout(MapError::InvalidMapType {
                    map_type: info_type(&info),
                }))
            }
        }
        if info.key_size() as usize != size_of::<K>() {
            return Err(layout(MapError::InvalidKeySize {
                size: size_of::<K>(),
                expected: info.key_size() as usize,
            }));
        }
        if info.value_size() as usize != size_of::<V>() {
            return Err(layout(MapError::InvalidValueSize {
                size: size_of::<V>(),
                expected: info.value_size() as usize,
            }));
        }
        Ok(Self {
            max_entries: info.max_entries(),
            data,
            _types: PhantomData,
        })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn fd(&self) -> u32 {
        // A valid descriptor is never negative.
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    /// Reads the entries of the buckets after `cursor` into `keys` and `values` (replacing
    /// their contents): at most `max` of them, unless a single bucket holds more, in which
    /// case the buffers grow to take that bucket whole (the kernel never splits one). The
    /// entries read are valid whatever is returned; `cursor` moves past them.
    pub fn lookup_batch(
        &self,
        cursor: &mut Cursor,
        max: usize,
        keys: &mut Vec<K>,
        values: &mut Vec<V>,
    ) -> io::Result<Walk> {
        let mut room = max.max(1);
        loop {
            keys.clear();
            values.clear();
            keys.reserve(room);
            values.reserve(room);
            let in_batch = cursor.0.unwrap_or(0);
            let mut out_batch = 0u32;
            let mut attr = BatchAttr {
                in_batch: cursor.0.map_or(0, |_| &in_batch as *const u32 as u64),
                out_batch: &mut out_batch as *mut u32 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: u32::try_from(room).unwrap_or(u32::MAX),
                map_fd: self.fd(),
                ..Default::default()
            };
            let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = (attr.count as usize).min(room);
            // SAFETY: the kernel wrote `count` whole keys and values into the reserved
            // room, and any bit pattern is a valid `K` and `V` (Pod).
            unsafe {
                keys.set_len(n);
                values.set_len(n);
            }
            match result {
                Ok(()) => {
                    *cursor = Cursor(Some(out_batch));
                    return Ok(Walk::More);
                }
                // The last buckets: what was copied is still valid.
                Err(e) if errno_is(&e, libc::ENOENT) => {
                    *cursor = Cursor::START;
                    return Ok(Walk::End);
                }
                // The next bucket alone holds more than `room` entries; nothing was copied.
                Err(e) if errno_is(&e, libc::ENOSPC) && room < self.max_entries as usize => {
                    room = (room * 2).min(self.max_entries as usize);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes `keys`; keys already gone (the datapath or another writer got there first)
    /// are skipped. Returns the positions in `keys` of those that were not there.
    pub fn delete_batch(&self, keys: &[K]) -> io::Result<Vec<usize>> {
        let mut absent = Vec::new();
        let mut done = 0;
        while done < keys.len() {
            let rest = &keys[done..];
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                count: u32::try_from(rest.len()).unwrap_or(u32::MAX),
                map_fd: self.fd(),
                ..Default::default()
            };
            match sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
                // Deleted `count` keys; a single call covers at most u32::MAX of them.
                Ok(()) => done += attr.count as usize,
                // The kernel stops at the first absent key and reports how many it deleted
                // before it.
                Err(e) if errno_is(&e, libc::ENOENT) => {
                    let at = done + attr.count as usize;
                    absent.push(at);
                    done = at + 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(absent)
    }

    /// Writes `keys[i]` = `values[i]` for every element, inserting or overwriting (the
    /// kernel takes no NOEXIST or EXIST for a batch: use [`Self::update`] for those).
    /// Returns how many were written; a full table stops the batch with E2BIG.
    pub fn update_batch(&self, keys: &[K], values: &[V]) -> io::Result<usize> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let mut done = 0;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
                map_fd: self.fd(),
                ..Default::default()
            };
            sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
            done += attr.count as usize;
        }
        Ok(done)
    }

    /// The value of `key`, if present.
    pub fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = std::mem::MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // SAFETY: the kernel wrote a whole value; any bit pattern is valid (Pod).
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if errno_is(&e, libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `key` = `value` with `flags`. Returns false when the flags refused it (present
    /// with NOEXIST, absent with EXIST).
    pub fn update(&self, key: &K, value: &V, flags: u64) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e)
                if (flags == BPF_NOEXIST && errno_is(&e, libc::EEXIST))
                    || (flags == BPF_EXIST && errno_is(&e, libc::ENOENT)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`. Returns false when it was not there.
    pub fn delete(&self, key: &K) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key as *const K as u64,
            ..Default::default()
        };
        match sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if errno_is(&e, libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn info_type(info: &aya::maps::MapInfo) -> u32 {
    // MapInfo only hands the raw type out through map_type(), which fails on unknown ones.
    info.map_type().map_or(u32::MAX, |t| t as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aya::maps::HashMap;

    use super::*;
    use crate::testing::{require_root, PinDir};

    /// A plain (preallocated) hash map of `u32` -> `u64` pinned as `dir/name`, as the
    /// datapath's conntrack tables are made.
    fn pinned(dir: &Path, name: &'static str, max_entries: u32) -> BatchMap<u32, u64> {
        HashMap::<MapData, u32, u64>::create(max_entries, 0)
            .expect("create")
            .pin(dir.join(name))
            .expect("pin");
        BatchMap::open_pinned(dir, name).expect("open")
    }

    fn walk_all(map: &BatchMap<u32, u64>, max: usize) -> (BTreeMap<u32, u64>, usize) {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::START;
        let mut seen = BTreeMap::new();
        let mut largest = 0;
        loop {
            let walk = map
                .lookup_batch(&mut cursor, max, &mut keys, &mut values)
                .expect("lookup batch");
            largest = largest.max(keys.len());
            for (k, v) in keys.iter().zip(&values) {
                assert!(seen.insert(*k, *v).is_none(), "{k} seen twice");
            }
            if walk == Walk::End {
                assert!(cursor.is_start());
                return (seen, largest);
            }
        }
    }

    #[test]
    fn batches_write_walk_and_delete_a_real_hash_map() {
        if !require_root("batch operations on a real BPF hash map") {
            return;
        }
        let pins = PinDir::new("batch-ops");
        let map = pinned(pins.path(), "BATCH_TEST", 1024);
        assert_eq!(map.max_entries(), 1024);
        let keys: Vec<u32> = (0..1000).collect();
        let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) * 10).collect();
        assert_eq!(map.update_batch(&keys, &values).expect("fill"), 1000);

        // Every entry exactly once, whatever the batch size; with room for one entry the
        // buffer must grow for every bucket that holds several (1000 keys in 1024 buckets
        // always collide somewhere).
        for max in [4096, 100, 7] {
            let (seen, _) = walk_all(&map, max);
            assert_eq!(seen.len(), 1000, "max {max}");
            assert!(seen.iter().all(|(k, v)| u64::from(*k) * 10 == *v));
        }
        let (seen, largest) = walk_all(&map, 1);
        assert_eq!(seen.len(), 1000);
        assert!(
            largest > 1,
            "no bucket held two keys, so ENOSPC was not exercised"
        );

        // A batch overwrites; NOEXIST and EXIST are point updates' and refuse quietly.
        let (more, more_values): (Vec<u32>, Vec<u64>) = (995..1010).map(|k| (k, 7)).unzip();
        assert_eq!(map.update_batch(&more, &more_values).expect("batch"), 15);
        assert_eq!(map.lookup(&996).expect("lookup"), Some(7));
        assert!(!map.update(&1005, &8, BPF_NOEXIST).expect("update"));
        assert_eq!(map.lookup(&1005).expect("lookup"), Some(7));
        assert!(map.update(&1010, &8, BPF_NOEXIST).expect("update"));
        assert!(map.update(&1005, &8, BPF_EXIST).expect("update"));
        assert!(!map.update(&5000, &8, BPF_EXIST).expect("update"));
        assert_eq!(map.lookup(&5000).expect("lookup"), None);

        // Absent keys anywhere in a delete batch are skipped and named.
        let doomed = [1, 2, 5000, 3, 5001, 5002, 4, 5003];
        assert_eq!(map.delete_batch(&doomed).expect("delete"), vec![2, 4, 5, 7]);
        for k in [1, 2, 3, 4] {
            assert_eq!(map.lookup(&k).expect("lookup"), None);
        }
        assert!(map.delete(&5).expect("delete"));
        assert!(!map.delete(&5).expect("delete"));
        assert_eq!(walk_all(&map, 64).0.len(), 1011 - 5);
    }

    #[test]
    fn a_walk_resumes_where_it_stopped_while_the_map_changes() {
        if !require_root("batch walks of a real BPF hash map") {
            return;
        }
        let pins = PinDir::new("batch-resume");
        let map = pinned(pins.path(), "BATCH_RESUME", 4096);
        let keys: Vec<u32> = (0..3000).collect();
        map.update_batch(&keys, &vec![1; keys.len()]).expect("fill");
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::START;
        let mut seen = std::collections::BTreeSet::new();
        // Half a walk, then every key not seen yet that is even is deleted behind its back:
        // the rest of the walk must still see each remaining key once, and no deleted one.
        while seen.len() < 1500 {
            assert_eq!(
                map.lookup_batch(&mut cursor, 256, &mut k, &mut v)
                    .expect("batch"),
                Walk::More
            );
            seen.extend(k.iter().copied());
        }
        let deleted: Vec<u32> = keys
            .iter()
            .copied()
            .filter(|k| k % 2 == 0 && !seen.contains(k))
            .collect();
        assert!(map.delete_batch(&deleted).expect("delete").is_empty());
        loop {
            let walk = map
                .lookup_batch(&mut cursor, 256, &mut k, &mut v)
                .expect("batch");
            for key in &k {
                assert!(seen.insert(*key), "{key} seen twice");
            }
            if walk == Walk::End {
                break;
            }
        }
        assert_eq!(seen.len(), 3000 - deleted.len());
        assert!(deleted.iter().all(|k| !seen.contains(k)));
    }

    #[test]
    fn maps_of_another_layout_are_refused() {
        if !require_root("opening real BPF maps") {
            return;
        }
        let pins = PinDir::new("batch-layout");
        HashMap::<MapData, u32, u32>::create(16, 0)
            .expect("create")
            .pin(pins.path().join("SMALL_VALUES"))
            .expect("pin");
        let err = BatchMap::<u32, u64>::open_pinned(pins.path(), "SMALL_VALUES")
            .expect_err("value size differs");
        assert!(matches!(err, MapsError::Layout { .. }), "{err:?}");
        aya::maps::Array::<MapData, u64>::create(16, 0)
            .expect("create")
            .pin(pins.path().join("AN_ARRAY"))
            .expect("pin");
        let err =
            BatchMap::<u32, u64>::open_pinned(pins.path(), "AN_ARRAY").expect_err("not a hash");
        assert!(matches!(err, MapsError::Layout { .. }), "{err:?}");
    }
}
