//! Session affinity (sessionAffinity: ClientIP): which backend a client was last sent to.

use crate::user_pod;

/// A client of one service. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub service_id: u32,
    /// Client address, network byte order.
    pub client_addr: u32,
}

/// The backend a client sticks to. 16 bytes.
///
/// The slot is kept with the backend id so the datapath can check, with one lookup, that the
/// backend still serves this service: a backend removed from the service (but kept for
/// another) must not keep attracting its clients.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityEntry {
    /// bpf_ktime_get_ns() of the client's latest new connection; stickiness ends
    /// `affinity_timeout_s` after it, as with kube-proxy's `recent` match.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub slot: u32,
}

impl AffinityEntry {
    #[inline(always)]
    pub const fn is_expired(&self, timeout_s: u32, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_used_ns) > timeout_s as u64 * 1_000_000_000
    }
}

user_pod!(AffinityKey, AffinityEntry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_packed() {
        assert_eq!(core::mem::size_of::<AffinityKey>(), 8);
        assert_eq!(core::mem::size_of::<AffinityEntry>(), 16);
    }

    #[test]
    fn stickiness_ends_after_the_timeout_since_last_use() {
        let e = AffinityEntry {
            last_used_ns: 5_000_000_000,
            ..Default::default()
        };
        assert!(!e.is_expired(10, 15_000_000_000));
        assert!(e.is_expired(10, 15_000_000_001));
        // The default kube-proxy timeout (10800 s) does not overflow.
        assert!(!e.is_expired(10_800, 10_000_000_000_000));
    }
}
