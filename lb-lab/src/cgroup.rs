//! One cgroup2 directory per lab node (`<cgroup2>/lbk-<node>`): the node's agent attaches its
//! socket-LB programs there, and the lab runs the node's own processes (probes and commands
//! standing for hostNetwork pods and kubelet) inside it. Nothing else on the machine is in
//! these cgroups, so the socket programs never see a process outside the lab.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::netns::PREFIX;

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

/// Creates node `node`'s cgroup (an existing one is reused); its path.
///
/// # Errors
/// If cgroup2 is not mounted or the directory cannot be created.
pub fn create(node: &str) -> Result<PathBuf> {
    let dir = node_dir(&root()?, node);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e).with_context(|| format!("cannot create cgroup {}", dir.display())),
    }
}

/// Removes the cgroups of `nodes` that exist; the ones removed. A cgroup still holding a
/// process cannot be removed (EBUSY): the error names it.
///
/// # Errors
/// If cgroup2 is not mounted or a directory exists but cannot be removed.
pub fn remove<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Result<Vec<PathBuf>> {
    let Ok(root) = root() else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for node in nodes {
        let dir = node_dir(&root, node);
        // A cgroup directory is removed with rmdir(2) even though it lists files: they are
        // the kernel's interface, not contents.
        match fs::remove_dir(&dir) {
            Ok(()) => removed.push(dir),
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
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(removed)
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
}
