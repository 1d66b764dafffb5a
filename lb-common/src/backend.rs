//! Backends (endpoints) and the per-service slots that point at them.

use crate::user_pod;

/// Backend identifier, shared by every service that uses the same address:port/protocol.
/// 0 is never allocated, so a zeroed value means "none".
pub type BackendId = u32;

/// Key of the slot map: slot `slot` (1-based) of service `service_id`. Value: [`BackendId`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// One endpoint. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Pod address, network byte order.
    pub addr: u32,
    /// Target port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// [`flags`] bits.
    pub flags: u8,
}

pub mod flags {
    /// The endpoint is terminating; kept only for flows that already use it.
    pub const TERMINATING: u8 = 1 << 0;
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 1;
    /// The endpoint's address is this node's own (a hostNetwork pod, or a process of the
    /// node): its flows are never masqueraded (the packet would come from and go to the
    /// node itself), and its replies leave through the node's stack, translated on the
    /// uplink's egress.
    pub const HOST: u8 = 1 << 2;
}

impl Backend {
    pub fn new(addr: core::net::Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: crate::addr_be(addr),
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }

    pub fn ip(&self) -> core::net::Ipv4Addr {
        crate::addr_from_be(self.addr)
    }

    pub fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Traffic through one backend, both directions, since the backend id was allocated. An
/// array indexed by [`BackendId`], updated with atomic adds (a per-CPU array of every possible
/// backend would cost megabytes per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
}

user_pod!(BackendSlotKey, Backend, BackendStats);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_packed() {
        assert_eq!(size_of::<BackendSlotKey>(), 8);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(core::mem::offset_of!(Backend, port), 4);
    }

    #[test]
    fn backend_round_trips_host_values() {
        let b = Backend::new(
            core::net::Ipv4Addr::new(10, 244, 1, 3),
            8080,
            crate::proto::UDP,
        );
        assert_eq!(b.ip(), core::net::Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(b.port_host(), 8080);
        assert_eq!(b.port.to_ne_bytes(), [0x1f, 0x90]);
    }
}
