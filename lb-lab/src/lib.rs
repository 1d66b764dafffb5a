//! Test support for lb: a simulated Kind cluster built from network namespaces (the "lab"),
//! the pods' echo server and the probe client.
//!
//! Everything the lab creates lives in network namespaces named `lbk-*`; the root namespace's
//! interfaces, routes and firewall are never touched. See DEVELOPERS.md, "The lab".
//!
//! - [`Lab`]: bring the lab up, attach to it, probe through it, apply Services, tear it down.
//! - [`apiserver`]: the lab's Kubernetes API server (also for in-process tests with kube-rs).
//! - [`cli`]: `cargo xtask lab up|down|status|exec|apply|delete`.
//! - [`testing`]: the root gate and the lock every lab test holds.

pub mod apiserver;
pub mod bpffs;
pub mod cgroup;
pub mod cli;
pub mod cmd;
pub mod control_plane;
pub mod daemonset;
pub mod echo;
pub mod flow;
pub mod kindnet;
pub mod lab;
pub mod load;
pub mod manifests;
pub mod netns;
pub mod plan;
pub mod pod_state;
pub mod probe;
pub mod process;
pub mod rollout;
pub mod scenarios;
pub mod slices;
pub mod state;
pub mod status;
pub mod teardown;
pub mod testing;
pub mod topology;

use std::path::{Path, PathBuf};

pub use lab::{AgentSource, DownOnDrop, Lab, UpOptions};
pub use plan::{Node, Pod, ECHO_PORT};
pub use probe::{ProbeError, ProbeRequest};
pub use teardown::{teardown, Teardown};
pub use testing::{lab_lock, root_or_skip, LockGuard};
pub use topology::Offloads;

/// The programs the lab runs and where it keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// `lb-agent`, one per node.
    pub agent: PathBuf,
    /// `lbctl`.
    pub lbctl: PathBuf,
    /// This crate's `lb-lab` binary: the pods' echo server.
    pub lab: PathBuf,
    /// The eBPF object (the agent embeds one; this is for `--bpf-object` and tests).
    pub bpf_object: PathBuf,
    /// `<workspace>/target/lab`.
    pub state_dir: PathBuf,
}

impl Binaries {
    /// The binaries beside `lab_exe` (a `target/<profile>/lb-lab`), with the eBPF object and
    /// state directory where `cargo xtask build` and `cargo xtask lab` put them. Integration
    /// tests get `lab_exe` from `env!("CARGO_BIN_EXE_lb-lab")`.
    pub fn beside(lab_exe: &Path) -> Self {
        let profile_dir = lab_exe.parent().unwrap_or(Path::new("."));
        let target = profile_dir.parent().unwrap_or(Path::new("."));
        Self {
            agent: profile_dir.join("lb-agent"),
            lbctl: profile_dir.join("lbctl"),
            lab: lab_exe.to_path_buf(),
            bpf_object: target.join("ebpf/bpfel-unknown-none/release/lb-ebpf"),
            state_dir: target.join("lab"),
        }
    }
}
