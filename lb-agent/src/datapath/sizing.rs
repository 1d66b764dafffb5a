//! How large the conntrack tables are: from the node's memory unless set, as the peers do
//! (Cilium's `bpf-map-dynamic-size-ratio`, 0.25 % of memory by default).
//!
//! Why from memory: the tables are preallocated hash maps (a full table refuses new flows
//! rather than evicting live ones), so their size is both the most flows a node can track
//! and memory the node pays for up front. A node with more memory runs more pods and
//! carries more flows; a fixed size would be too small on large nodes and too costly on
//! small ones.
//!
//! The arithmetic: an entry costs its key and value plus the kernel's element header
//! and its share of the bucket array, about [`ENTRY_BYTES`]. Two thirds of the budget go to
//! TCP, one third to the other protocols (Cilium's 2:1 split of 512k:256k), each clamped to
//! [`TCP_MIN`]/[`ANY_MIN`] below and [`lb_common::maps::CONNTRACK_LIMIT`] above. A flow
//! takes two entries (forward and reply). On a 24 GiB node: 64 MB, 358k TCP and 179k other
//! entries, i.e. about 180k TCP and 90k UDP flows at once.

use lb_common::maps::{CONNTRACK_ANY, CONNTRACK_LIMIT, CONNTRACK_TCP};

/// Kernel memory per preallocated entry: a 16-byte key and 48-byte value, the ~40-byte
/// `htab_elem` header, and a 16-byte bucket (the bucket array has a power of two of them,
/// at least one per entry).
pub const ENTRY_BYTES: u64 = 16 + 48 + 40 + 16;
/// The default share of the node's memory.
pub const DEFAULT_RATIO: f64 = 0.0025;
/// Below these the tables would fill on an ordinary node (Cilium's minimums).
pub const TCP_MIN: u32 = 131_072;
pub const ANY_MIN: u32 = 65_536;

/// Entries of the two conntrack tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSizes {
    pub tcp: u32,
    pub any: u32,
}

impl ConntrackSizes {
    /// Sizes for a node with `total_memory` bytes, using `ratio` of it; a non-zero `tcp` or
    /// `any` (the flags) is taken as it is.
    pub fn for_node(total_memory: u64, ratio: f64, tcp: u32, any: u32) -> Self {
        let budget = (total_memory as f64 * ratio.clamp(0.0, 1.0)) as u64 / ENTRY_BYTES;
        let clamp = |n: u64, min: u32| n.clamp(u64::from(min), u64::from(CONNTRACK_LIMIT)) as u32;
        Self {
            tcp: if tcp != 0 {
                tcp
            } else {
                clamp(budget * 2 / 3, TCP_MIN)
            },
            any: if any != 0 {
                any
            } else {
                clamp(budget / 3, ANY_MIN)
            },
        }
    }

    /// (map name, max entries), for the loader.
    pub fn maps(&self) -> [(&'static str, u32); 2] {
        [(CONNTRACK_TCP, self.tcp), (CONNTRACK_ANY, self.any)]
    }
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn total_memory() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("no MemTotal in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_follow_memory_with_floors_and_a_ceiling() {
        let s = ConntrackSizes::for_node(24 * GIB, DEFAULT_RATIO, 0, 0);
        assert_eq!((s.tcp, s.any), (357_913, 178_956));
        let small = ConntrackSizes::for_node(2 * GIB, DEFAULT_RATIO, 0, 0);
        assert_eq!((small.tcp, small.any), (TCP_MIN, ANY_MIN));
        let huge = ConntrackSizes::for_node(1 << 50, DEFAULT_RATIO, 0, 0);
        assert_eq!((huge.tcp, huge.any), (CONNTRACK_LIMIT, CONNTRACK_LIMIT));
    }

    #[test]
    fn set_sizes_are_kept() {
        let s = ConntrackSizes::for_node(24 * GIB, DEFAULT_RATIO, 1000, 0);
        assert_eq!(s.tcp, 1000);
        assert_eq!(s.any, 178_956);
        assert_eq!(s.maps()[0], (CONNTRACK_TCP, 1000));
    }

    #[test]
    fn this_machine_has_memory() {
        assert!(total_memory().expect("meminfo") > 64 << 20);
    }
}
