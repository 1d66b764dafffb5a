//! Helpers for tests that use the lab: the privilege gate and the lock that serialises them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Lock file shared by every process that brings the lab up or down (tests and xtask).
pub const LOCK_FILE: &str = "/run/lbk-lab.lock";

/// Whether this process may build the lab (runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The gate for tests that need something of the machine: `true` when `ok`. Otherwise it
/// fails the test when `CI=true` (CI must not silently skip) and else prints
/// `skipped <what>: <reason>` and returns `false`.
///
/// # Panics
/// When `!ok` and `CI=true`.
pub fn require(what: &str, ok: bool, reason: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what}: {reason} (CI=true, so not skipping)"
    );
    eprintln!("skipped {what}: {reason}");
    false
}

/// The privilege gate for tests that create namespaces or load BPF programs: [`require`]
/// root.
///
/// ```no_run
/// if !lb_lab::testing::root_or_skip("lab fabric test") {
///     return;
/// }
/// ```
///
/// # Panics
/// When not root and `CI=true`.
pub fn root_or_skip(what: &str) -> bool {
    require(
        what,
        is_root(),
        "must run as root (to load BPF programs and create network namespaces)",
    )
}

/// A fresh directory under /sys/fs/bpf for one test's pinned maps (bpffs is mounted first if
/// nothing is), removed with everything pinned in it when dropped.
#[derive(Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// # Panics
    /// If bpffs cannot be mounted or the directory cannot be created.
    pub fn new(test: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        crate::bpffs::ensure_mounted().unwrap_or_else(|e| panic!("{e:#}"));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(crate::bpffs::BPFFS)
            .join(format!("lb-test-{test}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Unlinking a pin drops the kernel object once nothing else holds it.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Holds the lab lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lab lock, waiting for whoever holds it. Every test that brings the lab up (or
/// uses it) holds this for its whole run, because there is only one set of `lbk-*`
/// namespaces. `cargo xtask lab up|down|apply|delete` take it too.
///
/// The lock is an flock on [`LOCK_FILE`] (or the same name in the temp dir if /run is not
/// writable), released by the kernel even if the holder crashes.
///
/// # Panics
/// If no lock file can be opened or locked.
pub fn lab_lock() -> LockGuard {
    match try_lock(true) {
        Ok(Some(guard)) => guard,
        Ok(None) => unreachable!("a blocking flock returned without the lock"),
        Err(e) => panic!("cannot take the lab lock: {e}"),
    }
}

/// Takes the lab lock; with `wait` false, returns `None` at once if someone else holds it.
///
/// # Errors
/// If no lock file can be opened, or locking fails for another reason than contention.
pub fn try_lock(wait: bool) -> std::io::Result<Option<LockGuard>> {
    let (file, path) = open_lock_file()?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, arg) {
        Ok(mut lock) => {
            // Who holds it, for whoever wonders why they are waiting.
            let _ = lock.set_len(0);
            let _ = writeln!(lock, "{}", std::process::id());
            Ok(Some(LockGuard { _lock: lock, path }))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, errno)) => Err(std::io::Error::from(errno)),
    }
}

fn open_lock_file() -> std::io::Result<(File, PathBuf)> {
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
    };
    let primary = PathBuf::from(LOCK_FILE);
    match open(&primary) {
        Ok(file) => Ok((file, primary)),
        Err(_) => {
            let fallback = std::env::temp_dir().join("lbk-lab.lock");
            open(&fallback).map(|f| (f, fallback))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_granted_twice() {
        let held = lab_lock();
        assert!(
            try_lock(false).unwrap().is_none(),
            "{}",
            held.path().display()
        );
        drop(held);
        assert!(try_lock(false).unwrap().is_some());
    }
}
