//! loadBalancerSourceRanges: the client prefixes a LoadBalancer frontend accepts.
//!
//! One LPM trie holds every frontend's ranges. The trie key is a prefix length followed by
//! [`SourceRange`]; the service id comes first and is always matched in full, so a lookup
//! with (service id, client address) finds the longest of that frontend's prefixes covering
//! the client, and nothing of another frontend.

use crate::user_pod;

/// Bits of [`SourceRange`] before the address: the service id, matched in full.
pub const SERVICE_ID_BITS: u32 = 32;

/// The data part of the trie key (after the kernel's `prefixlen`). 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Big-endian, because the trie compares keys bytewise from the first data byte.
    pub service_id_be: u32,
    /// Network byte order.
    pub addr: u32,
}

impl SourceRange {
    /// The trie prefix length and data for `addr/prefix` under frontend `service_id`;
    /// `prefix` is capped at 32 and host bits are cleared.
    pub fn range(service_id: u32, addr: core::net::Ipv4Addr, prefix: u8) -> (u32, Self) {
        let prefix = u32::from(prefix.min(32));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        (
            SERVICE_ID_BITS + prefix,
            Self {
                service_id_be: service_id.to_be(),
                addr: (u32::from(addr) & mask).to_be(),
            },
        )
    }

    /// The trie prefix length and data to look up client `addr` (network order) of
    /// frontend `service_id`.
    #[inline(always)]
    pub const fn client(service_id: u32, addr: u32) -> (u32, Self) {
        (
            SERVICE_ID_BITS + 32,
            Self {
                service_id_be: service_id.to_be(),
                addr,
            },
        )
    }

    pub fn service_id(&self) -> u32 {
        u32::from_be(self.service_id_be)
    }

    /// The range as address and prefix length, given the trie key's prefix length.
    pub fn cidr(&self, prefixlen: u32) -> (core::net::Ipv4Addr, u8) {
        (
            crate::addr_from_be(self.addr),
            prefixlen.saturating_sub(SERVICE_ID_BITS) as u8,
        )
    }
}

user_pod!(SourceRange);

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn data_is_eight_bytes_with_the_service_id_first() {
        assert_eq!(core::mem::size_of::<SourceRange>(), 8);
        assert_eq!(core::mem::offset_of!(SourceRange, addr), 4);
    }

    #[test]
    fn ranges_mask_host_bits_and_count_the_service_id() {
        let (len, r) = SourceRange::range(7, Ipv4Addr::new(172, 18, 0, 9), 24);
        assert_eq!(len, 56);
        assert_eq!(r.cidr(len), (Ipv4Addr::new(172, 18, 0, 0), 24));
        assert_eq!(r.service_id(), 7);
        assert_eq!(r.service_id_be.to_ne_bytes(), [0, 0, 0, 7]);
        let (all_len, all) = SourceRange::range(7, Ipv4Addr::new(1, 2, 3, 4), 0);
        assert_eq!((all_len, all.addr), (32, 0));
        let (client_len, client) =
            SourceRange::client(7, crate::addr_be(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(client_len, 64);
        assert_eq!(client.addr.to_ne_bytes(), [1, 2, 3, 4]);
    }
}
