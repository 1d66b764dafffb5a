//! The measurements that need the lab: first-packet connect latency, connections per second,
//! connections per second from the host through a masqueraded NodePort, established
//! throughput and request/response latency, CPU per million packets, a minute of sustained
//! load through that NodePort, and the ebpf side of programming (from empty, and endpoint
//! change until traffic follows).
//!
//! One lab serves every size and mode ([`LabBench`]). For each size, the modes run in rounds
//! and each round starts with a different mode, so slow drift of a shared machine spreads over
//! all modes instead of landing on one.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_lab::testing::lab_lock;

use super::{
    client,
    lab_modes::{wait_until, LabBench, CLIENT_NODE, CLIENT_POD, IPERF_PORT},
    masq,
    results::{Figure, Mode, Part, Results, Settings},
    stats::percentile,
    STEP_DONE,
};

/// The parts this module measures, in the order each mode measures them: the sustained
/// run last, as the minute of load it leaves behind (TIME_WAIT sockets, conntrack entries)
/// should weigh on no other part.
pub const PARTS: [Part; 7] = [
    Part::Connect,
    Part::ConnRate,
    Part::MasqConnRate,
    Part::Throughput,
    Part::Cpu,
    Part::Sustained,
    Part::Programming,
];

/// How much of everything: `--quick` is a smoke test of the harness.
struct Amounts {
    rounds: usize,
    connects: usize,
    rate_for: Duration,
    rate_threads: usize,
    iperf_s: u32,
    round_trips: usize,
    udp_pps: u64,
    udp_for: Duration,
    full_programs: usize,
    changes: usize,
    /// The sustained run per mode and round, its client threads, and its slices.
    sustained_for: Duration,
    sustained_threads: usize,
}

impl Amounts {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                connects: 300,
                rate_for: Duration::from_secs(1),
                rate_threads: 2,
                iperf_s: 2,
                round_trips: 300,
                udp_pps: 10_000,
                udp_for: Duration::from_secs(2),
                full_programs: 1,
                changes: 5,
                sustained_for: masq::sustained_for(true),
                sustained_threads: masq::sustained_threads(),
            }
        } else {
            Self {
                rounds: 2,
                connects: 3000,
                rate_for: Duration::from_secs(3),
                rate_threads: 2,
                iperf_s: 5,
                round_trips: 2000,
                udp_pps: 20_000,
                udp_for: Duration::from_secs(5),
                full_programs: 3,
                changes: 40,
                sustained_for: masq::sustained_for(false),
                sustained_threads: masq::sustained_threads(),
            }
        }
    }
}

/// Samples gathered over the rounds, per (metric, mode).
#[derive(Default)]
struct Samples {
    durations: BTreeMap<(&'static str, Mode), Vec<Duration>>,
    values: BTreeMap<(&'static str, Mode), Vec<f64>>,
    /// Counts summed over the rounds (failures), with how many rounds they cover.
    totals: BTreeMap<(&'static str, Mode), (f64, usize)>,
}

impl Samples {
    fn add_total(&mut self, metric: &'static str, mode: Mode, v: f64) {
        let t = self.totals.entry((metric, mode)).or_default();
        t.0 += v;
        t.1 += 1;
    }
}

/// Runs [`run`] the first time it is asked, and nothing after: every lab part is measured
/// in that one pass.
#[derive(Default)]
pub struct Once {
    done: bool,
}

impl Once {
    pub fn run(
        &mut self,
        settings: &Settings,
        results: &mut Results,
        status: &mut dyn FnMut(&str),
    ) -> Result<()> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        run(settings, results, status).context(
            "the lab parts (connect, conn-rate, masq-conn-rate, throughput, cpu, sustained, \
             ebpf programming)",
        )
    }
}

pub fn run(settings: &Settings, results: &mut Results, status: &mut dyn FnMut(&str)) -> Result<()> {
    let parts: Vec<Part> = PARTS
        .into_iter()
        .filter(|p| settings.parts.contains(p))
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    let amounts = Amounts::new(settings.quick);
    let masq_parts = parts.contains(&Part::MasqConnRate) || parts.contains(&Part::Sustained);
    if masq_parts && settings.has_mode(Mode::Direct) {
        results.note(masq::NO_DIRECT);
    }
    let sustained = masq::sustained_size(settings).filter(|_| parts.contains(&Part::Sustained));
    if let Some((n, e)) = sustained {
        results.note(format!(
            "sustained: {:.0} s per mode and round at {n}x{e} (the largest size every baseline \
             asked for loads), {} client threads in lbk-host, closed loop, through bench-np's \
             NodePort on worker2 (externalTrafficPolicy=Cluster, backends on control-plane and \
             worker); modes interleaved with the other parts' rounds",
            amounts.sustained_for.as_secs_f64(),
            amounts.sustained_threads
        ));
    }
    // Growing N with E fixed only adds services; a new E replaces them all.
    let mut sizes = settings.sizes();
    sizes.sort_by_key(|&(n, e)| (e, n));
    let max_e = sizes.iter().map(|s| s.1).max().unwrap_or(1);
    status("waiting for the lab lock");
    let _lock = lab_lock();
    let mut bench = LabBench::up(settings.quick, max_e, status)?;
    bench.create_pool_pods(&settings.endpoints)?;
    let outcome = (|| -> Result<()> {
        for &size in &sizes {
            // The sustained run only at its one size.
            let parts: Vec<Part> = parts
                .iter()
                .copied()
                .filter(|p| *p != Part::Sustained || sustained == Some(size))
                .collect();
            measure_size(
                &mut bench, settings, &parts, &amounts, size, results, status,
            )?;
        }
        Ok(())
    })();
    status("tearing the lab down");
    let down = bench.down();
    outcome.and(down)
}

fn measure_size(
    bench: &mut LabBench,
    settings: &Settings,
    parts: &[Part],
    amounts: &Amounts,
    size: (usize, usize),
    results: &mut Results,
    status: &mut dyn FnMut(&str),
) -> Result<()> {
    let (n, e) = size;
    let ebpf = settings.has_mode(Mode::Ebpf);
    bench.switch(if ebpf { Mode::Ebpf } else { Mode::Direct })?;
    status(&format!("{n}x{e}: creating services in the API server"));
    let took = bench.load(n, e)?;
    if ebpf {
        status(&format!(
            "{n}x{e}: API writes took {:.1} s; waiting for the agents",
            took.as_secs_f64()
        ));
        bench.wait_programmed(CLIENT_NODE, Duration::from_secs(900))?;
    }
    if parts.contains(&Part::Programming) && ebpf {
        programming(bench, amounts, size, results, status)?;
    }
    let traffic: Vec<Part> = parts
        .iter()
        .copied()
        .filter(|p| *p != Part::Programming)
        .collect();
    if traffic.is_empty() {
        return Ok(());
    }
    let mut samples = Samples::default();
    let measured = rounds(
        bench,
        settings,
        &traffic,
        amounts,
        size,
        &mut samples,
        results,
        status,
    );
    // Whatever was measured is reported, also when a later mode failed.
    for ((metric, mode), d) in samples.durations {
        results
            .figures
            .extend(Figure::durations(metric, mode.name(), size, "us", &d));
    }
    for ((metric, mode), v) in samples.values {
        let unit = match metric {
            "conn_rate" | "masq_conn_rate" | "sustained_conn_rate" => "conn/s",
            "throughput" => "Gbit/s",
            _ => "ms",
        };
        results.push(summary(metric, mode.name(), size, unit, &v));
    }
    for ((metric, mode), (total, rounds)) in samples.totals {
        let mut f = Figure::single(metric, mode.name(), size, "conns", total);
        f.samples = rounds;
        results.push(f);
    }
    measured
}

#[allow(clippy::too_many_arguments)]
fn rounds(
    bench: &mut LabBench,
    settings: &Settings,
    traffic: &[Part],
    amounts: &Amounts,
    (n, e): (usize, usize),
    samples: &mut Samples,
    results: &mut Results,
    status: &mut dyn FnMut(&str),
) -> Result<()> {
    let modes: Vec<Mode> = settings
        .modes
        .iter()
        .copied()
        .filter(|&m| settings.runs(m, (n, e)))
        .collect();
    for skipped in settings.modes.iter().filter(|m| !modes.contains(m)) {
        results.note(format!(
            "{} not measured at {n}x{e}: kube-proxy's ruleset would have {} chains, above \
             --baseline-max-chains {}",
            skipped.name(),
            super::results::baseline_chains((n, e)),
            settings.baseline_max_chains
        ));
        for _ in 0..amounts.rounds {
            status(&format!("{STEP_DONE}{n}x{e} {} skipped", skipped.name()));
        }
    }
    for round in 0..amounts.rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            status(&format!(
                "{n}x{e}: round {}/{}: switching to {}",
                round + 1,
                amounts.rounds,
                mode.name()
            ));
            bench.switch(mode)?;
            wait_reachable(bench, mode, traffic)?;
            for &part in traffic {
                status(&format!("{n}x{e}: {} {part:?}", mode.name()));
                measure(bench, part, mode, amounts, round, samples, results)
                    .with_context(|| format!("{part:?} in mode {} at {n}x{e}", mode.name()))?;
            }
            status(&format!("{STEP_DONE}{n}x{e} {}", mode.name()));
        }
    }
    Ok(())
}

/// The median (and range) of per-round readings.
fn summary(metric: &str, subject: &str, size: (usize, usize), unit: &str, v: &[f64]) -> Figure {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut f = Figure::single(metric, subject, size, unit, sorted[sorted.len() / 2]);
    f.samples = v.len();
    if v.len() > 1 {
        f.p01 = sorted.first().copied();
        f.p99 = sorted.last().copied();
    }
    f
}

/// Waits until a first exchange through the mode's targets succeeds (a node that has just
/// switched may still be attaching or loading), from the host through the NodePort too when
/// a part measures that.
fn wait_reachable(bench: &LabBench, mode: Mode, traffic: &[Part]) -> Result<()> {
    if masq::MODES.contains(&mode)
        && traffic
            .iter()
            .any(|p| matches!(p, Part::MasqConnRate | Part::Sustained))
    {
        let target = bench.targets.node_port.context("NodePort service")?;
        let mut last = String::new();
        wait_until(Duration::from_secs(30), || {
            let (ok, report) = masq::reachable(target)?;
            last = report;
            Ok(ok)
        })
        .with_context(|| {
            format!(
                "mode {}: the host never reached the NodePort {target}: {last}{}",
                mode.name(),
                diagnose(bench, mode, target)
            )
        })?;
    }
    let targets = [
        bench.targets.connect(mode)[0],
        bench.targets.stream(mode, lb_lab::ECHO_PORT),
    ];
    let ns = client_ns(bench)?;
    let mut last = String::new();
    wait_until(Duration::from_secs(30), || {
        let (ok, failures) =
            lb_lab::netns::run_in(&ns, || client::connect_latency(&targets[..1], 1, 1))?;
        let (ok2, failures2) =
            lb_lab::netns::run_in(&ns, || client::connect_latency(&targets[1..], 1, 1))?;
        last = failures
            .into_iter()
            .chain(failures2)
            .collect::<Vec<_>>()
            .join("; ");
        Ok(ok.len() == 1 && ok2.len() == 1)
    })
    .with_context(|| {
        format!(
            "mode {} never carried traffic: {last}{}",
            mode.name(),
            diagnose(bench, mode, targets[1])
        )
    })
}

/// What the client node's ruleset did with `target`, for an error message.
fn diagnose(bench: &LabBench, mode: Mode, target: SocketAddr) -> String {
    let cmd: &[&str] = match mode {
        Mode::Iptables => &["iptables-save", "-c", "-t", "nat"],
        Mode::Nftables => &["nft", "list", "ruleset"],
        _ => return String::new(),
    };
    let ip = target.ip().to_string();
    let mut out = String::new();
    for node in [CLIENT_NODE, "worker"] {
        if let Ok(o) = bench.lab.exec(node, cmd) {
            let text = String::from_utf8_lossy(&o.stdout);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(&ip)
                        || l.contains("10.244.1.2:")
                        || l.contains("-A KUBE-SERVICES")
                        || l.contains("PREROUTING")
                        || l.contains("NODEPORTS")
                        || l.contains("nodeport")
                        || l.contains("POSTROUTING")
                })
                .take(40)
                .collect();
            out += &format!("\n{node}:\n{}", lines.join("\n"));
        }
    }
    out
}

fn client_ns(bench: &LabBench) -> Result<String> {
    Ok(bench.lab.pod(CLIENT_POD).context("client pod")?.ns.clone())
}

fn measure(
    bench: &LabBench,
    part: Part,
    mode: Mode,
    amounts: &Amounts,
    round: usize,
    samples: &mut Samples,
    results: &mut Results,
) -> Result<()> {
    let ns = client_ns(bench)?;
    let seed = 0x9e37_79b9 + round as u64;
    match part {
        Part::Connect => {
            let targets = bench.targets.connect(mode);
            let count = amounts.connects / amounts.rounds;
            let (ok, failures) =
                lb_lab::netns::run_in(&ns, || client::connect_latency(targets, count, seed))?;
            if !failures.is_empty() {
                results.note(format!(
                    "connect, {}: {} of {count} exchanges failed (first: {})",
                    mode.name(),
                    failures.len(),
                    failures[0]
                ));
            }
            samples
                .durations
                .entry(("connect_latency", mode))
                .or_default()
                .extend(ok);
        }
        Part::ConnRate => {
            let targets = bench.targets.connect(mode);
            let (rate, failed) = lb_lab::netns::run_in(&ns, || {
                client::conn_rate(targets, amounts.rate_threads, amounts.rate_for, seed)
            })?;
            if failed > 0 {
                results.note(format!("conn_rate, {}: {failed} failed", mode.name()));
            }
            samples
                .values
                .entry(("conn_rate", mode))
                .or_default()
                .push(rate);
        }
        Part::Throughput => {
            let target = bench.targets.stream(mode, IPERF_PORT);
            samples
                .values
                .entry(("throughput", mode))
                .or_default()
                .push(iperf(bench, target, amounts.iperf_s)?);
            let target = bench.targets.stream(mode, lb_lab::ECHO_PORT);
            let rtts =
                lb_lab::netns::run_in(&ns, || client::rr_latency(target, amounts.round_trips))??;
            samples
                .durations
                .entry(("rr_latency", mode))
                .or_default()
                .extend(rtts);
        }
        Part::Cpu => {
            let target = bench.targets.stream(mode, lb_lab::ECHO_PORT);
            let before = cpu_ticks()?;
            let stream = lb_lab::netns::run_in(&ns, || {
                client::udp_stream(target, amounts.udp_pps, 64, amounts.udp_for)
            })??;
            let used = cpu_ticks()? - before;
            let packets = (stream.sent + stream.received) as f64;
            if stream.received < stream.sent * 9 / 10 {
                results.note(format!(
                    "cpu, {}: only {} of {} datagrams answered",
                    mode.name(),
                    stream.received,
                    stream.sent
                ));
            }
            let ms = used as f64 * 1000.0 / clock_ticks() as f64;
            samples
                .values
                .entry(("cpu_per_mpkt", mode))
                .or_default()
                .push(ms / (packets / 1e6));
        }
        Part::MasqConnRate if masq::MODES.contains(&mode) => {
            let target = bench.targets.node_port.context("NodePort service")?;
            let before = masq::Counters::read(bench, mode);
            let run = masq::short_tcp_for(
                target,
                amounts.rate_threads,
                amounts.rate_for,
                Duration::from_millis(250),
            )?;
            if run.report.failed() > 0 || run.report.slow > 0 {
                results.note(format!(
                    "masq_conn_rate, {} round {}: {}; counters: {}",
                    mode.name(),
                    round + 1,
                    run.report,
                    masq::Counters::read(bench, mode).moved_since(&before)
                ));
            }
            samples
                .values
                .entry(("masq_conn_rate", mode))
                .or_default()
                .push(run.rate());
            samples.add_total("masq_failures", mode, run.report.failed() as f64);
        }
        Part::Sustained if masq::MODES.contains(&mode) => {
            let target = bench.targets.node_port.context("NodePort service")?;
            let before = masq::Counters::read(bench, mode);
            let run = masq::short_tcp_for(
                target,
                amounts.sustained_threads,
                amounts.sustained_for,
                Duration::from_secs(1),
            )?;
            // Every run in the notes: a slow second shows trouble a mean would hide, and the
            // counters that moved say where packets were lost or refused.
            results.note(format!(
                "sustained, {} round {}: {}; 1 s slices: median {:.0}, slowest {:.0} conn/s; \
                 counters: {}",
                mode.name(),
                round + 1,
                run.report,
                run.median_slice(),
                run.slowest(),
                masq::Counters::read(bench, mode).moved_since(&before)
            ));
            samples
                .values
                .entry(("sustained_conn_rate", mode))
                .or_default()
                .push(run.rate());
            samples.add_total("sustained_failures", mode, run.report.failed() as f64);
        }
        Part::MasqConnRate
        | Part::Sustained
        | Part::Programming
        | Part::Datapath
        | Part::Memory
        | Part::Gc => {}
    }
    Ok(())
}

/// iperf3 from the client pod to `target` for `secs`; received Gbit/s.
fn iperf(bench: &LabBench, target: SocketAddr, secs: u32) -> Result<f64> {
    let out = bench.lab.exec(
        CLIENT_POD,
        &[
            "iperf3",
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ],
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(err) = json["error"].as_str() {
        bail!("iperf3 to {target}: {err}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 reported no received rate")
}

/// Kernel CPU time of the whole machine so far (system + irq + softirq), in clock ticks:
/// the datapath runs in softirq and in the senders' and receivers' system calls.
fn cpu_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq ...
    Ok(f[2] + f[5] + f[6])
}

pub(crate) fn clock_ticks() -> i64 {
    use nix::unistd::{sysconf, SysconfVar};
    // 100 on every Linux configuration; sysconf cannot fail for this name.
    sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100)
}

/// The ebpf side of programming: N services from empty on the client's node, and one
/// endpoint change in the API server until traffic through the service reaches it.
fn programming(
    bench: &LabBench,
    amounts: &Amounts,
    size: (usize, usize),
    results: &mut Results,
    status: &mut dyn FnMut(&str),
) -> Result<()> {
    let (n, e) = size;
    let mut full = Vec::new();
    for i in 0..amounts.full_programs {
        status(&format!(
            "{n}x{e}: ebpf program from empty {}/{}",
            i + 1,
            amounts.full_programs
        ));
        full.push(bench.program_from_empty(CLIENT_NODE)?);
    }
    results
        .figures
        .extend(Figure::durations("program_full", "ebpf", size, "ms", &full));
    let ns = client_ns(bench)?;
    let target = bench.targets.change.context("change service")?;
    let answers = |timeout: Duration| -> Result<bool> {
        Ok(lb_lab::netns::run_in(&ns, || {
            std::net::TcpStream::connect_timeout(&target, timeout).is_ok()
        })?)
    };
    let mut changes = Vec::new();
    for i in 0..amounts.changes {
        status(&format!(
            "{n}x{e}: ebpf endpoint change {}/{}",
            i + 1,
            amounts.changes
        ));
        bench.set_change_ready(false)?;
        wait_until(Duration::from_secs(10), || {
            Ok(!answers(Duration::from_millis(100))?)
        })
        .context("the endpoint never went away")?;
        let ready = bench.change_pod(true)?;
        let started = Instant::now();
        bench.write_change_pod(&ready)?;
        // Polled from one thread in the client pod: a connect every ~0.2 ms until one lands.
        let reached = lb_lab::netns::run_in(&ns, || {
            while started.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(50)).is_ok()
                {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        })?;
        changes.push(reached.context("traffic never reached the new endpoint")?);
    }
    results.figures.extend(Figure::durations(
        "endpoint_change",
        "ebpf",
        size,
        "ms",
        &changes,
    ));
    let p99 = percentile(&changes, 99.0).unwrap_or_default();
    status(&format!(
        "{STEP_DONE}{n}x{e}: ebpf programming (endpoint change p99 {:.1} ms)",
        p99.as_secs_f64() * 1e3
    ));
    Ok(())
}
