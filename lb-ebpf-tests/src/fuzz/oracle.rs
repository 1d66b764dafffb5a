//! The oracle: what one run of one program may have done.
//!
//! - The run itself: BPF_PROG_TEST_RUN succeeded and returned a verdict the program can
//!   give (tc: unspec, shot, redirect; XDP: drop, pass, tx — never aborted or 0).
//! - The counters: every reason counted is counted once, and the set of reasons is one the
//!   program's code paths produce, consistent with the verdict (a drop reason with a drop,
//!   a translation with a rewritten packet, side reasons such as `port_remapped` or
//!   `ct_repaired` only beside the outcomes they can accompany). Which sets are possible
//!   is read off `lb-ebpf/src/{forward,reply,xdp}.rs`; see [`classify`].
//! - The bytes: a packet nothing translated leaves exactly as it came; a translated one
//!   changes only the fields NAT writes (MACs and TTL only when the datapath forwards it
//!   itself), and its IPv4 and L4 checksums stay exactly as right as they were: the
//!   one's-complement residual of each (0 for a valid checksum) is the same before and
//!   after, so a valid packet leaves valid and a broken one is not "repaired" into
//!   something else. An ICMP error's quote, its quoted header checksum and the ICMP
//!   checksum likewise. A reject is a new, fully valid ICMP message quoting the packet.
//! - The maps: a translated packet's new tuple is what its conntrack entry says, and a new
//!   flow's reply entry exists and points back at it (the table-wide invariants are in
//!   [`super::invariants`]).

use lb_common::{
    checksum,
    conntrack::{ct_flags, dir},
    proto, CtKey, Reason,
};

use super::node::Node;
use crate::{packet, Datapath, Program, Run};

pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

/// What the counters and verdict say happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing done: the packet must be exactly as it came.
    Untouched,
    /// A flow's packet rewritten; `routed` it was forwarded by the datapath (TTL taken
    /// down, MACs set), `maybe_routed` a redirect that failed after the rewrite.
    Translated {
        reason: Reason,
        routed: bool,
        maybe_routed: bool,
    },
    /// An ICMP error translated in place.
    IcmpTranslated { routed: bool, maybe_routed: bool },
    /// Answered with ICMP destination-unreachable `code`.
    Rejected { code: u8 },
    /// A rewrite helper failed part-way: any bytes, but dropped.
    RewriteFailed,
}

fn name(r: Reason) -> &'static str {
    r.name()
}

/// The reasons a run counted, checked to be counted once each and known.
pub fn counted(delta: &[u64]) -> Result<Vec<Reason>, String> {
    let mut out = Vec::new();
    for (i, d) in delta.iter().enumerate() {
        if *d == 0 {
            continue;
        }
        let reason =
            Reason::from_index(i as u32).ok_or(format!("counter slot {i} (no reason) grew"))?;
        if *d != 1 {
            return Err(format!("{} counted {d} times for one packet", name(reason)));
        }
        out.push(reason);
    }
    Ok(out)
}

/// Maps the counted reasons and the verdict to an [`Outcome`], or says why they are not a
/// combination `program` can produce.
pub fn classify(
    program: Program,
    retval: i32,
    reasons: &[Reason],
    input: &[u8],
) -> Result<Outcome, String> {
    use Reason::*;
    let has = |r: Reason| reasons.contains(&r);
    let remapped = has(PortRemapped);
    let repaired = has(CtRepaired);
    let main: Vec<Reason> = reasons
        .iter()
        .copied()
        .filter(|r| !matches!(r, PortRemapped | CtRepaired))
        .collect();
    let ttl = input.get(22).copied().unwrap_or(0);
    let df = input.get(20).is_some_and(|b| b & 0x40 != 0);
    let verdict = |want: &[i32]| -> Result<(), String> {
        if want.contains(&retval) {
            Ok(())
        } else {
            Err(format!(
                "verdict {retval} with reasons {:?}",
                names(reasons)
            ))
        }
    };
    let ttl_expired = || -> Result<(), String> {
        if ttl <= 1 {
            Ok(())
        } else {
            Err(format!("drop_ttl_exceeded for a packet with TTL {ttl}"))
        }
    };
    // The side reasons only come beside the outcomes whose paths count them: a remap on
    // the way to a new flow (which may still fail or be rejected later), a repair on a
    // tracked forward packet's lookup.
    let remap_ok = main.iter().any(|r| {
        matches!(
            r,
            NewFlow
                | DropCtFull
                | DropCtInsert
                | DropSnatExhausted
                | DropTtlExceeded
                | DropRewrite
                | RejectFragNeeded
        )
    });
    let repair_ok = main.iter().any(|r| {
        matches!(
            r,
            EstablishedFlow | DropTtlExceeded | DropRewrite | RejectFragNeeded | PassToTc
        )
    });
    if (remapped && !remap_ok) || (repaired && !repair_ok) {
        return Err(format!(
            "side reasons {:?} without an outcome they accompany",
            names(reasons)
        ));
    }
    let mut sorted = main.clone();
    sorted.sort_by_key(|r| *r as u32);
    let translated = |r: Reason| matches!(r, NewFlow | EstablishedFlow | ReplyTranslated);
    let lookup_drop = |r: Reason| {
        matches!(
            r,
            DropSourceRange
                | DropNoLocalBackend
                | DropNoBackendSlot
                | DropBackendMissing
                | DropCtFull
                | DropCtInsert
                | DropSnatExhausted
        )
    };
    match program {
        Program::Xdp => match sorted.as_slice() {
            [] => verdict(&[XDP_PASS]).map(|_| Outcome::Untouched),
            [PassMalformed | PassFragment | PassCsumPartial | PassToTc] => {
                verdict(&[XDP_PASS]).map(|_| Outcome::Untouched)
            }
            [r, XdpTx] if translated(*r) => verdict(&[XDP_TX]).map(|_| Outcome::Translated {
                reason: *r,
                routed: true,
                maybe_routed: false,
            }),
            [DropTtlExceeded] => verdict(&[XDP_DROP])
                .and_then(|_| ttl_expired())
                .map(|_| Outcome::Untouched),
            [DropRewrite] => verdict(&[XDP_DROP]).map(|_| Outcome::RewriteFailed),
            [r] if lookup_drop(*r) => verdict(&[XDP_DROP]).map(|_| Outcome::Untouched),
            _ => Err(format!(
                "reasons {:?} are no path of lb_xdp",
                names(reasons)
            )),
        },
        Program::FromPod | Program::FromNet => match sorted.as_slice() {
            [] | [PassMalformed | PassFragment | PassFragUnknown] => {
                verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::Untouched)
            }
            [RejectNoBackend] => {
                verdict(&[TC_ACT_REDIRECT, TC_ACT_UNSPEC]).map(|_| Outcome::Rejected { code: 3 })
            }
            [RejectFragNeeded] => {
                if !df {
                    return Err("reject_frag_needed for a packet without DF".into());
                }
                verdict(&[TC_ACT_REDIRECT, TC_ACT_UNSPEC]).map(|_| Outcome::Rejected { code: 4 })
            }
            [DropNoBackend] => verdict(&[TC_ACT_SHOT]).map(|_| Outcome::Untouched),
            [r] if lookup_drop(*r) => verdict(&[TC_ACT_SHOT]).map(|_| Outcome::Untouched),
            [DropTtlExceeded] => verdict(&[TC_ACT_SHOT])
                .and_then(|_| ttl_expired())
                .map(|_| Outcome::Untouched),
            [DropRewrite] | [IcmpErrorTranslated, DropRewrite] => {
                verdict(&[TC_ACT_SHOT]).map(|_| Outcome::RewriteFailed)
            }
            [r] if translated(*r) => {
                verdict(&[TC_ACT_REDIRECT, TC_ACT_UNSPEC]).map(|_| Outcome::Translated {
                    reason: *r,
                    routed: retval == TC_ACT_REDIRECT,
                    maybe_routed: false,
                })
            }
            [r, PassNoRoute] if translated(*r) => {
                verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::Translated {
                    reason: *r,
                    routed: false,
                    maybe_routed: true,
                })
            }
            [r, PassMtu] if translated(*r) => {
                if df {
                    return Err("pass_mtu for a packet with DF (frag-needed was due)".into());
                }
                verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::Translated {
                    reason: *r,
                    routed: false,
                    maybe_routed: false,
                })
            }
            [IcmpErrorTranslated] => {
                verdict(&[TC_ACT_REDIRECT, TC_ACT_UNSPEC]).map(|_| Outcome::IcmpTranslated {
                    routed: retval == TC_ACT_REDIRECT,
                    maybe_routed: false,
                })
            }
            [IcmpErrorTranslated, PassNoRoute] => {
                verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::IcmpTranslated {
                    routed: false,
                    maybe_routed: true,
                })
            }
            [IcmpErrorTranslated, DropTtlExceeded] => verdict(&[TC_ACT_SHOT])
                .and_then(|_| ttl_expired())
                .map(|_| Outcome::IcmpTranslated {
                    routed: false,
                    maybe_routed: false,
                }),
            _ => Err(format!(
                "reasons {:?} are no path of {}",
                names(reasons),
                program.name()
            )),
        },
        Program::ToPod | Program::ToNet => {
            if remapped || repaired {
                return Err(format!("{} counted {:?}", program.name(), names(reasons)));
            }
            let outcome = match sorted.as_slice() {
                [] | [PassMalformed | PassFragment | PassFragUnknown] => {
                    verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::Untouched)
                }
                [ReplyTranslated] => verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::Translated {
                    reason: ReplyTranslated,
                    routed: false,
                    maybe_routed: false,
                }),
                [IcmpErrorTranslated] => {
                    verdict(&[TC_ACT_UNSPEC]).map(|_| Outcome::IcmpTranslated {
                        routed: false,
                        maybe_routed: false,
                    })
                }
                [DropRewrite] => verdict(&[TC_ACT_SHOT]).map(|_| Outcome::RewriteFailed),
                _ => Err(format!(
                    "reasons {:?} are no path of {}",
                    names(reasons),
                    program.name()
                )),
            }?;
            Ok(outcome)
        }
        Program::FloorTc | Program::FloorXdp => Err("the floor programs are not fuzzed".into()),
    }
}

pub fn names(reasons: &[Reason]) -> Vec<&'static str> {
    reasons.iter().map(|r| r.name()).collect()
}

/// The one's-complement residual of `data` (folded sum; 0xffff or 0 for a valid
/// checksum), compared modulo 0xffff: one's complement has two zeroes.
fn residual(data: &[u8], initial: u32) -> u16 {
    checksum::fold(checksum::sum_be(data, initial)) % 0xffff
}

/// The IPv4 header's residual over the header length its IHL gives, if all there.
fn ip_residual(b: &[u8], l3: usize) -> Option<u16> {
    let ihl = (*b.get(l3)? & 0x0f) as usize * 4;
    (ihl >= 20 && l3 + ihl <= b.len()).then(|| residual(&b[l3..l3 + ihl], 0))
}

/// The L4 segment's residual with its pseudo-header, over the bytes from `l4` to the end
/// the IP length gives (or the buffer's end). The region is the same before and after, so
/// any constant length in the pseudo-header would do; the IP length is used.
///
/// An IP length that cuts the L4 header short (malformed: the stack drops such a packet
/// after the datapath) would leave rewritten ports or the checksum field outside the
/// region, so the region always spans the L4 header: every byte NAT writes is inside it.
fn l4_residual(b: &[u8], l3: usize, l4: usize, proto: u8) -> Option<u16> {
    let tot = u16::from_be_bytes([b[l3 + 2], b[l3 + 3]]) as usize;
    let header = if proto == proto::TCP { 20 } else { 8 };
    let end = if tot == 0 {
        b.len()
    } else {
        (l3 + tot).min(b.len())
    };
    let end = end.max((l4 + header).min(b.len()));
    if end < l4 + 8 {
        return None;
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&b[l3 + 12..l3 + 20]);
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&((end - l4) as u16).to_be_bytes());
    Some(residual(&b[l4..end], checksum::sum_be(&pseudo, 0)))
}

/// Checks the bytes the program returned against what the outcome allows.
pub fn check_bytes(
    outcome: Outcome,
    program: Program,
    input: &[u8],
    run: &Run,
    node: &Node,
) -> Result<(), String> {
    let out = &run.data;
    match outcome {
        Outcome::Untouched => {
            if out != input {
                return Err(format!(
                    "an untranslated packet changed ({})",
                    first_diff(input, out)
                ));
            }
            Ok(())
        }
        Outcome::RewriteFailed => Ok(()),
        Outcome::Rejected { code } => check_reject(code, input, out, node),
        Outcome::Translated {
            routed,
            maybe_routed,
            reason,
        } => {
            let (l3, l4) = in_place(input, out)?;
            let proto = input[l3 + 9];
            let later = u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff != 0;
            let mut allowed = vec![l3 + 8..l3 + 9, l3 + 10..l3 + 20];
            if !later {
                allowed.push(l4..l4 + 4);
                allowed.push(match proto {
                    proto::TCP => l4 + 16..l4 + 18,
                    _ => l4 + 6..l4 + 8,
                });
            }
            rewritten_only(input, out, allowed, routed, maybe_routed)?;
            if !later {
                if proto == proto::UDP && input[l4 + 6..l4 + 8] == [0, 0] {
                    if out[l4 + 6..l4 + 8] != [0, 0] {
                        return Err("a UDP packet without checksum got one".into());
                    }
                } else {
                    same_residual(
                        "L4",
                        l4_residual(input, l3, l4, proto),
                        l4_residual(out, l3, l4, proto),
                    )?;
                }
                // A complete, valid packet must leave valid (etherparse's own check).
                if packet::verify(input).is_ok() {
                    packet::verify(out).map_err(|e| format!("translated packet invalid: {e}"))?;
                }
            }
            let _ = (program, reason);
            Ok(())
        }
        Outcome::IcmpTranslated {
            routed,
            maybe_routed,
        } => {
            let (l3, l4) = in_place(input, out)?;
            let allowed = vec![
                l3 + 8..l3 + 9,
                l3 + 10..l3 + 20,
                l4 + 2..l4 + 4,
                l4 + 8..l4 + 32,
            ];
            rewritten_only(input, out, allowed, routed, maybe_routed)?;
            let tot = u16::from_be_bytes([input[l3 + 2], input[l3 + 3]]) as usize;
            let end = (l3 + tot).min(input.len()).max((l4 + 32).min(input.len()));
            same_residual(
                "ICMP",
                Some(residual(&input[l4..end], 0)),
                Some(residual(&out[l4..end], 0)),
            )?;
            same_residual(
                "quoted IPv4 header",
                ip_residual(input, l4 + 8),
                ip_residual(out, l4 + 8),
            )
        }
    }
}

/// A packet rewritten in place keeps its length; its L3 and L4 offsets.
fn in_place(input: &[u8], out: &[u8]) -> Result<(usize, usize), String> {
    if out.len() != input.len() {
        return Err(format!("length {} became {}", input.len(), out.len()));
    }
    let l3 = 14;
    Ok((l3, l3 + (input[l3] & 0x0f) as usize * 4))
}

/// Only the `allowed` bytes changed (and the MACs of a forwarded packet), the TTL went down
/// by one exactly when the datapath forwarded the packet, and the IPv4 header checksum is
/// as right as it was.
fn rewritten_only(
    input: &[u8],
    out: &[u8],
    mut allowed: Vec<std::ops::Range<usize>>,
    routed: bool,
    maybe_routed: bool,
) -> Result<(), String> {
    if routed || maybe_routed {
        allowed.push(0..12);
    }
    only_changed(input, out, &allowed)?;
    check_ttl(input[22], out[22], routed, maybe_routed)?;
    same_residual("IPv4 header", ip_residual(input, 14), ip_residual(out, 14))
}

fn check_ttl(before: u8, after: u8, routed: bool, maybe_routed: bool) -> Result<(), String> {
    let ok = if routed {
        after == before.wrapping_sub(1) && before > 1
    } else if maybe_routed {
        after == before || (after == before.wrapping_sub(1) && before > 1)
    } else {
        after == before
    };
    if ok {
        Ok(())
    } else {
        Err(format!("TTL {before} became {after} (routed: {routed})"))
    }
}

fn same_residual(what: &str, before: Option<u16>, after: Option<u16>) -> Result<(), String> {
    if before != after {
        return Err(format!(
            "{what} checksum residual changed: {before:?} -> {after:?} (0 = valid)"
        ));
    }
    Ok(())
}

fn only_changed(
    input: &[u8],
    out: &[u8],
    allowed: &[std::ops::Range<usize>],
) -> Result<(), String> {
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !allowed.iter().any(|r| r.contains(&i)) {
            return Err(format!(
                "byte {i} changed from {a:#04x} to {b:#04x} outside the rewritten fields"
            ));
        }
    }
    Ok(())
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("length {} -> {}", a.len(), b.len());
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
    format!("byte {i}: {:#04x} -> {:#04x}", a[i], b[i])
}

/// A reject is the datapath's own ICMP destination-unreachable back to the sender, quoting
/// the packet's IP header and first 8 bytes.
fn check_reject(code: u8, input: &[u8], out: &[u8], node: &Node) -> Result<(), String> {
    if out.len() != 14 + 56 {
        return Err(format!("a reject of {} bytes", out.len()));
    }
    if input[14] != 0x45 || !matches!(input[23], proto::TCP | proto::UDP) {
        return Err("rejected a packet with IP options or not TCP/UDP".into());
    }
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..14] != [8, 0] {
        return Err("the reject's Ethernet header does not turn the packet around".into());
    }
    let ip = &out[14..34];
    if ip[0] != 0x45 || u16::from_be_bytes([ip[2], ip[3]]) != 56 || ip[9] != proto::ICMP {
        return Err("the reject's IPv4 header is wrong".into());
    }
    if checksum::checksum(ip) != 0 {
        return Err("the reject's IPv4 checksum is wrong".into());
    }
    let from = if code == 3 {
        &input[30..34]
    } else {
        &node.config.node_addr.to_ne_bytes()[..]
    };
    if ip[12..16] != *from || ip[16..20] != input[26..30] {
        return Err("the reject's addresses are wrong".into());
    }
    let icmp = &out[34..];
    if icmp[0] != 3 || icmp[1] != code || checksum::checksum(icmp) != 0 {
        return Err(format!(
            "the reject is ICMP {}/{} or its checksum is wrong",
            icmp[0], icmp[1]
        ));
    }
    if icmp[8..] != input[14..42] {
        return Err("the reject does not quote the packet".into());
    }
    if code == 4 && u16::from_be_bytes([icmp[6], icmp[7]]) == 0 {
        return Err("frag-needed without an MTU".into());
    }
    Ok(())
}

/// A translated packet's new tuple is what conntrack says: a forward packet carries its
/// flow's backend (and source translation), a new flow's reply entry exists and names it,
/// and a reply carries the service address back.
pub fn check_mapping(
    outcome: Outcome,
    input: &[u8],
    run: &Run,
    dp: &mut Datapath,
    node: &Node,
) -> Result<(), String> {
    let Outcome::Translated { reason, .. } = outcome else {
        return Ok(());
    };
    let l3 = 14;
    let l4 = l3 + (input[l3] & 0x0f) as usize * 4;
    if u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff != 0 {
        // A later fragment: its ports are its first fragment's, which it does not carry.
        return Ok(());
    }
    let word = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let half = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let out = &run.data;
    let (saddr, daddr, sport, dport) = (
        word(input, l3 + 12),
        word(input, l3 + 16),
        half(input, l4),
        half(input, l4 + 2),
    );
    let (o_saddr, o_daddr, o_sport, o_dport) = (
        word(out, l3 + 12),
        word(out, l3 + 16),
        half(out, l4),
        half(out, l4 + 2),
    );
    let proto = input[l3 + 9];
    match reason {
        Reason::NewFlow | Reason::EstablishedFlow => {
            let key = CtKey::new(saddr, daddr, sport, dport, proto, dir::FORWARD);
            let fwd = dp
                .ct_get(&key)
                .ok_or("translated as a flow without a forward entry")?;
            let (want_s, want_sp) = if fwd.flags & ct_flags::SNAT != 0 {
                (fwd.snat_addr, fwd.snat_port)
            } else {
                (saddr, sport)
            };
            if (o_saddr, o_sport, o_daddr, o_dport) != (want_s, want_sp, fwd.nat_addr, fwd.nat_port)
            {
                return Err("the packet's new tuple is not its forward entry's".into());
            }
            if reason == Reason::NewFlow {
                let rk = key.reply_of_forward(&fwd);
                let rev = dp.ct_get(&rk).ok_or("a new flow without its reply entry")?;
                if rk.forward_of_reply(&rev) != key {
                    return Err("a new flow's reply entry names another flow".into());
                }
                let svc = node
                    .service(fwd.service_id)
                    .ok_or(format!("a new flow of unknown service {}", fwd.service_id))?;
                if (svc.key.addr, svc.key.port, svc.key.proto) != (daddr, dport, proto) {
                    return Err(format!(
                        "a new flow to service {} that is not this frontend's",
                        fwd.service_id
                    ));
                }
            }
        }
        Reason::ReplyTranslated => {
            let key = CtKey::new(saddr, daddr, sport, dport, proto, dir::REPLY);
            let rev = dp
                .ct_get(&key)
                .ok_or("translated as a reply without a reply entry")?;
            let (want_d, want_dp) = if rev.flags & ct_flags::SNAT != 0 {
                (rev.snat_addr, rev.snat_port)
            } else {
                (daddr, dport)
            };
            if (o_saddr, o_sport, o_daddr, o_dport) != (rev.nat_addr, rev.nat_port, want_d, want_dp)
            {
                return Err("the reply's new tuple is not its reply entry's".into());
            }
        }
        _ => {}
    }
    Ok(())
}
