//! The datapath's maps. Types and names come from lb-common; all are pinned by name so a
//! restarted agent finds the same state.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    maps::{
        AFFINITY_MAX, BACKENDS_MAX, BACKEND_SLOTS_MAX, CONNTRACK_ANY_MAX, CONNTRACK_TCP_MAX,
        COUNTERS_MAX, FRAGMENTS_MAX, FRONTENDS_MAX, SERVICE_NAMES_MAX, SOCK_REV_MAX,
        SOURCE_RANGES_MAX,
    },
    AffinityEntry, AffinityKey, Backend, BackendId, BackendSlotKey, BackendStats, Config, CtEntry,
    CtKey, FragKey, FragPorts, Frontend, FrontendKey, ServiceName, SockRevEntry, SockRevKey,
    SourceRange,
};

// Service maps are sparse and written only by the agent: no preallocation, so their memory
// follows the number of services rather than the maximum.
#[map]
pub static LB_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::pinned(FRONTENDS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SLOTS: HashMap<BackendSlotKey, BackendId> =
    HashMap::pinned(BACKEND_SLOTS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_BACKENDS: HashMap<BackendId, Backend> =
    HashMap::pinned(BACKENDS_MAX, BPF_F_NO_PREALLOC);

// Conntrack is written per new flow on the packet path, so it is preallocated (no allocation
// in softirq). Not LRU: eviction would drop live idle flows, and a flow's two entries one at
// a time; a full table refuses new flows instead (counted), and the agent's GC removes
// expired entries. TCP has a table of its own, so a flood of other traffic cannot take its
// room. The agent sizes both from the node's memory at load time.
#[map]
pub static LB_CT4_TCP: HashMap<CtKey, CtEntry> = HashMap::pinned(CONNTRACK_TCP_MAX, 0);

#[map]
pub static LB_CT4_ANY: HashMap<CtKey, CtEntry> = HashMap::pinned(CONNTRACK_ANY_MAX, 0);

// Written per fragmented datagram; LRU, since a record is only needed until its datagram's
// last fragment passed, and nothing says when that was.
#[map]
pub static LB_FRAG4: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(FRAGMENTS_MAX, 0);

#[map]
pub static LB_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_MAX, 0);

#[map]
pub static LB_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static LB_BE_STATS: Array<BackendStats> = Array::pinned(BACKENDS_MAX, 0);

// Written per new connection of affinity services; LRU so idle clients make room.
#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::pinned(AFFINITY_MAX, 0);

// Never read here: it lives beside the datapath's maps so lbctl can name services from
// bpffs alone.
#[map]
pub static LB_SVC_NAMES: HashMap<u32, ServiceName> =
    HashMap::pinned(SERVICE_NAMES_MAX, BPF_F_NO_PREALLOC);

// The trie's key is (service id, client prefix); the value is unused (presence matters).
// LPM tries must not be preallocated.
#[map]
pub static LB_SRC_RANGES: LpmTrie<SourceRange, u32> =
    LpmTrie::pinned(SOURCE_RANGES_MAX, BPF_F_NO_PREALLOC);

// Written per translated socket by the cgroup programs; LRU so closed sockets make room.
#[map]
pub static LB_SOCK_REV: LruHashMap<SockRevKey, SockRevEntry> = LruHashMap::pinned(SOCK_REV_MAX, 0);
