//! The kernel's maps, through aya.

use std::{io, path::Path};

use aya::{
    maps::{
        lpm_trie::{Key as TrieKey, LpmTrie},
        Array, HashMap, Map, MapData, MapError,
    },
    sys::SyscallError,
    Ebpf,
};
use lb_common::{
    maps as names, Backend, BackendId, BackendSlotKey, Config, CtEntry, CtKey, Frontend,
    FrontendKey, ServiceName, SourceRange,
};

use super::{DatapathMaps, MapsError, RangeKey};

/// Iterating a hash map that the datapath changes at the same time can restart from the
/// first key when the current one is deleted underneath; this bounds a conntrack walk to a
/// few passes of the largest table there can be.
const CONNTRACK_WALK_LIMIT: usize = 4 * names::CONNTRACK_LIMIT as usize;

/// A conntrack table.
pub type ConntrackTable = HashMap<MapData, CtKey, CtEntry>;

/// The service, conntrack and config maps.
pub struct AyaMaps {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    slots: HashMap<MapData, BackendSlotKey, BackendId>,
    backends: HashMap<MapData, BackendId, Backend>,
    /// TCP, then every other protocol (lb_common::maps::CONNTRACK).
    conntrack: [ConntrackTable; 2],
    config: Array<MapData, Config>,
    service_names: HashMap<MapData, u32, ServiceName>,
    source_ranges: LpmTrie<MapData, SourceRange, u32>,
}

impl AyaMaps {
    /// Takes the maps out of a loaded object (they stay pinned; the object keeps its
    /// programs).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        Ok(Self {
            frontends: typed(names::FRONTENDS, take(names::FRONTENDS)?)?,
            slots: typed(names::BACKEND_SLOTS, take(names::BACKEND_SLOTS)?)?,
            backends: typed(names::BACKENDS, take(names::BACKENDS)?)?,
            conntrack: [
                typed(names::CONNTRACK_TCP, take(names::CONNTRACK_TCP)?)?,
                typed(names::CONNTRACK_ANY, take(names::CONNTRACK_ANY)?)?,
            ],
            config: typed(names::CONFIG, take(names::CONFIG)?)?,
            service_names: typed(names::SERVICE_NAMES, take(names::SERVICE_NAMES)?)?,
            source_ranges: typed(names::SOURCE_RANGES, take(names::SOURCE_RANGES)?)?,
        })
    }

    /// Opens the maps pinned under `dir` by a running or past agent.
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            frontends: typed(names::FRONTENDS, open_pinned(dir, names::FRONTENDS)?)?,
            slots: typed(
                names::BACKEND_SLOTS,
                open_pinned(dir, names::BACKEND_SLOTS)?,
            )?,
            backends: typed(names::BACKENDS, open_pinned(dir, names::BACKENDS)?)?,
            conntrack: [
                typed(
                    names::CONNTRACK_TCP,
                    open_pinned(dir, names::CONNTRACK_TCP)?,
                )?,
                typed(
                    names::CONNTRACK_ANY,
                    open_pinned(dir, names::CONNTRACK_ANY)?,
                )?,
            ],
            config: typed(names::CONFIG, open_pinned(dir, names::CONFIG)?)?,
            service_names: typed(
                names::SERVICE_NAMES,
                open_pinned(dir, names::SERVICE_NAMES)?,
            )?,
            source_ranges: typed(
                names::SOURCE_RANGES,
                open_pinned(dir, names::SOURCE_RANGES)?,
            )?,
        })
    }
}

/// The map pinned as `dir/name`.
pub fn open_pinned(dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let path = dir.join(name);
    MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .map_err(|source| MapsError::Open { path, source })
}

/// A map viewed as the typed map it must be; a different type or key/value size means the
/// map was created by an incompatible build.
pub fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, MapsError> {
    T::try_from(map).map_err(|source| MapsError::Layout { map: name, source })
}

fn access(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access { map, op, source }
}

/// True when the kernel said the key was not there.
fn is_absent(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(SyscallError { io_error, .. })
            if io_error.kind() == io::ErrorKind::NotFound)
}

fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Err(e) if !is_absent(&e) => Err(access(name, "delete")(e)),
        _ => Ok(()),
    }
}

fn entries<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<Vec<(K, V)>, MapsError> {
    map.iter()
        .take(limit)
        .collect::<Result<_, _>>()
        .map_err(access(name, "iterate"))
}

impl DatapathMaps for AyaMaps {
    fn frontends(&self) -> Result<Vec<(FrontendKey, Frontend)>, MapsError> {
        entries(&self.frontends, names::FRONTENDS, usize::MAX)
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &Frontend) -> Result<(), MapsError> {
        self.frontends
            .insert(key, value, 0)
            .map_err(access(names::FRONTENDS, "update"))
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        delete(&mut self.frontends, key, names::FRONTENDS)
    }

    fn slots(&self) -> Result<Vec<(BackendSlotKey, BackendId)>, MapsError> {
        entries(&self.slots, names::BACKEND_SLOTS, usize::MAX)
    }

    fn put_slot(&mut self, key: &BackendSlotKey, value: BackendId) -> Result<(), MapsError> {
        self.slots
            .insert(key, value, 0)
            .map_err(access(names::BACKEND_SLOTS, "update"))
    }

    fn delete_slot(&mut self, key: &BackendSlotKey) -> Result<(), MapsError> {
        delete(&mut self.slots, key, names::BACKEND_SLOTS)
    }

    fn backends(&self) -> Result<Vec<(BackendId, Backend)>, MapsError> {
        entries(&self.backends, names::BACKENDS, usize::MAX)
    }

    fn put_backend(&mut self, id: BackendId, value: &Backend) -> Result<(), MapsError> {
        self.backends
            .insert(id, value, 0)
            .map_err(access(names::BACKENDS, "update"))
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapsError> {
        delete(&mut self.backends, &id, names::BACKENDS)
    }

    fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, MapsError> {
        let [tcp, any] = &self.conntrack;
        let mut all = entries(tcp, names::CONNTRACK_TCP, CONNTRACK_WALK_LIMIT)?;
        all.extend(entries(any, names::CONNTRACK_ANY, CONNTRACK_WALK_LIMIT)?);
        Ok(all)
    }

    fn delete_conntrack(&mut self, key: &CtKey) -> Result<(), MapsError> {
        let name = names::conntrack_table(key.proto);
        let table = &mut self.conntrack[usize::from(name != names::CONNTRACK_TCP)];
        delete(table, key, name)
    }

    fn config(&self) -> Result<Config, MapsError> {
        self.config
            .get(&0, 0)
            .map_err(access(names::CONFIG, "lookup"))
    }

    fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.config
            .set(0, config, 0)
            .map_err(access(names::CONFIG, "update"))
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>, MapsError> {
        entries(&self.service_names, names::SERVICE_NAMES, usize::MAX)
    }

    fn put_service_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), MapsError> {
        self.service_names
            .insert(service_id, name, 0)
            .map_err(access(names::SERVICE_NAMES, "update"))
    }

    fn delete_service_name(&mut self, service_id: u32) -> Result<(), MapsError> {
        delete(&mut self.service_names, &service_id, names::SERVICE_NAMES)
    }

    fn source_ranges(&self) -> Result<Vec<RangeKey>, MapsError> {
        self.source_ranges
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<_, _>>()
            .map_err(access(names::SOURCE_RANGES, "iterate"))
    }

    fn put_source_range(&mut self, (len, data): &RangeKey) -> Result<(), MapsError> {
        self.source_ranges
            .insert(&TrieKey::new(*len, *data), 1, 0)
            .map_err(access(names::SOURCE_RANGES, "update"))
    }

    fn delete_source_range(&mut self, (len, data): &RangeKey) -> Result<(), MapsError> {
        match self.source_ranges.remove(&TrieKey::new(*len, *data)) {
            Err(e) if !is_absent(&e) => Err(access(names::SOURCE_RANGES, "delete")(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{
            loader::{self, BpfLogLevel, Object},
            maps::{memory::MemoryMaps, MapState},
        },
        fixtures::{service, slice},
        model::{desired_state, node::ThisNode},
        sync::Syncer,
        testing::{require_object, require_root, PinDir},
    };
    use lb_common::{conntrack::dir, proto};

    #[test]
    fn kernel_maps_hold_what_in_memory_maps_hold_and_survive_a_restart() {
        if !require_root("syncing real BPF maps") || !require_object() {
            return;
        }
        let pins = PinDir::new("aya-sync");
        let mut ebpf =
            loader::load(&Object::Embedded, pins.path(), BpfLogLevel::Off, &[]).expect("load");
        let services = [
            service("shop", "web", "10.96.0.10")
                .port("http", 80, "TCP")
                .build(),
            service("kube-system", "dns", "10.96.0.53")
                .port("dns", 53, "UDP")
                .build(),
        ];
        let slices = [
            slice("shop", "web-1", "web")
                .port("http", 8080, "TCP")
                .ready("10.244.1.2")
                .ready("10.244.2.2")
                .build(),
            slice("kube-system", "dns-1", "dns")
                .port("dns", 53, "UDP")
                .ready("10.244.1.3")
                .build(),
        ];
        let (state, _) = desired_state(&services, &slices, &ThisNode::named("node-a"));

        let mut kernel = Syncer::new(AyaMaps::from_ebpf(&mut ebpf).expect("maps"));
        let mut memory = Syncer::new(MemoryMaps::default());
        let report = kernel.sync(&state).expect("kernel sync");
        memory.sync(&state).expect("memory sync");
        assert_eq!(
            MapState::read(kernel.maps()).expect("read"),
            MapState::read(memory.maps()).expect("read")
        );
        assert_eq!((report.frontends, report.backends), (2, 3));
        assert_ne!(kernel.maps().config().expect("config").hash_seed, 0);
        drop(kernel);
        drop(ebpf);

        // A restarted agent finds everything in place and writes nothing.
        let mut restarted = Syncer::new(AyaMaps::open_pinned(pins.path()).expect("reopen"));
        assert_eq!(restarted.sync(&state).expect("sync").writes, 0);

        // A UDP flow to the DNS service, as the datapath records it.
        let maps = restarted.maps();
        let (&dns_key, dns) = MapState::read(maps)
            .expect("read")
            .frontends
            .iter()
            .find(|(k, _)| k.proto == proto::UDP)
            .map(|(k, f)| (k, *f))
            .expect("dns frontend");
        let backend = Backend::new([10, 244, 1, 3].into(), 53, proto::UDP);
        let client = lb_common::addr_be([10, 244, 2, 9].into());
        let sport = 33000u16.to_be();
        let fwd_key = CtKey::new(
            client,
            dns_key.addr,
            sport,
            dns_key.port,
            proto::UDP,
            dir::FORWARD,
        );
        let reply_key = CtKey::new(
            backend.addr,
            client,
            backend.port,
            sport,
            proto::UDP,
            dir::REPLY,
        );
        let fwd = CtEntry {
            nat_addr: backend.addr,
            nat_port: backend.port,
            service_id: dns.service_id,
            backend_id: 1,
            ..Default::default()
        };
        let reply = CtEntry {
            nat_addr: dns_key.addr,
            nat_port: dns_key.port,
            ..fwd
        };
        let mut ct: HashMap<MapData, CtKey, CtEntry> = typed(
            names::CONNTRACK_ANY,
            open_pinned(pins.path(), names::CONNTRACK_ANY).expect("open"),
        )
        .expect("typed");
        ct.insert(fwd_key, fwd, 0).expect("insert");
        ct.insert(reply_key, reply, 0).expect("insert");

        let report = restarted.sync(&Default::default()).expect("sync");
        assert_eq!(report.conntrack_deleted, 2);
        assert_eq!(ct.iter().count(), 0);
        assert_eq!(
            MapState::read(restarted.maps()).expect("read"),
            MapState::default()
        );

        // Deleting what is already gone is not an error.
        let mut maps = AyaMaps::open_pinned(pins.path()).expect("reopen");
        maps.delete_conntrack(&fwd_key)
            .expect("absent conntrack key");
        maps.delete_frontend(&dns_key).expect("absent frontend");
        maps.delete_backend(12345).expect("absent backend");
    }
}
