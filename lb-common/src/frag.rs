//! Fragmented datagrams: only the first fragment carries the L4 header, so its ports are
//! remembered under the datagram's identity, and the later fragments are tracked (and
//! translated) as if they carried them, as Cilium's `ipv4_handle_fragmentation` does.

use crate::{
    conntrack::{Ipv4, Ipv6},
    user_pod,
};

/// An IPv4 datagram's identity (16 bytes), and an IPv6 one's (40 bytes).
pub type FragKey = FragKeyOf<Ipv4>;
pub type FragKey6 = FragKeyOf<Ipv6>;

/// A datagram's identity, as the IP header gives it (addresses in network order). 16 bytes
/// for IPv4 (the 16-bit IPv4 id is widened so that IPv6's 32-bit one fits the same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    /// The IP identification, as the packet carries it (network order).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The ports of the datagram's first fragment, network order. 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

user_pod!(FragKey, FragKey6, FragPorts);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<FragKey>(), 16);
        assert_eq!(core::mem::size_of::<FragKey6>(), 40);
        assert_eq!(core::mem::size_of::<FragPorts>(), 4);
    }
}
