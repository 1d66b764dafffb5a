//! Memory: the agent's RSS and the kernel memory of its BPF maps with N services × E
//! endpoints programmed, and the time it took to program them from empty.
//!
//! For each size a fresh agent runs in a throwaway network namespace `lbk-mem-<pid>` (with
//! one veth pair as its uplink, so nothing is attached outside it), on the file source
//! (Services and EndpointSlices as YAML in a directory of ours), with its pins in a private
//! bpffs directory, socket LB and XDP off. The clock runs from spawn to the ready file (the
//! first full sync done, programs attached); the pinned frontend map is then checked to
//! hold every service.
//!
//! Endpoints are pods drawn from a pool of [`POD_POOL`] (Kubernetes' limit of pods per
//! cluster), so at large N pods back several services, as they would in a real cluster.
//!
//! In full runs, 100 000 services × 10 endpoints are also loaded once (unless a size that
//! large is asked for anyway) to answer "does it load at all".

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{maps, Frontend, FrontendKey};

use super::{
    results::{Figure, Results, Settings},
    rule_apply::Throwaway,
};
use crate::build::{run_build, BuildArgs};

/// Kubernetes' documented maximum of pods per cluster.
const POD_POOL: usize = 150_000;
/// The size checked to load at all.
const HUNDRED_K: (usize, usize) = (100_000, 10);
const NODE_IP: &str = "172.18.0.2";

pub fn run(settings: &Settings, results: &mut Results, status: &mut dyn FnMut(&str)) -> Result<()> {
    status("memory: building the agent");
    let artifacts = run_build(&BuildArgs {
        release: !settings.quick,
    })?;
    let agent = artifacts.bin_dir.join("lb-agent");
    let mut sizes = settings.sizes();
    let check_100k = !settings.quick && !sizes.iter().any(|s| s.0 >= HUNDRED_K.0);
    if check_100k {
        sizes.push(HUNDRED_K);
    }
    for size in sizes {
        status(&format!("memory: agent with {}x{}", size.0, size.1));
        match measure(&agent, &artifacts.workspace, size) {
            Ok(m) => {
                if size.0 >= HUNDRED_K.0 {
                    results.note(format!(
                        "memory: {}x{} loaded: yes, RSS {:.1} MiB, maps {:.1} MiB, in {:.1} s",
                        size.0,
                        size.1,
                        m.rss_mib,
                        m.map_mib,
                        m.program.as_secs_f64()
                    ));
                }
                // The 100k check keeps its figures too: the report's target reads them.
                results.push(Figure::single("agent_rss", "ebpf", size, "MiB", m.rss_mib));
                results.push(Figure::single("map_memory", "ebpf", size, "MiB", m.map_mib));
                results.push(Figure::single(
                    "program_full",
                    "ebpf-file",
                    size,
                    "ms",
                    m.program.as_secs_f64() * 1e3,
                ));
                results.note(format!(
                    "memory {}x{}: map memory by map (MiB): {}",
                    size.0,
                    size.1,
                    m.by_map
                        .iter()
                        .filter(|(_, b)| **b >= 1 << 16)
                        .map(|(name, b)| format!("{name} {:.1}", *b as f64 / MIB))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Err(e) if size.0 >= HUNDRED_K.0 => {
                results.note(format!("memory: {}x{} loaded: no ({e:#})", size.0, size.1));
            }
            Err(e) => return Err(e.context(format!("memory at {}x{}", size.0, size.1))),
        }
    }
    results.note(format!(
        "memory: agent {} ({} build), file source; endpoints drawn from {POD_POOL} pods; \
         map memory is the sum of `memlock` over the agent's map fds (/proc/PID/fdinfo)",
        agent.display(),
        if settings.quick { "debug" } else { "release" }
    ));
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// What one agent run showed.
struct Measured {
    rss_mib: f64,
    map_mib: f64,
    /// memlock bytes per map name.
    by_map: BTreeMap<String, u64>,
    program: Duration,
}

fn measure(agent: &Path, workspace: &Path, size: (usize, usize)) -> Result<Measured> {
    let tag = format!("lbk-mem-{}", std::process::id());
    let ns = Throwaway::create(&tag)?;
    for args in [
        "link set lo up",
        "link add up0 type veth peer name up1",
        "link set up0 up",
        "link set up1 up",
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        ip_in(ns.0.as_str(), &args)?;
    }
    ip_in(
        ns.0.as_str(),
        &["addr", "add", &format!("{NODE_IP}/16"), "dev", "up0"],
    )?;
    let work = Scratch(workspace.join("target/bench").join(&tag));
    let source = work.0.join("source");
    std::fs::create_dir_all(&source)?;
    write_manifests(&source, size.0, size.1)?;
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(&tag));
    let ready = work.0.join("ready");
    let log = std::fs::File::create(work.0.join("agent.log"))?;

    let mut cmd = Command::new(agent);
    cmd.arg("--node-name")
        .arg("bench")
        .arg("--source")
        .arg(format!("file:{}", source.display()))
        .arg("--pin-dir")
        .arg(&pins.0)
        .arg("--ready-file")
        .arg(&ready)
        .args([
            "--socket-lb",
            "false",
            "--xdp-mode",
            "off",
            "--uplink",
            "up0",
        ])
        .args(["--node-ip", NODE_IP, "--pod-cidr", "10.244.0.0/24"])
        .args(["--cluster-cidr", "10.128.0.0/9"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    lb_lab::netns::enter_on_spawn(&mut cmd, ns.0.as_str())?;
    let child = Agent::new(cmd.spawn().context("starting lb-agent")?);
    let limit = Duration::from_secs(60 + (size.0 * size.1 / 2000) as u64);
    let program = wait_ready(&child, &ready, limit).with_context(|| {
        format!(
            "agent not ready (its log: {})",
            tail(&work.0.join("agent.log"))
        )
    })?;
    let programmed = frontend_count(&pins.0.join(maps::FRONTENDS))?;
    ensure!(
        programmed == size.0,
        "the agent was ready with {programmed} frontends programmed, not {}",
        size.0
    );
    let pid = child.0.id();
    let rss_mib = vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
        .context("no VmRSS")? as f64
        / 1024.0;
    let by_map = map_memory(pid)?;
    let map_mib = by_map.values().sum::<u64>() as f64 / MIB;
    drop(child);
    Ok(Measured {
        rss_mib,
        map_mib,
        by_map,
        program,
    })
}

/// Waits for the agent's ready file; the time from the agent's spawn until it appeared.
fn wait_ready(agent: &Agent, ready: &Path, limit: Duration) -> Result<Duration> {
    let started = agent.1;
    loop {
        if ready.exists() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("no ready file after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Entries in the pinned frontend map.
fn frontend_count(pin: &Path) -> Result<usize> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: HashMap<MapData, FrontendKey, Frontend> = HashMap::try_from(Map::HashMap(data))?;
    Ok(map.keys().filter(|k| k.is_ok()).count())
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one BPF map fd's `/proc/PID/fdinfo` says: the map's id (fdinfo has no name) and
/// the kernel memory charged for it.
#[derive(Debug, PartialEq)]
struct MapFdInfo {
    map_id: u32,
    memlock: u64,
}

fn parse_map_fdinfo(text: &str) -> Option<MapFdInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(MapFdInfo {
        map_id: field("map_id:")?.parse().ok()?,
        memlock: field("memlock:")?.parse().ok()?,
    })
}

/// memlock bytes of every BPF map the process holds, by map name (looked up by id), each
/// map counted once however many fds point at it.
fn map_memory(pid: u32) -> Result<BTreeMap<String, u64>> {
    let mut seen = std::collections::HashSet::new();
    let mut by_name = BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let fd = fd?;
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))?;
        let Some(map) = parse_map_fdinfo(&info) else {
            continue;
        };
        if !seen.insert(map.map_id) {
            continue;
        }
        let name = aya::maps::MapInfo::from_id(map.map_id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map {}", map.map_id));
        *by_name.entry(name).or_insert(0) += map.memlock;
    }
    ensure!(!by_name.is_empty(), "the agent holds no BPF map");
    Ok(by_name)
}

/// Service `i`'s ClusterIP: 10.96.0.1 on, in 10.96.0.0/12.
fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1)
}

/// Pod `k` of the pool, in 10.128.0.0/9.
fn pod_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (k % POD_POOL) as u32 + 1)
}

/// N Services with one EndpointSlice of E endpoints each, a thousand services per file.
fn write_manifests(dir: &Path, n: usize, e: usize) -> Result<()> {
    for (file, first) in (0..n).step_by(1000).enumerate() {
        let mut text = String::new();
        for i in first..(first + 1000).min(n) {
            manifest(&mut text, i, e);
        }
        std::fs::write(dir.join(format!("svc-{file:04}.yaml")), text)?;
    }
    Ok(())
}

fn manifest(out: &mut String, i: usize, e: usize) {
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
         spec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
         name: svc-{i}-0\n  namespace: bench\n  labels: {{kubernetes.io/service-name: svc-{i}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
        cluster_ip(i)
    );
    for j in 0..e {
        let _ = writeln!(out, "- addresses: [{}]", pod_ip(i * e + j));
    }
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The agent we started, stopped by its PID when dropped (SIGTERM, then SIGKILL).
struct Agent(Child, Instant);

impl Agent {
    fn new(child: Child) -> Self {
        Agent(child, Instant::now())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Our own child, not reaped yet: the PID is still its.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private bpffs directory, removed (maps and links unpinned) when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                eprintln!("could not remove {}: {e}", self.0.display());
            }
        }
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_fdinfo_gives_id_and_memlock() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1056\nmap_type:\t1\n\
                    key_size:\t8\nvalue_size:\t16\nmax_entries:\t131072\nmap_flags:\t0x1\n\
                    map_extra:\t0x0\nmemlock:\t1058816\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(
            parse_map_fdinfo(text),
            Some(MapFdInfo {
                map_id: 42,
                memlock: 1_058_816
            })
        );
        assert_eq!(parse_map_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tlb-agent\nVmPeak:\t  100 kB\nVmRSS:\t   23456 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(23_456));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn manifests_parse_as_services_and_slices() {
        let mut text = String::new();
        manifest(&mut text, 0, 2);
        manifest(&mut text, 299, 2);
        let docs: Vec<serde_json::Value> = text
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_norway::from_str(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0]["kind"], "Service");
        assert_eq!(docs[0]["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(docs[1]["kind"], "EndpointSlice");
        assert_eq!(
            docs[1]["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-0"
        );
        assert_eq!(docs[1]["endpoints"][1]["addresses"][0], "10.128.0.2");
        assert_eq!(docs[2]["spec"]["clusterIP"], "10.96.1.44");
        assert_eq!(docs[3]["endpoints"][0]["addresses"][0], "10.128.2.87");
    }

    #[test]
    fn pods_wrap_at_the_pool_and_services_stay_in_the_service_cidr() {
        assert_eq!(pod_ip(POD_POOL), pod_ip(0));
        assert_eq!(cluster_ip(99_999), Ipv4Addr::new(10, 97, 134, 160));
    }
}
