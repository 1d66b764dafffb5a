//! `lb-agent`: loads the datapath, attaches it to pod interfaces, and keeps its maps in step
//! with the Services and EndpointSlices of its source.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_agent::{
    attach::{Attacher, ScanReport},
    bpf_log,
    error_chain::error_chain,
    loader::{self, BpfLogLevel, Object},
    maps::aya::AyaMaps,
    model::desired_state,
    privilege,
    source::{self, Snapshot, SourceSpec},
    sync::Syncer,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

/// How often interfaces are rescanned (and a failed sync retried).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF service load balancer: programs the datapath from Services and EndpointSlices"
)]
struct Args {
    /// This node's name, as EndpointSlices give it in endpoints[].nodeName.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where Services and EndpointSlices come from: `file:DIR`.
    #[arg(long)]
    source: SourceSpec,
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
}

#[tokio::main(flavor = "current_thread")]
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
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    privilege::check_agent("lb-agent")?;
    let object = match &args.bpf_object {
        Some(path) => Object::File(path.clone()),
        None => Object::Embedded,
    };
    let mut ebpf = loader::load(&object, &args.pin_dir, args.bpf_log)?;
    info!(pin_dir = %args.pin_dir.display(), "datapath loaded");
    // Held for the life of the agent: dropping it stops the forwarding.
    let _bpf_log = match args.bpf_log {
        BpfLogLevel::Off => None,
        _ => bpf_log::spawn(&mut ebpf)
            .inspect_err(|e| warn!("{}; the datapath's log is not shown", error_chain(e)))
            .ok(),
    };
    let mut syncer = Syncer::new(AyaMaps::from_ebpf(&mut ebpf)?);
    let mut attacher = Attacher::new(&args.pod_iface_prefix);
    log_scan(attacher.rescan(&mut ebpf)?);

    let mut snapshots = source::spawn(&args.source)?;
    info!(source = %args.source, node = %args.node_name, "waiting for the first snapshot");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(RESCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<Arc<Snapshot>> = None;
    let mut ready = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    bail!("the source {} stopped", args.source);
                }
                pending = snapshots.borrow_and_update().clone();
            }
            _ = tick.tick() => match attacher.rescan(&mut ebpf) {
                Ok(report) => log_scan(report),
                Err(e) => warn!("{}", error_chain(&e)),
            },
        }
        let Some(snapshot) = pending.take() else {
            continue;
        };
        if let Err(e) = sync(&mut syncer, &snapshot, &args.node_name) {
            // Kept for the next tick: the maps are consistent, just not current.
            error!("sync failed, retrying: {e:#}");
            pending = Some(snapshot);
            continue;
        }
        if !ready {
            ready = true;
            if let Some(path) = &args.ready_file {
                write_ready_file(path)?;
            }
            info!("ready");
        }
    }
    // Maps stay pinned (a restarted agent picks them up); links detach as they drop.
    info!("exiting");
    Ok(())
}

fn sync(syncer: &mut Syncer<AyaMaps>, snapshot: &Snapshot, node_name: &str) -> Result<()> {
    let (desired, skipped) =
        desired_state(&snapshot.services, &snapshot.endpoint_slices, node_name);
    for s in &skipped {
        if s.reason.is_by_design() {
            debug!("skipping {s}");
        } else {
            warn!("skipping {s}");
        }
    }
    let r = syncer.sync(&desired)?;
    info!(
        "synced {} frontends, {} backends: {} writes, {} conntrack entries cleared, {} skipped, in {:?}",
        r.frontends,
        r.backends,
        r.writes,
        r.conntrack_deleted,
        skipped.len(),
        r.duration
    );
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
