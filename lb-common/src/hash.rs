//! Flow hashing for backend selection.
//!
//! The datapath picks a backend by a seeded hash of the flow's tuple rather than a fresh
//! random number: every new flow still lands on an unpredictable backend (the seed is random
//! per cluster node and kept in a pinned map), but a flow whose conntrack entry was lost (LRU
//! eviction, a map replaced by an upgrade) lands on the same backend again while the backend
//! set is unchanged.

/// Linux's `jhash_3words` (include/linux/jhash.h), bit for bit.
#[inline(always)]
pub const fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let iv = initval.wrapping_add(0xdead_beef).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (a.wrapping_add(iv), b.wrapping_add(iv), c.wrapping_add(iv));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Hash of a flow's 5-tuple (fields as the packet carries them).
#[inline(always)]
pub const fn flow_hash(
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    seed: u32,
) -> u32 {
    jhash_3words(
        saddr,
        daddr ^ proto as u32,
        ((sport as u32) << 16) | dport as u32,
        seed,
    )
}

/// Maps a hash onto backend slots 1..=`count` without a division (Lemire's multiply-shift).
/// `count` must be non-zero.
#[inline(always)]
pub const fn pick_slot(hash: u32, count: u16) -> u32 {
    (((hash as u64) * (count as u64)) >> 32) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jhash_matches_the_kernel() {
        // Vectors from the kernel's macros compiled with gcc.
        assert_eq!(jhash_3words(0, 0, 0, 0), 0x1b68_e557);
        assert_eq!(jhash_3words(1, 2, 3, 4), 0x8103_143f);
        assert_eq!(
            jhash_3words(0x0a0a_0a0a, 0xdead_beef, 0x1234_5678, 0x9e37_79b9),
            0x2000_fb4c
        );
    }

    #[test]
    fn every_tuple_field_and_the_seed_change_the_hash() {
        let base = flow_hash(1, 2, 3, 4, 6, 7);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6, 7));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6, 7));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6, 7));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6, 7));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17, 7));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 6, 9));
    }

    #[test]
    fn slots_stay_in_range() {
        for count in [1u16, 2, 3, 7, 1000, u16::MAX] {
            for h in [0u32, 1, 0x8000_0000, u32::MAX] {
                let s = pick_slot(h, count);
                assert!(
                    (1..=count as u32).contains(&s),
                    "count {count} hash {h:#x} -> {s}"
                );
            }
        }
    }

    #[test]
    fn client_ports_spread_evenly_over_backends() {
        // 30k ephemeral ports from one client to one VIP over 3 backends: each gets ~1/3.
        let mut hits = [0u32; 3];
        for port in 32768u16..62768 {
            let h = flow_hash(
                0x0201_f40a,
                0x0a00_600a,
                port.to_be(),
                80u16.to_be(),
                6,
                0x5eed,
            );
            hits[pick_slot(h, 3) as usize - 1] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "uneven spread {hits:?}");
        }
    }
}
