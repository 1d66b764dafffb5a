//! Named network namespaces: create, list, delete, and run code or commands inside one.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::cmd::{self, CommandError};

/// Every namespace the lab creates starts with this, and only those are ever deleted.
pub const PREFIX: &str = "lbk-";

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace could not be found or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace `{0}` does not exist (is the lab up? try `cargo xtask lab status`)"
    )]
    Missing(String),
    #[error("cannot open network namespace `{name}`: {source}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace `{name}`: {source}")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("thread running inside network namespace `{0}` panicked")]
    Panicked(String),
}

/// Turns a short name (`worker`, `worker-echo-1`) into the lab's full name (`lbk-worker`);
/// full names pass through.
pub fn qualify(name: &str) -> String {
    if name.starts_with(PREFIX) {
        name.to_string()
    } else {
        format!("{PREFIX}{name}")
    }
}

/// The file `ip netns` keeps for namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// All existing namespaces of the lab ([`is_lab_namespace`]), sorted.
///
/// Other `lbk-*` namespaces (a bench's or a test's throwaway ones) are not the lab's: a lab
/// going up or down must leave them alone.
///
/// # Errors
/// If `/run/netns` exists but cannot be read.
pub fn list_lab() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_lab_namespace(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `name` is one of the lab's namespaces: `lbk-net`, `lbk-host`, a node's
/// (`lbk-worker`) or a pod's (`lbk-worker-echo-1`).
pub fn is_lab_namespace(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    rest == crate::plan::NET_NS.trim_start_matches(PREFIX)
        || rest == crate::plan::HOST_NS.trim_start_matches(PREFIX)
        || crate::plan::NODE_NAMES
            .iter()
            .any(|node| rest == *node || rest.starts_with(&format!("{node}-")))
}

/// Creates namespace `name` with `ip netns add`, so that it shows in `ip netns list`.
///
/// # Errors
/// If `ip` fails (for example when the name is taken).
pub fn add(name: &str) -> Result<(), CommandError> {
    cmd::ip(&["netns", "add", name]).map(drop)
}

/// Deletes namespace `name`. Refuses names outside the lab's prefix, so a bug cannot delete
/// somebody else's namespace.
///
/// # Errors
/// If `ip` fails.
///
/// # Panics
/// If `name` does not start with [`PREFIX`].
pub fn delete(name: &str) -> Result<(), CommandError> {
    assert!(
        name.starts_with(PREFIX),
        "refusing to delete non-lab namespace {name}"
    );
    cmd::ip(&["netns", "delete", name]).map(drop)
}

/// Process ids whose network namespace is `name` (`ip netns pids`).
///
/// # Errors
/// If `ip` fails.
pub fn pids(name: &str) -> Result<Vec<i32>, CommandError> {
    let out = cmd::ip(&["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Opens namespace `name` for `setns`.
///
/// # Errors
/// [`NetnsError::Missing`] if it does not exist, [`NetnsError::Open`] otherwise.
pub fn open(name: &str) -> Result<File, NetnsError> {
    File::open(path(name)).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetnsError::Missing(name.to_string())
        } else {
            NetnsError::Open {
                name: name.to_string(),
                source,
            }
        }
    })
}

/// Makes `cmd` enter namespace `name` between fork and exec.
///
/// Unlike `ip netns exec`, this changes only the network namespace: the mount namespace and so
/// `/sys/fs/bpf` stay the host's, which the agent needs for its pinned maps.
///
/// # Errors
/// If the namespace cannot be opened; entering it is checked when the command is spawned.
pub fn enter_on_spawn(cmd: &mut Command, name: &str) -> Result<(), NetnsError> {
    let ns = open(name)?;
    // SAFETY: the closure runs in the forked child and only makes the setns syscall on a file
    // descriptor opened before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered namespace `name`, and returns its result.
///
/// Only that thread changes namespace, so sockets `f` opens live in `name` while the rest of
/// the process is unaffected.
///
/// # Errors
/// If the namespace cannot be opened or entered, or `f` panics.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = open(name)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    name: name.to_string(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(name.to_string()))?
    })
}

/// Sets sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value` inside namespace `name`.
///
/// `/proc/sys/net` shows the namespace of the thread that opens it, so this writes from a
/// thread inside `name` and needs no external tool.
///
/// # Errors
/// If the namespace cannot be entered or the sysctl cannot be written.
pub fn set_sysctl(name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    run_in(name, || std::fs::write(&file, value))?
        .map_err(|e| anyhow::anyhow!("cannot set {key}={value} in {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_get_the_lab_prefix_and_full_names_pass_through() {
        assert_eq!(qualify("worker"), "lbk-worker");
        assert_eq!(qualify("worker-echo-1"), "lbk-worker-echo-1");
        assert_eq!(qualify("lbk-worker"), "lbk-worker");
    }

    #[test]
    fn only_the_labs_own_namespaces_are_the_lab() {
        for ours in [
            "lbk-net",
            "lbk-host",
            "lbk-control-plane",
            "lbk-worker",
            "lbk-worker2-echo-1",
            "lbk-control-plane-client",
        ] {
            assert!(is_lab_namespace(ours), "{ours}");
        }
        for theirs in [
            "lbk-rules-123",
            "lbk-mem-9",
            "lbk-benchgen-1",
            "lbk-agt-1",
            "worker",
            "lbk-workerx",
        ] {
            assert!(!is_lab_namespace(theirs), "{theirs}");
        }
    }

    #[test]
    fn opening_a_missing_namespace_says_it_is_missing() {
        let err = open("lbk-does-not-exist-for-sure").unwrap_err();
        assert!(matches!(err, NetnsError::Missing(_)), "{err}");
    }
}
