//! Table-wide invariants of conntrack after a batch of packets: every entry is one the
//! datapath's state machine and NAT can produce on this node.
//!
//! - Keys: the table of their protocol (TCP, else UDP: nothing else is tracked), a known
//!   direction, zeroed padding.
//! - Entries: known flag bits (a port remap is a source translation), `seen` bits the
//!   direction can show (UDP shows only replies; a reply entry only what replies carry),
//!   stamps in order and not in the future.
//! - Forward entries: a frontend of their service id that is the key's destination, a
//!   backend of that service (by id, address and port), a masquerade source that is the
//!   node's address, a remapped source that is the client's own, every translated port
//!   inside the configured range, a hairpin flow whose client is its backend.
//! - Reply entries: the backend's tuple as the key's source, the service's frontend as
//!   what they restore; when the forward entry they name exists and owns them, they agree
//!   with it field by field (`CtKey::reply_entry`).
//! - No two flows share a tuple: a forward entry whose flow is live (not expired, not
//!   closed) and whose reply tuple is held by another flow's reply entry is a violation,
//!   since a tuple is only taken over from a holder that released it.
//!
//! - No orphans: a reply entry whose forward entry is gone, or has moved on to another
//!   reply tuple without giving this one up. On a node, a flush by the agent or a race
//!   between CPUs creating a flow can leave one (the datapath and the GC handle them: see
//!   `ORPHAN_GRACE_NS`); the fuzzer runs one CPU at a time and never flushes mid-batch,
//!   so here every orphan is the datapath's doing.

use std::collections::HashMap;

use lb_common::{
    conntrack::{ct_flags, dir, seen, CtTimeouts},
    maps,
    proto::{TCP, UDP},
    CtEntry, CtKey,
};

use super::node::{now_ns, Node};
use crate::Datapath;

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub entries: usize,
    pub orphans: usize,
    pub violations: Vec<String>,
}

pub fn walk(dp: &mut Datapath, node: &Node) -> Walk {
    let now = now_ns();
    let mut w = Walk::default();
    let mut all: HashMap<CtKey, CtEntry> = HashMap::new();
    for (key, entry) in dp.ct_entries() {
        all.insert(key, entry);
    }
    w.entries = all.len();
    let t = node.config.ct_timeouts;
    for (k, e) in &all {
        if let Err(why) = entry_ok(k, e, &all, node, now, &t) {
            w.violations.push(format!("{}: {why}", describe(k, e)));
        } else if k.dir == dir::REPLY && !owned(k, e, &all) {
            w.orphans += 1;
            let fk = k.forward_of_reply(e);
            let named = all.get(&fk).map(|f| describe(&fk, f));
            w.violations.push(format!(
                "{}: an orphan: the flow it names ({}) does not own it",
                describe(k, e),
                named.as_deref().unwrap_or("no entry")
            ));
        }
    }
    w
}

fn owned(k: &CtKey, e: &CtEntry, all: &HashMap<CtKey, CtEntry>) -> bool {
    let fk = k.forward_of_reply(e);
    all.get(&fk).is_some_and(|f| fk.owns_reply(f, k))
}

pub fn describe(k: &CtKey, e: &CtEntry) -> String {
    format!(
        "{} {}:{} -> {}:{} proto {} {:?}",
        if k.dir == dir::FORWARD {
            "forward"
        } else {
            "reply"
        },
        lb_common::addr_from_be(k.saddr),
        u16::from_be(k.sport),
        lb_common::addr_from_be(k.daddr),
        u16::from_be(k.dport),
        k.proto,
        e
    )
}

fn entry_ok(
    k: &CtKey,
    e: &CtEntry,
    all: &HashMap<CtKey, CtEntry>,
    node: &Node,
    now: u64,
    t: &CtTimeouts,
) -> Result<(), String> {
    if !matches!(k.proto, TCP | UDP) {
        return Err("a tracked protocol other than TCP and UDP".into());
    }
    if k._pad != [0; 2] || e._pad != [0; 2] || e._pad2 != [0; 4] {
        return Err("padding not zero".into());
    }
    if k.dir > dir::REPLY {
        return Err("unknown direction".into());
    }
    let known = ct_flags::SNAT | ct_flags::NORTH_SOUTH | ct_flags::HAIRPIN | ct_flags::PORT_REMAP;
    if e.flags & !known != 0 {
        return Err("unknown flag bits".into());
    }
    if e.flags & ct_flags::PORT_REMAP != 0 && e.flags & ct_flags::SNAT == 0 {
        return Err("a port remap without source translation".into());
    }
    if e.created_ns > e.last_seen_ns || e.last_seen_ns > now + 100_000_000 {
        return Err(format!("stamps out of order (now {now})"));
    }
    let backend = node
        .backends
        .get(&e.backend_id)
        .ok_or(format!("backend id {} does not exist", e.backend_id))?;
    let svc = node
        .service(e.service_id)
        .ok_or(format!("service id {} does not exist", e.service_id))?;
    if backend.proto != k.proto || svc.key.proto != k.proto {
        return Err("backend or service of another protocol".into());
    }
    let slots = &node.slots[&e.service_id];
    if !slots.contains(&e.backend_id) {
        return Err(format!(
            "backend {} is not one of service {}'s",
            e.backend_id, e.service_id
        ));
    }
    let (lo, hi) = node.snat_range();
    let in_range = |p: u16| (lo..=hi).contains(&u16::from_be(p));
    if k.dir == dir::FORWARD {
        let seen_ok = if k.proto == TCP {
            seen::REPLY | seen::FIN_FORWARD | seen::FIN_REPLY | seen::RST | seen::SYN
        } else {
            seen::REPLY
        };
        if e.seen & !seen_ok != 0 {
            return Err("seen bits the protocol cannot show".into());
        }
        if k.proto != TCP && e.client_tsval != 0 {
            return Err("a UDP flow with a TCP timestamp".into());
        }
        if (svc.key.addr, svc.key.port) != (k.daddr, k.dport) {
            return Err("the service's frontend is not the flow's destination".into());
        }
        if (backend.addr, backend.port) != (e.nat_addr, e.nat_port) {
            return Err("the backend's address is not the flow's translation".into());
        }
        if e.flags & ct_flags::SNAT != 0 {
            let want = if e.flags & ct_flags::PORT_REMAP != 0 {
                k.saddr
            } else {
                node.config.node_addr
            };
            if e.snat_addr != want {
                return Err("a source translation to an address it cannot have".into());
            }
            if !in_range(e.snat_port) {
                return Err(format!(
                    "translated port {} outside {lo}-{hi}",
                    u16::from_be(e.snat_port)
                ));
            }
        } else if e.snat_addr != 0 || e.snat_port != 0 {
            return Err("a source translation without the SNAT flag".into());
        }
        if e.flags & ct_flags::HAIRPIN != 0 && k.saddr != e.nat_addr {
            return Err("a hairpin flow whose client is not its backend".into());
        }
        // No two flows on one tuple: a live flow (not expired, and nothing has ended it,
        // so no SYN can reopen it) keeps its reply tuple and its reply entry. The
        // harness's own lost entries excepted: another flow may have claimed the tuple
        // before the flow's repair, and then keeps it.
        let live = !e.is_expired(k.proto, now, t)
            && e.seen & (seen::FIN_FORWARD | seen::FIN_REPLY | seen::RST) == 0;
        if live && !node.lost.contains(k) {
            let rk = k.reply_of_forward(e);
            match all.get(&rk) {
                None => return Err("a live flow without its reply entry".into()),
                Some(r) => {
                    let holder = rk.forward_of_reply(r);
                    if holder != *k {
                        return Err(format!(
                            "a live flow's reply tuple is held by another flow ({})",
                            describe(&holder, all.get(&holder).unwrap_or(&CtEntry::default()))
                        ));
                    }
                }
            }
        }
    } else {
        let seen_ok = if k.proto == TCP {
            seen::REPLY | seen::FIN_REPLY | seen::RST
        } else {
            seen::REPLY
        };
        if e.seen & !seen_ok != 0 || (e.seen != 0 && e.seen & seen::REPLY == 0) {
            return Err("seen bits a reply entry cannot pass on".into());
        }
        if (backend.addr, backend.port) != (k.saddr, k.sport) {
            return Err("the reply tuple's source is not the backend".into());
        }
        if (svc.key.addr, svc.key.port) != (e.nat_addr, e.nat_port) {
            return Err("the reply restores an address that is not the service's".into());
        }
        if e.flags & ct_flags::SNAT != 0 {
            if e.flags & ct_flags::PORT_REMAP == 0 && k.daddr != node.config.node_addr {
                return Err("a masqueraded reply tuple not to the node".into());
            }
            if !in_range(k.dport) {
                return Err(format!(
                    "reply to translated port {} outside {lo}-{hi}",
                    u16::from_be(k.dport)
                ));
            }
        }
        let fk = k.forward_of_reply(e);
        if let Some(f) = all.get(&fk).filter(|f| fk.owns_reply(f, k)) {
            let want = fk.reply_entry(f);
            let fields = |x: &CtEntry| {
                (
                    x.nat_addr,
                    x.nat_port,
                    x.flags,
                    x.snat_addr,
                    x.snat_port,
                    x.service_id,
                    x.backend_id,
                )
            };
            if fields(e) != fields(&want) {
                return Err(format!(
                    "disagrees with its forward entry {}",
                    describe(&fk, f)
                ));
            }
        }
    }
    let _ = maps::CONNTRACK;
    Ok(())
}
