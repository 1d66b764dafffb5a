//! The BPF filesystem at /sys/fs/bpf, where each node's agent pins its maps.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::state::remove_dir_if_exists;

/// Mount point of the BPF filesystem.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Directory under [`BPFFS`] holding one pin directory per lab node.
pub const LAB_PIN_ROOT: &str = "/sys/fs/bpf/lbk";

/// The agent's `--pin-dir` for node `node`.
pub fn pin_dir(node: &str) -> PathBuf {
    Path::new(LAB_PIN_ROOT).join(node)
}

/// Whether /sys/fs/bpf is a BPF filesystem.
pub fn is_mounted() -> bool {
    statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts the BPF filesystem on /sys/fs/bpf unless it already is; whether it mounted it.
///
/// # Errors
/// If the mount fails.
pub fn ensure_mounted() -> Result<bool> {
    if is_mounted() {
        return Ok(false);
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!("cannot mount the BPF filesystem on {BPFFS} (mount -t bpf bpf {BPFFS})")
    })?;
    Ok(true)
}

/// Removes the pin directories of `nodes` (unpinning their maps), then the lab's pin root if
/// that left it empty; the directories actually removed.
///
/// # Errors
/// If a directory exists but cannot be removed.
pub fn remove_pin_dirs<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for node in nodes {
        let dir = pin_dir(node);
        if remove_dir_if_exists(&dir).with_context(|| format!("cannot remove {}", dir.display()))? {
            removed.push(dir);
        }
    }
    // Only if empty: something else may share the root one day, and remove_dir refuses then.
    if std::fs::remove_dir(LAB_PIN_ROOT).is_ok() {
        removed.push(PathBuf::from(LAB_PIN_ROOT));
    }
    Ok(removed)
}
