//! Map keys, values and helpers shared by the lb datapath (`lb-ebpf`) and its userspace
//! (`lb-agent`, `lbctl`).
//!
//! Every map type is `#[repr(C)]` with explicit padding fields, so both sides agree byte for
//! byte and the kernel never hashes uninitialised padding. Addresses and ports are kept in
//! network byte order (the bytes as they sit in the packet, read as a native integer), so the
//! datapath compares and copies them without swapping.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod affinity;
pub mod backend;
pub mod checksum;
pub mod config;
pub mod conntrack;
pub mod frag;
pub mod frontend;
pub mod hash;
pub mod maps;
pub mod reason;
pub mod service_name;
pub mod sock;
pub mod source_range;

pub use affinity::{AffinityEntry, AffinityKey};
pub use backend::{Backend, BackendId, BackendSlotKey, BackendStats};
pub use config::Config;
pub use conntrack::{CtEntry, CtEntry6, CtKey, CtKey6, CtState, CtTimeouts};
pub use frag::{FragKey, FragKey6, FragPorts};
pub use frontend::{Frontend, FrontendKey};
pub use reason::Reason;
pub use service_name::ServiceName;
pub use sock::{SockRevEntry, SockRevKey};
pub use source_range::SourceRange;

/// IP protocol numbers the datapath handles.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    /// The protocol's name as Kubernetes spells it, for display.
    pub fn name(proto: u8) -> &'static str {
        match proto {
            TCP => "TCP",
            UDP => "UDP",
            _ => "?",
        }
    }
}

/// Turns an address into the network-byte-order integer the maps store.
#[inline(always)]
pub fn addr_be(addr: core::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`addr_be`].
#[inline(always)]
pub fn addr_from_be(addr: u32) -> core::net::Ipv4Addr {
    core::net::Ipv4Addr::from(addr.to_ne_bytes())
}

/// Implements `aya::Pod` for map types when built for userspace.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C), Copy, has explicit padding fields and no pointers,
            // so any bit pattern the kernel hands back is a valid value.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
