//! Conntrack: find a live flow, create one for a new connection (claiming the tuple its
//! replies will carry, so no two flows share one), and fold each packet's TCP flags into the
//! flow's state (the state machine itself is in lb_common::conntrack).

use aya_ebpf::maps::HashMap;
use lb_common::{
    conntrack::{
        awaits_syn_ack, ct_flags, dir, is_reopen, is_syn_ack, seen_bits, tcp_flags, CtTimeouts,
        ORPHAN_GRACE_NS,
    },
    proto, Backend, BackendId, CtEntry, CtKey, Frontend, Reason,
};

use crate::{
    atomic,
    counters::count,
    maps::{LB_CONFIG, LB_CT4_ANY, LB_CT4_TCP},
    nat::Tuple,
    parse::Packet,
    snat,
};

/// BPF_NOEXIST: insert only if the key is free (a reply tuple must not be shared).
const BPF_NOEXIST: u64 = 1;
/// What a map update returns when a preallocated table has no free element.
const E2BIG: i32 = 7;

/// A conntrack table: one per protocol class (see lb_common::maps::CONNTRACK).
pub type Table = HashMap<CtKey, CtEntry>;

/// The table that tracks flows of protocol `proto`.
#[inline(always)]
pub fn table(proto: u8) -> &'static Table {
    if proto == proto::TCP {
        &LB_CT4_TCP
    } else {
        &LB_CT4_ANY
    }
}

/// The timeouts the agent configured (defaults where it set none).
#[inline(always)]
pub fn timeouts() -> CtTimeouts {
    LB_CONFIG.get(0).map(|c| c.ct_timeouts).unwrap_or_default()
}

/// A tracked flow's translation for this packet.
pub struct Hit {
    pub to: Tuple,
    pub backend_id: BackendId,
}

/// What the forward lookup found.
pub enum Forward {
    /// A live flow: translate as it says.
    Hit(Hit),
    /// An entry that no longer steers: expired, or a finished flow whose tuple a new
    /// connection reopens. The new flow replaces it (and may keep its source port).
    Stale(Stale),
    Miss,
}

/// The forward entry of `key`, with this packet folded in. A SYN on a live entry (one
/// picked up mid-stream) marks it opened, so its SYN-ACK translates.
///
/// Once a second per flow (when the entry's stamp is refreshed) the flow's reply entry is
/// checked and rebuilt if it is missing: without it the backend's answers would go back
/// untranslated, for as long as the flow lives.
#[inline(always)]
pub fn forward(key: &CtKey, pkt: &Packet, now: u64, t: &CtTimeouts) -> Forward {
    let table = table(pkt.proto);
    let Some(entry) = table.get_ptr_mut(key) else {
        return Forward::Miss;
    };
    // SAFETY: the pointer is valid for this program run; concurrent updates of `seen` and
    // `last_seen_ns` from other CPUs can race, and either value is acceptable.
    unsafe {
        if (*entry).is_expired(pkt.proto, now, t)
            || is_reopen(pkt.proto, (*entry).seen, pkt.tcp_flags)
        {
            return Forward::Stale(Stale::of(&*entry));
        }
        let restamp = now.saturating_sub((*entry).last_seen_ns) >= TOUCH_NS;
        touch(entry, seen_bits(pkt.tcp_flags, dir::FORWARD), now);
        // The client's last word: the next flow on this tuple must show a newer timestamp.
        if pkt.tsval != 0 && pkt.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            (*entry).client_tsval = pkt.tsval;
        }
        let flow = *entry;
        if restamp {
            repair_reply(table, key, &flow);
        }
        let mut to = Tuple {
            saddr: pkt.saddr,
            sport: pkt.sport,
            daddr: flow.nat_addr,
            dport: flow.nat_port,
        };
        if flow.flags & ct_flags::SNAT != 0 {
            to.saddr = flow.snat_addr;
            to.sport = flow.snat_port;
        }
        Forward::Hit(Hit {
            to,
            backend_id: flow.backend_id,
        })
    }
}

/// Rebuilds the reply entry of a live flow if it is missing. It cannot be lost to eviction
/// (the tables are not LRU), but a flush, an upgrade that moved the maps or a crash between
/// two writes can leave a flow without it.
#[inline(always)]
fn repair_reply(table: &Table, key: &CtKey, flow: &CtEntry) {
    let reply_key = key.reply_of_forward(flow);
    if table.get_ptr(&reply_key).is_some() {
        return;
    }
    // NOEXIST: should another flow have claimed the tuple meanwhile, it keeps it.
    if table
        .insert(&reply_key, &key.reply_entry(flow), BPF_NOEXIST)
        .is_ok()
    {
        count(Reason::CtRepaired);
    }
}

/// The addresses a reply must carry, if it belongs to a live tracked flow: the service as
/// its source, and for a source-translated flow the client as its destination. The flow's
/// forward entry learns what the reply showed (SYN-ACK, FIN, RST).
///
/// A reply entry can outlive its flow (until the GC or a new flow takes its tuple), and a
/// later connection can carry its tuple: the same client reaching the backend directly
/// from a reused source port. Its SYN-ACK must not be rewritten to come from the service
/// (the client would refuse it), so the forward entry, which both directions keep stamped,
/// decides whether the flow lives and still owns this reply tuple. It is looked up when the
/// reply entry has news to pass on anyway or is a second stale, and for every SYN-ACK
/// (which must answer a SYN the client sent through the service on a flow neither side has
/// finished); a steady stream of replies needs no extra lookup.
#[inline(always)]
pub fn reply(key: &CtKey, pkt: &Packet, now: u64, t: &CtTimeouts) -> Option<Hit> {
    let table = table(pkt.proto);
    let entry = table.get_ptr_mut(key)?;
    let bits = seen_bits(pkt.tcp_flags, dir::REPLY);
    // SAFETY: as in forward; the entry is copied out at once.
    let reply = unsafe { *entry };
    let opening = is_syn_ack(pkt.proto, pkt.tcp_flags);
    // The reply entry remembers what it last passed on to the forward entry (its `seen`
    // and `last_seen_ns`), so that a steady stream of replies looks the forward entry up
    // only when there is news: a new flag, or a stamp gone stale.
    if opening || bits & !reply.seen != 0 || now.saturating_sub(reply.last_seen_ns) >= TOUCH_NS {
        let forward_key = key.forward_of_reply(&reply);
        let forward = table.get_ptr_mut(&forward_key);
        // SAFETY: as in forward.
        let owner = forward.filter(|f| unsafe {
            !(**f).is_expired(pkt.proto, now, t) && forward_key.owns_reply(&**f, key)
        });
        // SAFETY: as in forward.
        let unasked = owner.is_some_and(|f| opening && !awaits_syn_ack(unsafe { (*f).seen }));
        // SAFETY: as in forward.
        let finished = owner.is_some_and(|f| unsafe { (*f).state(pkt.proto).is_closed() });
        let Some(forward) = owner.filter(|_| !unasked) else {
            // The flow is over, so the tuple is not its any more: the packet passes as
            // an unknown flow's would, and the entry goes so that the rest of the other
            // connection is left alone as well (a closed flow's forward entry, still
            // inside its close timeout, would otherwise vouch for the next packets).
            // A SYN-ACK that a live flow did not ask for (it was picked up mid-stream, or
            // one side has sent its FIN) only passes: removing the entry would free the
            // tuple for a new flow to claim while this one still carries it, and the two
            // would share it. The fuzzer found this
            // (lb-ebpf-tests/fuzz/regressions/syn-ack-on-half-closed-flow.hex).
            if owner.is_none() || finished {
                let _ = table.remove(key);
            }
            return None;
        };
        touch(forward, bits, now);
        // SAFETY: as in forward.
        unsafe {
            (*entry).seen = reply.seen | bits;
            (*entry).last_seen_ns = now;
        }
    }
    let mut to = Tuple {
        saddr: reply.nat_addr,
        sport: reply.nat_port,
        daddr: pkt.daddr,
        dport: pkt.dport,
    };
    if reply.flags & ct_flags::SNAT != 0 {
        to.daddr = reply.snat_addr;
        to.dport = reply.snat_port;
    }
    Some(Hit {
        to,
        backend_id: reply.backend_id,
    })
}

/// How stale a flow's `last_seen_ns` may get before a packet restamps it. Writing it on
/// every packet would dirty the entry's cache line for every packet on every CPU the flow
/// touches; a second is far below the shortest timeout (10 s), which it can only lengthen
/// by as much.
const TOUCH_NS: u64 = 1_000_000_000;

/// Folds a packet's `bits` and time into a flow's entry, writing only what changes. A state
/// change is stamped at once: a closed flow's tuple is freed a quiet second after it closed.
#[inline(always)]
fn touch(entry: *mut CtEntry, bits: u8, now: u64) {
    // SAFETY: `entry` comes from a map lookup of this run; see forward on races.
    unsafe {
        if bits & !(*entry).seen != 0 {
            (*entry).seen |= bits;
            (*entry).last_seen_ns = now;
        } else if now.saturating_sub((*entry).last_seen_ns) >= TOUCH_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

/// How a new flow is to be translated.
pub struct NewFlow {
    pub fe: Frontend,
    pub backend_id: BackendId,
    pub backend: Backend,
    /// Masquerade to this address (the node's), or 0 to keep the client's.
    pub snat_addr: u32,
    /// [`ct_flags`] besides SNAT.
    pub flags: u8,
    /// The configured source-port range for source translation (0, 0: the default).
    pub snat_ports: (u16, u16),
    /// The flow this one replaces on the same client tuple, if any.
    pub stale: Option<Stale>,
}

/// What a new flow needs of the stale entry it replaces on its client tuple: enough to find
/// the old reply tuple and to keep the old source port. Not the whole entry: the packet
/// programs and their SNAT callback share one 512-byte stack.
#[derive(Clone, Copy)]
pub struct Stale {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub flags: u8,
    pub snat_port: u16,
    pub snat_addr: u32,
}

impl Stale {
    #[inline(always)]
    pub fn of(e: &CtEntry) -> Self {
        Self {
            nat_addr: e.nat_addr,
            nat_port: e.nat_port,
            flags: e.flags,
            snat_port: e.snat_port,
            snat_addr: e.snat_addr,
        }
    }

    /// The reply tuple the old flow claimed.
    #[inline(always)]
    fn reply_key(&self, key: &CtKey) -> CtKey {
        key.reply_of_forward(&CtEntry {
            nat_addr: self.nat_addr,
            nat_port: self.nat_port,
            flags: self.flags,
            snat_addr: self.snat_addr,
            snat_port: self.snat_port,
            ..CtEntry::default()
        })
    }
}

/// Whether a reply tuple's current holder has let go of it, for a newcomer whose opening
/// packet shows TCP timestamp `tsval`: its flow is gone, has ended (expired, or closed and
/// quiet or older than the newcomer), or has moved on to another tuple. A reply entry
/// without its forward entry is only free once it is older than [`ORPHAN_GRACE_NS`]: a
/// flow being created writes its reply entry first.
#[inline(always)]
pub fn released(
    table: &Table,
    key: &CtKey,
    held: &CtEntry,
    now: u64,
    t: &CtTimeouts,
    tsval: u32,
) -> bool {
    let forward_key = key.forward_of_reply(held);
    // SAFETY: read in place (a copy would cost stack the SNAT search's callback lacks); a
    // racing update from another CPU gives either value, both acceptable.
    match unsafe { table.get(&forward_key) } {
        None => now.saturating_sub(held.created_ns) >= ORPHAN_GRACE_NS,
        Some(f) => !forward_key.owns_reply(f, key) || f.frees_tuple(key.proto, now, t, tsval),
    }
}

/// What claiming a reply tuple came to.
pub enum Claim {
    Claimed,
    /// A live flow holds it.
    Taken,
}

/// Claims reply tuple `key` for a new flow (opened with TCP timestamp `tsval`) by inserting
/// its reply entry, or by taking the entry over from a holder that has [`released`] it.
///
/// A takeover rewrites the entry in place, and the first CPU to swap its creation stamp
/// (an atomic compare-and-exchange) wins: two CPUs that both found the holder released
/// cannot both end up owning the tuple, as they could by deleting and re-inserting it.
/// An entry stamped within [`TAKEOVER_GRACE_NS`] is never taken over, so a CPU that reads
/// it while the winner is still writing its fields leaves it alone.
#[inline(always)]
pub fn claim(
    key: &CtKey,
    entry: &CtEntry,
    now: u64,
    t: &CtTimeouts,
    tsval: u32,
) -> Result<Claim, Reason> {
    let table = table(key.proto);
    match table.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => return Ok(Claim::Claimed),
        Err(e) if e == -E2BIG => return Err(Reason::DropCtFull),
        Err(_) => {}
    }
    let Some(held) = table.get_ptr_mut(key) else {
        // Deleted under us: the tuple is free now, unless someone else was quicker.
        return Ok(insert_claim(table, key, entry));
    };
    // SAFETY: a map value of this run; fields another CPU may write concurrently are
    // settled by the compare-and-exchange below.
    unsafe {
        let stamp = (*held).created_ns;
        if now.saturating_sub(stamp) < TAKEOVER_GRACE_NS
            || !released(table, key, &*held, now, t, tsval)
        {
            return Ok(Claim::Taken);
        }
        if atomic::compare_exchange(&raw mut (*held).created_ns, stamp, now) != stamp {
            return Ok(Claim::Taken);
        }
        *held = CtEntry {
            created_ns: now,
            ..*entry
        };
    }
    Ok(Claim::Claimed)
}

/// How young a claimed entry must be to be safe from takeover: longer than a CPU takes to
/// write it (nanoseconds), and no longer than a clock tick or two, since a closed flow's
/// tuple may be due to a new flow at once.
pub const TAKEOVER_GRACE_NS: u64 = 1_000_000;

#[inline(always)]
fn insert_claim(table: &Table, key: &CtKey, entry: &CtEntry) -> Claim {
    if table.insert(key, entry, BPF_NOEXIST).is_ok() {
        Claim::Claimed
    } else {
        Claim::Taken
    }
}

/// Records a new flow: its reply entry first (the claim on the tuple replies will carry:
/// once the forward entry exists, packets are steered to the backend and its answers must
/// already be translatable), then its forward entry. Returns the tuple the packet must
/// carry.
///
/// The source is translated when the flow is masqueraded, and also when the reply tuple a
/// plain DNAT would give belongs to another live flow (the same client port reaching two
/// services with a shared backend): then only the client's port changes, as nf_nat remaps.
#[inline(always)]
pub fn create(key: &CtKey, pkt: &Packet, flow: &NewFlow, now: u64) -> Result<Tuple, Reason> {
    let t = timeouts();
    let table = table(pkt.proto);
    let backend = &flow.backend;
    let mut forward = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr: backend.addr,
        nat_port: backend.port,
        // A bare SYN marks the flow as opened (seen::SYN); any other packet picks it up.
        seen: seen_bits(pkt.tcp_flags, dir::FORWARD),
        flags: flow.flags,
        service_id: flow.fe.service_id,
        backend_id: flow.backend_id,
        snat_addr: 0,
        snat_port: 0,
        _pad: [0; 2],
        client_tsval: 0,
        _pad2: [0; 4],
    };
    let mut to = Tuple {
        saddr: pkt.saddr,
        sport: pkt.sport,
        daddr: backend.addr,
        dport: backend.port,
    };
    // The flow this one replaces gives its reply tuple up first, so that it can be claimed
    // again (a client reopening its tuple keeps its translation where it can).
    let mut preferred = 0;
    if let Some(old) = &flow.stale {
        let old_reply = old.reply_key(key);
        // SAFETY: copied out at once.
        if let Some(held) = unsafe { table.get(&old_reply).copied() } {
            if old_reply.forward_of_reply(&held) == *key {
                let _ = table.remove(&old_reply);
            }
        }
        if old.flags & ct_flags::SNAT != 0 && old.snat_addr == flow.snat_addr {
            preferred = u16::from_be(old.snat_port);
        }
    }

    let snat_addr = if flow.snat_addr != 0 {
        if preferred == 0 {
            // nf_nat keeps the client's port when it can; here only inside the range.
            preferred = u16::from_be(pkt.sport);
        }
        flow.snat_addr
    } else {
        let reply_key = key.reply_of_forward(&forward);
        match claim(&reply_key, &key.reply_entry(&forward), now, &t, pkt.tsval)? {
            Claim::Claimed => {
                insert_forward(table, key, &forward, &reply_key)?;
                return Ok(to);
            }
            Claim::Taken => {}
        }
        // The reply tuple is another live flow's: keep the client's address, give it
        // another port.
        forward.flags |= ct_flags::PORT_REMAP;
        count(Reason::PortRemapped);
        preferred = 0;
        pkt.saddr
    };

    forward.flags |= ct_flags::SNAT;
    forward.snat_addr = snat_addr;
    let port = snat::allocate(
        key,
        &forward,
        preferred,
        flow.snat_ports,
        &t,
        now,
        pkt.tsval,
    )?;
    forward.snat_port = port;
    let reply_key = key.reply_of_forward(&forward);
    insert_forward(table, key, &forward, &reply_key)?;
    to.saddr = snat_addr;
    to.sport = port;
    Ok(to)
}

/// Inserts a new flow's forward entry (replacing a stale one), or gives its claimed reply
/// tuple back.
#[inline(always)]
fn insert_forward(
    table: &Table,
    key: &CtKey,
    forward: &CtEntry,
    reply_key: &CtKey,
) -> Result<(), Reason> {
    match table.insert(key, forward, 0) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = table.remove(reply_key);
            Err(if e == -E2BIG {
                Reason::DropCtFull
            } else {
                Reason::DropCtInsert
            })
        }
    }
}
