//! Layout of the lab's state directory (`target/lab`): pids, logs, manifests, pod states.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The state directory and the files in it.
///
/// ```text
/// <state_dir>/manifests/<name>.yaml   what the agents read (--source file:)
/// <state_dir>/applied/<name>.yaml     what was applied, to re-derive EndpointSlices from
/// <state_dir>/pods.json               pod readiness / termination
/// <state_dir>/pids/<what>.pid         processes the lab started
/// <state_dir>/logs/<what>.log         their stdout and stderr
/// <state_dir>/<node>.ready            written by each agent after its first sync
/// <state_dir>/offloads                the running lab's `--offloads` (`kind` or `off`)
/// <state_dir>/agent-privileges        its `--agent-privileges` (`daemonset` or `root`)
/// <state_dir>/apiserver.json          the API server's store (kube mode), plus .journal
/// <state_dir>/kubeconfig              how the agents (and you) reach the API server
/// ```
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn manifest(&self, name: &str) -> PathBuf {
        self.manifests().join(format!("{name}.yaml"))
    }

    pub fn applied(&self) -> PathBuf {
        self.root.join("applied")
    }

    pub fn applied_source(&self, name: &str) -> PathBuf {
        self.applied().join(format!("{name}.yaml"))
    }

    pub fn pod_states(&self) -> PathBuf {
        self.root.join("pods.json")
    }

    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn agent_pid(&self, node: &str) -> PathBuf {
        self.pids().join(format!("{node}-agent.pid"))
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.logs().join(format!("{node}-agent.log"))
    }

    pub fn ready_file(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}.ready"))
    }

    pub fn offloads(&self) -> PathBuf {
        self.root.join("offloads")
    }

    pub fn agent_privileges(&self) -> PathBuf {
        self.root.join("agent-privileges")
    }

    pub fn apiserver_state(&self) -> PathBuf {
        self.root.join("apiserver.json")
    }

    pub fn apiserver_pid(&self) -> PathBuf {
        self.pids().join("apiserver.pid")
    }

    pub fn apiserver_log(&self) -> PathBuf {
        self.logs().join("apiserver.log")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    pub fn echo_pid(&self, pod: &str) -> PathBuf {
        self.pids().join(format!("{pod}-echo.pid"))
    }

    pub fn echo_log(&self, pod: &str) -> PathBuf {
        self.logs().join(format!("{pod}-echo.log"))
    }
}

/// Writes `contents` to `path` so that readers see either the old file or the new one, never a
/// partial one: write a hidden temporary file beside it, then rename over.
///
/// The temporary name starts with `.` and ends in `.tmp`, so the agent's `*.yaml` scan skips it.
///
/// # Errors
/// If the directory is missing or the file cannot be written or renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

/// Removes `path` if it exists; whether it existed.
///
/// # Errors
/// Other than "not found".
pub fn remove_file_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes directory `path` and everything in it if it exists.
///
/// # Errors
/// Other than "not found".
pub fn remove_dir_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("lb-lab-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.yaml");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["svc.yaml"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
