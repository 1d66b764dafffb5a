//! One cgroup2 directory per lab node (`<cgroup2>/lbk-<node>`): the node's agent attaches its
//! socket-LB programs there, and the lab runs the node's own processes (probes and commands
//! standing for hostNetwork pods and kubelet) inside it. Below it, one cgroup per pod
//! (`<cgroup2>/lbk-<node>/kubepods/<pod>`), as kubelet makes them: the pod's processes run
//! there, so the node's socket programs see the pods' sockets too, as they do in Kind, where
//! the agent attaches at the node container's cgroup root. Nothing else on the machine is in
//! these cgroups, so the socket programs never see a process outside the lab.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::netns::PREFIX;

/// The cgroup below a node's that kubelet puts every pod under.
const KUBEPODS: &str = "kubepods";

/// The first cgroup2 mount point in `mounts` (the format of /proc/mounts).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, at, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // /proc/mounts escapes spaces in paths as \040.
        (fstype == "cgroup2").then(|| PathBuf::from(at.replace("\\040", " ")))
    })
}

/// Where cgroup2 is mounted on this machine (`/sys/fs/cgroup` or, on a hybrid host,
/// `/sys/fs/cgroup/unified`).
///
/// # Errors
/// If /proc/mounts cannot be read or lists no cgroup2 file system.
pub fn root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    cgroup2_mount(&mounts).context("no cgroup2 file system is mounted (see /proc/mounts); the lab needs one for the nodes' socket-level load balancing")
}

/// Node `node`'s cgroup under `root`.
pub fn node_dir(root: &Path, node: &str) -> PathBuf {
    root.join(format!("{PREFIX}{node}"))
}

/// Pod `pod`'s cgroup on node `node` under `root`: `<root>/lbk-<node>/kubepods/<pod>`, below
/// the node's as kubelet's `kubepods` slice is below the node's root cgroup.
pub fn pod_dir(root: &Path, node: &str, pod: &str) -> PathBuf {
    node_dir(root, node).join(KUBEPODS).join(pod)
}

/// Creates node `node`'s cgroup (an existing one is reused); its path.
///
/// # Errors
/// If cgroup2 is not mounted or the directory cannot be created.
pub fn create(node: &str) -> Result<PathBuf> {
    let dir = node_dir(&root()?, node);
    create_dir(&dir)?;
    Ok(dir)
}

/// Creates pod `pod`'s cgroup on node `node`, and its parents (existing ones are reused);
/// its path.
///
/// Processes may live both in the node's cgroup and in its pods' below it: cgroup2 forbids
/// that only where controllers are enabled for the children, and the lab enables none.
///
/// # Errors
/// If cgroup2 is not mounted or a directory cannot be created.
pub fn create_pod(node: &str, pod: &str) -> Result<PathBuf> {
    let root = root()?;
    let dir = pod_dir(&root, node, pod);
    for level in [
        node_dir(&root, node),
        node_dir(&root, node).join(KUBEPODS),
        dir.clone(),
    ] {
        create_dir(&level)?;
    }
    Ok(dir)
}

fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create cgroup {}", dir.display())),
    }
}

/// Removes the cgroups of `nodes` that exist, each with every cgroup below it (the pods'),
/// children before parents; the ones removed. A cgroup still holding a process cannot be
/// removed (EBUSY): the error names it, and its parents stay.
///
/// # Errors
/// If a directory exists but cannot be removed.
pub fn remove<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Result<Vec<PathBuf>> {
    let Ok(root) = root() else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for node in nodes {
        remove_tree(&node_dir(&root, node), &mut removed, &mut failures);
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(removed)
}

/// Removes cgroup `dir` after every cgroup below it (depth first), pushing what was removed
/// and what could not be.
fn remove_tree(dir: &Path, removed: &mut Vec<PathBuf>, failures: &mut Vec<String>) {
    let children = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            failures.push(format!("cannot list cgroup {}: {e}", dir.display()));
            return;
        }
    };
    // The kernel's interface files are plain files; only directories are child cgroups.
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&child.path(), removed, failures);
        }
    }
    // A cgroup directory is removed with rmdir(2) even though it lists files: they are the
    // kernel's interface, not contents.
    match fs::remove_dir(dir) {
        Ok(()) => removed.push(dir.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            failures.push(format!(
                "cannot remove cgroup {}: {e} (processes still inside: {})",
                dir.display(),
                procs.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
}

/// Makes `cmd` move itself into cgroup `dir` between fork and exec, so the program runs
/// inside it from its first instruction (as `cgexec` does).
///
/// # Errors
/// If the cgroup's `cgroup.procs` cannot be opened.
pub fn enter_on_spawn(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let mut file = OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("cannot open {}", procs.display()))?;
    // SAFETY: the closure runs in the forked child and only makes one write(2) on a file
    // descriptor opened before the fork; it allocates nothing and takes no locks. Writing
    // "0" moves the writing process.
    unsafe {
        cmd.pre_exec(move || file.write_all(b"0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn node_cgroups_carry_the_lab_prefix() {
        assert_eq!(
            node_dir(Path::new("/sys/fs/cgroup/unified"), "worker"),
            PathBuf::from("/sys/fs/cgroup/unified/lbk-worker")
        );
    }

    #[test]
    fn pod_cgroups_sit_under_their_nodes_kubepods() {
        assert_eq!(
            pod_dir(Path::new("/sys/fs/cgroup"), "worker", "worker-echo-1"),
            PathBuf::from("/sys/fs/cgroup/lbk-worker/kubepods/worker-echo-1")
        );
    }

    #[test]
    fn removing_a_tree_takes_children_before_parents() {
        // Empty plain directories stand in for cgroups: rmdir(2) treats them alike.
        let root = std::env::temp_dir().join(format!("lb-lab-cgroup-{}", std::process::id()));
        let node = node_dir(&root, "worker");
        let pods = ["worker-echo-1", "worker-client"].map(|p| pod_dir(&root, "worker", p));
        for pod in &pods {
            fs::create_dir_all(pod).unwrap();
        }
        let (mut removed, mut failures) = (Vec::new(), Vec::new());
        remove_tree(&node, &mut removed, &mut failures);
        let _ = fs::remove_dir_all(&root);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert_eq!(removed[2], node.join(KUBEPODS));
        assert_eq!(removed[3], node);
        assert!(pods.iter().all(|p| removed[..2].contains(p)));
    }
}
