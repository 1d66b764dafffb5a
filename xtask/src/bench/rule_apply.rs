//! Programming, kube-proxy's side: how long `iptables-restore` and `nft -f` take to program
//! N services × E endpoints from empty, and to apply one endpoint change the way kube-proxy's
//! partial sync does, in a throwaway network namespace `lbk-rules-<pid>` (never the host's).
//!
//! The rules are those of the generators in [`super::kube_proxy`]: the same chains, maps and
//! order kube-proxy writes, so the tools do the same work. Times are wall clock from spawn to
//! exit of `ip netns exec <ns> <tool>`, as kube-proxy pays a process start too; the extra
//! cost of `ip netns exec` itself is measured and put in a note.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use super::{
    kube_proxy::{
        apply::{self, NetnsName},
        iptables, nftables, synthetic_services, BenchService, ProxyConfig,
    },
    results::{Figure, Mode, Results, Settings},
};

/// Full programs from empty per size and tool (the median is reported).
fn full_repeats(settings: &Settings) -> usize {
    if settings.quick {
        3
    } else {
        5
    }
}

/// Single endpoint changes per size and tool (p50/p99 over them).
fn changes(settings: &Settings) -> usize {
    if settings.quick {
        10
    } else {
        100
    }
}

pub fn run(settings: &Settings, results: &mut Results, status: &mut dyn FnMut(&str)) -> Result<()> {
    let tools: Vec<Mode> = [Mode::Iptables, Mode::Nftables]
        .into_iter()
        .filter(|m| settings.has_mode(*m))
        .collect();
    if tools.is_empty() {
        return Ok(());
    }
    let ns = Throwaway::create(&format!("lbk-rules-{}", std::process::id()))?;
    if tools.contains(&Mode::Iptables) {
        results.note(format!(
            "programming (iptables): {}",
            apply::iptables_tool().context("iptables-restore --version")?
        ));
    }
    results.note(format!(
        "programming (iptables, nftables): times include `ip netns exec` (spawn to exit), \
         whose own cost here is {:.1} ms (p50 of `ip netns exec <ns> true`)",
        netns_exec_overhead(&ns.0)?.as_secs_f64() * 1e3
    ));
    let cfg = ProxyConfig::default();
    for size in settings.sizes() {
        let tools: Vec<Mode> = tools
            .iter()
            .copied()
            .filter(|&m| settings.runs(m, size))
            .collect();
        if tools.is_empty() {
            results.note(format!(
                "programming: iptables and nftables not loaded at {}x{}: kube-proxy's ruleset \
                 would have {} chains, above --baseline-max-chains {}",
                size.0,
                size.1,
                super::results::baseline_chains(size),
                settings.baseline_max_chains
            ));
            continue;
        }
        let services = synthetic_services(size.0, size.1);
        for &mode in &tools {
            status(&format!(
                "programming: {} {}x{} from empty",
                mode.name(),
                size.0,
                size.1
            ));
            let budget = Budget::new(settings.quick, 1);
            // Loads from empty, each after clearing the last; the last one stays for the
            // changes.
            let mut full = Vec::new();
            loop {
                full.push(load(&ns.0, mode, &services, &cfg)?);
                if !budget.more(full.len(), full_repeats(settings)) {
                    break;
                }
                clear(&ns.0, mode)?;
            }
            push_some(
                results,
                Figure::durations("program_full", mode.name(), size, "ms", &full),
            );
            status(&format!(
                "programming: {} {}x{} endpoint changes",
                mode.name(),
                size.0,
                size.1
            ));
            let took = endpoint_changes(&ns.0, mode, &services, &cfg, changes(settings))?;
            clear(&ns.0, mode)?;
            if took.len() < changes(settings) {
                results.note(format!(
                    "programming: {} {}x{}: {} endpoint changes in the time budget",
                    mode.name(),
                    size.0,
                    size.1,
                    took.len()
                ));
            }
            push_some(
                results,
                Figure::durations("endpoint_change", mode.name(), size, "ms", &took),
            );
        }
    }
    Ok(())
}

/// How long the repeats of one measurement may take: at least `min` samples, and more (up
/// to the number asked for) only while the budget lasts. At 10k services one load takes
/// minutes.
struct Budget {
    started: Instant,
    limit: Duration,
    min: usize,
}

impl Budget {
    fn new(quick: bool, min: usize) -> Budget {
        Budget {
            started: Instant::now(),
            limit: Duration::from_secs(if quick { 20 } else { 60 }),
            min,
        }
    }

    /// Whether to take another sample after `taken` of `wanted`.
    fn more(&self, taken: usize, wanted: usize) -> bool {
        taken < wanted && (taken < self.min || self.started.elapsed() < self.limit)
    }
}

/// Loads the full ruleset into an empty namespace, timed.
fn load(
    ns: &NetnsName,
    mode: Mode,
    services: &[BenchService],
    cfg: &ProxyConfig,
) -> Result<Duration> {
    match mode {
        Mode::Iptables => apply::apply_iptables(ns, services, cfg),
        Mode::Nftables => apply::apply_nftables(ns, &nftables::ruleset(services, cfg)),
        other => unreachable!("{other:?} has no ruleset"),
    }
}

/// Takes a loaded ruleset out at once (the throwaway namespace holds nothing else).
fn clear(ns: &NetnsName, mode: Mode) -> Result<()> {
    match mode {
        Mode::Iptables => apply::clear_iptables(ns),
        Mode::Nftables => apply::remove_nftables(ns).map(drop),
        other => unreachable!("{other:?} has no ruleset"),
    }
}

/// With every service loaded, applies up to `count` single endpoint changes as kube-proxy's
/// partial sync does, each timed, within a [`Budget`] (at least 5).
fn endpoint_changes(
    ns: &NetnsName,
    mode: Mode,
    services: &[BenchService],
    cfg: &ProxyConfig,
    count: usize,
) -> Result<Vec<Duration>> {
    let budget = Budget::new(false, 5);
    let mut current = services.to_vec();
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        if !budget.more(i, count) {
            break;
        }
        let next = endpoint_change(&current, i);
        took.push(match mode {
            Mode::Iptables => {
                apply::iptables_restore(ns, &iptables::partial_restore_input(&current, &next, cfg))?
            }
            _ => {
                let t =
                    apply::apply_nftables(ns, &nftables::partial_ruleset(&current, &next, cfg))?;
                // kube-proxy deletes flushed chains in a later transaction (a second on at
                // least), off the change's path: not timed.
                let stale = nftables::stale_chain_deletes(&current, &next, cfg);
                if !stale.is_empty() {
                    apply::apply_nftables(ns, &stale)?;
                }
                t
            }
        });
        current = next;
    }
    Ok(took)
}

/// The `i`-th change: even changes take the last endpoint out of one service (its pod went
/// unready), odd ones put it back; successive pairs walk over the services so each change
/// hits chains of a different service.
fn endpoint_change(current: &[BenchService], i: usize) -> Vec<BenchService> {
    let mut next = current.to_vec();
    // A large odd stride spreads the touched services over the whole set.
    let svc = &mut next[(i / 2 * 7919) % current.len()];
    if i.is_multiple_of(2) {
        svc.endpoints.pop();
    } else {
        // Put back the endpoint the previous change removed: the one after the last left.
        let ep = super::kube_proxy::BenchEndpoint {
            ip: removed_endpoint_ip(svc),
            port: 8080,
            local: false,
        };
        svc.endpoints.push(ep);
    }
    next
}

/// The address [`endpoint_change`] took out of `svc`: [`synthetic_services`] numbers
/// endpoints consecutively, so it follows the last one left — or, if none is left, it is
/// the service's own first address, recovered from its name.
fn removed_endpoint_ip(svc: &BenchService) -> std::net::Ipv4Addr {
    match svc.endpoints.last() {
        Some(ep) => std::net::Ipv4Addr::from(u32::from(ep.ip) + 1),
        None => {
            let index: u32 = svc
                .name
                .strip_prefix("svc-")
                .and_then(|n| n.parse().ok())
                .expect("synthetic service name");
            // Service i's first endpoint is 10.244.0.0 + i·E + 1; with E = 1 (the only
            // case that empties a service) that is i + 1.
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + index + 1)
        }
    }
}

/// Adds a summary if there were samples.
pub(crate) fn push_some(results: &mut Results, figure: Option<Figure>) {
    if let Some(figure) = figure {
        results.push(figure);
    }
}

/// The p50 cost of `ip netns exec <ns> true`: what every timed apply pays on top of the
/// tool.
fn netns_exec_overhead(ns: &NetnsName) -> Result<Duration> {
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", ns.as_str(), "true"])
            .status()
            .context("ip netns exec")?;
        ensure!(status.success(), "ip netns exec {ns} true failed");
        samples.push(t.elapsed());
    }
    Ok(super::stats::percentile(&samples, 50.0).expect("samples"))
}

/// A network namespace of our own, deleted when dropped (also on error).
pub(crate) struct Throwaway(pub NetnsName);

impl Throwaway {
    pub fn create(name: &str) -> Result<Throwaway> {
        let name = NetnsName::new(name)?;
        lb_lab::netns::add(name.as_str()).with_context(|| format!("ip netns add {name}"))?;
        Ok(Throwaway(name))
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        if let Err(e) = lb_lab::netns::delete(self.0.as_str()) {
            eprintln!("could not delete network namespace {}: {e}", self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_take_one_endpoint_out_and_put_the_same_one_back() {
        let services = synthetic_services(50, 3);
        let out = endpoint_change(&services, 0);
        let changed: Vec<usize> = (0..50).filter(|&i| out[i] != services[i]).collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(out[changed[0]].endpoints.len(), 2);
        let back = endpoint_change(&out, 1);
        assert_eq!(back, services, "the odd change restores the state before");
        // The next pair touches another service.
        let later = endpoint_change(&back, 2);
        let changed_later: Vec<usize> = (0..50).filter(|&i| later[i] != back[i]).collect();
        assert_eq!(changed_later.len(), 1);
        assert_ne!(changed_later, changed);
    }

    #[test]
    fn a_single_endpoint_service_is_emptied_and_refilled() {
        let services = synthetic_services(10, 1);
        for pair in 0..10 {
            let out = endpoint_change(&services, pair * 2);
            assert_eq!(endpoint_change(&out, pair * 2 + 1), services, "pair {pair}");
        }
    }

    #[test]
    fn each_change_yields_a_partial_sync_that_rewrites_one_service() {
        let cfg = ProxyConfig::default();
        let services = synthetic_services(20, 2);
        let next = endpoint_change(&services, 0);
        let input = iptables::partial_restore_input(&services, &next, &cfg);
        assert!(input.contains("COMMIT"));
        let transaction = nftables::partial_ruleset(&services, &next, &cfg);
        assert!(!transaction.is_empty());
    }
}
