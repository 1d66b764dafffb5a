//! One lab for every traffic measurement, loaded with N services × E endpoints, and switched
//! between the modes on the same nodes, pods and services:
//!
//! - `ebpf`: the agents run (watching the lab's API server) with their datapath attached;
//! - `iptables` / `nftables`: the agents are killed and their pinned links removed (which
//!   detaches every tc, XDP and cgroup program, so no BPF runs), and kube-proxy's ruleset for
//!   the same Services and EndpointSlices is loaded into every node namespace
//!   (`iptables-restore --noflush` / `nft -f`, all nodes at once). Leaving the mode clears
//!   every table the ruleset made: rules that are merely unhooked would still keep
//!   netfilter's conntrack in every packet's path (a DNAT, MASQUERADE or ct match holds it),
//!   slowing the other modes down and dropping their new flows on clashes with its entries.
//!   kindnet's masquerade (`lb_lab::kindnet`), which shares iptables' nat table, is put back
//!   right after: every mode runs with it, as every Kind node does;
//! - `direct`: nothing runs; clients address backend pod IPs.
//!
//! Backends are real servers: every echo pod gets extra addresses (one per pool slot, with
//! the node's /32 route to it, as a CNI would for a pod IP), and each extra address is a Pod
//! in the API server, so the EndpointSlice controller lists it. A service's E endpoints are E
//! consecutive pool addresses, and the pool interleaves the nodes, so every service has
//! backends on other nodes than the client's.
//!
//! Beside them, `bench-np` is a NodePort (externalTrafficPolicy=Cluster) whose two backends
//! are on control-plane and worker: the host (`lbk-host`) connects to it at worker2's
//! address, so each connection is masqueraded by worker2 and forwarded to another node.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{maps, Frontend, FrontendKey};
use lb_lab::{
    apiserver::{Client, Method},
    AgentSource, DownOnDrop, Lab, UpOptions,
};
use serde_json::{json, Value};

use super::{
    kube_proxy::{
        apply::{self, NetnsName},
        nftables, BenchEndpoint, BenchService, Protocol, ProxyConfig,
    },
    results::Mode,
};
use crate::build::{run_build, BuildArgs};

/// Kubernetes namespace of the bench's objects.
const NS: &str = "default";
/// The pod the clients run in: on `worker2`, so most backends are on other nodes.
pub const CLIENT_POD: &str = "worker2-client";
/// The node whose datapath the clients' packets are translated on.
pub const CLIENT_NODE: &str = "worker2";
/// Service port of the bench services (targetPort is the echo port).
const SERVICE_PORT: u16 = 80;
const ECHO_PORT: u16 = lb_lab::ECHO_PORT;
/// iperf3's port, served from [`STREAM_BACKEND`].
pub const IPERF_PORT: u16 = 5201;
/// The one backend of the `bench-stream` service (throughput, rr latency, UDP stream):
/// `worker-echo-1`'s own address, so the flow crosses from worker2 to worker. Not an extra
/// address: the echo server's unconnected UDP socket answers from the primary address.
const STREAM_BACKEND: (Ipv4Addr, &str) = (Ipv4Addr::new(10, 244, 1, 2), "worker-echo-1");
/// The backend of `bench-change`, whose readiness the endpoint-change timing flips.
pub const CHANGE_BACKEND: (Ipv4Addr, &str) = (Ipv4Addr::new(10, 244, 1, 251), "worker-echo-2");
pub const CHANGE_POD: &str = "bench-change";
/// The node the host enters the masqueraded NodePort on: it holds none of
/// [`NODE_PORT_BACKENDS`], so every connection is masqueraded and forwarded to another node.
pub const NODE_PORT_ENTRY: &str = "worker2";
/// `bench-np`'s node port (externalTrafficPolicy=Cluster, port 80 -> 8080).
pub const NODE_PORT: u16 = 30080;
const NODE_PORT_SERVICE: &str = "bench-np";
/// `bench-np`'s backends: extra addresses on echo pods of control-plane and worker.
const NODE_PORT_BACKENDS: [(Ipv4Addr, &str); 2] = [
    (Ipv4Addr::new(10, 244, 0, 252), "control-plane-echo-1"),
    (Ipv4Addr::new(10, 244, 1, 252), "worker-echo-1"),
];

/// A backend address in the pool: an extra address on one of the lab's echo pods.
#[derive(Clone, Debug)]
struct Backend {
    ip: Ipv4Addr,
    /// The echo pod (lab name) that holds it.
    pod: String,
}

/// Addresses of the services the measurements aim at.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// The bench services' ClusterIP:80 (TCP, HTTP).
    pub services: Vec<SocketAddr>,
    /// Every pool backend's IP:8080 that some service uses: what `direct` clients address.
    pub backends: Vec<SocketAddr>,
    /// `bench-stream`'s ClusterIP.
    pub stream_vip: Option<Ipv4Addr>,
    /// `bench-change`'s ClusterIP:80.
    pub change: Option<SocketAddr>,
    /// `bench-np`'s NodePort on [`NODE_PORT_ENTRY`]'s address: what the host connects to.
    pub node_port: Option<SocketAddr>,
}

impl Targets {
    /// Connect targets for `mode`: services, or for `direct` the backends themselves.
    pub fn connect(&self, mode: Mode) -> &[SocketAddr] {
        match mode {
            Mode::Direct => &self.backends,
            _ => &self.services,
        }
    }

    /// The stream service's address for `mode`, on `port`.
    pub fn stream(&self, mode: Mode, port: u16) -> SocketAddr {
        let ip = match mode {
            Mode::Direct => STREAM_BACKEND.0,
            _ => self.stream_vip.expect("stream service created"),
        };
        SocketAddr::from((ip, port))
    }
}

/// The lab with the bench's services loaded, and which mode its nodes are in.
pub struct LabBench {
    // Dropped first: the server goes before its namespace.
    iperf: Option<IperfServer>,
    pub lab: DownOnDrop,
    api: Client,
    pool: Vec<Backend>,
    /// Services loaded (by name), with their E.
    loaded: usize,
    loaded_endpoints: usize,
    /// kube-proxy's view of what is loaded: the generators' input for iptables/nftables.
    model: Vec<BenchService>,
    pub targets: Targets,
    mode: Mode,
}

impl LabBench {
    /// Brings the lab up (release binaries, or the debug build for `--quick`), gives the echo
    /// pods pool addresses for up to `max_endpoints` endpoints per service, and creates the
    /// stream, change and NodePort services. The nodes start in `ebpf` mode.
    pub fn up(quick: bool, max_endpoints: usize, status: &mut dyn FnMut(&str)) -> Result<Self> {
        status(if quick {
            "building (debug: --quick reuses the test build)"
        } else {
            "building release binaries"
        });
        let artifacts = run_build(&BuildArgs { release: !quick })?;
        let bins = artifacts.lab_binaries();
        status("bringing up the lab (agents on the kube source)");
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
        let mut bench = LabBench {
            lab,
            api,
            pool: Vec::new(),
            loaded: 0,
            loaded_endpoints: 0,
            model: Vec::new(),
            targets: Targets::default(),
            mode: Mode::Ebpf,
            iperf: None,
        };
        bench.make_pool(max_endpoints, status)?;
        bench.make_fixed_services()?;
        bench.start_iperf()?;
        Ok(bench)
    }

    /// Echo pods in node-interleaved order (control-plane, worker, worker2, ...).
    fn echo_pods(&self) -> Vec<String> {
        let mut pods: Vec<_> = self
            .lab
            .pods()
            .iter()
            .filter(|p| p.role.starts_with("echo"))
            .map(|p| (p.role.clone(), p.node.clone(), p.name.clone()))
            .collect();
        pods.sort();
        pods.into_iter().map(|(_, _, name)| name).collect()
    }

    /// Gives each echo pod extra addresses so that the pool has at least `max_endpoints`
    /// distinct backends (and at least one per echo pod); each is a Pod in the API server
    /// labelled with every group (service selector) it belongs to.
    fn make_pool(&mut self, max_endpoints: usize, status: &mut dyn FnMut(&str)) -> Result<()> {
        let echo = self.echo_pods();
        let per_pod = max_endpoints.div_ceil(echo.len()).max(1);
        ensure!(
            per_pod <= 10,
            "at most {} endpoints per service",
            10 * echo.len()
        );
        status(&format!("adding {} pool addresses", per_pod * echo.len()));
        for a in 0..per_pod {
            for pod in &echo {
                let p = self.lab.pod(pod).context("echo pod")?.clone();
                let slot = if p.role == "echo-1" { 0 } else { 1 };
                let [x, y, n, _] = p.ip.octets();
                let ip = Ipv4Addr::new(x, y, n, 100 + 10 * slot + a as u8);
                self.pool.push(Backend {
                    ip,
                    pod: pod.clone(),
                });
            }
        }
        for b in self.pool.clone() {
            self.add_address(&b)?;
        }
        Ok(())
    }

    /// Puts `b.ip` on the echo pod's eth0 and routes it from the node, as the CNI does for a
    /// pod address; the echo server listens on every address.
    fn add_address(&self, b: &Backend) -> Result<()> {
        let pod = self.lab.pod(&b.pod).context("echo pod")?;
        let node = self.lab.node(&pod.node).context("node")?;
        let ip32 = format!("{}/32", b.ip);
        lb_lab::cmd::ip(&["-n", &pod.ns, "addr", "add", &ip32, "dev", "eth0"])?;
        lb_lab::cmd::ip(&[
            "-n", &node.ns, "route", "add", &ip32, "dev", &pod.veth, "scope", "link",
        ])?;
        Ok(())
    }

    /// The pods of the pool, labelled for every E in `endpoint_counts`: pod j belongs to
    /// groups j-E+1..=j (mod pool size), group g being the E consecutive pool entries from g.
    pub fn create_pool_pods(&self, endpoint_counts: &[usize]) -> Result<()> {
        let p = self.pool.len();
        for (j, b) in self.pool.iter().enumerate() {
            let mut labels = BTreeMap::new();
            for &e in endpoint_counts {
                for m in 0..e {
                    let g = (j + p - m % p) % p;
                    labels.insert(format!("bench-e{e}-g{g}"), "y".to_string());
                }
            }
            let node = self.lab.pod(&b.pod).context("echo pod")?.node.clone();
            create_pod(
                &self.api,
                &format!("bench-p{j}"),
                &labels,
                b.ip,
                &node,
                true,
            )?;
        }
        Ok(())
    }

    fn make_fixed_services(&mut self) -> Result<()> {
        self.add_address(&Backend {
            ip: CHANGE_BACKEND.0,
            pod: CHANGE_BACKEND.1.into(),
        })?;
        let node = |pod: &str| -> Result<String> {
            Ok(self.lab.pod(pod).context("echo pod")?.node.clone())
        };
        let label = |k: &str| BTreeMap::from([(k.to_string(), "y".to_string())]);
        create_pod(
            &self.api,
            "bench-stream",
            &label("bench-stream"),
            STREAM_BACKEND.0,
            &node(STREAM_BACKEND.1)?,
            true,
        )?;
        create_pod(
            &self.api,
            CHANGE_POD,
            &label(CHANGE_POD),
            CHANGE_BACKEND.0,
            &node(CHANGE_BACKEND.1)?,
            true,
        )?;
        let stream_ports = [
            ("iperf", "TCP", IPERF_PORT, IPERF_PORT),
            ("http", "TCP", ECHO_PORT, ECHO_PORT),
            ("udp", "UDP", ECHO_PORT, ECHO_PORT),
        ];
        let vip = create_service(&self.api, "bench-stream", "bench-stream", &stream_ports)?;
        for (name, proto, port, target) in stream_ports {
            let mut svc = BenchService::cluster_ip(
                NS,
                "bench-stream",
                name,
                if proto == "TCP" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                vip,
                port,
            );
            svc.endpoints = vec![endpoint(STREAM_BACKEND.0, target)];
            self.model.push(svc);
        }
        self.targets.stream_vip = Some(vip);
        let vip = create_service(
            &self.api,
            CHANGE_POD,
            CHANGE_POD,
            &[("http", "TCP", SERVICE_PORT, ECHO_PORT)],
        )?;
        let mut svc =
            BenchService::cluster_ip(NS, CHANGE_POD, "http", Protocol::Tcp, vip, SERVICE_PORT);
        svc.endpoints = vec![endpoint(CHANGE_BACKEND.0, ECHO_PORT)];
        self.model.push(svc);
        self.targets.change = Some(SocketAddr::from((vip, SERVICE_PORT)));
        self.make_node_port_service()
    }

    /// `bench-np`: a NodePort service with externalTrafficPolicy=Cluster whose backends are
    /// all on other nodes than [`NODE_PORT_ENTRY`], which the host reaches at that node's
    /// address: every connection is masqueraded (to the entry node's address) and forwarded.
    fn make_node_port_service(&mut self) -> Result<()> {
        let label = BTreeMap::from([(NODE_PORT_SERVICE.to_string(), "y".to_string())]);
        for (i, (ip, pod)) in NODE_PORT_BACKENDS.into_iter().enumerate() {
            let b = Backend {
                ip,
                pod: pod.into(),
            };
            self.add_address(&b)?;
            let node = self.lab.pod(pod).context("echo pod")?.node.clone();
            ensure!(
                node != NODE_PORT_ENTRY,
                "a NodePort backend is on the entry node"
            );
            create_pod(
                &self.api,
                &format!("{NODE_PORT_SERVICE}-{i}"),
                &label,
                ip,
                &node,
                true,
            )?;
        }
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NODE_PORT_SERVICE, "namespace": NS},
            "spec": {
                "type": "NodePort",
                "externalTrafficPolicy": "Cluster",
                "selector": {NODE_PORT_SERVICE: "y"},
                "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT,
                    "targetPort": ECHO_PORT, "nodePort": NODE_PORT}],
            },
        });
        let created = self
            .api
            .request(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/services"),
                Some(&svc),
            )
            .context("creating service bench-np")?;
        let vip: Ipv4Addr = created["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .context("service bench-np got no cluster IP")?;
        let mut model = BenchService::cluster_ip(
            NS,
            NODE_PORT_SERVICE,
            "http",
            Protocol::Tcp,
            vip,
            SERVICE_PORT,
        );
        model.node_port = Some(NODE_PORT);
        model.endpoints = NODE_PORT_BACKENDS
            .iter()
            .map(|(ip, _)| endpoint(*ip, ECHO_PORT))
            .collect();
        self.model.push(model);
        let entry = self.lab.node(NODE_PORT_ENTRY).context("entry node")?.ip;
        self.targets.node_port = Some(SocketAddr::from((entry, NODE_PORT)));
        Ok(())
    }

    /// The echo pods that hold `bench-np`'s backends.
    pub fn node_port_backend_pods(&self) -> Vec<String> {
        NODE_PORT_BACKENDS
            .iter()
            .map(|(_, pod)| pod.to_string())
            .collect()
    }

    /// iperf3's server in the stream backend's pod, on every address (so also on the
    /// stream backend's), until the bench ends.
    fn start_iperf(&mut self) -> Result<()> {
        let pod = self.lab.pod(STREAM_BACKEND.1).context("echo pod")?;
        let child =
            lb_lab::lab::command_in(&pod.ns, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s (is iperf3 installed?)")?;
        self.iperf = Some(IperfServer(child));
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Makes `services` bench services with `endpoints` endpoints each exist in the API
    /// server (adding to or replacing what is loaded), and returns how long the API writes
    /// took. Must be in `ebpf` mode or any other: the rulesets follow in [`Self::switch`].
    pub fn load(&mut self, services: usize, endpoints: usize) -> Result<Duration> {
        let started = Instant::now();
        if endpoints != self.loaded_endpoints || services < self.loaded {
            self.delete_services(0..self.loaded)?;
            self.loaded = 0;
            self.model.retain(|s| !is_numbered_service(&s.name));
            self.targets.services.clear();
        }
        let p = self.pool.len();
        let created = parallel_create(&self.api, self.loaded..services, endpoints, p)?;
        for (i, vip) in created {
            let mut svc = BenchService::cluster_ip(
                NS,
                &format!("bench-s{i}"),
                "http",
                Protocol::Tcp,
                vip,
                SERVICE_PORT,
            );
            svc.endpoints = (0..endpoints)
                .map(|m| endpoint(self.pool[(i % p + m) % p].ip, ECHO_PORT))
                .collect();
            self.model.push(svc);
            self.targets
                .services
                .push(SocketAddr::from((vip, SERVICE_PORT)));
        }
        self.loaded = services;
        self.loaded_endpoints = endpoints;
        let used = p.min(services + endpoints - 1);
        self.targets.backends = self.pool[..used]
            .iter()
            .map(|b| SocketAddr::from((b.ip, ECHO_PORT)))
            .collect();
        Ok(started.elapsed())
    }

    fn delete_services(&self, range: std::ops::Range<usize>) -> Result<()> {
        for i in range {
            self.api
                .request(
                    Method::DELETE,
                    &format!("/api/v1/namespaces/{NS}/services/bench-s{i}"),
                    None,
                )
                .with_context(|| format!("deleting service bench-s{i}"))?;
        }
        Ok(())
    }

    /// Waits until node `node`'s maps hold every loaded service with its endpoints.
    ///
    /// Each poll looks services up in a fixed order from the first one not yet seen,
    /// stopping at the first missing: the whole wait costs one lookup per service plus one per
    /// poll. (Walking the whole frontend map on every poll took tens of milliseconds of CPU
    /// per poll at 10 000 services, on the cores the agent being timed needed.) A frontend
    /// the agent has written is not taken out again while it programs, so once the last one
    /// is seen all are there.
    pub fn wait_programmed(&self, node: &str, limit: Duration) -> Result<()> {
        let pin = self.lab.pin_dir(node).join(maps::FRONTENDS);
        let want = self.loaded;
        let e = self.loaded_endpoints;
        let keys: Vec<FrontendKey> = self
            .targets
            .services
            .iter()
            .filter_map(|a| match a {
                SocketAddr::V4(a) => {
                    Some(FrontendKey::new(*a.ip(), a.port(), lb_common::proto::TCP))
                }
                SocketAddr::V6(_) => None,
            })
            .collect();
        let mut seen = 0;
        let mut map = None;
        wait_until(limit, || {
            // The map appears when the agent has loaded its object.
            if map.is_none() {
                map = frontends(&pin).ok();
            }
            let Some(fes) = map.as_ref() else {
                return Ok(false);
            };
            while let Some(key) = keys.get(seen) {
                match fes.get(key, 0) {
                    Ok(fe) if usize::from(fe.backend_count) == e => seen += 1,
                    _ => return Ok(false),
                }
            }
            Ok(seen >= want)
        })
        .with_context(|| format!("waiting for {want} services on node {node}'s maps ({seen} seen)"))
    }

    /// Puts every node into `mode`.
    pub fn switch(&mut self, mode: Mode) -> Result<()> {
        if mode == self.mode {
            return Ok(());
        }
        match self.mode {
            Mode::Ebpf => self.stop_datapath()?,
            Mode::Iptables => self.for_nodes(|ns, _, _| {
                apply::clear_iptables(ns)?;
                lb_lab::kindnet::install(ns.as_str())
            })?,
            Mode::Nftables => self.for_nodes(|ns, _, _| apply::remove_nftables(ns).map(drop))?,
            Mode::Direct => {}
        }
        // From here on no mode is fully in place until the new one is.
        self.mode = Mode::Direct;
        match mode {
            Mode::Ebpf => self.start_datapath()?,
            Mode::Iptables => {
                self.for_nodes(|ns, cfg, model| apply::apply_iptables(ns, model, cfg).map(drop))?
            }
            Mode::Nftables => self.for_nodes(|ns, cfg, model| {
                apply::apply_nftables(ns, &nftables::ruleset(model, cfg)).map(drop)
            })?,
            Mode::Direct => {}
        }
        self.mode = mode;
        Ok(())
    }

    /// Runs `f` for every node at once (each in its own thread: a ruleset load is one
    /// single-threaded tool per node, minutes long at 10k services).
    fn for_nodes(
        &self,
        f: impl Fn(&NetnsName, &ProxyConfig, &[BenchService]) -> Result<()> + Sync,
    ) -> Result<()> {
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .lab
                .nodes()
                .iter()
                .map(|node| {
                    let f = &f;
                    let model = &self.model;
                    scope.spawn(move || {
                        let cfg = ProxyConfig::lab_node(node.ip);
                        f(&NetnsName::new(&node.ns)?, &cfg, model)
                            .with_context(|| format!("ruleset on node {}", node.name))
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("a ruleset thread panicked"))
                .collect::<Result<Vec<()>>>()
                .map(drop)
        })
    }

    /// Kills every agent and unpins its links: with no pin and no process holding them the
    /// kernel detaches the tc, XDP and cgroup programs. Maps stay pinned for the next start.
    fn stop_datapath(&self) -> Result<()> {
        for node in self.lab.nodes() {
            self.lab.kill_agent(&node.name)?;
            let links = self.lab.pin_dir(&node.name).join("links");
            if links.exists() {
                std::fs::remove_dir_all(&links)
                    .with_context(|| format!("unpinning {}", links.display()))?;
            }
            // The kernel frees an unpinned link from a work queue: wait for the detach.
            let mut left = Vec::new();
            wait_until(Duration::from_secs(10), || {
                left = self.lab.datapath_program_ids(&node.name)?;
                Ok(left.is_empty())
            })
            .with_context(|| format!("programs {left:?} still attached on node {}", node.name))?;
        }
        Ok(())
    }

    fn start_datapath(&self) -> Result<()> {
        for node in self.lab.nodes() {
            self.lab.start_agent(&node.name, &[])?;
        }
        self.wait_programmed(CLIENT_NODE, Duration::from_secs(300))
    }

    /// The agent of `node` restarted with no maps and no links: the time from its start
    /// until its maps hold every loaded service (a full program from empty).
    pub fn program_from_empty(&self, node: &str) -> Result<Duration> {
        ensure!(
            self.mode == Mode::Ebpf,
            "program_from_empty needs ebpf mode"
        );
        self.lab.kill_agent(node)?;
        std::fs::remove_dir_all(self.lab.pin_dir(node)).context("removing the node's pins")?;
        let started = Instant::now();
        self.lab.start_agent(node, &[])?;
        self.wait_programmed(node, Duration::from_secs(600))?;
        Ok(started.elapsed())
    }

    /// Sets the change pod's readiness through the API server.
    pub fn set_change_ready(&self, ready: bool) -> Result<()> {
        let pod = self.change_pod(ready)?;
        self.write_change_pod(&pod)
    }

    /// The change pod as it is now, with readiness `ready`: the body of the status write, read
    /// beforehand so that a timed change is the one write (as a kubelet's status update).
    pub fn change_pod(&self, ready: bool) -> Result<Value> {
        let mut pod: Value = self
            .api
            .get(&format!("/api/v1/namespaces/{NS}/pods/{CHANGE_POD}"))?;
        pod["status"]["conditions"] =
            json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
        Ok(pod)
    }

    /// Writes the change pod's status (from [`Self::change_pod`]).
    pub fn write_change_pod(&self, pod: &Value) -> Result<()> {
        self.api
            .request(
                Method::PUT,
                &format!("/api/v1/namespaces/{NS}/pods/{CHANGE_POD}/status"),
                Some(pod),
            )
            .context("updating the change pod")?;
        Ok(())
    }

    /// Leaves the nodes as they were (rules out) and tears the lab down.
    pub fn down(mut self) -> Result<()> {
        drop(self.iperf.take());
        let _ = self.switch(Mode::Direct);
        print!("{}", self.lab.down()?);
        Ok(())
    }
}

/// The iperf3 server we started: stopped (by its pid, it is our child) when dropped.
struct IperfServer(Child);

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bench-s<i>`: one of the N loaded services (not `bench-stream` or `bench-change`).
fn is_numbered_service(name: &str) -> bool {
    name.strip_prefix("bench-s")
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

fn endpoint(ip: Ipv4Addr, port: u16) -> BenchEndpoint {
    BenchEndpoint {
        ip,
        port,
        local: false,
    }
}

/// Creates services `range` (`bench-s<i>`, selecting group i mod `pool` of size
/// `endpoints`) from a few threads at once; their cluster IPs.
fn parallel_create(
    api: &Client,
    range: std::ops::Range<usize>,
    endpoints: usize,
    pool: usize,
) -> Result<Vec<(usize, Ipv4Addr)>> {
    const THREADS: usize = 4;
    let all: Vec<usize> = range.collect();
    let chunks: Vec<&[usize]> = all.chunks(all.len().div_ceil(THREADS).max(1)).collect();
    let results: Vec<Result<Vec<(usize, Ipv4Addr)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| {
                            let group = format!("bench-e{endpoints}-g{}", i % pool);
                            create_service(
                                api,
                                &format!("bench-s{i}"),
                                &group,
                                &[("http", "TCP", SERVICE_PORT, ECHO_PORT)],
                            )
                            .map(|vip| (i, vip))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("create thread"))
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    out.sort_unstable();
    Ok(out)
}

pub(super) fn create_pod(
    api: &Client,
    name: &str,
    labels: &BTreeMap<String, String>,
    ip: Ipv4Addr,
    node: &str,
    ready: bool,
) -> Result<()> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    });
    api.request(
        Method::POST,
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(&pod),
    )
    .with_context(|| format!("creating pod {name}"))?;
    Ok(())
}

/// Creates a ClusterIP service selecting `label=y` with `(name, protocol, port, targetPort)`
/// ports; its allocated address.
pub(super) fn create_service(
    api: &Client,
    name: &str,
    label: &str,
    ports: &[(&str, &str, u16, u16)],
) -> Result<Ipv4Addr> {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, port, target)| {
            json!({"name": n, "protocol": p, "port": port, "targetPort": target})
        })
        .collect();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {label: "y"}, "ports": ports},
    });
    let created = api
        .request(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/services"),
            Some(&svc),
        )
        .with_context(|| format!("creating service {name}"))?;
    created["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("service {name} got no cluster IP"))
}

pub(super) fn frontends(pin: &Path) -> Result<HashMap<MapData, FrontendKey, Frontend>> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// Polls `done` every 2 ms until it holds; fails after `limit`.
pub fn wait_until(limit: Duration, done: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_until_every(limit, Duration::from_millis(2), done)
}

/// Polls `done` every `poll` until it holds; fails after `limit`.
pub fn wait_until_every(
    limit: Duration,
    poll: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("not done after {limit:?}");
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbered_services_are_replaced_on_reload() {
        assert!(is_numbered_service("bench-s0"));
        assert!(is_numbered_service("bench-s12345"));
        assert!(!is_numbered_service("bench-stream"));
        assert!(!is_numbered_service(CHANGE_POD));
        assert!(!is_numbered_service("bench-s"));
    }
}
