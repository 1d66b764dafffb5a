//! recvmsg4 and getpeername4: a translated socket's peer is shown as the service it asked
//! for, not the backend it was given.

use aya_ebpf::programs::SockAddrContext;
use lb_common::SockRevKey;

use super::{cookie, read, write, ALLOW};
use crate::maps::LB_SOCK_REV;

/// The verifier accepts only 1 from these hooks (a reply or a peer cannot be refused), so
/// this only ever rewrites the address.
#[inline(always)]
pub fn handle(ctx: &SockAddrContext) -> i32 {
    let Some(peer) = read(ctx) else {
        // Not IPv4 TCP/UDP: never translated.
        return ALLOW;
    };
    let key = SockRevKey {
        cookie: cookie(ctx),
        addr: peer.addr,
        port: peer.port,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(service) = (unsafe { LB_SOCK_REV.get(&key).copied() }) else {
        // This socket was never sent to this peer by us: its real peer is the answer.
        return ALLOW;
    };
    write(ctx, service.addr, service.port);
    ALLOW
}
