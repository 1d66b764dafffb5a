//! `lb-agent`: loads the datapath, attaches it to pod interfaces, and keeps its maps in step
//! with the Services and EndpointSlices of its source; serves kube-proxy's health and
//! metrics endpoints.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_agent::{
    datapath::{
        attach::{
            node::{NodeAttachOptions, NodeAttacher},
            xdp::XdpModeFlag,
            Attacher, ScanReport,
        },
        bpf_log,
        config::{
            check_snat_range, parse_cluster_cidr, read_local_port_range, DatapathSettings,
            SnatPortRange, LOCAL_PORT_RANGE,
        },
        kernel,
        loader::{self, BpfLogLevel, Object},
        maps::aya::AyaMaps,
        privilege,
        sizing::{self, ConntrackSizes},
    },
    error_chain::error_chain,
    model::node::{Ipv4Cidr, NodeOverrides},
    pipeline::{self, Pipeline, PipelineConfig, RunOptions},
    serve::{
        datapath_stats::PinnedStats,
        health::Health,
        health_check_ports,
        metrics::{DatapathStats, Metrics},
        server::{self, Routes},
    },
    source::{self, SourceSpec, EVENT_QUEUE},
    sync::Syncer,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
};
use tracing::{info, warn};

/// How often interfaces are rescanned.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How long the first sync waits for this node's Node before using the flags alone.
const NODE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF service load balancer: programs the datapath from Services and EndpointSlices"
)]
struct Args {
    /// This node's name, as EndpointSlices give it in endpoints[].nodeName and as its Node
    /// is named.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where Services and EndpointSlices come from: `kube` (the API server) or `file:DIR`.
    #[arg(long)]
    source: SourceSpec,
    /// kubeconfig for `--source kube`; default: KUBECONFIG, ~/.kube/config, or in-cluster.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// bpffs directory to pin the maps in; maps found there are reused.
    #[arg(long)]
    pin_dir: PathBuf,
    /// Attach to interfaces whose name starts with this.
    #[arg(long, default_value = "veth")]
    pod_iface_prefix: String,
    /// eBPF object to load instead of the embedded one.
    #[arg(long)]
    bpf_object: Option<PathBuf>,
    /// Log level of the datapath's own log (aya-log); off costs nothing at run time.
    #[arg(long, value_enum, default_value_t = BpfLogLevel::Off)]
    bpf_log: BpfLogLevel,
    /// File written after the first full sync with programs attached, removed on exit.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// This node's addresses (NodePort frontends); replaces the Node's. Repeatable.
    #[arg(long = "node-ip", value_delimiter = ',')]
    node_ips: Vec<Ipv4Addr>,
    /// This node's pod CIDRs; replaces the Node's spec.podCIDRs. Repeatable.
    #[arg(long = "pod-cidr", value_delimiter = ',')]
    pod_cidrs: Vec<Ipv4Cidr>,
    /// This node's zone (topology hints); replaces the Node's topology.kubernetes.io/zone.
    #[arg(long)]
    zone: Option<String>,
    /// Where `/metrics` and `/state` are served.
    #[arg(long, default_value = "0.0.0.0:10249")]
    metrics_bind_address: SocketAddr,
    /// Where `/healthz` is served, as kube-proxy serves it.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: SocketAddr,
    /// Syncs start at least this far apart; changes in between are batched (e.g. 0s, 5ms).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// /healthz turns 503 when a change waits longer than twice this (kube-proxy's rule).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sync_period: Duration,
    /// A full resync (a diff against everything the maps hold) this often; 0 turns it off.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    full_resync_period: Duration,
    /// The cluster's pod CIDR, as kube-proxy's flag: clients inside it are internal, others
    /// reaching a ClusterIP are masqueraded. Empty: unknown (nobody is masqueraded for a
    /// ClusterIP). A dual-stack list is accepted; its IPv4 CIDR is used.
    #[arg(long, default_value = "", value_parser = cluster_cidr_flag)]
    cluster_cidr: ClusterCidr,
    /// Source ports of masqueraded flows, MIN-MAX inclusive (above the ephemeral and
    /// NodePort ranges by default).
    #[arg(long, default_value = "61000-65535")]
    snat_port_range: SnatPortRange,
    /// The interface north-south traffic arrives on; default: the one holding this
    /// node's address.
    #[arg(long)]
    uplink: Option<String>,
    /// XDP on the uplink: auto (native if the driver can, else generic), native, generic
    /// or off.
    #[arg(long, value_enum, default_value_t = XdpModeFlag::Auto)]
    xdp_mode: XdpModeFlag,
    /// Socket-level load balancing for the node's own processes (cgroup programs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// The cgroup2 directory the socket programs attach to; default: the cgroup2 mount
    /// in /proc/mounts.
    #[arg(long)]
    cgroup_path: Option<PathBuf>,
    /// The cluster's NodePort range (the API server's --service-node-port-range):
    /// masquerade ports must stay out of it.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: SnatPortRange,
    /// Entries of the TCP conntrack table (two per flow); 0: sized from the node's memory
    /// (see --conntrack-memory-ratio). A table already pinned keeps its size.
    #[arg(long, default_value_t = 0)]
    conntrack_tcp_max: u32,
    /// Entries of the conntrack table of every other protocol; 0: from memory.
    #[arg(long, default_value_t = 0)]
    conntrack_any_max: u32,
    /// The share of the node's memory the conntrack tables take when sized from it.
    #[arg(long, default_value_t = sizing::DEFAULT_RATIO)]
    conntrack_memory_ratio: f64,
    /// How long a TCP flow waits for the backend's SYN-ACK.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    conntrack_tcp_timeout_syn: Duration,
    /// How long an established TCP flow may be idle (kube-proxy's flag of the same name).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    conntrack_tcp_timeout_established: Duration,
    /// How long a half-closed TCP flow may be idle (kube-proxy's flag of the same name).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    conntrack_tcp_timeout_close_wait: Duration,
    /// How long a closed or reset TCP flow is kept for its last segments.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    conntrack_tcp_timeout_close: Duration,
    /// How long a UDP flow may be idle (kube-proxy's flag of the same name).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    conntrack_udp_timeout: Duration,
    #[command(flatten)]
    conntrack_gc: ConntrackGcFlags,
}

impl Args {
    /// The conntrack timeouts the flags ask for (each at least a second).
    fn ct_timeouts(&self) -> lb_common::CtTimeouts {
        let s = |d: Duration| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX);
        lb_common::CtTimeouts {
            syn_sent_s: s(self.conntrack_tcp_timeout_syn),
            established_s: s(self.conntrack_tcp_timeout_established),
            half_closed_s: s(self.conntrack_tcp_timeout_close_wait),
            closing_s: s(self.conntrack_tcp_timeout_close),
            reset_s: s(self.conntrack_tcp_timeout_close),
            udp_s: s(self.conntrack_udp_timeout),
        }
    }

    /// The conntrack tables' sizes: the flags', else from the node's memory.
    fn conntrack_sizes(&self) -> Result<ConntrackSizes> {
        let memory = if self.conntrack_tcp_max != 0 && self.conntrack_any_max != 0 {
            0
        } else {
            sizing::total_memory().context("reading the node's memory to size conntrack")?
        };
        Ok(ConntrackSizes::for_node(
            memory,
            self.conntrack_memory_ratio,
            self.conntrack_tcp_max,
            self.conntrack_any_max,
        ))
    }
}

/// `--cluster-cidr`: `None` when unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClusterCidr(Option<Ipv4Cidr>);

fn cluster_cidr_flag(s: &str) -> Result<ClusterCidr, String> {
    parse_cluster_cidr(s).map(ClusterCidr)
}

/// `500ms`, `30s`, `5m`, `1h`, or `0`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{s:?} has unknown unit {unit:?}: use ms, s, m or h"
        )),
    }
}

// --- Conntrack GC (lb_agent::sync::conntrack_gc) ---

/// The conntrack GC's flags.
#[derive(Debug, clap::Args)]
struct ConntrackGcFlags {
    /// Pause between conntrack GC rounds; 0: adaptive (from 10s, shorter when a round
    /// deletes much, longer when it deletes little, 1s while a table over half full still
    /// yields entries to delete).
    #[arg(long = "conntrack-gc-interval", default_value = "0", value_parser = parse_duration)]
    interval: Duration,
    /// The longest adaptive pause between conntrack GC rounds.
    #[arg(long = "conntrack-gc-max-interval", default_value = "5m", value_parser = parse_duration)]
    max_interval: Duration,
}

impl ConntrackGcFlags {
    fn options(&self) -> lb_agent::sync::conntrack_gc::run::GcOptions {
        lb_agent::sync::conntrack_gc::run::GcOptions {
            interval: lb_agent::sync::conntrack_gc::IntervalPolicy::from_flags(
                self.interval,
                self.max_interval,
            ),
            ..Default::default()
        }
    }
}

/// Starts the conntrack GC on the pinned tables (its own thread and file descriptors); it
/// stops when the handle is dropped. Without it a full table would refuse new flows for
/// good, so an agent that cannot run it does not start.
fn spawn_conntrack_gc(
    args: &Args,
    metrics: Arc<Metrics>,
    counts: Arc<lb_agent::sync::conntrack_gc::EntryCounts>,
) -> Result<lb_agent::sync::conntrack_gc::run::GcHandle> {
    let options = args.conntrack_gc.options();
    let handle = lb_agent::sync::conntrack_gc::run::spawn(&args.pin_dir, options, metrics, counts)
        .context("starting the conntrack GC")?;
    match options.interval.fixed {
        Some(every) => info!(interval = ?every, "conntrack GC started"),
        None => info!(max_interval = ?options.interval.max, "conntrack GC started (adaptive)"),
    }
    Ok(handle)
}

#[cfg(test)]
mod conntrack_gc_flags_tests {
    use super::*;

    #[test]
    fn conntrack_gc_flags_default_to_adaptive_up_to_five_minutes() {
        let base = [
            "lb-agent",
            "--node-name",
            "n",
            "--pin-dir",
            "/p",
            "--source",
            "kube",
        ];
        let parse = |extra: &[&str]| {
            Args::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())
        };
        let d = parse(&[])
            .expect("defaults")
            .conntrack_gc
            .options()
            .interval;
        assert_eq!((d.fixed, d.max), (None, Duration::from_secs(300)));
        let set = parse(&[
            "--conntrack-gc-interval",
            "30s",
            "--conntrack-gc-max-interval",
            "2m",
        ])
        .expect("valid")
        .conntrack_gc
        .options()
        .interval;
        assert_eq!(
            (set.fixed, set.max),
            (Some(Duration::from_secs(30)), Duration::from_secs(120))
        );
        let err = parse(&["--conntrack-gc-interval", "10"]).expect_err("no unit");
        assert!(err.contains("--conntrack-gc-interval"), "{err}");
    }
}

// --- end of the conntrack GC ---

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // A ready file left by an earlier run must not announce this one.
    let result = match clear_ready_file(&args) {
        Ok(()) => run(&args).await,
        Err(e) => Err(e),
    };
    let result = result.and(clear_ready_file(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    privilege::check_agent("lb-agent")?;
    kernel::check()?;
    let node_options = NodeAttachOptions {
        uplink: args.uplink.clone(),
        xdp_mode: args.xdp_mode,
        socket_lb: args.socket_lb,
        cgroup_path: args.cgroup_path.clone(),
    };
    node_options.check()?;
    // Everything that can be wrong with the flags fails here, before the datapath changes.
    let client = match &args.source {
        SourceSpec::Kube => Some(source::kube::client(args.kubeconfig.as_deref()).await?),
        SourceSpec::File(dir) => {
            // A directory that is not there fails now, not after the datapath is loaded.
            source::file::FileSource::new(dir.clone())?;
            if args.kubeconfig.is_some() {
                warn!("--kubeconfig is only used with --source kube");
            }
            None
        }
    };
    let local_ports = read_local_port_range(LOCAL_PORT_RANGE)?;
    check_snat_range(args.snat_port_range, local_ports, args.node_port_range)?;
    let sizes = args.conntrack_sizes()?;
    let metrics_listener =
        server::bind(args.metrics_bind_address, "--metrics-bind-address").await?;
    let healthz_listener =
        server::bind(args.healthz_bind_address, "--healthz-bind-address").await?;

    let object = match &args.bpf_object {
        Some(path) => Object::File(path.clone()),
        None => Object::Embedded,
    };
    let mut ebpf = loader::load(&object, &args.pin_dir, args.bpf_log, &sizes.maps())?;
    info!(
        pin_dir = %args.pin_dir.display(),
        conntrack_tcp = sizes.tcp,
        conntrack_any = sizes.any,
        "datapath loaded"
    );
    // Held for the life of the agent: dropping it stops the forwarding.
    let _bpf_log = match args.bpf_log {
        BpfLogLevel::Off => None,
        _ => bpf_log::spawn(&mut ebpf)
            .inspect_err(|e| warn!("{}; the datapath's log is not shown", error_chain(e)))
            .ok(),
    };
    let maps = AyaMaps::from_ebpf(&mut ebpf)?;
    let stats = PinnedStats::open(&args.pin_dir)
        .inspect_err(|e| warn!("{}; datapath counters are not exported", error_chain(e)))
        .ok();
    // The conntrack GC counts the tables' entries for these stats.
    let conntrack_counts = stats
        .as_ref()
        .map(PinnedStats::conntrack_counts)
        .unwrap_or_default();
    let stats = stats.map(|s| Box::new(s) as Box<dyn DatapathStats>);
    // Pinned, so the programs keep serving while this agent is down, and the next agent
    // (or a new object) takes the links over atomically.
    let links_dir = args.pin_dir.join("links");
    let mut attacher = Attacher::pinned(&args.pod_iface_prefix, &links_dir)?;
    log_scan(attacher.rescan(&mut ebpf)?);

    let metrics = Metrics::new(stats);
    // Conntrack GC: stopped (after its pass under way) when this drops at exit.
    let _conntrack_gc = spawn_conntrack_gc(args, metrics.clone(), conntrack_counts)?;
    let mut node_side =
        NodeAttacher::start(&mut ebpf, &links_dir, node_options, Some(metrics.clone()))?;
    let health = Arc::new(Health::new(args.sync_period * 2));
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let _source_tasks = match (&args.source, client) {
        (SourceSpec::File(dir), _) => {
            // A thread of its own, which stops when the pipeline drops its receiver.
            source::file::spawn_events(
                dir.clone(),
                args.node_name.clone(),
                events_tx,
                Some(metrics.clone()),
            )?;
            Vec::new()
        }
        (SourceSpec::Kube, Some(client)) => {
            source::kube::spawn(client, &args.node_name, events_tx, metrics.clone())
        }
        (SourceSpec::Kube, None) => bail!("no Kubernetes client"),
    };
    let (state_tx, mut state_requests) = mpsc::channel(16);
    let _servers = [
        server::spawn(
            metrics_listener,
            Routes::Metrics {
                metrics: metrics.clone(),
                health: health.clone(),
                state: state_tx,
            },
        ),
        server::spawn(healthz_listener, Routes::Health(health.clone())),
    ];
    info!(
        metrics = %args.metrics_bind_address,
        healthz = %args.healthz_bind_address,
        "serving metrics and health"
    );

    let config = PipelineConfig {
        node_name: args.node_name.clone(),
        overrides: NodeOverrides {
            ips: args.node_ips.clone(),
            pod_cidrs: args.pod_cidrs.clone(),
            zone: args.zone.clone(),
        },
        expect_node: args.source.has_nodes(),
        datapath: DatapathSettings {
            node_addr: None,
            cluster_cidr: args.cluster_cidr.0,
            snat_ports: args.snat_port_range,
            ct_timeouts: args.ct_timeouts(),
        },
    };
    let options = RunOptions {
        min_sync_period: args.min_sync_period,
        full_resync_period: (!args.full_resync_period.is_zero()).then_some(args.full_resync_period),
        retry_interval: RESCAN_INTERVAL,
        node_wait: NODE_WAIT,
    };
    let mut pipeline = Pipeline::new(Syncer::new(maps), config, metrics, health.clone());
    pipeline.set_attachments(node_side.subscribe());
    let node = pipeline.subscribe_node();
    // kube-proxy binds health check node ports on every address.
    let _health_check_ports = health_check_ports::spawn(
        pipeline.subscribe_health_checks(),
        Ipv4Addr::UNSPECIFIED.into(),
        Some(health),
    );
    node_side.tick(&mut ebpf, &node.borrow().ips);
    let (synced_tx, mut synced) = watch::channel(false);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut pipeline_task = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        pipeline::run(
            &mut pipeline,
            &mut events,
            &mut state_requests,
            &options,
            &synced_tx,
            stop,
        )
        .await
    });
    info!(source = %args.source, node = %args.node_name, "waiting for the first complete list");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(RESCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            ended = &mut pipeline_task => {
                return match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e).context(format!("source {}", args.source)),
                    Err(e) => Err(e).context("the sync loop failed"),
                };
            }
            changed = synced.changed(), if !ready => {
                if changed.is_ok() && *synced.borrow() {
                    ready = true;
                    if let Some(path) = &args.ready_file {
                        write_ready_file(path)?;
                    }
                    info!("ready");
                }
            }
            _ = tick.tick() => {
                match attacher.rescan(&mut ebpf) {
                    Ok(report) => log_scan(report),
                    Err(e) => warn!("{}", error_chain(&e)),
                }
                let ips = node.borrow().ips.clone();
                node_side.tick(&mut ebpf, &ips);
            }
        }
    }
    // Maps stay pinned (a restarted agent picks them up); links detach as they drop.
    let _ = stop_tx.send(());
    let _ = pipeline_task.await;
    info!("exiting");
    Ok(())
}

fn log_scan(report: ScanReport) {
    for iface in report.attached {
        info!(%iface, "attached");
    }
    for iface in report.gone {
        info!(%iface, "interface gone");
    }
    for e in report.failed {
        warn!("{}", error_chain(&e));
    }
}

/// Written whole or not at all: whoever waits for it never reads a partial file.
fn write_ready_file(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, "ready\n").with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn clear_ready_file(args: &Args) -> Result<()> {
    let Some(path) = &args.ready_file else {
        return Ok(());
    };
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn bad_flags_are_rejected_with_the_value() {
        let base = ["lb-agent", "--node-name", "n", "--pin-dir", "/sys/fs/bpf/x"];
        let parse = |extra: &[&str]| {
            Args::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())
        };
        let err = parse(&["--source", "etcd"]).expect_err("unknown source");
        assert!(err.contains("unsupported source \"etcd\""), "{err}");
        let err = parse(&["--source", "kube", "--metrics-bind-address", "nope"])
            .expect_err("bad address");
        assert!(err.contains("--metrics-bind-address"), "{err}");
        let err = parse(&["--source", "kube", "--pod-cidr", "10.0.0.0"]).expect_err("bad cidr");
        assert!(err.contains("is not a CIDR"), "{err}");
        let ok = parse(&["--source", "kube", "--node-ip", "10.0.0.1,10.0.0.2"]).expect("valid");
        assert_eq!(ok.node_ips.len(), 2);
        assert_eq!(ok.metrics_bind_address.port(), 10249);
        assert_eq!(ok.healthz_bind_address.port(), 10256);
    }

    #[test]
    fn north_south_flags_have_defaults_and_are_validated() {
        let base = [
            "lb-agent",
            "--node-name",
            "n",
            "--pin-dir",
            "/p",
            "--source",
            "kube",
        ];
        let parse = |extra: &[&str]| {
            Args::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())
        };
        let d = parse(&[]).expect("defaults");
        assert_eq!(d.cluster_cidr, ClusterCidr(None));
        assert_eq!(d.snat_port_range, SnatPortRange::default());
        assert_eq!((d.uplink, d.xdp_mode), (None, XdpModeFlag::Auto));
        assert!(d.socket_lb);
        assert_eq!(d.cgroup_path, None);

        let set = parse(&[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--snat-port-range",
            "62000-62999",
            "--uplink",
            "eth0",
            "--xdp-mode",
            "generic",
            "--socket-lb",
            "false",
            "--cgroup-path",
            "/sys/fs/cgroup",
        ])
        .expect("valid");
        assert_eq!(
            set.cluster_cidr.0.map(|c| c.to_string()),
            Some("10.244.0.0/16".into())
        );
        assert_eq!(
            (set.snat_port_range.min, set.snat_port_range.max),
            (62_000, 62_999)
        );
        assert_eq!(set.xdp_mode, XdpModeFlag::Generic);
        assert!(!set.socket_lb);

        let err = parse(&["--snat-port-range", "65000-61000"]).expect_err("empty range");
        assert!(err.contains("--snat-port-range"), "{err}");
        let err = parse(&["--cluster-cidr", "10.244.0.0"]).expect_err("bad cidr");
        assert!(err.contains("--cluster-cidr"), "{err}");
        let err = parse(&["--xdp-mode", "turbo"]).expect_err("bad mode");
        assert!(err.contains("--xdp-mode"), "{err}");
    }
}
