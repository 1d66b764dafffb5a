//! Internet checksum helpers (RFC 1071, RFC 1624).
//!
//! The incremental forms work on fields read as native integers from network-order bytes:
//! the one's-complement sum commutes with byte swapping, so the result can be stored back
//! the same way without conversions on the packet path.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3 for a 16-bit field: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an address), as two 16-bit words.
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    !fold((!check) as u32 + (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16))
}

/// [`replace4`] for a UDP checksum: 0 means "no checksum" and stays 0, and a computed 0 is
/// sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_replace4(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace4(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// [`replace2`] with the UDP zero rules of [`udp_replace4`].
#[inline(always)]
pub const fn udp_replace2(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace2(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// What replacing a 32-bit field (`old` -> `new`) adds to a one's-complement sum
/// (RFC 1624's `~m + m'`, as 16-bit words): the same value the kernel's checksum helpers
/// take as a precomputed difference. 0 when the field does not change. Differences of
/// several fields add up (at most 8 words, so a u32 cannot overflow).
#[inline(always)]
pub const fn diff4(old: u32, new: u32) -> u32 {
    if old == new {
        return 0;
    }
    let old = !old;
    (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16)
}

/// [`diff4`] for a 16-bit field (a port).
#[inline(always)]
pub const fn diff2(old: u16, new: u16) -> u32 {
    if old == new {
        return 0;
    }
    (!old) as u32 + new as u32
}

/// Applies a sum of [`diff4`]/[`diff2`] differences to a checksum: HC' = ~(~HC + diff).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    !fold((!check) as u32 + diff)
}

/// [`apply`] with the UDP zero rules of [`udp_replace4`].
#[inline(always)]
pub const fn udp_apply(check: u16, diff: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, diff) {
        0 => 0xffff,
        c => c,
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with zero).
pub fn sum_be(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The checksum of `data` in host order. Over a header that already carries a correct
/// checksum this is 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_be(data, 0))
}

/// The TCP/UDP checksum of `segment` (L4 header and payload) between `src` and `dst`, in
/// host order. Over a segment that carries a correct checksum this is 0.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum_be(segment, sum_be(&pseudo, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // An IPv4 header from RFC 1071 discussions / Wikipedia's worked example.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_matches_known_header() {
        let mut h = HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        assert_eq!(checksum(&HDR), 0);
    }

    fn native(b: [u8; 2]) -> u16 {
        u16::from_ne_bytes(b)
    }

    #[test]
    fn incremental_address_change_equals_recomputation() {
        let mut h = HDR;
        let old = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
        let new_addr = [10, 244, 2, 7];
        let new = u32::from_ne_bytes(new_addr);
        let check = replace4(native([h[10], h[11]]), old, new);
        h[16..20].copy_from_slice(&new_addr);
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(
            checksum(&h),
            0,
            "header with incremental checksum must verify"
        );
    }

    #[test]
    fn incremental_port_change_equals_recomputation() {
        // A UDP segment: ports 40000 -> 80, len 12, 4 payload bytes.
        let src = [10, 244, 1, 2];
        let dst = [10, 96, 0, 10];
        let mut seg = [
            0x9c, 0x40, 0x00, 0x50, 0x00, 0x0c, 0, 0, b'p', b'i', b'n', b'g',
        ];
        let c = l4_checksum(src, dst, crate::proto::UDP, &seg);
        seg[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(l4_checksum(src, dst, crate::proto::UDP, &seg), 0);

        // DNAT to 10.244.2.3:8080 incrementally, then check against the new pseudo-header.
        let new_dst = [10, 244, 2, 3];
        let mut check = native([seg[6], seg[7]]);
        check = udp_replace4(check, u32::from_ne_bytes(dst), u32::from_ne_bytes(new_dst));
        let new_port = 8080u16.to_be_bytes();
        check = udp_replace2(check, native([seg[2], seg[3]]), native(new_port));
        seg[2..4].copy_from_slice(&new_port);
        seg[6..8].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(l4_checksum(src, new_dst, crate::proto::UDP, &seg), 0);
    }

    #[test]
    fn summed_differences_of_a_full_nat_equal_recomputation() {
        // TCP header (20 bytes) + payload; SNAT and DNAT of both addresses and ports at once.
        let (src, dst) = ([10, 244, 1, 2], [10, 96, 0, 10]);
        let mut seg = [0u8; 24];
        seg[..4].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        seg[12] = 0x50;
        seg[13] = 0x10;
        seg[20..].copy_from_slice(b"data");
        let c = l4_checksum(src, dst, crate::proto::TCP, &seg);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        let (new_src, new_dst) = ([172, 18, 0, 2], [10, 244, 2, 3]);
        let (new_sport, new_dport) = (61_234u16.to_be_bytes(), 8080u16.to_be_bytes());
        let diff = diff4(u32::from_ne_bytes(src), u32::from_ne_bytes(new_src))
            + diff4(u32::from_ne_bytes(dst), u32::from_ne_bytes(new_dst))
            + diff2(native([seg[0], seg[1]]), native(new_sport))
            + diff2(native([seg[2], seg[3]]), native(new_dport));
        let check = apply(native([seg[16], seg[17]]), diff);
        seg[..2].copy_from_slice(&new_sport);
        seg[2..4].copy_from_slice(&new_dport);
        seg[16..18].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(l4_checksum(new_src, new_dst, crate::proto::TCP, &seg), 0);
        // The same difference fixes the IP header (addresses only).
        let mut h = HDR;
        let (old_s, old_d) = (
            u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        );
        let ip_diff = diff4(old_s, u32::from_ne_bytes(new_src))
            + diff4(old_d, u32::from_ne_bytes(new_dst))
            + diff2(5, 5);
        let ip_check = apply(native([h[10], h[11]]), ip_diff);
        h[12..16].copy_from_slice(&new_src);
        h[16..20].copy_from_slice(&new_dst);
        h[10..12].copy_from_slice(&ip_check.to_ne_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn apply_agrees_with_replace() {
        for (check, old, new) in [(0x1234u16, 0x0a00_0001u32, 0x0a00_0002u32), (0xffff, 7, 0)] {
            assert_eq!(apply(check, diff4(old, new)), replace4(check, old, new));
            assert_eq!(
                udp_apply(check, diff4(old, new)),
                udp_replace4(check, old, new)
            );
        }
        assert_eq!(udp_apply(0, diff2(1, 2)), 0);
        assert_eq!(apply(0x1234, diff2(80, 8080)), replace2(0x1234, 80, 8080));
    }

    #[test]
    fn udp_zero_checksum_is_left_alone() {
        assert_eq!(udp_replace4(0, 1, 2), 0);
        assert_eq!(udp_replace2(0, 1, 2), 0);
    }

    #[test]
    fn udp_computed_zero_becomes_all_ones() {
        // Find a change whose plain result is zero, and check the UDP form maps it.
        let check = 0x1234u16;
        let old = 0u16;
        // ~(~check + ~old + new) == 0  <=>  ~check + 0xffff + new == 0xffff (mod one's c.)
        let new = check; // ~check + new = 0xffff
        assert_eq!(replace2(check, old, new), 0);
        assert_eq!(udp_replace2(check, old, new), 0xffff);
    }

    #[test]
    fn odd_length_data_is_padded() {
        assert_eq!(sum_be(&[0x01], 0), 0x0100);
        assert_eq!(sum_be(&[0xff, 0xff, 0x00, 0x02], 0), 0x10001);
    }
}
