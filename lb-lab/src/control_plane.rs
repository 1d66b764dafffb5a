//! The lab's control plane in kube mode: the API server process on the control-plane node
//! (172.18.0.2:6443, as in Kind), its kubeconfig, and the lab's object writes through it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::Method;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::apiserver::{kubeconfig, Client, ClientError, ObjectKey, PauseMode, Resource};
use crate::manifests::{self, check_name, ObjectId, Rendered};
use crate::plan::{Plan, HOST_NS, POD_NAMESPACE};
use crate::pod_state::{PodState, PodStates};
use crate::process::{self, DaemonSpec, PidRecord};
use crate::slices::SERVICE_NAME_LABEL;
use crate::state::{remove_file_if_exists, StateDir};
use crate::Binaries;

/// The API server's port, as Kind's.
pub const APISERVER_PORT: u16 = 6443;
/// The node the API server runs on.
pub const APISERVER_NODE: &str = "control-plane";
/// Where the lab itself talks to the API server from: the host, like kubectl on a Kind host
/// (the root namespace has no route into the lab).
pub const CLIENT_NS: &str = HOST_NS;
/// Log lines shown when the API server fails to start.
const LOG_TAIL_LINES: usize = 20;

/// The lab's API server and what the lab does through it.
pub struct ControlPlane<'a> {
    pub bins: &'a Binaries,
    pub state: &'a StateDir,
    pub plan: &'a Plan,
}

impl ControlPlane<'_> {
    /// The API server's address (the control-plane node's, port 6443).
    pub fn addr(&self) -> SocketAddr {
        let ip = self
            .plan
            .node(APISERVER_NODE)
            .map_or(Ipv4Addr::new(172, 18, 0, 2), |n| n.ip);
        SocketAddr::from((ip, APISERVER_PORT))
    }

    /// `http://172.18.0.2:6443`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A client from the host namespace.
    pub fn client(&self) -> Client {
        Client::new(Some(CLIENT_NS), self.addr())
    }

    /// Whether the lab was brought up in kube mode (an API server was started).
    pub fn is_started(&self) -> bool {
        self.state.apiserver_pid().exists()
    }

    /// Removes an earlier lab's store and kubeconfig, for a fresh start.
    ///
    /// # Errors
    /// If a file cannot be removed.
    pub fn forget(&self) -> Result<()> {
        let state = self.state.apiserver_state();
        for path in [
            state.clone(),
            crate::apiserver::journal::journal_path(&state),
            self.state.kubeconfig(),
        ] {
            remove_file_if_exists(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// Starts `lb-lab apiserver` in the control-plane node's namespace (seeding the lab's
    /// Nodes and Pods if its store lacks them), writes the kubeconfig, and waits until the
    /// server answers.
    ///
    /// # Errors
    /// If it cannot start or does not answer within `timeout`; the error has its log's tail.
    pub fn start(&self, timeout: Duration) -> Result<PidRecord> {
        let node = self
            .plan
            .node(APISERVER_NODE)
            .context("the lab has no control-plane node")?;
        let args: Vec<OsString> = vec![
            "apiserver".into(),
            "--listen".into(),
            self.addr().to_string().into(),
            "--state".into(),
            self.state.apiserver_state().into(),
            "--seed-lab".into(),
        ];
        let record = process::spawn(&DaemonSpec {
            ns: node.ns.clone(),
            // In no lab cgroup, as the agents: it only serves, and its clients (agents, tests)
            // reach it by its own address, never through a service.
            cgroup: None,
            program: self.bins.lab.clone(),
            args,
            log: self.state.apiserver_log(),
            pid_file: self.state.apiserver_pid(),
        })
        .context("starting the API server")?;
        kubeconfig::write(&self.state.kubeconfig(), &self.url())?;
        self.wait_answering(record, timeout)?;
        Ok(record)
    }

    fn wait_answering(&self, record: PidRecord, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut client = self.client();
        client.timeout = Duration::from_millis(500);
        loop {
            let last = match client.get("/version") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let log = self.state.apiserver_log();
            if !process::is_alive(record) {
                bail!(
                    "the API server exited before it answered; last lines of {}:\n{}",
                    log.display(),
                    process::log_tail(&log, LOG_TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the API server did not answer within {timeout:?} ({last}); last lines of {}:\n{}",
                    log.display(),
                    process::log_tail(&log, LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The running API server's pid.
    ///
    /// # Errors
    /// If it was not started or is not running.
    pub fn pid(&self) -> Result<PidRecord> {
        let record = process::read_pid_file(&self.state.apiserver_pid())?
            .context("the lab has no API server (was it brought up with the kube agent source?)")?;
        anyhow::ensure!(
            process::is_alive(record),
            "the API server (pid {}) is not running; see {}",
            record.pid,
            self.state.apiserver_log().display()
        );
        Ok(record)
    }

    /// SIGSTOP: the server stops answering, connections hang (an unreachable API server).
    ///
    /// # Errors
    /// If it is not running.
    pub fn stop(&self) -> Result<()> {
        let record = self.pid()?;
        process::signal(record, Signal::SIGSTOP)?;
        // The signal lands asynchronously: until every thread is stopped, a request could
        // still be answered.
        anyhow::ensure!(
            process::wait_stopped(record, Duration::from_secs(5)),
            "the API server (pid {}) did not stop",
            record.pid
        );
        Ok(())
    }

    /// SIGCONT after [`ControlPlane::stop`].
    ///
    /// # Errors
    /// If it is not running.
    pub fn cont(&self) -> Result<()> {
        process::signal(self.pid()?, Signal::SIGCONT)
    }

    /// Kills the server (SIGKILL: it gets no chance to clean up) and starts it again from its
    /// state file. Clients see their connections drop and the address refuse connections
    /// until it is back; its event history starts empty.
    ///
    /// # Errors
    /// If it cannot be killed or does not come back within `timeout`.
    pub fn restart(&self, timeout: Duration) -> Result<PidRecord> {
        if let Some(record) = process::read_pid_file(&self.state.apiserver_pid())? {
            if process::is_alive(record) {
                process::signal(record, Signal::SIGKILL)?;
                anyhow::ensure!(
                    process::wait_dead(record, Duration::from_secs(5)),
                    "the API server (pid {}) survived SIGKILL",
                    record.pid
                );
            }
        }
        self.start(timeout)
    }

    /// `POST /lab/<what>`.
    fn admin(&self, what: &str) -> Result<Value> {
        Ok(self
            .client()
            .request(Method::POST, &format!("/lab/{what}"), None)?)
    }

    /// Cuts every open watch; returns how many there were.
    ///
    /// # Errors
    /// If the server does not answer.
    pub fn drop_watches(&self) -> Result<u64> {
        Ok(self.admin("drop-watches")?["dropped"].as_u64().unwrap_or(0))
    }

    /// Forgets the event history (watches resuming from older versions get 410 Gone); returns
    /// the new resourceVersion.
    ///
    /// # Errors
    /// If the server does not answer.
    pub fn compact(&self) -> Result<String> {
        let answer = self.admin("compact")?;
        Ok(answer["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Holds (`Hang`) or refuses with 503 (`Unavailable`) API requests until [`resume`].
    ///
    /// [`resume`]: ControlPlane::resume
    ///
    /// # Errors
    /// If the server does not answer.
    pub fn pause(&self, mode: PauseMode) -> Result<()> {
        let mode = match mode {
            PauseMode::Hang => "hang",
            PauseMode::Unavailable => "unavailable",
        };
        self.admin(&format!("pause?mode={mode}")).map(drop)
    }

    /// # Errors
    /// If the server does not answer.
    pub fn resume(&self) -> Result<()> {
        self.admin("resume").map(drop)
    }

    /// Applies the objects of `yaml` through the API (create, or replace as `kubectl apply`
    /// would: the server keeps allocated cluster IPs and node ports), deletes objects an earlier
    /// manifest of this `name` had and this one lacks, and remembers the manifest under `name`.
    ///
    /// # Errors
    /// If the YAML is invalid, an object is of a kind the server does not serve, or the server
    /// refuses one (the error has its `Status` message).
    pub fn apply(&self, name: &str, yaml: &str) -> Result<Rendered> {
        check_name(name)?;
        let docs = manifests::parse(yaml)?;
        let previous = self.applied_ids(name);
        let client = self.client();
        let mut out = Vec::new();
        let mut derived = Vec::new();
        for doc in &docs {
            let key = key_of(&doc.id)?;
            let body = serde_json::to_value(&doc.value).context("converting YAML to JSON")?;
            let status = body.get("status").cloned();
            let mut stored = apply_object(&client, &key, body)
                .with_context(|| format!("applying {}", doc.id))?;
            if let Some(status) = status.filter(|_| key.resource.has_status()) {
                // The API keeps `status` out of create and update, as Kubernetes does; a
                // manifest's status (a LoadBalancer's ingress IPs, which a cloud controller
                // or MetalLB would set) goes through the /status subresource.
                stored["status"] = status;
                stored = client
                    .request(
                        Method::PUT,
                        &format!("{}/status", key.path()),
                        Some(&stored),
                    )
                    .with_context(|| format!("setting the status of {}", doc.id))?;
            }
            out.push(serde_norway::to_string(&stored)?);
            if key.resource == Resource::Services {
                let slices = slices_of(&client, &key)?;
                let endpoints = slices
                    .iter()
                    .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
                    .sum();
                derived.push((doc.id.clone(), slices.len(), endpoints));
                for slice in &slices {
                    out.push(serde_norway::to_string(slice)?);
                }
            }
        }
        let ids: Vec<ObjectId> = docs.into_iter().map(|d| d.id).collect();
        for old in previous.iter().filter(|old| !ids.contains(old)) {
            delete_object(&client, &key_of(old)?).with_context(|| format!("pruning {old}"))?;
        }
        fs::create_dir_all(self.state.applied())
            .with_context(|| format!("cannot create {}", self.state.applied().display()))?;
        let source = self.state.applied_source(name);
        crate::state::write_atomic(&source, yaml.as_bytes())
            .with_context(|| format!("cannot write {}", source.display()))?;
        Ok(Rendered {
            yaml: out.join("---\n"),
            objects: ids,
            derived,
        })
    }

    /// Deletes the objects manifest `name` applied; whether there was such a manifest.
    ///
    /// # Errors
    /// If the server refuses a delete.
    pub fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let source = self.state.applied_source(name);
        if !source.exists() {
            return Ok(false);
        }
        let client = self.client();
        for id in self.applied_ids(name).iter().rev() {
            delete_object(&client, &key_of(id)?).with_context(|| format!("deleting {id}"))?;
        }
        remove_file_if_exists(&source)
            .with_context(|| format!("cannot remove {}", source.display()))?;
        Ok(true)
    }

    /// The objects manifest `name` holds, if it was applied and still parses.
    fn applied_ids(&self, name: &str) -> Vec<ObjectId> {
        fs::read_to_string(self.state.applied_source(name))
            .ok()
            .and_then(|yaml| manifests::parse(&yaml).ok())
            .map(|docs| docs.into_iter().map(|d| d.id).collect())
            .unwrap_or_default()
    }

    /// Sets pod `pod`'s Ready (and ContainersReady) condition through `/status`, as kubelet
    /// would after a readiness probe.
    ///
    /// # Errors
    /// If the pod does not exist or the server refuses.
    pub fn set_pod_ready(&self, pod: &str, ready: bool) -> Result<()> {
        let client = self.client();
        let path = pod_path(pod);
        let mut object = client.get(&path)?;
        let status = if ready { "True" } else { "False" };
        let now = jiff::Timestamp::now().to_string();
        let conditions = object["status"]["conditions"].as_array_mut();
        let Some(conditions) = conditions else {
            bail!("pod {pod} has no status conditions");
        };
        for wanted in ["Ready", "ContainersReady"] {
            match conditions.iter_mut().find(|c| c["type"] == wanted) {
                Some(c) if c["status"] == status => {}
                Some(c) => {
                    c["status"] = json!(status);
                    c["lastTransitionTime"] = json!(now);
                }
                None => conditions
                    .push(json!({"type": wanted, "status": status, "lastTransitionTime": now})),
            }
        }
        client.request(Method::PUT, &format!("{path}/status"), Some(&object))?;
        Ok(())
    }

    /// Marks pod `pod` terminating (a graceful DELETE: it gets a deletionTimestamp and stays,
    /// as there is no kubelet to finish it) or, with `false`, running again (the mark is
    /// removed through `/lab/objects`, which only a test can do).
    ///
    /// # Errors
    /// If the pod does not exist or the server refuses.
    pub fn set_pod_terminating(&self, pod: &str, terminating: bool) -> Result<()> {
        let client = self.client();
        let path = pod_path(pod);
        if terminating {
            client.request(
                Method::DELETE,
                &path,
                Some(&json!({"gracePeriodSeconds": 30})),
            )?;
            return Ok(());
        }
        let mut object = client.get(&path)?;
        if let Some(meta) = object["metadata"].as_object_mut() {
            if meta.remove("deletionTimestamp").is_none() {
                return Ok(());
            }
            meta.remove("deletionGracePeriodSeconds");
        }
        client.request(Method::PUT, "/lab/objects", Some(&object))?;
        Ok(())
    }

    /// Pod `pod`'s readiness and termination, as the API holds them.
    ///
    /// # Errors
    /// If the pod does not exist or the server does not answer.
    pub fn pod_state(&self, pod: &str) -> Result<PodState> {
        Ok(pod_state_of(&self.client().get(&pod_path(pod))?))
    }

    /// Every pod's readiness and termination, as the API holds them (for `lab status`).
    ///
    /// # Errors
    /// If the server does not answer.
    pub fn pod_states(&self) -> Result<PodStates> {
        let mut client = self.client();
        client.timeout = Duration::from_secs(2);
        let list = client.get(&Resource::Pods.collection_path(Some(POD_NAMESPACE)))?;
        let mut states = PodStates::default();
        for pod in list["items"].as_array().into_iter().flatten() {
            let Some(name) = pod["metadata"]["name"].as_str() else {
                continue;
            };
            let state = pod_state_of(pod);
            states.update(name, |s| *s = state);
        }
        Ok(states)
    }

    /// `lab status`'s section: the server, and every Service with its cluster IP, ports and
    /// ready endpoints.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let pid = process::read_pid_file(&self.state.apiserver_pid())
            .ok()
            .flatten();
        let Some(pid) = pid else {
            return out;
        };
        let alive = if process::is_alive(pid) {
            "running"
        } else {
            "DEAD"
        };
        let _ = write!(out, "\napiserver: pid {} {alive}, {}", pid.pid, self.url());
        let mut client = self.client();
        client.timeout = Duration::from_secs(2);
        match client.get("/lab/state") {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    ", resourceVersion {}, {} objects, {} open watches{}",
                    s["resourceVersion"].as_str().unwrap_or("?"),
                    s["objects"],
                    s["watches"],
                    s["paused"]
                        .as_str()
                        .map(|p| format!(", PAUSED ({p})"))
                        .unwrap_or_default()
                );
            }
            Err(e) => {
                let _ = writeln!(out, ", not answering: {e}");
                return out;
            }
        }
        let _ = writeln!(out, "kubeconfig: {}", self.state.kubeconfig().display());
        match services_table(&client) {
            Ok(table) => out.push_str(&table),
            Err(e) => {
                let _ = writeln!(out, "services: {e}");
            }
        }
        out
    }
}

fn pod_state_of(pod: &Value) -> PodState {
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    PodState {
        ready,
        terminating: pod["metadata"].get("deletionTimestamp").is_some(),
    }
}

fn pod_path(pod: &str) -> String {
    ObjectKey::new(Resource::Pods, POD_NAMESPACE, pod).path()
}

/// The server-side key of a manifest object.
fn key_of(id: &ObjectId) -> Result<ObjectKey> {
    let resource = Resource::from_kind(&id.api_version, &id.kind).with_context(|| {
        format!(
            "{id}: the lab's API server serves v1 Services, Nodes and Pods and discovery.k8s.io/v1 EndpointSlices, not {} {}",
            id.api_version, id.kind
        )
    })?;
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    };
    anyhow::ensure!(
        plain(&id.name) && plain(&id.namespace),
        "{id}: not a valid object name"
    );
    Ok(ObjectKey::new(resource, &id.namespace, &id.name))
}

/// Creates the object, or replaces it if it exists.
fn apply_object(client: &Client, key: &ObjectKey, mut body: Value) -> Result<Value, ClientError> {
    match client.get(&key.path()) {
        Ok(_) => {
            // Unconditional replace: the manifest is the truth, whatever changed meanwhile.
            if let Some(meta) = body["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            client.request(Method::PUT, &key.path(), Some(&body))
        }
        Err(e) if e.is_not_found() => {
            let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
            client.request(Method::POST, &key.resource.collection_path(ns), Some(&body))
        }
        Err(e) => Err(e),
    }
}

/// Deletes the object; one that is already gone is fine.
fn delete_object(client: &Client, key: &ObjectKey) -> Result<(), ClientError> {
    match client.request(Method::DELETE, &key.path(), None) {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The EndpointSlices of Service `svc`.
fn slices_of(client: &Client, svc: &ObjectKey) -> Result<Vec<Value>> {
    let path = format!(
        "{}?labelSelector={SERVICE_NAME_LABEL}%3D{}",
        Resource::EndpointSlices.collection_path(Some(&svc.namespace)),
        svc.name
    );
    let list = client.get(&path)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn services_table(client: &Client) -> Result<String> {
    let services = client.get(&Resource::Services.collection_path(None))?;
    let slices = client.get(&Resource::EndpointSlices.collection_path(None))?;
    let items = services["items"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    if items.is_empty() {
        let _ = writeln!(out, "services: none");
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "\n{:<32} {:<13} {:<15} {:<28} ENDPOINTS (ready/all)",
        "SERVICE", "TYPE", "CLUSTER-IP", "PORTS"
    );
    for svc in &items {
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &svc["spec"];
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let node = p["nodePort"]
                    .as_i64()
                    .map(|n| format!(":{n}"))
                    .unwrap_or_default();
                format!(
                    "{}{node}/{}",
                    p["port"],
                    p["protocol"].as_str().unwrap_or("TCP")
                )
            })
            .collect();
        let mut addresses = BTreeSet::new();
        let mut ready = BTreeSet::new();
        for slice in slices["items"].as_array().into_iter().flatten() {
            let owner = slice["metadata"]["labels"][SERVICE_NAME_LABEL].as_str();
            if slice["metadata"]["namespace"].as_str() != Some(ns) || owner != Some(name) {
                continue;
            }
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                let addr = ep["addresses"][0].as_str().unwrap_or_default().to_string();
                if ep["conditions"]["ready"] != false {
                    ready.insert(addr.clone());
                }
                addresses.insert(addr);
            }
        }
        let _ = writeln!(
            out,
            "{:<32} {:<13} {:<15} {:<28} {}/{}",
            format!("{ns}/{name}"),
            spec["type"].as_str().unwrap_or("?"),
            spec["clusterIP"].as_str().unwrap_or("-"),
            ports.join(","),
            ready.len(),
            addresses.len()
        );
    }
    Ok(out)
}
