//! Map names (as pinned in bpffs) and default sizes. The agent may resize at load time.
//!
//! Names stay within 15 characters: the kernel keeps no more (BPF_OBJ_NAME_LEN).

/// [`crate::FrontendKey`] -> [`crate::Frontend`].
pub const FRONTENDS: &str = "LB_FRONTENDS";
/// [`crate::BackendSlotKey`] -> [`crate::BackendId`].
pub const BACKEND_SLOTS: &str = "LB_SLOTS";
/// [`crate::BackendId`] -> [`crate::Backend`].
pub const BACKENDS: &str = "LB_BACKENDS";
/// [`crate::CtKey`] -> [`crate::CtEntry`], LRU.
pub const CONNTRACK: &str = "LB_CT";
/// Per-CPU u64 counters indexed by [`crate::Reason`].
pub const COUNTERS: &str = "LB_COUNTERS";
/// One [`crate::Config`].
pub const CONFIG: &str = "LB_CONFIG";

/// Every map the agent pins, for tools that walk them.
pub const ALL: [&str; 6] = [
    FRONTENDS,
    BACKEND_SLOTS,
    BACKENDS,
    CONNTRACK,
    COUNTERS,
    CONFIG,
];

pub const FRONTENDS_MAX: u32 = 131_072;
pub const BACKEND_SLOTS_MAX: u32 = 1_048_576;
pub const BACKENDS_MAX: u32 = 262_144;
/// Cilium's default is 512k TCP + 256k other per node; one shared LRU of 256k entries (two
/// per flow) costs about 30 MiB of kernel memory.
pub const CONNTRACK_MAX: u32 = 262_144;
/// Room for reasons added later without changing the map.
pub const COUNTERS_MAX: u32 = 64;

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_limit() {
        for name in super::ALL {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
