//! Which frontend a node process's destination hits.

use lb_common::{
    frontend::{flags, scope},
    Frontend, FrontendKey,
};

use super::SockAddr;
use crate::maps::LB_FRONTENDS;

#[inline(always)]
fn get(key: &FrontendKey) -> Option<Frontend> {
    // SAFETY: copied out at once; hash map updates swap whole elements, so the copy is
    // either the old or the new value.
    unsafe { LB_FRONTENDS.get(key).copied() }
}

/// The frontend for `dst`, as seen from a process on the node.
///
/// A node process is internal traffic: for a service with externalTrafficPolicy=Local the
/// external-scope entry holds only local backends (and drops without them), so the
/// internal-scope twin, which holds all, is used instead. Should the twin be missing (the
/// agent writes both, but a half-written update is possible), the external entry still
/// names valid backends and is used.
#[inline(always)]
pub fn frontend(dst: &SockAddr) -> Option<Frontend> {
    let mut key = FrontendKey {
        addr: dst.addr,
        port: dst.port,
        proto: dst.proto,
        scope: scope::EXTERNAL,
    };
    let fe = get(&key)?;
    if fe.flags & flags::EXTERNAL_LOCAL == 0 {
        return Some(fe);
    }
    key.scope = scope::INTERNAL;
    Some(get(&key).unwrap_or(fe))
}
