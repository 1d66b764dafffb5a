//! The real datapath object, loaded with its maps in a private bpffs directory.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps, AffinityEntry, AffinityKey, Backend, BackendId, BackendSlotKey, BackendStats, Config,
    CtEntry, CtKey, Frontend, FrontendKey, Reason,
};
use lb_lab::testing::PinDir;

/// The packet programs of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// tc ingress on a pod veth: what pods send.
    FromPod,
    /// tc egress on a pod veth: what reaches pods.
    ToPod,
    /// tc ingress on the node's uplink: north-south traffic.
    FromNet,
    /// tc egress on the node's uplink: replies of backends that are the node itself.
    ToNet,
    /// XDP on the node's uplink.
    Xdp,
    /// The bench's floor: parse and one lookup, tc (loaded by [`crate::bench`] only).
    FloorTc,
    /// The same as XDP.
    FloorXdp,
}

impl Program {
    pub const TC: [Program; 4] = [
        Program::FromPod,
        Program::ToPod,
        Program::FromNet,
        Program::ToNet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::FromPod => "lb_from_pod",
            Program::ToPod => "lb_to_pod",
            Program::FromNet => "lb_from_net",
            Program::ToNet => "lb_to_net",
            Program::Xdp => "lb_xdp",
            Program::FloorTc => "lb_floor_tc",
            Program::FloorXdp => "lb_floor_xdp",
        }
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct Run {
    pub retval: i32,
    pub data: Vec<u8>,
    pub duration: std::time::Duration,
}

pub struct Datapath {
    ebpf: Ebpf,
    /// Unpins the maps when the datapath is dropped.
    _pin_dir: PinDir,
    next_service: u32,
    next_backend: BackendId,
}

impl Datapath {
    /// Loads the object with a small conntrack table and fresh maps of its own, with
    /// logging off as the agent runs it by default.
    pub fn load() -> Result<Self> {
        Self::load_with_log_level(0)
    }

    /// As [`Datapath::load`], with aya-log's `AYA_LOG_LEVEL` set to `level`
    /// (0 off, 1 error .. 5 trace).
    pub fn load_with_log_level(level: u8) -> Result<Self> {
        Self::load_with(
            level,
            &[(maps::CONNTRACK_TCP, 4096), (maps::CONNTRACK_ANY, 4096)],
        )
    }

    /// As [`Datapath::load_with_log_level`], with these maps resized (name, max entries)
    /// and every other map at the object's size (conntrack too).
    pub fn load_with(level: u8, sizes: &[(&str, u32)]) -> Result<Self> {
        let pin_dir = PinDir::new("datapath");
        let object = crate::privilege::ebpf_object();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(pin_dir.path())
            .override_global("AYA_LOG_LEVEL", &level, true);
        for (name, max) in sizes {
            loader.map_max_entries(name, *max);
        }
        let mut ebpf = loader
            .load_file(&object)
            .with_context(|| format!("loading {}", object.display()))?;
        for program in Program::TC {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program.name())
                .with_context(|| format!("program {} not in object", program.name()))?
                .try_into()?;
            crate::verifier::load(|| prog.load())
                .with_context(|| format!("verifier rejected {}", program.name()))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(Program::Xdp.name())
            .context("program lb_xdp not in object")?
            .try_into()?;
        crate::verifier::load(|| xdp.load()).context("verifier rejected lb_xdp")?;
        Ok(Self {
            ebpf,
            _pin_dir: pin_dir,
            next_service: 1,
            next_backend: 1,
        })
    }

    /// The loaded object, for harness code that attaches more of its programs.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect("map in object")).expect("hash map")
    }

    /// Programs a service the way the agent does (backends, slots, then frontend) and
    /// returns its service id.
    pub fn add_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
    ) -> u32 {
        self.add_service_with_affinity(vip, port, proto, backends, 0)
            .0
    }

    /// As [`Datapath::add_service`] with ClientIP session affinity (0 = off); also returns
    /// the backend ids in slot order.
    pub fn add_service_with_affinity(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
        affinity_timeout_s: u32,
    ) -> (u32, Vec<BackendId>) {
        self.add_frontend(
            FrontendKey::new(vip, port, proto),
            lb_common::frontend::flags::CLUSTER_IP,
            backends,
            affinity_timeout_s,
        )
    }

    /// Programs one frontend entry (any scope and flags) with its own service id and
    /// backends, in the agent's order; returns the service id and the backend ids in slot
    /// order.
    pub fn add_frontend(
        &mut self,
        key: FrontendKey,
        flags: u16,
        backends: &[(Ipv4Addr, u16)],
        affinity_timeout_s: u32,
    ) -> (u32, Vec<BackendId>) {
        let ids: Vec<BackendId> = backends
            .iter()
            .map(|(ip, port)| self.add_backend(*ip, *port, key.proto))
            .collect();
        let service_id = self.add_frontend_with_ids(key, flags, &ids, affinity_timeout_s);
        (service_id, ids)
    }

    /// Writes a backend under a new id (as the agent does for an address it has not seen).
    pub fn add_backend(&mut self, ip: Ipv4Addr, port: u16, proto: u8) -> BackendId {
        self.add_backend_with_flags(ip, port, proto, 0)
    }

    /// As [`Datapath::add_backend`] with `lb_common::backend::flags` set.
    pub fn add_backend_with_flags(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        proto: u8,
        flags: u8,
    ) -> BackendId {
        let id = self.next_backend;
        self.next_backend += 1;
        let backend = Backend {
            flags,
            ..Backend::new(ip, port, proto)
        };
        self.hash_map::<BackendId, Backend>(maps::BACKENDS)
            .insert(id, backend, 0)
            .expect("insert backend");
        id
    }

    /// Programs one frontend entry with its own service id over backends already written
    /// (shared between frontends, as the agent shares them): slots, then the frontend.
    pub fn add_frontend_with_ids(
        &mut self,
        key: FrontendKey,
        flags: u16,
        ids: &[BackendId],
        affinity_timeout_s: u32,
    ) -> u32 {
        let service_id = self.next_service;
        self.next_service += 1;
        for (slot, id) in ids.iter().enumerate() {
            self.set_slot(service_id, slot as u32 + 1, *id);
        }
        let fe = Frontend {
            service_id,
            backend_count: ids.len() as u16,
            flags,
            affinity_timeout_s,
            ..Default::default()
        };
        self.hash_map::<FrontendKey, Frontend>(maps::FRONTENDS)
            .insert(key, fe, 0)
            .expect("insert frontend");
        service_id
    }

    /// Writes a frontend entry as it stands (e.g. one whose slots are not all written, as a
    /// map caught mid-update holds).
    pub fn set_frontend(&mut self, key: FrontendKey, fe: Frontend) {
        self.hash_map::<FrontendKey, Frontend>(maps::FRONTENDS)
            .insert(key, fe, 0)
            .expect("insert frontend");
    }

    /// Lets clients in `addr/prefix` through frontend `service_id`'s source ranges.
    pub fn add_source_range(&mut self, service_id: u32, addr: Ipv4Addr, prefix: u8) {
        let (len, data) = lb_common::SourceRange::range(service_id, addr, prefix);
        let mut trie: aya::maps::lpm_trie::LpmTrie<&mut MapData, lb_common::SourceRange, u32> =
            aya::maps::lpm_trie::LpmTrie::try_from(
                self.ebpf
                    .map_mut(maps::SOURCE_RANGES)
                    .expect("source ranges"),
            )
            .expect("lpm trie");
        trie.insert(&aya::maps::lpm_trie::Key::new(len, data), 1, 0)
            .expect("insert source range");
    }

    /// Points slot `slot` of `service_id` at `backend` (as a backend change would).
    pub fn set_slot(&mut self, service_id: u32, slot: u32, backend: BackendId) {
        self.hash_map::<BackendSlotKey, BackendId>(maps::BACKEND_SLOTS)
            .insert(BackendSlotKey { service_id, slot }, backend, 0)
            .expect("insert slot");
    }

    pub fn affinity_get(&mut self, key: &AffinityKey) -> Option<AffinityEntry> {
        self.hash_map::<AffinityKey, AffinityEntry>(maps::AFFINITY)
            .get(key, 0)
            .ok()
    }

    pub fn affinity_set(&mut self, key: AffinityKey, entry: AffinityEntry) {
        self.hash_map::<AffinityKey, AffinityEntry>(maps::AFFINITY)
            .insert(key, entry, 0)
            .expect("insert affinity");
    }

    pub fn backend_stats(&mut self, id: BackendId) -> BackendStats {
        let stats: Array<&mut MapData, BackendStats> =
            Array::try_from(self.ebpf.map_mut(maps::BACKEND_STATS).expect("stats map"))
                .expect("array");
        stats.get(&id, 0).expect("stats entry")
    }

    pub fn set_hash_seed(&mut self, seed: u32) {
        let config = Config {
            hash_seed: seed,
            ..self.config()
        };
        self.set_config(config);
    }

    /// The datapath-wide settings as the maps hold them.
    pub fn config(&mut self) -> Config {
        let config: Array<&mut MapData, Config> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).expect("config map")).expect("array");
        config.get(&0, 0).expect("get config")
    }

    pub fn set_config(&mut self, config: Config) {
        let mut map: Array<&mut MapData, Config> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).expect("config map")).expect("array");
        map.set(0, config, 0).expect("set config");
    }

    pub fn run(&mut self, program: Program, packet: &[u8]) -> Result<Run> {
        self.run_on(program, packet, 0)
    }

    /// As [`Datapath::run`], with the packet arriving on interface `ifindex` (XDP only;
    /// 0 = the test namespace's loopback, as for tc).
    pub fn run_on(&mut self, program: Program, packet: &[u8], ifindex: u32) -> Result<Run> {
        self.run_repeated(program, packet, ifindex, 1)
    }

    /// As [`Datapath::run_on`], run `repeat` times in the kernel on the same buffer (each
    /// run sees what the previous one wrote); `duration` is the kernel's mean per run.
    pub fn run_repeated(
        &mut self,
        program: Program,
        packet: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<Run> {
        // Room for the packet to grow (a reject may, a translation must not).
        let mut out = vec![0u8; packet.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel takes only ingress_ifindex and rx_queue_index.
        // The kernel also wants data_end to be the packet's length (data 0: no metadata).
        let mut xdp_md = [0u8; 24];
        xdp_md[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        xdp_md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let options = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: (ifindex != 0).then_some(&xdp_md[..]),
            repeat,
            ..TestRunOptions::new()
        };
        let prog = self.ebpf.program_mut(program.name()).expect("program");
        let result = match program {
            Program::Xdp | Program::FloorXdp => {
                let xdp: &mut Xdp = prog.try_into()?;
                xdp.test_run(options)?
            }
            _ => {
                let tc: &mut SchedClassifier = prog.try_into()?;
                tc.test_run(options)?
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            retval: result.return_value as i32,
            data: out,
            duration: result.duration,
        })
    }

    /// The conntrack table of protocol `proto`.
    fn ct_table(&mut self, proto: u8) -> HashMap<&mut MapData, CtKey, CtEntry> {
        self.hash_map(maps::conntrack_table(proto))
    }

    pub fn ct_get(&mut self, key: &CtKey) -> Option<CtEntry> {
        self.ct_table(key.proto).get(key, 0).ok()
    }

    /// Writes a conntrack entry as it stands (to age a flow: stamps are CLOCK_MONOTONIC).
    pub fn ct_set(&mut self, key: &CtKey, entry: CtEntry) {
        self.ct_table(key.proto)
            .insert(key, entry, 0)
            .expect("insert conntrack entry");
    }

    /// Removes a conntrack entry (as a flush or a lost write would).
    pub fn ct_remove(&mut self, key: &CtKey) {
        self.ct_table(key.proto)
            .remove(key)
            .expect("remove conntrack entry");
    }

    /// Entries in both conntrack tables.
    pub fn ct_len(&mut self) -> usize {
        maps::CONNTRACK
            .iter()
            .map(|name| self.hash_map::<CtKey, CtEntry>(name).keys().count())
            .sum()
    }

    /// Every entry of both conntrack tables.
    pub fn ct_entries(&mut self) -> Vec<(CtKey, CtEntry)> {
        maps::CONNTRACK
            .iter()
            .flat_map(|name| {
                self.hash_map::<CtKey, CtEntry>(name)
                    .iter()
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of records waiting in aya-log's ring buffer.
    pub fn log_records(&mut self) -> usize {
        let mut ring =
            aya::maps::RingBuf::try_from(self.ebpf.map_mut("AYA_LOGS").expect("AYA_LOGS map"))
                .expect("ring buffer");
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        n
    }

    /// Removes every entry of both conntrack tables.
    pub fn ct_clear(&mut self) {
        for name in maps::CONNTRACK {
            let mut table = self.hash_map::<CtKey, CtEntry>(name);
            let keys: Vec<CtKey> = table.keys().filter_map(Result::ok).collect();
            for key in keys {
                let _ = table.remove(&key);
            }
        }
    }

    /// Every counter slot (`maps::COUNTERS_MAX` of them, reasons and the unused ones above),
    /// each summed over CPUs, read with one BPF_MAP_LOOKUP_BATCH.
    pub fn counters(&mut self) -> Result<Vec<u64>> {
        use std::os::fd::{AsFd, AsRawFd};
        let map = self.ebpf.map(maps::COUNTERS).context("counters map")?;
        let aya::maps::Map::PerCpuArray(data) = map else {
            anyhow::bail!("{} is not a per-CPU array", maps::COUNTERS);
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let n = maps::COUNTERS_MAX as usize;
        let mut keys = vec![0u32; n];
        let mut values = vec![0u64; n * cpus];
        let mut next = 0u32;
        // union bpf_attr, the BPF_MAP_*_BATCH member.
        #[repr(C)]
        struct Batch {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        let mut attr = Batch {
            in_batch: 0,
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        // SAFETY: the attribute points at buffers sized for `count` keys and values of
        // `cpus` u64s each (a per-CPU array's value), which outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<Batch>(),
            )
        };
        // ENOENT: the batch reached the array's end, which a full read always does.
        let err = std::io::Error::last_os_error();
        anyhow::ensure!(
            rc == 0 || err.raw_os_error() == Some(libc::ENOENT),
            "BPF_MAP_LOOKUP_BATCH on {}: {err}",
            maps::COUNTERS
        );
        anyhow::ensure!(
            attr.count as usize == n,
            "short counter batch: {}",
            attr.count
        );
        let mut sums = vec![0u64; n];
        for (i, key) in keys.iter().enumerate() {
            let slot = sums
                .get_mut(*key as usize)
                .context("counter key out of range")?;
            *slot = values[i * cpus..(i + 1) * cpus].iter().sum();
        }
        Ok(sums)
    }

    /// Sum over CPUs of the counter for `reason`.
    pub fn counter(&mut self, reason: Reason) -> u64 {
        let map: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(maps::COUNTERS).expect("counters"))
                .expect("percpu array");
        map.get(&(reason as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}
