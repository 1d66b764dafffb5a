//! The lab as a whole: bring it up, attach to it, use it from tests, tear it down.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apiserver::{Client, PauseMode};
use crate::bpffs;
use crate::cgroup;
use crate::control_plane::ControlPlane;
use crate::daemonset::{self, AgentPrivileges};
use crate::manifests::{Rendered, Store};
use crate::netns;
use crate::plan::{Node, Plan, Pod, CLUSTER_CIDR, ECHO_PORT};
use crate::pod_state::{PodState, PodStates};
use crate::probe::{self, ProbeError, ProbeRequest, Transport};
use crate::process::{self, DaemonSpec, PidRecord};
use crate::state::{remove_dir_if_exists, remove_file_if_exists, write_atomic, StateDir};
use crate::teardown::{teardown, Teardown};
use crate::topology::{self, Offloads};
use crate::Binaries;

/// How many log lines an error shows.
const LOG_TAIL_LINES: usize = 20;
/// How long a restarted API server may take to answer.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the agents read Services and EndpointSlices from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentSource {
    /// `--source file:<state_dir>/manifests`: the lab writes manifests, with EndpointSlices
    /// derived from the pods.
    File,
    /// `--source kube --kubeconfig <state_dir>/kubeconfig`: the lab runs its API server on
    /// the control-plane node (172.18.0.2:6443, as in Kind) and writes objects through it,
    /// so the agents run exactly as they would in Kind.
    #[default]
    Kube,
}

/// Options for [`Lab::up`].
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Start no agents: the bare fabric, for debugging without a datapath.
    pub no_agents: bool,
    /// On failure, leave what was built for inspection instead of tearing it down.
    pub keep_on_failure: bool,
    /// How long to wait for every echo server and agent to be ready.
    pub ready_timeout: Duration,
    /// Extra arguments for every agent, e.g. `["--bpf-log", "debug"]`.
    pub agent_args: Vec<String>,
    /// Manifest files or the lab's API server.
    pub agent_source: AgentSource,
    /// Transmit offloads on the host's and nodes' `eth0`: Kind's veth defaults, or off.
    pub offloads: Offloads,
    /// The DaemonSet's capabilities only (the default), or root's.
    pub agent_privileges: AgentPrivileges,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            no_agents: false,
            keep_on_failure: false,
            ready_timeout: Duration::from_secs(30),
            agent_args: Vec::new(),
            agent_source: AgentSource::default(),
            offloads: Offloads::default(),
            agent_privileges: AgentPrivileges::default(),
        }
    }
}

/// A running lab.
///
/// Dropping a `Lab` leaves it running (so `attach` never tears down somebody's lab); call
/// [`Lab::down`] or wrap it with [`Lab::down_on_drop`].
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use lb_lab::{Binaries, Lab, UpOptions};
/// // In an integration test: Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab"))).
/// let bins = Binaries::beside(std::path::Path::new("target/debug/lb-lab"));
/// let _lock = lb_lab::testing::lab_lock();
/// let lab = Lab::up(&bins, UpOptions::default())?.down_on_drop();
/// let echo = lab.pod("worker-echo-1").unwrap();
/// let name = lab.probe_tcp("worker2-client", (echo.ip, 8080), "/hostname")?;
/// assert_eq!(name, "worker-echo-1");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lab {
    bins: Binaries,
    plan: Plan,
    state: StateDir,
    agents: bool,
    source: AgentSource,
    offloads: Offloads,
    privileges: AgentPrivileges,
}

impl Lab {
    /// Builds the lab: namespaces, links, routes, an echo server in every pod and (unless
    /// `no_agents`) an agent on every node, then waits until all are ready. An existing lab is
    /// torn down first.
    ///
    /// # Errors
    /// If not root, a binary is missing, a step fails, or something is not ready in time; the
    /// error carries the tail of the relevant log. Unless `keep_on_failure`, the half-built lab
    /// is torn down first.
    pub fn up(bins: &Binaries, opts: UpOptions) -> Result<Lab> {
        preflight(bins, &opts)?;
        let existing = netns::list_lab().context("listing network namespaces")?;
        if !existing.is_empty() {
            println!(
                "lab: tearing down the existing lab first ({} lbk-* namespaces)",
                existing.len()
            );
        }
        // Always: processes from a lab whose namespaces were deleted by hand still need stopping.
        let old = teardown(bins)?;
        if !existing.is_empty() {
            print!("{old}");
        }
        let lab = Lab {
            bins: bins.clone(),
            plan: Plan::kind(),
            state: StateDir::new(&bins.state_dir),
            agents: !opts.no_agents,
            source: opts.agent_source,
            offloads: opts.offloads,
            privileges: opts.agent_privileges,
        };
        match lab.build(&opts) {
            Ok(()) => Ok(lab),
            Err(e) if opts.keep_on_failure => Err(e.context(
                "lab left up for inspection (--keep-on-failure); `cargo xtask lab down` removes it",
            )),
            Err(e) => {
                if let Err(down) = teardown(bins) {
                    eprintln!("lab: tearing down after the failure also failed: {down:#}");
                }
                Err(e)
            }
        }
    }

    /// Uses the lab that is already up (for example from `cargo xtask lab up`).
    ///
    /// # Errors
    /// If any of the lab's namespaces is missing.
    pub fn attach(bins: &Binaries) -> Result<Lab> {
        let plan = Plan::kind();
        let missing: Vec<_> = plan
            .namespaces()
            .into_iter()
            .filter(|ns| !netns::exists(ns))
            .collect();
        if !missing.is_empty() {
            bail!(
                "the lab is not up (missing namespaces: {}); run `cargo xtask lab up`",
                missing.join(", ")
            );
        }
        let state = StateDir::new(&bins.state_dir);
        let agents = plan.nodes.iter().any(|n| {
            process::read_pid_file(&state.agent_pid(&n.name))
                .ok()
                .flatten()
                .is_some()
        });
        let source = if state.apiserver_pid().exists() {
            AgentSource::Kube
        } else {
            AgentSource::File
        };
        let offloads = read_offloads(&state)?;
        let privileges = read_privileges(&state)?;
        Ok(Lab {
            bins: bins.clone(),
            plan,
            state,
            agents,
            source,
            offloads,
            privileges,
        })
    }

    /// Tears the lab down (see [`teardown()`]).
    ///
    /// # Errors
    /// As [`teardown`].
    pub fn down(self) -> Result<Teardown> {
        teardown(&self.bins)
    }

    /// Wraps the lab so that it is torn down when the wrapper is dropped, even if a test
    /// panics.
    pub fn down_on_drop(self) -> DownOnDrop {
        DownOnDrop(Some(self))
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn nodes(&self) -> &[Node] {
        &self.plan.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.plan.pods
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.plan.node(name)
    }

    /// The pod called `name` (`worker-echo-1` or `lbk-worker-echo-1`).
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.plan.pod(name)
    }

    /// Whether agents were started.
    pub fn has_agents(&self) -> bool {
        self.agents
    }

    /// How the lab starts its agents.
    pub fn agent_privileges(&self) -> AgentPrivileges {
        self.privileges
    }

    /// The transmit offloads the lab was brought up with.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// Node `node`'s agent pin directory (`/sys/fs/bpf/lbk/<node>`).
    pub fn pin_dir(&self, node: &str) -> PathBuf {
        bpffs::pin_dir(node)
    }

    /// Node `node`'s agent log.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.state.agent_log(node)
    }

    /// Runs `args` inside namespace `ns` (`worker`, `lbk-worker`, `worker-echo-1`, ...) and
    /// returns its output, whatever its exit status.
    ///
    /// # Errors
    /// If `args` is empty, the namespace does not exist, or the command cannot start.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> Result<Output> {
        let mut cmd = command_in(ns, args)?;
        cmd.output().with_context(|| {
            format!(
                "cannot run {} in {}",
                crate::cmd::describe(&cmd),
                netns::qualify(ns)
            )
        })
    }

    /// `GET path` from namespace `from_ns` to `addr`; the response body.
    ///
    /// # Errors
    /// A [`ProbeError`]: `Refused`, `TimedOut`, an HTTP status, ...
    pub fn probe_tcp(
        &self,
        from_ns: &str,
        addr: impl Into<SocketAddr>,
        path: &str,
    ) -> Result<String, ProbeError> {
        self.probe(from_ns, &ProbeRequest::tcp(addr.into(), path))
    }

    /// Sends datagram `msg` from namespace `from_ns` (optionally from `src_port`) to `addr`;
    /// the reply.
    ///
    /// # Errors
    /// A [`ProbeError`].
    pub fn probe_udp(
        &self,
        from_ns: &str,
        addr: impl Into<SocketAddr>,
        msg: &str,
        src_port: Option<u16>,
    ) -> Result<String, ProbeError> {
        self.probe(
            from_ns,
            &ProbeRequest::udp(addr.into(), msg).from_port(src_port),
        )
    }

    /// Makes `req` from inside namespace `from_ns` (in-process, on a thread in that namespace).
    ///
    /// The thread is in no lab cgroup, so no socket-level LB sees it: a request to a service
    /// from a pod namespace is translated by the tc programs on the pod's veth. It stands for
    /// traffic the socket programs miss; a pod's own processes are
    /// [`Lab::probe_from_pod_process`].
    ///
    /// # Errors
    /// A [`ProbeError`].
    pub fn probe(&self, from_ns: &str, req: &ProbeRequest) -> Result<String, ProbeError> {
        netns::run_in(&netns::qualify(from_ns), || probe::probe(req))?
    }

    /// Node `node`'s cgroup (`<cgroup2>/lbk-<node>`), where its socket-LB programs are
    /// attached and its own processes run.
    ///
    /// # Errors
    /// If cgroup2 is not mounted.
    pub fn node_cgroup(&self, node: &str) -> Result<PathBuf> {
        Ok(cgroup::node_dir(
            &cgroup::root()?,
            &self.known_node(node)?.name,
        ))
    }

    /// Pod `pod`'s cgroup (`<cgroup2>/lbk-<node>/kubepods/<pod>`), where its echo server and
    /// its other processes run, under its node's socket-LB programs.
    ///
    /// # Errors
    /// If the pod is unknown or cgroup2 is not mounted.
    pub fn pod_cgroup(&self, pod: &str) -> Result<PathBuf> {
        let pod = self.known_pod(pod)?;
        Ok(cgroup::pod_dir(&cgroup::root()?, &pod.node, &pod.name))
    }

    /// Makes `req` from a process of node `node` (`lb-lab probe`, in the node's namespace and
    /// cgroup, as a hostNetwork pod or kubelet would): the socket-level LB translates it.
    ///
    /// # Errors
    /// A [`ProbeError`], as [`Lab::probe`].
    pub fn probe_from_node(&self, node: &str, req: &ProbeRequest) -> Result<String, ProbeError> {
        self.probe_peer_from_node(node, req)
            .map(|(_, answer)| answer)
    }

    /// As [`Lab::probe_from_node`], also returning the peer address the process's socket
    /// reports (getpeername).
    ///
    /// # Errors
    /// A [`ProbeError`], as [`Lab::probe`].
    pub fn probe_peer_from_node(
        &self,
        node: &str,
        req: &ProbeRequest,
    ) -> Result<(SocketAddr, String), ProbeError> {
        let ns = self.known_node(node).map_err(probe_setup)?.ns.clone();
        self.probe_process(&ns, req)
    }

    /// Makes `req` from a process of pod `pod` (`lb-lab probe`, in the pod's namespace and
    /// cgroup, as a container's process): the node's socket-level LB sees its socket, as it
    /// sees every pod's in Kind, so a service is translated at connect()/sendmsg() and the
    /// packets on the pod's veth already carry the backend's address.
    ///
    /// # Errors
    /// A [`ProbeError`], as [`Lab::probe`].
    pub fn probe_from_pod_process(
        &self,
        pod: &str,
        req: &ProbeRequest,
    ) -> Result<String, ProbeError> {
        self.probe_peer_from_pod_process(pod, req)
            .map(|(_, answer)| answer)
    }

    /// As [`Lab::probe_from_pod_process`], also returning the peer address the process's
    /// socket reports (getpeername).
    ///
    /// # Errors
    /// A [`ProbeError`], as [`Lab::probe`].
    pub fn probe_peer_from_pod_process(
        &self,
        pod: &str,
        req: &ProbeRequest,
    ) -> Result<(SocketAddr, String), ProbeError> {
        let ns = self.known_pod(pod).map_err(probe_setup)?.ns.clone();
        self.probe_process(&ns, req)
    }

    /// Runs `lb-lab probe --peer` for `req` in namespace `ns` (and, through [`command_in`],
    /// in the node's or pod's cgroup) and reads back its peer and answer.
    fn probe_process(
        &self,
        ns: &str,
        req: &ProbeRequest,
    ) -> Result<(SocketAddr, String), ProbeError> {
        let mut args: Vec<OsString> = vec![self.bins.lab.clone().into(), "probe".into()];
        match req.transport {
            Transport::Tcp => args.extend([
                "--tcp".into(),
                req.addr.to_string().into(),
                "--path".into(),
                req.path.clone().into(),
            ]),
            Transport::Udp => args.extend([
                "--udp".into(),
                req.addr.to_string().into(),
                "--msg".into(),
                req.msg.clone().into(),
            ]),
        }
        if let Some(port) = req.src_port {
            args.extend(["--src-port".into(), port.to_string().into()]);
        }
        args.extend([
            "--timeout-ms".into(),
            req.timeout.as_millis().to_string().into(),
            "--peer".into(),
        ]);
        let out = command_in(ns, &args)
            .and_then(|mut cmd| Ok(cmd.output()?))
            .map_err(probe_setup)?;
        if !out.status.success() {
            return Err(ProbeError::from_message(
                &String::from_utf8_lossy(&out.stderr),
                req,
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (first, answer) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        let peer = first
            .strip_prefix("peer ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| ProbeError::BadResponse(format!("probe printed {first:?}")))?;
        Ok((peer, answer.trim_end().to_string()))
    }

    /// Routes `dest` (an address, or a prefix such as `10.96.0.0/16`) from the host (the
    /// external client, `lbk-host`) via node `via_node`, as one routes a LoadBalancer IP to a
    /// Kind node; replaces an earlier route to the same destination.
    ///
    /// # Errors
    /// If the node is unknown or `ip` fails.
    pub fn route_from_host(&self, dest: &str, via_node: &str) -> Result<()> {
        let via = self.known_node(via_node)?.ip.to_string();
        let dest = host_route_dest(dest)?;
        crate::cmd::ip(&[
            "-n",
            crate::plan::HOST_NS,
            "route",
            "replace",
            &dest,
            "via",
            &via,
        ])?;
        Ok(())
    }

    /// Removes the host's route to `dest` made by [`Lab::route_from_host`]; whether there was one.
    ///
    /// # Errors
    /// If `dest` is not an address or prefix.
    pub fn unroute_from_host(&self, dest: &str) -> Result<bool> {
        let dest = host_route_dest(dest)?;
        Ok(crate::cmd::ip(&["-n", crate::plan::HOST_NS, "route", "del", &dest]).is_ok())
    }

    /// Runs `lbctl --pin-dir <node's pin dir> <args>` and returns its stdout.
    ///
    /// # Errors
    /// If lbctl cannot run or exits non-zero (with its stderr).
    pub fn lbctl(&self, node: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.bins.lbctl);
        cmd.arg("--pin-dir")
            .arg(self.pin_dir(&self.known_node(node)?.name))
            .args(args);
        Ok(crate::cmd::run(&mut cmd)?)
    }

    /// The datapath counter `reason` (its `lbctl stats` name, e.g. `drop_ct_full`) on
    /// `node`, summed over CPUs.
    ///
    /// # Errors
    /// If lbctl fails or its JSON has no such reason.
    pub fn datapath_counter(&self, node: &str, reason: &str) -> Result<u64> {
        let out = self.lbctl(node, &["stats", "-o", "json"])?;
        let stats: serde_json::Value = serde_json::from_str(&out).context("lbctl stats -o json")?;
        stats["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["reasons"].as_array().cloned().unwrap_or_default())
            .find(|r| r["reason"] == reason)
            .and_then(|r| r["packets"].as_u64())
            .with_context(|| format!("lbctl stats on {node} shows no counter {reason}"))
    }

    /// Where the agents read Services and EndpointSlices from.
    pub fn agent_source(&self) -> AgentSource {
        self.source
    }

    /// Applies manifest `name`, replacing an earlier one of that name.
    ///
    /// With [`AgentSource::File`] it is written to `<state_dir>/manifests/<name>.yaml`
    /// (atomically), each Service followed by the EndpointSlices derived from the pods. With
    /// [`AgentSource::Kube`] its objects are created or replaced through the API server
    /// (whose controller derives the EndpointSlices), and objects an earlier manifest of this
    /// name had are deleted; the returned YAML is what the server stored.
    ///
    /// # Errors
    /// If the name or YAML is invalid, the file cannot be written, or the API server refuses
    /// an object (with its reason).
    pub fn apply_yaml(&self, name: &str, yaml: &str) -> Result<Rendered> {
        match self.source {
            AgentSource::File => self.store().apply(name, yaml),
            AgentSource::Kube => self.control_plane().apply(name, yaml),
        }
    }

    /// Removes manifest `name` (and, in kube mode, deletes its objects); whether it existed.
    ///
    /// # Errors
    /// If the name is invalid, the file cannot be removed, or the API server refuses.
    pub fn delete_yaml(&self, name: &str) -> Result<bool> {
        match self.source {
            AgentSource::File => self.store().delete(name),
            AgentSource::Kube => self.control_plane().delete(name),
        }
    }

    /// Marks pod `pod` ready or not; its EndpointSlices follow.
    ///
    /// # Errors
    /// If the pod is unknown, or the state cannot be written (file mode) or the API server
    /// refuses (kube mode).
    pub fn set_pod_ready(&self, pod: &str, ready: bool) -> Result<()> {
        match self.source {
            AgentSource::File => self.update_pod(pod, |s| s.ready = ready),
            AgentSource::Kube => {
                let name = &self.known_pod(pod)?.name;
                self.control_plane().set_pod_ready(name, ready)
            }
        }
    }

    /// Marks pod `pod` terminating (deletion requested) or not; its EndpointSlices follow.
    /// The pod keeps running and answering, as a real pod does during its grace period.
    ///
    /// # Errors
    /// As [`Lab::set_pod_ready`].
    pub fn set_pod_terminating(&self, pod: &str, terminating: bool) -> Result<()> {
        match self.source {
            AgentSource::File => self.update_pod(pod, |s| s.terminating = terminating),
            AgentSource::Kube => {
                let name = &self.known_pod(pod)?.name;
                self.control_plane().set_pod_terminating(name, terminating)
            }
        }
    }

    /// Pod `pod`'s readiness and termination state.
    ///
    /// # Errors
    /// If the pod is unknown or its state cannot be read.
    pub fn pod_state(&self, pod: &str) -> Result<PodState> {
        let pod = self.known_pod(pod)?;
        match self.source {
            AgentSource::File => Ok(PodStates::load(&self.state.pod_states())?.get(&pod.name)),
            AgentSource::Kube => self.control_plane().pod_state(&pod.name),
        }
    }

    /// The lab's API server (kube mode): address, client, faults.
    pub fn control_plane(&self) -> ControlPlane<'_> {
        ControlPlane {
            bins: &self.bins,
            state: &self.state,
            plan: &self.plan,
        }
    }

    /// `<state_dir>/kubeconfig` (kube mode): server http://172.18.0.2:6443, context `lbk`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.kubeconfig()
    }

    /// A client for the API server, making its requests from the host namespace.
    pub fn apiserver_client(&self) -> Client {
        self.control_plane().client()
    }

    /// Stops the API server with SIGSTOP: it is unreachable, connections to it hang.
    ///
    /// # Errors
    /// If there is no running API server.
    pub fn apiserver_stop(&self) -> Result<()> {
        self.control_plane().stop()
    }

    /// Continues the API server after [`Lab::apiserver_stop`].
    ///
    /// # Errors
    /// If there is no running API server.
    pub fn apiserver_cont(&self) -> Result<()> {
        self.control_plane().cont()
    }

    /// Kills the API server (SIGKILL) and starts it again from its state file; waits until it
    /// answers. Its watch history starts empty, so clients resuming from an older version than
    /// its current one get 410 Gone and relist.
    ///
    /// # Errors
    /// If it cannot be killed or does not come back.
    pub fn apiserver_restart(&self) -> Result<()> {
        self.control_plane()
            .restart(APISERVER_READY_TIMEOUT)
            .map(drop)
    }

    /// Cuts every open watch connection; returns how many there were.
    ///
    /// # Errors
    /// If the API server does not answer.
    pub fn apiserver_drop_watches(&self) -> Result<u64> {
        self.control_plane().drop_watches()
    }

    /// Forgets the API server's watch history: watches resuming from an earlier
    /// resourceVersion get 410 Gone. Returns the new resourceVersion.
    ///
    /// # Errors
    /// If the API server does not answer.
    pub fn apiserver_compact(&self) -> Result<String> {
        self.control_plane().compact()
    }

    /// Holds (`Hang`) or refuses with 503 (`Unavailable`) API requests, the process staying
    /// up; [`Lab::apiserver_resume`] ends it.
    ///
    /// # Errors
    /// If the API server does not answer.
    pub fn apiserver_pause(&self, mode: PauseMode) -> Result<()> {
        self.control_plane().pause(mode)
    }

    /// # Errors
    /// If the API server does not answer.
    pub fn apiserver_resume(&self) -> Result<()> {
        self.control_plane().resume()
    }

    fn update_pod(&self, pod: &str, change: impl FnOnce(&mut PodState)) -> Result<()> {
        let name = self.known_pod(pod)?.name.clone();
        let path = self.state.pod_states();
        let mut states = PodStates::load(&path)?;
        states.update(&name, change);
        states.save(&path)?;
        self.store().rerender_all()
    }

    /// Kills node `node`'s agent with SIGKILL, as a crash would: its pinned maps and links
    /// stay behind, so the node's datapath keeps serving without it.
    ///
    /// # Errors
    /// If the node is unknown, its agent is not running, or it does not die.
    pub fn kill_agent(&self, node: &str) -> Result<()> {
        let node = self.known_node(node)?;
        let record = process::read_pid_file(&self.state.agent_pid(&node.name))?
            .with_context(|| format!("no agent recorded for node {}", node.name))?;
        process::signal(record, nix::sys::signal::Signal::SIGKILL)?;
        anyhow::ensure!(
            process::wait_dead(record, Duration::from_secs(5)),
            "the agent of node {} (pid {}) survived SIGKILL",
            node.name,
            record.pid
        );
        Ok(())
    }

    /// Starts node `node`'s agent again (after [`Lab::kill_agent`]) with the lab's usual
    /// arguments plus `extra`, and waits until it has synced.
    ///
    /// # Errors
    /// If the node is unknown, or the agent exits or is not ready in time (with its log).
    pub fn start_agent(&self, node: &str, extra: &[String]) -> Result<()> {
        let node = self.known_node(node)?.clone();
        // A killed agent cannot remove its ready file; the new one must write its own.
        remove_file_if_exists(&self.state.ready_file(&node.name))?;
        self.spawn_agent(&node, extra)?;
        self.wait_for(vec![Waiting::Agent(node.name)], Duration::from_secs(30))
    }

    /// Starts node `node`'s agent again with the lab's usual arguments plus `extra`, without
    /// waiting for it (to kill it mid-sync).
    ///
    /// # Errors
    /// If the node is unknown or the agent cannot be started.
    pub fn spawn_agent_unready(&self, node: &str, extra: &[String]) -> Result<()> {
        let node = self.known_node(node)?.clone();
        remove_file_if_exists(&self.state.ready_file(&node.name))?;
        self.spawn_agent(&node, extra).map(drop)
    }

    /// Starts node `node`'s agent (none may be running) with only `capabilities`
    /// (Kubernetes spelling, e.g. `["BPF", "NET_ADMIN"]`) and waits up to `timeout` for it
    /// to get ready or exit: `Ok(None)` if it got ready, else `Ok(Some(log))` with what it
    /// printed before it exited.
    ///
    /// # Errors
    /// If the node is unknown, the agent cannot be started, or it neither gets ready nor
    /// exits in time.
    pub fn try_agent_with_capabilities(
        &self,
        node: &str,
        capabilities: &[String],
        timeout: Duration,
    ) -> Result<Option<String>> {
        let node = self.known_node(node)?.clone();
        remove_file_if_exists(&self.state.ready_file(&node.name))?;
        let record = self.spawn_agent_as(&node, Some(capabilities), &[])?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.ready_file(&node.name).exists() {
                return Ok(None);
            }
            if !process::is_alive(record) {
                return Ok(Some(process::log_tail(
                    &self.state.agent_log(&node.name),
                    LOG_TAIL_LINES,
                )));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent of node {} neither got ready nor exited in {timeout:?}",
                    node.name
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of node `node`'s running agent.
    ///
    /// # Errors
    /// If the node is unknown or no agent is recorded for it.
    pub fn agent_pid(&self, node: &str) -> Result<u32> {
        let node = self.known_node(node)?;
        let record = process::read_pid_file(&self.state.agent_pid(&node.name))?
            .with_context(|| format!("no agent recorded for node {}", node.name))?;
        Ok(record.pid as u32)
    }

    /// Ids of the tc programs attached to node `node`'s pod interfaces, sorted: which
    /// programs the datapath runs right now.
    ///
    /// # Errors
    /// If the node is unknown or the kernel cannot be asked.
    pub fn datapath_program_ids(&self, node: &str) -> Result<Vec<u32>> {
        use aya::programs::{SchedClassifier, TcAttachType};
        let node = self.known_node(node)?;
        let veths: Vec<String> = self
            .plan
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| p.veth.clone())
            .collect();
        let mut ids = netns::run_in(&node.ns, || -> Result<Vec<u32>> {
            let mut ids = Vec::new();
            for veth in &veths {
                for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let (_, programs) = SchedClassifier::query_tcx(veth, attach_type)
                        .with_context(|| format!("querying tcx programs on {veth}"))?;
                    ids.extend(programs.iter().map(|p| p.id()));
                }
            }
            Ok(ids)
        })??;
        ids.sort_unstable();
        Ok(ids)
    }

    fn known_node(&self, node: &str) -> Result<&Node> {
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node `{node}` in the lab"))
    }

    fn known_pod(&self, pod: &str) -> Result<&Pod> {
        self.plan
            .pod(pod)
            .with_context(|| format!("no pod `{pod}` in the lab"))
    }

    fn store(&self) -> Store<'_> {
        Store {
            state: &self.state,
            pods: &self.plan.pods,
        }
    }

    fn build(&self, opts: &UpOptions) -> Result<()> {
        self.prepare_state_dir()?;
        println!(
            "lab: creating {} network namespaces",
            self.plan.namespaces().len()
        );
        println!(
            "lab: offloads {}: {}",
            self.offloads.name(),
            self.offloads.describe()
        );
        topology::create(&self.plan, self.offloads)?;
        for node in &self.plan.nodes {
            cgroup::create(&node.name)?;
        }
        if self.source == AgentSource::Kube {
            let cp = self.control_plane();
            println!("lab: starting the API server on {}", cp.url());
            cp.start(opts.ready_timeout)?;
        }
        for pod in &self.plan.pods {
            self.start_echo(pod)?;
        }
        if self.agents {
            if bpffs::ensure_mounted()? {
                println!("lab: mounted the BPF filesystem on {}", bpffs::BPFFS);
            }
            for node in &self.plan.nodes {
                self.spawn_agent(node, &opts.agent_args)?;
            }
        }
        self.wait_ready(opts.ready_timeout)?;
        println!(
            "lab: up: {} nodes, {} pods{}",
            self.plan.nodes.len(),
            self.plan.pods.len(),
            match (self.agents, self.source) {
                (false, _) => ", no agents",
                (true, AgentSource::File) => ", agents ready (file source)",
                (true, AgentSource::Kube) => ", agents ready (kube source)",
            }
        );
        Ok(())
    }

    /// Starts from clean runtime state: no pids, ready files, manifests or pod states from an
    /// earlier lab. Logs are overwritten per process as it starts.
    fn prepare_state_dir(&self) -> Result<()> {
        let s = &self.state;
        for dir in [s.manifests(), s.applied(), s.pids()] {
            remove_dir_if_exists(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        for dir in [s.manifests(), s.applied(), s.pids(), s.logs()] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for node in &self.plan.nodes {
            remove_file_if_exists(&s.ready_file(&node.name))?;
        }
        // Before anything is built, so that whoever attaches meanwhile knows the setting.
        write_atomic(&s.offloads(), self.offloads.name().as_bytes())
            .with_context(|| format!("cannot write {}", s.offloads().display()))?;
        write_atomic(&s.agent_privileges(), self.privileges.name().as_bytes())
            .with_context(|| format!("cannot write {}", s.agent_privileges().display()))?;
        self.control_plane().forget()?;
        PodStates::all_default(self.plan.pods.iter().map(|p| p.name.as_str())).save(&s.pod_states())
    }

    fn start_echo(&self, pod: &Pod) -> Result<PidRecord> {
        let args: Vec<OsString> = vec![
            "echo".into(),
            "--name".into(),
            pod.name.clone().into(),
            "--port".into(),
            ECHO_PORT.to_string().into(),
        ];
        process::spawn(&DaemonSpec {
            ns: pod.ns.clone(),
            // As kubelet starts a container: in the pod's cgroup, under the node's.
            cgroup: Some(cgroup::create_pod(&pod.node, &pod.name)?),
            program: self.bins.lab.clone(),
            args,
            log: self.state.echo_log(&pod.name),
            pid_file: self.state.echo_pid(&pod.name),
        })
        .with_context(|| format!("starting the echo server of pod {}", pod.name))
    }

    fn spawn_agent(&self, node: &Node, extra: &[String]) -> Result<PidRecord> {
        match self.privileges {
            AgentPrivileges::Daemonset => {
                self.spawn_agent_as(node, Some(&daemonset::agent_capabilities()?), extra)
            }
            AgentPrivileges::Root => self.spawn_agent_as(node, None, extra),
        }
    }

    /// Starts the agent as uid 0 with only `capabilities`, or with all of them.
    fn spawn_agent_as(
        &self,
        node: &Node,
        capabilities: Option<&[String]>,
        extra: &[String],
    ) -> Result<PidRecord> {
        let pin_dir = bpffs::pin_dir(&node.name);
        fs::create_dir_all(&pin_dir)
            .with_context(|| format!("cannot create {}", pin_dir.display()))?;
        let mut args: Vec<OsString> = vec!["--node-name".into(), node.name.clone().into()];
        match self.source {
            AgentSource::File => {
                let mut source = OsString::from("file:");
                source.push(self.state.manifests());
                args.extend(["--source".into(), source]);
            }
            AgentSource::Kube => args.extend([
                "--source".into(),
                "kube".into(),
                "--kubeconfig".into(),
                self.state.kubeconfig().into(),
            ]),
        }
        args.extend([
            "--pin-dir".into(),
            pin_dir.into(),
            "--ready-file".into(),
            self.state.ready_file(&node.name).into(),
            "--cluster-cidr".into(),
            CLUSTER_CIDR.to_string().into(),
            // The node's own cgroup, never the default (the machine's cgroup2 root), which
            // would put the socket programs under every process on the machine.
            "--socket-lb".into(),
            "true".into(),
            "--cgroup-path".into(),
            cgroup::create(&node.name)?.into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        let (program, args) = match capabilities {
            None => (self.bins.agent.clone(), args),
            Some(caps) => {
                let mut setpriv: Vec<OsString> = daemonset::setpriv_args(caps)
                    .into_iter()
                    .map(OsString::from)
                    .collect();
                setpriv.push(self.bins.agent.clone().into());
                setpriv.extend(args);
                (PathBuf::from("setpriv"), setpriv)
            }
        };
        process::spawn(&DaemonSpec {
            ns: node.ns.clone(),
            // The agent stays outside the cgroup it attaches to (DEVELOPERS.md).
            cgroup: None,
            program,
            args,
            log: self.state.agent_log(&node.name),
            pid_file: self.state.agent_pid(&node.name),
        })
        .with_context(|| format!("starting the agent of node {}", node.name))
    }

    /// Waits for every echo server to accept on 127.0.0.1:8080 in its pod and every agent's
    /// ready file; fails early if one of them exits.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut pending: Vec<Waiting> = self
            .plan
            .pods
            .iter()
            .map(|p| Waiting::Echo(p.clone()))
            .collect();
        if self.agents {
            pending.extend(
                self.plan
                    .nodes
                    .iter()
                    .map(|n| Waiting::Agent(n.name.clone())),
            );
        }
        self.wait_for(pending, timeout)
    }

    /// Waits until everything in `pending` is ready; fails early if one of them exits.
    fn wait_for(&self, mut pending: Vec<Waiting>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() {
            let mut still = Vec::new();
            for w in pending {
                if self.is_ready(&w)? {
                    continue;
                }
                if !self.is_running(&w)? {
                    bail!(
                        "{w} exited before it was ready; last lines of {}:\n{}",
                        self.log_of(&w).display(),
                        process::log_tail(&self.log_of(&w), LOG_TAIL_LINES)
                    );
                }
                still.push(w);
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let first = &pending[0];
                bail!(
                    "not ready after {:?}: {}; last lines of {}:\n{}",
                    timeout,
                    pending
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.log_of(first).display(),
                    process::log_tail(&self.log_of(first), LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn is_ready(&self, w: &Waiting) -> Result<bool> {
        Ok(match w {
            Waiting::Echo(pod) => netns::run_in(&pod.ns, || {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ECHO_PORT));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?,
            Waiting::Agent(node) => self.state.ready_file(node).exists(),
        })
    }

    fn is_running(&self, w: &Waiting) -> Result<bool> {
        let pid_file = match w {
            Waiting::Echo(pod) => self.state.echo_pid(&pod.name),
            Waiting::Agent(node) => self.state.agent_pid(node),
        };
        Ok(process::read_pid_file(&pid_file)?.is_some_and(process::is_alive))
    }

    fn log_of(&self, w: &Waiting) -> PathBuf {
        match w {
            Waiting::Echo(pod) => self.state.echo_log(&pod.name),
            Waiting::Agent(node) => self.state.agent_log(node),
        }
    }
}

/// Something `up` waits for.
enum Waiting {
    Echo(Pod),
    Agent(String),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Echo(pod) => write!(f, "echo server of pod {}", pod.name),
            Waiting::Agent(node) => write!(f, "agent of node {node}"),
        }
    }
}

/// A [`Lab`] that is torn down when dropped; derefs to the lab.
#[derive(Debug)]
pub struct DownOnDrop(Option<Lab>);

impl DownOnDrop {
    /// Tears down now and reports what was removed.
    ///
    /// # Errors
    /// As [`teardown`].
    pub fn down(mut self) -> Result<Teardown> {
        match self.0.take() {
            Some(lab) => lab.down(),
            None => Ok(Teardown::default()),
        }
    }

    /// Leaves the lab up after all and hands it back.
    pub fn keep(mut self) -> Lab {
        self.0.take().expect("lab already torn down")
    }
}

impl std::ops::Deref for DownOnDrop {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        // Only `down` empties it, and that consumes the wrapper.
        self.0.as_ref().expect("lab already torn down")
    }
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            if let Err(e) = lab.down() {
                eprintln!("lab: teardown failed: {e:#}");
            }
        }
    }
}

/// Checks, before touching anything, what `up` needs.
fn preflight(bins: &Binaries, opts: &UpOptions) -> Result<()> {
    if !crate::testing::is_root() {
        bail!("must run as root to create network namespaces (try sudo)");
    }
    crate::cmd::ip(&["-V"]).context("iproute2's `ip` is needed to build the lab")?;
    let mut needed = vec![("lb-lab", &bins.lab)];
    if !opts.no_agents {
        needed.push(("lb-agent", &bins.agent));
    }
    for (what, path) in needed {
        if !path.is_file() {
            bail!(
                "{what} binary not found at {} (run `cargo xtask build`)",
                path.display()
            );
        }
    }
    if !opts.no_agents && opts.agent_privileges == AgentPrivileges::Daemonset {
        daemonset::agent_capabilities()?;
        crate::cmd::run(Command::new("setpriv").arg("--version")).context(
            "util-linux's setpriv starts the agents with the DaemonSet's capabilities \
             (apt-get install util-linux, or `lab up --agent-privileges root`)",
        )?;
    }
    Ok(())
}

/// How the running lab starts its agents. A lab brought up before this was recorded ran
/// them as root.
fn read_privileges(state: &StateDir) -> Result<AgentPrivileges> {
    let path = state.agent_privileges();
    let name = match fs::read_to_string(&path) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentPrivileges::Root),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    AgentPrivileges::from_name(name.trim())
        .with_context(|| format!("{} holds {name:?}, not daemonset or root", path.display()))
}

/// The offloads recorded for the running lab. A lab brought up before they were recorded
/// had them off (the only setting then).
fn read_offloads(state: &StateDir) -> Result<Offloads> {
    let path = state.offloads();
    let name = match fs::read_to_string(&path) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Offloads::Off),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Offloads::from_name(name.trim())
        .with_context(|| format!("{} holds {name:?}, not kind or off", path.display()))
}

/// An error setting up a probe process (unknown name, cannot start), as a [`ProbeError`].
fn probe_setup(e: anyhow::Error) -> ProbeError {
    ProbeError::Io(std::io::Error::other(format!("{e:#}")))
}

/// `dest` as a route destination: an address becomes a /32, a prefix stays.
fn host_route_dest(dest: &str) -> Result<String> {
    let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
    let ok = addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
    anyhow::ensure!(ok, "`{dest}` is not an IPv4 address or prefix");
    Ok(format!("{addr}/{len}"))
}

/// A command that will run `args` inside namespace `ns` (short or full name).
///
/// # Errors
/// If `args` is empty or the namespace does not exist.
pub fn command_in<S: AsRef<std::ffi::OsStr>>(ns: &str, args: &[S]) -> Result<Command> {
    let Some((program, rest)) = args.split_first() else {
        bail!("no command given to run in {ns}");
    };
    let ns = netns::qualify(ns);
    let mut cmd = Command::new(program);
    cmd.args(rest);
    netns::enter_on_spawn(&mut cmd, &ns)?;
    // A command in a node's namespace is one of the node's own processes (a hostNetwork pod,
    // kubelet), one in a pod's namespace one of the pod's (as `kubectl exec` runs it): it
    // runs in that node's or pod's cgroup, under the agent's socket-level LB.
    if let Some(dir) = cgroup_of(&ns)? {
        if dir.is_dir() {
            cgroup::enter_on_spawn(&mut cmd, &dir)?;
        }
    }
    Ok(cmd)
}

/// The cgroup of the node or pod whose namespace is `ns` (full name); `None` for the host,
/// the bridge and anything else.
fn cgroup_of(ns: &str) -> Result<Option<PathBuf>> {
    let plan = Plan::kind();
    if let Some(node) = plan.nodes.iter().find(|n| n.ns == ns) {
        return Ok(Some(cgroup::node_dir(&cgroup::root()?, &node.name)));
    }
    if let Some(pod) = plan.pods.iter().find(|p| p.ns == ns) {
        return Ok(Some(cgroup::pod_dir(
            &cgroup::root()?,
            &pod.node,
            &pod.name,
        )));
    }
    Ok(None)
}
