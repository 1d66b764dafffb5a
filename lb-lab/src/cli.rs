//! `cargo xtask lab ...`: the lab's command line, as xtask embeds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::daemonset::AgentPrivileges;
use crate::lab::{command_in, AgentSource, Lab, UpOptions};
use crate::manifests::{split_by_object, Store};
use crate::plan::Plan;
use crate::state::StateDir;
use crate::teardown::teardown;
use crate::testing::{try_lock, LockGuard};
use crate::topology::Offloads;
use crate::{netns, status, Binaries};

/// Lab subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab (tearing down an existing one first), start echo servers and agents, and
    /// wait until all are ready.
    Up {
        /// Start no agents: the bare fabric, for debugging without a datapath.
        #[arg(long)]
        no_agents: bool,
        /// On failure, leave the half-built lab for inspection.
        #[arg(long)]
        keep_on_failure: bool,
        /// Seconds to wait for every echo server and agent to be ready.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Where the agents read Services from: manifest files, or the lab's API server
        /// (started on the control-plane node, 172.18.0.2:6443, kubeconfig in the state dir).
        #[arg(long, value_enum, default_value_t = AgentSource::Kube)]
        agent_source: AgentSource,
        /// Transmit offloads on eth0 of the host and the nodes: `kind` leaves the veth
        /// defaults (tx checksum and TSO on, as in Kind); `off` turns tx checksum offload
        /// off (full checksums, no TSO), for comparison.
        #[arg(long, value_enum, default_value_t = Offloads::Kind)]
        offloads: Offloads,
        /// How the agents run: `daemonset` as uid 0 with only the capabilities of
        /// deploy/lb-agent.yaml (through setpriv), as in a cluster; `root` with all.
        #[arg(long, value_enum, default_value_t = AgentPrivileges::Daemonset)]
        agent_privileges: AgentPrivileges,
        /// Extra arguments for every agent, after `--` (e.g. `-- --bpf-log debug`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Stop the lab's processes, delete every lbk-* namespace and the agents' pin directories.
    Down,
    /// Show namespaces, addresses, processes and agent readiness.
    Status,
    /// Run a command inside a lab namespace: `exec worker -- ip route`. In a node's or a pod's
    /// namespace it also runs in that node's or pod's cgroup, under the socket-level LB.
    Exec {
        /// Namespace: `worker`, `lbk-worker`, `worker-echo-1`, `host`, `net`, ...
        ns: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Apply Services (EndpointSlices are derived from the pods) and other objects.
    Apply {
        /// YAML file with one or more documents.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the objects of a file applied earlier.
    Delete {
        /// YAML file with one or more documents.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Change a pod's readiness or termination, as kubelet would report it.
    Pod {
        /// Pod name: `worker-echo-1`, ...
        name: String,
        /// `ready`/`unready` set the Ready condition; `terminating` marks it deleted (it
        /// keeps running, as in its grace period); `running` clears that mark.
        #[arg(value_enum)]
        state: PodAction,
    },
}

/// What `lab pod` does to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PodAction {
    Ready,
    Unready,
    Terminating,
    Running,
}

/// Runs `cmd`. For `exec`, a non-zero exit status of the command ends this process with the
/// same status.
///
/// # Errors
/// Whatever the subcommand reports.
pub fn run(cmd: LabCommand, bins: &crate::Binaries) -> Result<()> {
    match cmd {
        LabCommand::Up {
            no_agents,
            keep_on_failure,
            timeout_secs,
            agent_source,
            offloads,
            agent_privileges,
            agent_args,
        } => {
            let _lock = lock()?;
            let opts = UpOptions {
                no_agents,
                keep_on_failure,
                ready_timeout: Duration::from_secs(timeout_secs),
                agent_args,
                agent_source,
                offloads,
                agent_privileges,
            };
            let lab = Lab::up(bins, opts)?;
            if agent_source == AgentSource::Kube {
                println!(
                    "lab: API server at {}; from the host: `cargo xtask lab exec host -- curl -s {}/api/v1/services`",
                    lab.control_plane().url(),
                    lab.control_plane().url()
                );
            }
            println!("lab: try `cargo xtask lab status` or `cargo xtask lab exec worker-client -- ip route`");
            Ok(())
        }
        LabCommand::Down => {
            let _lock = lock()?;
            print!("{}", teardown(bins)?);
            Ok(())
        }
        LabCommand::Status => {
            print!("{}", status::report(bins));
            Ok(())
        }
        LabCommand::Exec { ns, cmd } => exec(&ns, &cmd),
        LabCommand::Apply { file } => {
            let _lock = lock()?;
            apply(bins, &file)
        }
        LabCommand::Delete { file } => {
            let _lock = lock()?;
            delete(bins, &file)
        }
        LabCommand::Pod { name, state } => {
            let _lock = lock()?;
            let lab = Lab::attach(bins)?;
            match state {
                PodAction::Ready => lab.set_pod_ready(&name, true)?,
                PodAction::Unready => lab.set_pod_ready(&name, false)?,
                PodAction::Terminating => lab.set_pod_terminating(&name, true)?,
                PodAction::Running => lab.set_pod_terminating(&name, false)?,
            }
            let now = lab.pod_state(&name)?;
            println!(
                "pod {name}: ready={} terminating={}",
                now.ready, now.terminating
            );
            Ok(())
        }
    }
}

/// The running lab if it uses the API server (kube mode); `None` for file mode.
fn kube_lab(bins: &Binaries) -> Result<Option<Lab>> {
    if !StateDir::new(&bins.state_dir).apiserver_pid().exists() {
        return Ok(None);
    }
    Lab::attach(bins).map(Some)
}

/// Takes the lab lock, saying so if it has to wait (a lab test may be running).
fn lock() -> Result<LockGuard> {
    if let Some(guard) = try_lock(false).context("cannot open the lab lock")? {
        return Ok(guard);
    }
    eprintln!(
        "lab: waiting for the lab lock ({}), held by another lab user (a lab test?)",
        crate::testing::LOCK_FILE
    );
    try_lock(true)
        .context("cannot take the lab lock")?
        .context("lab lock not granted")
}

fn exec(ns: &str, args: &[String]) -> Result<()> {
    let full = netns::qualify(ns);
    if !netns::exists(&full) {
        anyhow::bail!("no namespace {full} (is the lab up? `cargo xtask lab status`)");
    }
    let mut cmd = command_in(&full, args)?;
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {} in {full}", crate::cmd::describe(&cmd)))?;
    if status.success() {
        return Ok(());
    }
    // Propagate as a shell would: the code, or 128 + the signal that killed it.
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    std::process::exit(code)
}

fn store_parts(bins: &Binaries) -> (StateDir, Plan) {
    (StateDir::new(&bins.state_dir), Plan::kind())
}

fn apply(bins: &Binaries, file: &Path) -> Result<()> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let objects = split_by_object(&yaml).with_context(|| format!("in {}", file.display()))?;
    if let Some(lab) = kube_lab(bins)? {
        for (id, doc) in objects {
            let rendered = lab
                .apply_yaml(&id.manifest_name(), &doc)
                .with_context(|| format!("applying {id}"))?;
            let derived = rendered
                .derived
                .first()
                .map(|(_, slices, eps)| format!(", {slices} EndpointSlice(s), {eps} endpoints"))
                .unwrap_or_default();
            // The first document is the object as the server stored it.
            let cluster_ip = serde_norway::Deserializer::from_str(&rendered.yaml)
                .next()
                .and_then(|doc| serde_norway::Value::deserialize(doc).ok())
                .and_then(|v| v["spec"]["clusterIP"].as_str().map(str::to_string))
                .map(|ip| format!(" (clusterIP {ip}{derived})"))
                .unwrap_or_default();
            println!("{id} applied{cluster_ip}");
        }
        return Ok(());
    }
    let (state, plan) = store_parts(bins);
    let store = Store {
        state: &state,
        pods: &plan.pods,
    };
    for (id, doc) in objects {
        let name = id.manifest_name();
        let rendered = store
            .apply(&name, &doc)
            .with_context(|| format!("applying {id}"))?;
        let derived = rendered
            .derived
            .first()
            .map(|(_, slices, eps)| format!(" (+{slices} EndpointSlice(s), {eps} endpoints)"))
            .unwrap_or_default();
        println!(
            "{id} applied{derived} -> {}",
            state.manifest(&name).display()
        );
    }
    Ok(())
}

fn delete(bins: &Binaries, file: &Path) -> Result<()> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let objects = split_by_object(&yaml).with_context(|| format!("in {}", file.display()))?;
    if let Some(lab) = kube_lab(bins)? {
        for (id, _) in objects {
            if lab.delete_yaml(&id.manifest_name())? {
                println!("{id} deleted");
            } else {
                println!("{id} was not applied");
            }
        }
        return Ok(());
    }
    let (state, plan) = store_parts(bins);
    let store = Store {
        state: &state,
        pods: &plan.pods,
    };
    for (id, _) in objects {
        if store.delete(&id.manifest_name())? {
            println!("{id} deleted");
        } else {
            println!("{id} was not applied");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: LabCommand,
    }

    #[test]
    fn exec_takes_the_command_after_a_double_dash() {
        let cli =
            Cli::try_parse_from(["lab", "exec", "worker", "--", "ip", "-br", "addr"]).unwrap();
        match cli.cmd {
            LabCommand::Exec { ns, cmd } => {
                assert_eq!(ns, "worker");
                assert_eq!(cmd, ["ip", "-br", "addr"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["lab", "exec", "worker"]).is_err());
    }

    #[test]
    fn up_accepts_no_agents_and_agent_arguments() {
        let cli =
            Cli::try_parse_from(["lab", "up", "--no-agents", "--", "--bpf-log", "debug"]).unwrap();
        match cli.cmd {
            LabCommand::Up {
                no_agents,
                agent_args,
                timeout_secs,
                ..
            } => {
                assert!(no_agents);
                assert_eq!(agent_args, ["--bpf-log", "debug"]);
                assert_eq!(timeout_secs, 30);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn up_takes_offloads_kind_by_default_or_off() {
        let cli = Cli::try_parse_from(["lab", "up"]).unwrap();
        assert!(matches!(
            cli.cmd,
            LabCommand::Up {
                offloads: Offloads::Kind,
                agent_privileges: AgentPrivileges::Daemonset,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["lab", "up", "--offloads", "off"]).unwrap();
        assert!(matches!(
            cli.cmd,
            LabCommand::Up {
                offloads: Offloads::Off,
                agent_privileges: AgentPrivileges::Daemonset,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["lab", "up", "--offloads", "on"]).is_err());
    }

    #[test]
    fn up_takes_an_agent_source_and_pod_takes_a_state() {
        let cli = Cli::try_parse_from(["lab", "up", "--agent-source", "kube"]).unwrap();
        assert!(matches!(
            cli.cmd,
            LabCommand::Up {
                agent_source: AgentSource::Kube,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["lab", "pod", "worker-echo-1", "unready"]).unwrap();
        assert!(matches!(
            cli.cmd,
            LabCommand::Pod { state: PodAction::Unready, ref name } if name == "worker-echo-1"
        ));
        assert!(Cli::try_parse_from(["lab", "pod", "worker-echo-1", "sleepy"]).is_err());
    }

    #[test]
    fn apply_and_delete_take_dash_f() {
        let cli = Cli::try_parse_from(["lab", "apply", "-f", "svc.yaml"]).unwrap();
        assert!(
            matches!(cli.cmd, LabCommand::Apply { file } if file == std::path::Path::new("svc.yaml"))
        );
        let cli = Cli::try_parse_from(["lab", "delete", "-f", "svc.yaml"]).unwrap();
        assert!(matches!(cli.cmd, LabCommand::Delete { .. }));
    }
}
