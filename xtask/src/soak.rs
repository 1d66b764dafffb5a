//! `cargo xtask soak --minutes M`: mixed traffic and churn for M minutes in the lab, with
//! the agents' memory and CPU, the conntrack tables' fill and the GC's cost sampled as it
//! goes. Memory and fill must stay flat and nothing may fail; the run writes
//! `target/soak/report.md` and `samples.csv` and fails on any failed connection.
//!
//! Load: a service's backends roll once a second (`lb_lab::rollout`), 300 more ClusterIP
//! services sit in the maps, short TCP connections run without pause through its ClusterIP
//! from a pod and through its NodePort and LB IP from the host (masqueraded), and a UDP
//! client on one fixed port asks every 100 ms.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_lab::{
    load::{self, LoadReport},
    netns,
    probe::ProbeRequest,
    rollout,
    testing::lab_lock,
    Lab, UpOptions,
};

use crate::{
    build::{run_build, BuildArgs},
    run::say,
};

#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 15)]
    pub sample_seconds: u64,
}

const HOST_NS: &str = "lbk-host";
const ENTRY: &str = "worker2";
const ENTRY_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 64, 1);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 64);
const NODE_PORT: u16 = 30641;
const BULK: usize = 300;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// One sample of one node's agent.
#[derive(Clone, Debug, Default)]
struct Sample {
    at_s: f64,
    node: String,
    rss_kib: u64,
    cpu_s: f64,
    ct_tcp: f64,
    ct_any: f64,
    gc_cpu_s: f64,
    gc_runs: f64,
    ok: u64,
    failed: u64,
}

pub fn run(args: &SoakArgs) -> Result<()> {
    if !lb_lab::testing::is_root() {
        bail!("the soak builds the lab: run it as root");
    }
    let artifacts = run_build(&BuildArgs::default())?;
    crate::toolchain::ensure_lab_tools()?;
    let bins = artifacts.lab_binaries();
    let out_dir = artifacts.workspace.join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    let _lock = lab_lock();
    say("bringing up the lab (agents with the DaemonSet's capabilities, Kind's offloads)");
    let lab = Lab::up(&bins, UpOptions::default())?.down_on_drop();
    load::raise_fd_limit()?;
    lab.apply_yaml(
        "soak",
        &rollout::service("soak", &SVC.to_string(), &LB_IP.to_string(), NODE_PORT),
    )?;
    lab.apply_yaml("soak-slice", &rollout::slice(&lab, "soak", 0).0)?;
    let bulk: String = (0..BULK)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Service
metadata: {{name: soak-bulk-{i}, namespace: default}}
spec:
  clusterIP: 10.96.{}.{}
  selector: {{app: echo}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: http}}
---
",
                150 + i / 250,
                i % 250 + 1
            )
        })
        .collect();
    lab.apply_yaml("soak-bulk", &bulk)?;
    lab.route_from_host(&LB_IP.to_string(), ENTRY)?;
    let client = lab
        .pod("worker-client")
        .context("no worker-client pod")?
        .ns
        .clone();
    wait_served(&lab)?;

    let duration = Duration::from_secs(args.minutes * 60);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    say(&format!(
        "soaking for {} min, a sample every {every:?}",
        args.minutes
    ));
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let reports: Mutex<Vec<(&str, LoadReport)>> = Mutex::new(Vec::new());
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let (udp_ok, udp_lost) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut samples = Vec::new();
    let mut changes = 0usize;
    thread::scope(|s| -> Result<()> {
        let targets = [
            (
                HOST_NS,
                at(ENTRY_IP, NODE_PORT),
                "host -> NodePort (masqueraded)",
            ),
            (HOST_NS, at(LB_IP, 80), "host -> LB IP (masqueraded)"),
            (client.as_str(), at(SVC, 80), "pod -> ClusterIP"),
        ];
        for (ns, to, what) in targets {
            let (stop, reports, ok, failed) = (&stop, &reports, &ok, &failed);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match load::short_tcp_for(ns, to, Duration::from_secs(5), 1) {
                        Ok(r) => {
                            ok.fetch_add(r.ok, Ordering::Relaxed);
                            failed.fetch_add(r.failed(), Ordering::Relaxed);
                            reports.lock().unwrap().push((what, r));
                        }
                        Err(e) => {
                            eprintln!("soak: {what}: {e:#}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        {
            let (stop, lab, udp_ok, udp_lost) = (&stop, &lab, &udp_ok, &udp_lost);
            s.spawn(move || {
                let req = ProbeRequest::udp(at(ENTRY_IP, NODE_PORT + 1), "hostname")
                    .from_port(Some(40_641))
                    .with_timeout(Duration::from_millis(500));
                while !stop.load(Ordering::Relaxed) {
                    match lab.probe(HOST_NS, &req) {
                        Ok(_) => udp_ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => udp_lost.fetch_add(1, Ordering::Relaxed),
                    };
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
        let result = (|| -> Result<()> {
            let mut next_sample = started;
            while started.elapsed() < duration {
                changes += 1;
                lab.apply_yaml("soak-slice", &rollout::slice(&lab, "soak", changes).0)?;
                if Instant::now() >= next_sample {
                    for node in lab.nodes() {
                        let mut sample = sample(&lab, &node.name)?;
                        sample.at_s = started.elapsed().as_secs_f64();
                        sample.ok = ok.load(Ordering::Relaxed);
                        sample.failed = failed.load(Ordering::Relaxed);
                        samples.push(sample);
                    }
                    let last = &samples[samples.len() - 1];
                    say(&format!(
                        "soak: +{:.0}s: {} ok, {} failed; {ENTRY} RSS {} KiB, conntrack tcp {} any {}",
                        last.at_s,
                        last.ok,
                        last.failed,
                        samples.iter().rev().find(|x| x.node == ENTRY).map_or(0, |x| x.rss_kib),
                        last.ct_tcp,
                        last.ct_any
                    ));
                    next_sample += every;
                }
                thread::sleep(Duration::from_secs(1));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    let elapsed = started.elapsed();
    let reports = reports.into_inner().unwrap();
    let report = write_report(
        &out_dir,
        &samples,
        &reports,
        elapsed,
        changes,
        (udp_ok.into_inner(), udp_lost.into_inner()),
    )?;
    print!("{report}");
    let failed = failed.into_inner();
    if failed > 0 {
        bail!("{failed} connections failed during the soak");
    }
    Ok(())
}

fn wait_served(lab: &Lab) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let req = ProbeRequest::tcp(at(ENTRY_IP, NODE_PORT), "/hostname");
    while lab.probe(HOST_NS, &req).is_err() {
        if Instant::now() > deadline {
            bail!("the soak service is not served after 30 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Node `node`'s agent: RSS and CPU from /proc, conntrack and GC from its /metrics.
fn sample(lab: &Lab, node: &str) -> Result<Sample> {
    let pid = lab.agent_pid(node)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = crate::bench::traffic::clock_ticks() as f64;
    let cpu_s = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
    let metrics = scrape(&format!("lbk-{node}"))?;
    let value = |name: &str, label: Option<&str>| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && label.is_none_or(|t| l.contains(t)))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    Ok(Sample {
        node: node.to_string(),
        rss_kib,
        cpu_s,
        ct_tcp: value("lb_conntrack_entries{", Some("LB_CT4_TCP")),
        ct_any: value("lb_conntrack_entries{", Some("LB_CT4_ANY")),
        gc_cpu_s: value("lb_conntrack_gc_cpu_seconds_total", None),
        gc_runs: value("lb_conntrack_gc_runs_total", None),
        ..Sample::default()
    })
}

/// GET /metrics from the agent's default address inside its node's namespace.
fn scrape(ns: &str) -> Result<String> {
    netns::run_in(ns, || -> Result<String> {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, 10249)),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    })?
}

/// ` (2× connect: Connection refused, ...)`, or nothing without failures.
fn causes(report: &LoadReport) -> String {
    if report.failures.is_empty() {
        return String::new();
    }
    let causes: Vec<String> = report
        .failures
        .iter()
        .map(|(cause, n)| format!("{n}× {cause}"))
        .collect();
    format!(" ({})", causes.join(", "))
}

fn write_report(
    dir: &std::path::Path,
    samples: &[Sample],
    reports: &[(&str, LoadReport)],
    elapsed: Duration,
    changes: usize,
    (udp_ok, udp_lost): (u64, u64),
) -> Result<String> {
    let mut csv =
        String::from("seconds,node,rss_kib,cpu_s,ct_tcp,ct_any,gc_cpu_s,gc_runs,ok,failed\n");
    for s in samples {
        writeln!(
            csv,
            "{:.0},{},{},{:.2},{},{},{:.3},{},{},{}",
            s.at_s,
            s.node,
            s.rss_kib,
            s.cpu_s,
            s.ct_tcp,
            s.ct_any,
            s.gc_cpu_s,
            s.gc_runs,
            s.ok,
            s.failed
        )?;
    }
    std::fs::write(dir.join("samples.csv"), &csv)?;

    let mut md = format!(
        "# Soak: {:.1} min of churn and traffic\n\n{changes} endpoint changes (one a second).\n\n",
        elapsed.as_secs_f64() / 60.0
    );
    md.push_str(
        "| path | connections ok | failed (by cause) | p99 | took ≥ 500 ms |\n|---|---|---|---|---|\n",
    );
    let mut paths: Vec<&str> = reports.iter().map(|(w, _)| *w).collect();
    paths.dedup();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        let mut total = LoadReport::default();
        for (_, r) in reports.iter().filter(|(w, _)| *w == path) {
            total.merge(r.clone());
        }
        writeln!(
            md,
            "| {path} | {} | {}{} | {:.1?} | {} |",
            total.ok,
            total.failed(),
            causes(&total),
            total.percentile(0.99),
            total.slow
        )?;
    }
    writeln!(
        md,
        "\nUDP from one fixed port every 100 ms: {udp_ok} answered, {udp_lost} lost.\n"
    )?;
    md.push_str("| node | RSS first → last (KiB) | RSS max | agent CPU | GC CPU | GC runs | conntrack tcp / any at the end |\n|---|---|---|---|---|---|---|\n");
    let mut nodes: Vec<&str> = samples.iter().map(|s| s.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.node == node).collect();
        let (Some(first), Some(last)) = (of.first(), of.last()) else {
            continue;
        };
        let span = (last.at_s - first.at_s).max(1.0);
        writeln!(
            md,
            "| {node} | {} → {} | {} | {:.2} % of a core | {:.2} s | {} | {} / {} |",
            first.rss_kib,
            last.rss_kib,
            of.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            100.0 * (last.cpu_s - first.cpu_s) / span,
            last.gc_cpu_s,
            last.gc_runs,
            last.ct_tcp,
            last.ct_any
        )?;
    }
    md.push_str("\nEvery sample (node, seconds, RSS KiB, conntrack tcp/any) is in samples.csv.\n");
    std::fs::write(dir.join("report.md"), &md)?;
    Ok(md)
}
