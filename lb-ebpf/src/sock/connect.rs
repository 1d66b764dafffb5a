//! connect4 and sendmsg4: a node process's socket addressed to a service is sent to one of
//! its backends instead.

use aya_ebpf::{helpers::bpf_set_retval, programs::SockAddrContext};
use lb_common::{frontend::flags, Backend, Frontend, Reason, SockRevEntry, SockRevKey};

use super::{cookie, lookup, read, write, SockAddr, ALLOW, DENY};
use crate::{
    backend, clock,
    counters::count,
    maps::{LB_CONFIG, LB_SOCK_REV},
    parse::{frag, Packet},
};

const ECONNREFUSED: i32 = 111;

/// The program's verdict for connect()/sendmsg(). Only a service without endpoints ever
/// fails the syscall; anything else carries on, translated or not.
#[inline(always)]
pub fn handle(ctx: &SockAddrContext) -> i32 {
    let Some(dst) = read(ctx) else {
        // Not IPv4 TCP/UDP: not a service destination.
        return ALLOW;
    };
    let Some(fe) = lookup::frontend(&dst) else {
        // Not a service.
        return ALLOW;
    };
    if fe.backend_count == 0 {
        return no_backend(&fe);
    }
    let cookie = cookie(ctx);
    let backend = match select(&fe, &dst, cookie) {
        Ok(backend) => backend,
        Err(reason) => {
            // The maps are mid-update or inconsistent: leave the destination alone (the tc
            // programs see the service address later and may still translate it) rather
            // than fail the syscall.
            count(reason);
            return ALLOW;
        }
    };
    let key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: [0; 2],
    };
    let entry = SockRevEntry {
        addr: dst.addr,
        port: dst.port,
        _pad: [0; 2],
    };
    // Best effort: without the entry only getpeername()/recvfrom() show the backend.
    let _ = LB_SOCK_REV.insert(&key, &entry, 0);
    write(ctx, backend.addr, backend.port);
    count(Reason::SockTranslated);
    ALLOW
}

/// The service has no endpoints usable from here.
#[inline(always)]
fn no_backend(fe: &Frontend) -> i32 {
    if fe.flags & flags::INTERNAL_LOCAL != 0 {
        // internalTrafficPolicy=Local without a local endpoint: kube-proxy drops, so the
        // connection is left to time out against the unanswered service address.
        count(Reason::DropNoLocalBackend);
        return ALLOW;
    }
    // kube-proxy REJECTs; at the socket the same answer is a refused connect()/sendmsg().
    // bpf_set_retval is allowed for connect4 and sendmsg4 (the verifier of kernel 6.18
    // accepts it; recvmsg4/getpeername4 may not use it), and a 0 return then keeps that
    // error instead of the default EPERM, so the caller sees ECONNREFUSED at once.
    count(Reason::RejectNoBackend);
    // SAFETY: a plain helper call; it only sets the syscall's return value.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// A backend for this socket, with the datapath's usual selection.
///
/// Affinity is keyed by the client address, which for a node process is the node's
/// address. The flow hash must still tell sockets apart, but a socket has no source port
/// yet at connect(): its cookie, folded into the source-port field, takes that role (one
/// socket always hashes to the same backend, so repeated sendto()s stay on one).
#[inline(always)]
fn select(fe: &Frontend, dst: &SockAddr, cookie: u64) -> Result<Backend, Reason> {
    let node_addr = LB_CONFIG.get(0).map(|c| c.node_addr).unwrap_or(0);
    let folded = cookie ^ (cookie >> 16) ^ (cookie >> 32) ^ (cookie >> 48);
    let pkt = Packet {
        l3: 0,
        l4: 0,
        proto: dst.proto,
        saddr: node_addr,
        daddr: dst.addr,
        sport: folded as u16,
        dport: dst.port,
        tcp_flags: 0,
        frag: frag::NONE,
        ip_id: 0,
        ttl: 0,
        df: false,
        l4_len: 0,
        tsval: 0,
    };
    backend::select(fe, &pkt, clock::now()).map(|(_, backend)| backend)
}
