//! Socket-level load balancing for processes on the node, as Cilium's cgroup programs do it:
//! the destination is translated once, when the socket connects or sends, so no packet of
//! the flow ever carries the service address and no conntrack entry is needed.
//!
//! - `connect4` (TCP, connected UDP) and `sendmsg4` (unconnected UDP): a service destination
//!   becomes one of its backends ([`connect`]); the socket and backend are remembered in
//!   `LB_SOCK_REV`.
//! - `recvmsg4` and `getpeername4`: a remembered backend is shown as the service again
//!   ([`reverse`]), so applications see the address they asked for.

pub mod connect;
pub mod lookup;
pub mod reverse;

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext, EbpfContext};
use lb_common::proto;

/// What a cgroup sock_addr program returns to let the syscall carry on.
pub const ALLOW: i32 = 1;
/// What it returns to fail the syscall (EPERM, unless `bpf_set_retval` chose another error).
pub const DENY: i32 = 0;

const AF_INET: u32 = 2;

/// The address the syscall carries: destination for connect/sendmsg, peer for
/// recvmsg/getpeername. Network byte order, read natively, as the maps keep them.
#[derive(Clone, Copy)]
pub struct SockAddr {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
}

/// The IPv4 TCP/UDP address of the syscall, or `None` when it is not ours to touch.
#[inline(always)]
pub fn read(ctx: &SockAddrContext) -> Option<SockAddr> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; the verifier rewrites these 4-byte
    // context reads into reads of the real socket address.
    let (family, protocol, addr, port) = unsafe {
        (
            (*sa).user_family,
            (*sa).protocol,
            (*sa).user_ip4,
            (*sa).user_port,
        )
    };
    if family != AF_INET {
        return None;
    }
    let proto = match protocol {
        p if p == proto::TCP as u32 => proto::TCP,
        p if p == proto::UDP as u32 => proto::UDP,
        _ => return None,
    };
    // `user_port` holds the 2-byte network-order sin_port, zero-extended.
    Some(SockAddr {
        addr,
        port: port as u16,
        proto,
    })
}

/// Replaces the syscall's address (and port).
#[inline(always)]
pub fn write(ctx: &SockAddrContext, addr: u32, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as in `read`. Volatile so that each field is written with one 4-byte store:
    // the verifier accepts only full-width writes to these fields.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr);
        core::ptr::write_volatile(&raw mut (*sa).user_port, port as u32);
    }
}

/// The socket's cookie: unique per socket for the kernel's lifetime.
#[inline(always)]
pub fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}
