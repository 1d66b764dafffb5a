//! Socket-level load balancing (cgroup connect4/sendmsg4/recvmsg4/getpeername4): what a
//! socket was translated to, so its peer can be shown as the service again.

use crate::user_pod;

/// A socket (by its cookie) and the backend it was sent to. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevKey {
    /// bpf_get_socket_cookie(): unique per socket for the kernel's lifetime.
    pub cookie: u64,
    /// Backend address, network order.
    pub addr: u32,
    /// Backend port, network order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// The service address the application asked for. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevEntry {
    /// Service address, network order.
    pub addr: u32,
    /// Service port, network order.
    pub port: u16,
    pub _pad: [u8; 2],
}

user_pod!(SockRevKey, SockRevEntry);

#[cfg(test)]
mod tests {
    #[test]
    fn layouts_are_packed() {
        assert_eq!(core::mem::size_of::<super::SockRevKey>(), 16);
        assert_eq!(core::mem::size_of::<super::SockRevEntry>(), 8);
    }
}
