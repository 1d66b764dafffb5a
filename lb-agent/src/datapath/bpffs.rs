//! The BPF filesystem that maps are pinned on.
//!
//! Pins only work on bpffs. The usual mistake is a /sys/fs/bpf that nobody mounted: the
//! directory exists (it is part of sysfs) but pinning there fails with an obscure error, so
//! the filesystem is checked before anything is created.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("pin directory {dir} is not on a BPF filesystem ({checked} is not bpffs); mount one with: mount -t bpf bpf /sys/fs/bpf")]
    NotBpffs { dir: PathBuf, checked: PathBuf },
    #[error("cannot check the filesystem of {path}")]
    Statfs { path: PathBuf, source: nix::Error },
    #[error("cannot create pin directory {dir}")]
    Create { dir: PathBuf, source: io::Error },
}

/// True when `path` (which must exist) is on bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let fs = statfs(path).map_err(|source| BpffsError::Statfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on bpffs, creating it (and parents) if needed. The check is made
/// on the nearest existing ancestor, so nothing is created anywhere else.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), BpffsError> {
    let checked = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned();
    if !is_bpffs(&checked)? {
        return Err(BpffsError::NotBpffs {
            dir: dir.to_owned(),
            checked,
        });
    }
    fs::create_dir_all(dir).map_err(|source| BpffsError::Create {
        dir: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_off_bpffs_is_refused_with_the_mount_command() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("lb");
        let err = prepare_pin_dir(&dir).expect_err("tmp is not bpffs");
        assert!(
            err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
            "{err}"
        );
        assert!(!dir.exists(), "nothing is created off bpffs");
    }

    #[test]
    fn a_directory_on_bpffs_is_created() {
        if !crate::testing::require_root("creating a directory on bpffs") {
            return;
        }
        let pins = crate::testing::PinDir::new("bpffs");
        let dir = pins.path().join("a/b");
        prepare_pin_dir(&dir).expect("created");
        assert!(dir.is_dir());
        assert!(is_bpffs(&dir).expect("statfs"));
    }
}
