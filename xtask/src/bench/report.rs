//! The report under `target/bench/`: `report.md` (machine, settings, per-metric tables of
//! medians with ratios against iptables and direct, the targets with MET / MISSED /
//! NOT MEASURED, notes), PNG plots, and the raw `bench.json`. Built from [`Results`] alone.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;

use super::{
    machine::Machine,
    plots,
    results::{Figure, Mode, Results, Settings},
};

/// Metrics the report knows, in report order: (metric, title, higher is better).
pub const METRICS: [(&str, &str, bool); 17] = [
    ("connect_latency", "First-packet TCP connect latency", false),
    ("conn_rate", "New connections per second", true),
    (
        "masq_conn_rate",
        "New connections per second from the host, masqueraded NodePort",
        true,
    ),
    (
        "masq_failures",
        "Failed connections from the host, masqueraded NodePort",
        false,
    ),
    ("throughput", "Established throughput (iperf3)", true),
    ("rr_latency", "Request/response latency, established", false),
    ("cpu_per_mpkt", "Kernel CPU per million packets", false),
    (
        "sustained_conn_rate",
        "Sustained connections per second, masqueraded NodePort",
        true,
    ),
    (
        "sustained_failures",
        "Failed connections in the sustained run",
        false,
    ),
    ("program_full", "Program N services from empty", false),
    (
        "endpoint_change",
        "Endpoint change until it takes effect",
        false,
    ),
    ("ns_per_packet", "Datapath cost per packet", false),
    ("agent_rss", "Agent RSS", false),
    ("map_memory", "BPF map memory", false),
    ("load_100k", "100k services load", false),
    ("gc_pass", "One conntrack GC pass", false),
    ("gc_per_entry", "Conntrack GC pass per entry", false),
];

/// Writes everything; the files written.
pub fn write(
    dir: &Path,
    settings: &Settings,
    results: &Results,
    elapsed: Duration,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let machine = Machine::describe();
    let mut written = Vec::new();
    let json = dir.join("bench.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine,
            "settings": settings,
            "elapsed_s": elapsed.as_secs_f64(),
            "results": results,
        }))?,
    )?;
    written.push(json);
    let mut notes = results.notes.clone();
    let pngs = match plots::draw(dir, results) {
        Ok(pngs) => pngs,
        Err(e) => {
            notes.push(format!("plots could not be drawn: {e:#}"));
            Vec::new()
        }
    };
    let md = dir.join("report.md");
    std::fs::write(
        &md,
        markdown(&machine, settings, results, &notes, &pngs, elapsed),
    )?;
    written.push(md);
    written.extend(pngs);
    Ok(written)
}

fn markdown(
    machine: &Machine,
    settings: &Settings,
    results: &Results,
    notes: &[String],
    pngs: &[PathBuf],
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# lb benchmark report\n");
    let _ = writeln!(
        s,
        "Every ratio compares figures measured in this one run, on this machine.\n"
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date | {} |", machine.date);
    let _ = writeln!(s, "| CPU | {} ({} cores) |", machine.cpu, machine.cores);
    let _ = writeln!(s, "| kernel | {} |", machine.kernel);
    let _ = writeln!(s, "| iptables | {} |", machine.iptables);
    let _ = writeln!(s, "| nft | {} |", machine.nft);
    let modes: Vec<&str> = settings.modes.iter().map(|m| m.name()).collect();
    let _ = writeln!(s, "| modes | {} |", modes.join(", "));
    let _ = writeln!(s, "| services (N) | {} |", join(&settings.services));
    let _ = writeln!(
        s,
        "| endpoints per service | {} |",
        join(&settings.endpoints)
    );
    let _ = writeln!(
        s,
        "| quick | {} |\n| run time | {:.0} s |\n",
        settings.quick,
        elapsed.as_secs_f64()
    );

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
    for t in targets(results) {
        let _ = writeln!(s, "| {} | {} | {} |", t.what, t.measured, t.verdict.word());
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Summary (p50; ratios are ebpf ÷ the other mode)\n");
    summary_table(&mut s, settings, results);
    under_load(&mut s, settings, results);

    let _ = writeln!(s, "## Figures\n");
    for (metric, title, higher) in METRICS {
        let figs: Vec<&Figure> = results
            .figures
            .iter()
            .filter(|f| f.metric == metric)
            .collect();
        if figs.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "### {title} (`{metric}`, {}, {} is better)\n",
            figs[0].unit,
            if higher { "higher" } else { "lower" }
        );
        let _ = writeln!(
            s,
            "| N × E | subject | samples | p01 | p50 | p99 |\n|---|---|---|---|---|---|"
        );
        for f in figs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                size_cell(f),
                f.subject,
                f.samples,
                opt(f.p01),
                num(f.p50),
                opt(f.p99)
            );
        }
        let _ = writeln!(s);
    }
    if !pngs.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for p in pngs {
            if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                let _ = writeln!(s, "![{name}]({name})\n");
            }
        }
    }
    let _ = writeln!(s, "## Notes\n");
    let _ = writeln!(
        s,
        "- Connect latency is the time `connect()` takes from the client pod on worker2 to a \
         random service (or, for `direct`, a random backend), 2/3 of backends on other nodes. \
         CPU is the machine's system+irq+softirq time (from /proc/stat) while a paced UDP \
         stream and its echoes cross the datapath, per million packets both ways; other work \
         on a shared machine adds to it. `program_full` (ebpf) is an agent start with no \
         pinned maps or links until the client node's maps hold every service; \
         `endpoint_change` (ebpf) is from the API write of a pod's readiness until a TCP \
         connect through its service succeeds from the client pod. `masq_conn_rate` and \
         `sustained_conn_rate` are exchanges (connect, request, answer, close) a second from \
         the host (lbk-host, 172.18.0.1) to the NodePort of an externalTrafficPolicy=Cluster \
         service on worker2, whose backends are on control-plane and worker: each one is \
         masqueraded by worker2 and forwarded; `*_failures` count every exchange that failed \
         (by cause in the notes below). A run's note counts the exchanges that took 500 ms or \
         more (a packet waited for a retransmission timeout) and the kernel counters that moved \
         on the path (TcpExt/Tcp and nf_conntrack stats per namespace; the datapath's drops in \
         ebpf mode): host `TCPSynRetrans` with as many `OutRsts` is Linux answering an ACK that \
         does not acknowledge its SYN (such as a TIME_WAIT socket's on a reused tuple) with a \
         reset, then sending the SYN again. `gc_pass` is one pass of the agent's conntrack GC \
         (`lb_agent::sync::conntrack_gc::run::pass`) over a filled table: wall time and the \
         thread's CPU time."
    );
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// One row per metric and size: p50 of every mode and ebpf's ratios.
fn summary_table(s: &mut String, settings: &Settings, results: &Results) {
    let modes = &settings.modes;
    let _ = write!(s, "| metric | N × E |");
    for m in modes {
        let _ = write!(s, " {} |", m.name());
    }
    let _ = writeln!(s, " ebpf/iptables | ebpf/nftables | ebpf/direct |");
    let _ = writeln!(s, "|{}", "---|".repeat(modes.len() + 5));
    for (metric, _, _) in METRICS {
        let mut sizes: Vec<(usize, usize)> = results
            .figures
            .iter()
            .filter(|f| f.metric == metric && Mode::ALL.iter().any(|m| m.name() == f.subject))
            .map(|f| (f.services, f.endpoints))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            let unit = results
                .figures
                .iter()
                .find(|f| f.metric == metric)
                .map_or("", |f| f.unit.as_str());
            let _ = write!(s, "| {metric} ({unit}) | {} × {} |", size.0, size.1);
            for m in modes {
                let v = results.find(metric, m.name(), size).map(|f| f.p50);
                let _ = write!(s, " {} |", opt(v));
            }
            for other in [Mode::Iptables, Mode::Nftables, Mode::Direct] {
                let _ = write!(s, " {} |", ratio_cell(results, metric, size, other));
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(s);
}

/// The masqueraded NodePort and the conntrack GC: the sustained run per mode (median and
/// range over rounds, failures, ratio to iptables), failures of the conn/s runs, and the GC
/// pass.
fn under_load(s: &mut String, settings: &Settings, results: &Results) {
    let sustained: Vec<&Figure> = results
        .figures
        .iter()
        .filter(|f| f.metric == "sustained_conn_rate")
        .collect();
    let masq_failures: Vec<&Figure> = results
        .figures
        .iter()
        .filter(|f| f.metric == "masq_failures")
        .collect();
    let gc = results.find("gc_pass", "wall", (0, 0));
    if sustained.is_empty() && masq_failures.is_empty() && gc.is_none() {
        return;
    }
    let _ = writeln!(s, "## Conntrack and NAT under load\n");
    if let Some(first) = sustained.first() {
        let size = (first.services, first.endpoints);
        let _ = writeln!(
            s,
            "Sustained: {:.0} s per mode and round from the host (lbk-host) through a \
             masqueraded NodePort (externalTrafficPolicy=Cluster, entered on a node without a \
             backend) at {} × {}; conn/s is the median over rounds [lowest – highest].\n",
            super::masq::sustained_for(settings.quick).as_secs_f64(),
            size.0,
            size.1
        );
        let _ = writeln!(
            s,
            "| mode | rounds | conn/s | failures | ÷ iptables |\n|---|---|---|---|---|"
        );
        let iptables = results.find("sustained_conn_rate", "iptables", size);
        for f in &sustained {
            let failures = results
                .find("sustained_failures", &f.subject, size)
                .map_or_else(|| "–".into(), |x| format!("{:.0}", x.p50));
            let range = match (f.p01, f.p99) {
                (Some(lo), Some(hi)) => format!(" [{} – {}]", num(lo), num(hi)),
                _ => String::new(),
            };
            let ratio = iptables
                .filter(|i| i.p50 > 0.0)
                .map_or_else(|| "–".into(), |i| format!("{:.2}", f.p50 / i.p50));
            let _ = writeln!(
                s,
                "| {} | {} | {}{range} | {failures} | {ratio} |",
                f.subject,
                f.samples,
                num(f.p50)
            );
        }
        let _ = writeln!(s);
    }
    if !masq_failures.is_empty() {
        let _ = writeln!(
            s,
            "Failed connections of the masqueraded NodePort conn/s runs (goal 0): {}.\n",
            masq_failures
                .iter()
                .map(|f| format!(
                    "{} at {} × {}: {:.0}",
                    f.subject, f.services, f.endpoints, f.p50
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(wall) = gc {
        let cpu = results.find("gc_pass", "cpu", (0, 0));
        let per = results.find("gc_per_entry", "wall", (0, 0));
        let _ = writeln!(
            s,
            "One conntrack GC pass over {} entries: wall p50 {} ms [{} – {}], CPU p50 {} ms, \
             {} ns per entry ({} passes).\n",
            super::gc::entries(settings.quick),
            num(wall.p50),
            opt(wall.p01),
            opt(wall.p99),
            cpu.map_or_else(|| "–".into(), |c| num(c.p50)),
            per.map_or_else(|| "–".into(), |p| num(p.p50)),
            wall.samples
        );
    }
}

/// A figure's size for the tables: N × E, or – for figures of no size.
fn size_cell(f: &Figure) -> String {
    if (f.services, f.endpoints) == (0, 0) {
        "–".into()
    } else {
        format!("{} × {}", f.services, f.endpoints)
    }
}

fn ratio_cell(results: &Results, metric: &str, size: (usize, usize), other: Mode) -> String {
    match (
        results.find(metric, "ebpf", size),
        results.find(metric, other.name(), size),
    ) {
        (Some(a), Some(b)) if b.p50 > 0.0 => format!("{:.2}", a.p50 / b.p50),
        _ => "–".into(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Met => "**MET**",
            Verdict::Missed => "**MISSED**",
            Verdict::NotMeasured => "NOT MEASURED",
        }
    }

    fn of(ok: bool) -> Self {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

pub struct Target {
    pub what: &'static str,
    pub measured: String,
    pub verdict: Verdict,
}

fn not_measured(what: &'static str, why: &str) -> Target {
    Target {
        what,
        measured: why.into(),
        verdict: Verdict::NotMeasured,
    }
}

/// The size with `services` services and the fewest endpoints measured for `metric`.
fn at(results: &Results, metric: &str, subject: &str, services: usize) -> Option<Figure> {
    results
        .figures
        .iter()
        .filter(|f| f.metric == metric && f.subject == subject && f.services == services)
        .min_by_key(|f| f.endpoints)
        .cloned()
}

/// The targets, each judged from this run's figures only.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();

    let what = "ebpf connect p50 at 30k services within 10% of p50 at 100";
    out.push(
        match (
            at(r, "connect_latency", "ebpf", 100),
            at(r, "connect_latency", "ebpf", 30_000),
        ) {
            (Some(a), Some(b)) => Target {
                what,
                measured: format!("{:.1} vs {:.1} us: ×{:.2}", b.p50, a.p50, b.p50 / a.p50),
                verdict: Verdict::of(b.p50 <= a.p50 * 1.10),
            },
            _ => not_measured(what, "needs N=100 and N=30000"),
        },
    );

    let what = "ebpf connect p50 at 10k services below iptables' p01";
    out.push(
        match (
            at(r, "connect_latency", "ebpf", 10_000),
            at(r, "connect_latency", "iptables", 10_000),
        ) {
            (Some(a), Some(b)) if b.p01.is_some() => {
                let p01 = b.p01.unwrap_or_default();
                Target {
                    what,
                    measured: format!("{:.1} us vs {:.1} us", a.p50, p01),
                    verdict: Verdict::of(a.p50 < p01),
                }
            }
            _ => not_measured(what, "needs N=10000 in ebpf and iptables modes"),
        },
    );

    let what = "throughput ≥ 95% of direct and ≥ iptables";
    // The largest size all three ran at: past --baseline-max-chains iptables does not.
    out.push(
        largest_with(r, "throughput", &["ebpf", "direct", "iptables"]).map_or_else(
            || {
                not_measured(
                    what,
                    "no size with throughput figures for ebpf, direct and iptables",
                )
            },
            |size| match (
                r.find("throughput", "ebpf", size),
                r.find("throughput", "direct", size),
                r.find("throughput", "iptables", size),
            ) {
                (Some(e), Some(d), Some(i)) => Target {
                    what,
                    measured: format!(
                        "at {}×{}: {:.1}% of direct, ×{:.2} iptables",
                        size.0,
                        size.1,
                        100.0 * e.p50 / d.p50,
                        e.p50 / i.p50
                    ),
                    verdict: Verdict::of(e.p50 >= 0.95 * d.p50 && e.p50 >= i.p50),
                },
                _ => not_measured(what, "needs ebpf, direct and iptables"),
            },
        ),
    );

    let what = "conn/s at 10k services ≥ 1.5 × iptables and ≥ 90% of direct";
    out.push(
        match (
            at(r, "conn_rate", "ebpf", 10_000),
            at(r, "conn_rate", "iptables", 10_000),
            at(r, "conn_rate", "direct", 10_000),
        ) {
            (Some(e), Some(i), Some(d)) => Target {
                what,
                measured: format!(
                    "×{:.2} iptables, {:.1}% of direct",
                    e.p50 / i.p50,
                    100.0 * e.p50 / d.p50
                ),
                verdict: Verdict::of(e.p50 >= 1.5 * i.p50 && e.p50 >= 0.9 * d.p50),
            },
            _ => not_measured(what, "needs N=10000 in ebpf, iptables and direct modes"),
        },
    );

    out.extend(under_load_targets(r));

    let what = "endpoint change reaches traffic < 10 ms p99 with 10k services";
    out.push(match at(r, "endpoint_change", "ebpf", 10_000) {
        Some(f) => {
            let p99 = f.p99.unwrap_or(f.p50);
            let others = baseline(r, "endpoint_change", (f.services, f.endpoints));
            Target {
                what,
                measured: format!("ebpf p99 {p99:.2} ms{others}"),
                verdict: Verdict::of(p99 < 10.0),
            }
        }
        None => not_measured(what, "needs N=10000 in ebpf mode"),
    });

    let what = "full program of 10k services × 10 endpoints < 1 s";
    out.push(match r.find("program_full", "ebpf", (10_000, 10)) {
        Some(f) => Target {
            what,
            measured: format!(
                "ebpf p50 {:.0} ms{}",
                f.p50,
                baseline(r, "program_full", (10_000, 10))
            ),
            verdict: Verdict::of(f.p50 < 1000.0),
        },
        None => not_measured(what, "needs N=10000, E=10 in ebpf mode"),
    });

    let what = "established-flow cost per packet ≤ 2 × floor program";
    let floor = r
        .figures
        .iter()
        .find(|f| f.metric == "ns_per_packet" && f.subject == "floor");
    let established: Vec<&Figure> = r
        .figures
        .iter()
        .filter(|f| f.metric == "ns_per_packet" && f.subject.contains("established"))
        .collect();
    out.push(match floor {
        Some(fl) if !established.is_empty() => {
            let worst = established
                .iter()
                .max_by(|a, b| a.p50.total_cmp(&b.p50))
                .expect("not empty");
            Target {
                what,
                measured: format!(
                    "worst {} {:.0} ns vs floor {:.0} ns: ×{:.2}",
                    worst.subject,
                    worst.p50,
                    fl.p50,
                    worst.p50 / fl.p50
                ),
                verdict: Verdict::of(worst.p50 <= 2.0 * fl.p50),
            }
        }
        _ => not_measured(
            what,
            "no ns_per_packet figures for a floor and established flows",
        ),
    });

    let what = "agent RSS ≤ 100 MiB at 10k × 10";
    out.push(
        match r
            .figures
            .iter()
            .find(|f| f.metric == "agent_rss" && (f.services, f.endpoints) == (10_000, 10))
        {
            Some(f) => Target {
                what,
                measured: format!("{:.1} {}", f.p50, f.unit),
                verdict: Verdict::of(f.p50 <= 100.0),
            },
            None => not_measured(what, "no agent_rss figure at 10000 × 10"),
        },
    );

    let what = "100k services × 10 endpoints load at all";
    out.push(
        match r
            .figures
            .iter()
            .find(|f| f.services >= 100_000 && f.endpoints >= 10)
        {
            Some(f) => Target {
                what,
                measured: format!("{} = {:.1} {} ({})", f.metric, f.p50, f.unit, f.subject),
                verdict: Verdict::Met,
            },
            None => not_measured(what, "no figure at 100000 × 10"),
        },
    );
    out
}

/// The masqueraded NodePort's targets: no failed connection (ebpf, every size measured),
/// and a sustained rate at least iptables'.
fn under_load_targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    for (metric, what) in [
        (
            "masq_failures",
            "masqueraded NodePort from the host: 0 failed connections (ebpf, every size)",
        ),
        (
            "sustained_failures",
            "sustained load through the masqueraded NodePort: 0 failed connections (ebpf)",
        ),
    ] {
        let figs: Vec<&Figure> = r.figures.iter().filter(|f| f.metric == metric).collect();
        let ebpf: Vec<&&Figure> = figs.iter().filter(|f| f.subject == "ebpf").collect();
        if ebpf.is_empty() {
            out.push(not_measured(what, "no ebpf figures"));
            continue;
        }
        let total: f64 = ebpf.iter().map(|f| f.p50).sum();
        let others: Vec<String> = ["iptables", "nftables"]
            .into_iter()
            .filter_map(|m| {
                let v: Vec<f64> = figs
                    .iter()
                    .filter(|f| f.subject == m)
                    .map(|f| f.p50)
                    .collect();
                (!v.is_empty()).then(|| format!("{m} {:.0}", v.iter().sum::<f64>()))
            })
            .collect();
        let sizes = ebpf
            .iter()
            .map(|f| format!("{}×{}", f.services, f.endpoints))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Target {
            what,
            measured: format!(
                "ebpf {total:.0} failed (at {sizes}){}",
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join(", "))
                }
            ),
            verdict: Verdict::of(total == 0.0),
        });
    }
    let what = "sustained conn/s through the masqueraded NodePort ≥ iptables";
    out.push(
        largest_with(r, "sustained_conn_rate", &["ebpf", "iptables"]).map_or_else(
            || not_measured(what, "needs sustained runs in ebpf and iptables modes"),
            |size| match (
                r.find("sustained_conn_rate", "ebpf", size),
                r.find("sustained_conn_rate", "iptables", size),
            ) {
                (Some(e), Some(i)) => {
                    let nft = r
                        .find("sustained_conn_rate", "nftables", size)
                        .map(|n| format!(", nftables {:.0} (×{:.2})", n.p50, n.p50 / i.p50))
                        .unwrap_or_default();
                    Target {
                        what,
                        measured: format!(
                            "at {}×{}: ebpf {:.0} vs iptables {:.0} conn/s: ×{:.2}{nft}",
                            size.0,
                            size.1,
                            e.p50,
                            i.p50,
                            e.p50 / i.p50
                        ),
                        verdict: Verdict::of(e.p50 >= i.p50),
                    }
                }
                _ => not_measured(what, "needs ebpf and iptables"),
            },
        ),
    );
    out
}

/// The same figure for iptables and nftables, as text for a target's "measured" column.
fn baseline(r: &Results, metric: &str, size: (usize, usize)) -> String {
    let mut s = String::new();
    for m in ["iptables", "nftables"] {
        if let Some(f) = r.find(metric, m, size) {
            let _ = write!(s, "; {m} p50 {:.1} {}", f.p50, f.unit);
        }
    }
    s
}

/// The largest size at which every one of `subjects` has a `metric` figure.
fn largest_with(r: &Results, metric: &str, subjects: &[&str]) -> Option<(usize, usize)> {
    r.figures
        .iter()
        .filter(|f| f.metric == metric)
        .map(|f| (f.services, f.endpoints))
        .filter(|&size| subjects.iter().all(|s| r.find(metric, s, size).is_some()))
        .max()
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(metric: &str, subject: &str, size: (usize, usize), p01: f64, p50: f64) -> Figure {
        let mut f = Figure::single(metric, subject, size, "us", p50);
        f.p01 = Some(p01);
        f
    }

    #[test]
    fn targets_judge_from_figures_and_say_what_is_missing() {
        let mut r = Results::default();
        r.push(fig("connect_latency", "ebpf", (100, 2), 10.0, 20.0));
        r.push(fig("connect_latency", "ebpf", (30_000, 2), 10.0, 23.0));
        r.push(fig("connect_latency", "ebpf", (10_000, 2), 10.0, 21.0));
        r.push(fig("connect_latency", "iptables", (10_000, 2), 30.0, 90.0));
        let t = targets(&r);
        assert_eq!(t[0].verdict, Verdict::Missed, "23 is more than 10% over 20");
        assert_eq!(t[1].verdict, Verdict::Met, "21 < 30");
        assert_eq!(t[2].verdict, Verdict::NotMeasured);
        assert!(t.iter().all(|t| !t.measured.is_empty()));
    }

    #[test]
    fn throughput_target_reads_the_largest_size_every_mode_ran_at() {
        let mut r = Results::default();
        for (mode, size, v) in [
            ("ebpf", (10_000, 2), 5.0),
            ("direct", (10_000, 2), 5.0),
            ("iptables", (10_000, 2), 4.0),
            ("ebpf", (30_000, 10), 5.0),
            ("direct", (30_000, 10), 5.0),
        ] {
            r.push(fig("throughput", mode, size, v, v));
        }
        assert_eq!(
            largest_with(&r, "throughput", &["ebpf", "direct", "iptables"]),
            Some((10_000, 2))
        );
        let t = targets(&r);
        let tp = t.iter().find(|t| t.what.starts_with("throughput")).unwrap();
        assert!(tp.measured.starts_with("at 10000×2"), "{}", tp.measured);
    }

    #[test]
    fn report_has_a_summary_row_per_metric_and_size() {
        let mut r = Results::default();
        r.push(fig("conn_rate", "ebpf", (100, 2), 1.0, 3000.0));
        r.push(fig("conn_rate", "iptables", (100, 2), 1.0, 1500.0));
        let settings = Settings {
            quick: true,
            services: vec![100],
            endpoints: vec![2],
            modes: Mode::ALL.to_vec(),
            parts: vec![],
            baseline_max_chains: crate::bench::results::BASELINE_MAX_CHAINS,
        };
        let mut s = String::new();
        summary_table(&mut s, &settings, &r);
        assert!(
            s.contains("| conn_rate (us) | 100 × 2 | 3000 | 1500 | – | – | 2.00 | – | – |"),
            "{s}"
        );
    }
}
