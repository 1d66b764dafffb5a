//! Control-plane programming in the lab, end to end: objects go into the lab's API server,
//! agents watch them, and the clock stops when node `worker`'s pinned maps hold the result.
//!
//! - program N services × M endpoints from the API (first create to last frontend written);
//! - agent restart: time to ready with the maps gone (full program from empty) and with the
//!   maps in place (full resync that changes nothing); agent RSS after each;
//! - single endpoint changes with N services loaded: a pod's readiness is flipped through
//!   the API, and the time until the service's backend count changes in the map is taken
//!   K times.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_common::{maps, proto, FrontendKey};
use lb_lab::{
    apiserver::{Client, Method},
    testing::lab_lock,
    AgentSource, Lab, UpOptions,
};
use serde_json::{json, Value};

use super::{lab_modes, lab_modes::frontends, stats::percentile};
use crate::{
    build::{run_build, BuildArgs},
    run::say,
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Services to load.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Single endpoint changes to time.
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

/// The node whose maps are watched.
const NODE: &str = "worker";
const NS: &str = "default";

pub fn run(args: &Args) -> Result<()> {
    let artifacts = run_build(&BuildArgs { release: true })?;
    let bins = artifacts.lab_binaries();
    let _lock = lab_lock();
    say("bringing up the lab with release binaries, agents on the kube source");
    let lab = Lab::up(
        &bins,
        UpOptions {
            agent_source: AgentSource::Kube,
            ready_timeout: Duration::from_secs(60),
            ..UpOptions::default()
        },
    )?
    .down_on_drop();
    let api = lab.apiserver_client();
    let frontends_pin = lab.pin_dir(NODE).join(maps::FRONTENDS);

    say(&format!(
        "creating {} endpoint pods and {} services",
        args.endpoints, args.services
    ));
    for i in 0..args.endpoints {
        create_pod(&api, &format!("bench-{i}"), "bench", bench_pod_ip(i), true)?;
    }
    let probe_ip = Ipv4Addr::new(10, 244, 2, 250);
    create_pod(&api, "bench-probe", "bench-probe", probe_ip, true)?;
    let base = count_programmed(&frontends_pin, args.endpoints)?;
    let started = Instant::now();
    for i in 0..args.services {
        create_service(&api, &format!("bench-{i}"), "bench")?;
    }
    let created = started.elapsed();
    let probe_vip = create_service(&api, "bench-probe", "bench-probe")?;
    wait_until(Duration::from_secs(600), || {
        Ok(count_programmed(&frontends_pin, args.endpoints)? >= base + args.services)
    })
    .context("waiting for every service to be programmed")?;
    let programmed = started.elapsed();
    let rss_loaded = rss_mib(lab.agent_pid(NODE)?)?;

    say("restarting the agent with its maps in place (a full resync that changes nothing)");
    lab.kill_agent(NODE)?;
    let t = Instant::now();
    lab.start_agent(NODE, &[])?;
    let resync = t.elapsed();

    say("restarting the agent with its maps removed (a full program from empty)");
    lab.kill_agent(NODE)?;
    std::fs::remove_dir_all(lab.pin_dir(NODE)).context("removing the node's pins")?;
    let t = Instant::now();
    lab.start_agent(NODE, &[])?;
    let from_empty = t.elapsed();
    let rss_after_full = rss_mib(lab.agent_pid(NODE)?)?;

    say(&format!("timing {} single endpoint changes", args.changes));
    let probe_key = FrontendKey::new(probe_vip, 80, proto::TCP);
    // Programming latency as kube-proxy defines it: from the EndpointSlice's trigger time
    // (stamped by the API server when it commits the change) to the map holding it. The
    // end-to-end figure adds the lab API server's own handling of the update.
    let mut latencies = Vec::with_capacity(args.changes);
    let mut end_to_end = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let ready = i % 2 == 1;
        let t = Instant::now();
        set_pod_ready(&api, "bench-probe", ready)?;
        wait_until(Duration::from_secs(10), || {
            Ok(backend_count(&frontends_pin, &probe_key)? == u16::from(ready))
        })
        .with_context(|| format!("change {i} never reached the maps"))?;
        let seen = jiff::Timestamp::now();
        end_to_end.push(t.elapsed());
        let trigger = trigger_time(&api, "bench-probe")?;
        let latency = seen.duration_since(trigger);
        latencies.push(Duration::try_from(latency).unwrap_or_default());
    }

    let metrics = agent_metrics(NODE)?;
    let incremental_sync_ms = histogram_mean(
        &metrics,
        "lb_sync_proxy_rules_duration_seconds",
        "mode=\"incremental\"",
    )
    .map(|s| s * 1e3);
    let p = |q| percentile(&latencies, q).unwrap_or_default();
    let report = json!({
        "services": args.services,
        "endpoints": args.endpoints,
        "create_all_via_api_s": created.as_secs_f64(),
        "program_all_from_api_s": programmed.as_secs_f64(),
        "agent_restart_resync_to_ready_s": resync.as_secs_f64(),
        "agent_restart_from_empty_to_ready_s": from_empty.as_secs_f64(),
        "agent_incremental_sync_mean_ms": incremental_sync_ms,
        "agent_rss_mib_loaded": rss_loaded,
        "agent_rss_mib_after_full_program": rss_after_full,
        "endpoint_change_ms": {
            "samples": latencies.len(),
            "p50": p(50.0).as_secs_f64() * 1e3,
            "p99": p(99.0).as_secs_f64() * 1e3,
            "max": p(100.0).as_secs_f64() * 1e3,
            "end_to_end_p50": percentile(&end_to_end, 50.0).unwrap_or_default().as_secs_f64() * 1e3,
            "end_to_end_p99": percentile(&end_to_end, 99.0).unwrap_or_default().as_secs_f64() * 1e3,
        },
    });
    println!(
        "\nprogramming, {} services x {} endpoints (release agent, node {NODE}):\n\
         \x20 create all through the API          {:>9.2} s\n\
         \x20 program all, API -> maps            {:>9.2} s\n\
         \x20 agent restart, resync to ready      {:>9.2} s\n\
         \x20 agent restart, from empty to ready  {:>9.2} s\n\
         \x20 agent RSS loaded / after restart    {:>6.1} / {:.1} MiB\n\
         \x20 endpoint change, trigger time -> map: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} changes)\n\
         \x20 endpoint change, API request -> map:  p50 {:.2} ms, p99 {:.2} ms\n\
         \x20 agent's own incremental sync (mean, from its metrics): {}",
        args.services,
        args.endpoints,
        created.as_secs_f64(),
        programmed.as_secs_f64(),
        resync.as_secs_f64(),
        from_empty.as_secs_f64(),
        rss_loaded,
        rss_after_full,
        p(50.0).as_secs_f64() * 1e3,
        p(99.0).as_secs_f64() * 1e3,
        p(100.0).as_secs_f64() * 1e3,
        latencies.len(),
        percentile(&end_to_end, 50.0).unwrap_or_default().as_secs_f64() * 1e3,
        percentile(&end_to_end, 99.0).unwrap_or_default().as_secs_f64() * 1e3,
        incremental_sync_ms.map_or("not reported".to_string(), |ms| format!("{ms:.3} ms")),
    );
    let dir = artifacts.workspace.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!(
        "programming-{}x{}.json",
        args.services, args.endpoints
    ));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    say(&format!("wrote {}", file.display()));
    print!("{}", lab.down()?);
    Ok(())
}

/// Endpoint pods spread over the three nodes' pod CIDRs, above the lab's own pods.
/// A pod named `name` with `label=y`, on the node whose pod CIDR holds `ip`.
fn create_pod(api: &Client, name: &str, label: &str, ip: Ipv4Addr, ready: bool) -> Result<()> {
    let node = ["control-plane", "worker", "worker2"][usize::from(ip.octets()[2])];
    let labels = BTreeMap::from([(label.to_string(), "y".to_string())]);
    lab_modes::create_pod(api, name, &labels, ip, node, ready)
}

/// A ClusterIP service on TCP 80 to 8080 of the pods with `label=y`.
fn create_service(api: &Client, name: &str, label: &str) -> Result<Ipv4Addr> {
    lab_modes::create_service(api, name, label, &[("http", "TCP", 80, 8080)])
}

/// Finer than the lab parts' polling: single endpoint changes take a few ms.
fn wait_until(limit: Duration, done: impl FnMut() -> Result<bool>) -> Result<()> {
    lab_modes::wait_until_every(limit, Duration::from_micros(200), done)
}

fn bench_pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i % 3) as u8, 100 + (i / 3) as u8)
}

fn set_pod_ready(api: &Client, name: &str, ready: bool) -> Result<()> {
    let path = format!("/api/v1/namespaces/{NS}/pods/{name}/status");
    let mut pod: Value = api.get(&format!("/api/v1/namespaces/{NS}/pods/{name}"))?;
    pod["status"]["conditions"] =
        json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    api.request(Method::PUT, &path, Some(&pod))
        .with_context(|| format!("updating pod {name}"))?;
    Ok(())
}

/// When the API server committed the latest change to service `name`'s endpoints.
fn trigger_time(api: &Client, name: &str) -> Result<jiff::Timestamp> {
    let slices = api.get(&format!(
        "/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices?labelSelector=kubernetes.io/service-name%3D{name}"
    ))?;
    let stamp = slices["items"][0]["metadata"]["annotations"]
        ["endpoints.kubernetes.io/last-change-trigger-time"]
        .as_str()
        .with_context(|| format!("no trigger time on the slice of {name}"))?;
    stamp
        .parse()
        .with_context(|| format!("bad trigger time {stamp:?}"))
}

/// Frontends whose service has exactly `endpoints` backends.
fn count_programmed(pin: &Path, endpoints: usize) -> Result<usize> {
    let map = frontends(pin)?;
    Ok(map
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, fe)| usize::from(fe.backend_count) == endpoints)
        .count())
}

fn backend_count(pin: &Path, key: &FrontendKey) -> Result<u16> {
    Ok(frontends(pin)?
        .get(key, 0)
        .map(|fe| fe.backend_count)
        .unwrap_or(u16::MAX))
}

/// The agent's Prometheus metrics, fetched from inside its node's namespace.
fn agent_metrics(node: &str) -> Result<String> {
    use std::io::{Read, Write};
    let ns = format!("lbk-{node}");
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 10249));
    let stream = lb_lab::netns::run_in(&ns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })??;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// `sum / count` of histogram `name` for the series whose labels contain `label`.
fn histogram_mean(metrics: &str, name: &str, label: &str) -> Option<f64> {
    let value = |suffix: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}")) && l.contains(label))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    let (sum, count) = (value("sum")?, value("count")?);
    (count > 0.0).then(|| sum / count)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}
