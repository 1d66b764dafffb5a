//! Socket-level load balancing: the four cgroup sock_addr programs on the cgroup2
//! hierarchy, so that the node's own processes (and host-network pods) connecting to a
//! service address get a backend at connect()/sendmsg() time, and see the service address
//! again in recvmsg()/getpeername().
//!
//! Each program's link is pinned as `<links>/cgroup/<program>` and adopted by the next
//! agent with BPF_LINK_UPDATE, so restarts and upgrades leave no gap; `--socket-lb false`
//! removes the pins, which detaches. Cgroup links are always attached "multi": programs
//! others put on the same cgroup keep running.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    programs::{CgroupSockAddr, ProgramError},
    Ebpf,
};
use tracing::debug;

use super::{sys, AttachError};
use crate::datapath::loader::SOCK_PROGRAMS;

/// Subdirectory of the links directory for the cgroup links.
pub const DIR: &str = "cgroup";
/// statfs(2) f_type of a cgroup2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system in /proc/mounts: mount one, pass --cgroup-path, or turn socket-level LB off with --socket-lb false")]
    NoCgroup2,
    #[error("cannot read /proc/mounts")]
    Mounts(#[source] io::Error),
    #[error("--cgroup-path {}: {reason}; pass a cgroup2 directory (e.g. /sys/fs/cgroup), or --socket-lb false", .path.display())]
    NotCgroup2 { path: PathBuf, reason: String },
    #[error("attaching {program} to the cgroup {} failed; cgroup BPF links need Linux 5.7 or later, and root or CAP_BPF with CAP_NET_ADMIN (or pass --socket-lb false)", .path.display())]
    Attach {
        program: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading {program} failed")]
    Load {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("pinning the link of {program} at {} failed (is the pin directory on bpffs?)", .path.display())]
    Pin {
        program: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The first cgroup2 mount point listed in `mounts` (/proc/mounts' format).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, at, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // /proc/mounts escapes spaces in paths as \040.
        (fstype == "cgroup2").then(|| PathBuf::from(at.replace("\\040", " ")))
    })
}

/// The default `--cgroup-path`: where cgroup2 is mounted (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn default_cgroup_path() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// Fails unless `path` is a directory of a cgroup2 file system.
pub fn check_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let not = |reason: String| CgroupError::NotCgroup2 {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| not(e.to_string()))?;
    if !meta.is_dir() {
        return Err(not("not a directory".into()));
    }
    let fs = nix::sys::statfs::statfs(path).map_err(|e| not(e.to_string()))?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libcs
    let magic = fs.filesystem_type().0 as i64;
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(not(format!(
            "not on a cgroup2 file system (f_type {magic:#x})"
        )));
    }
    Ok(())
}

/// The kernel attach type of each socket program.
fn attach_type(program: &str) -> u32 {
    use sys::attach_type::*;
    match program {
        "lb_sock_connect4" => CGROUP_INET4_CONNECT,
        "lb_sock_sendmsg4" => CGROUP_UDP4_SENDMSG,
        "lb_sock_recvmsg4" => CGROUP_UDP4_RECVMSG,
        _ => CGROUP_INET4_GETPEERNAME,
    }
}

/// The socket programs on one cgroup.
pub struct SocketLb {
    dir: PathBuf,
    cgroup: Option<PathBuf>,
}

impl SocketLb {
    /// Links are pinned in `<links_dir>/cgroup` (created if missing).
    pub fn new(links_dir: &Path) -> Result<Self, AttachError> {
        let dir = links_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| AttachError::LinksDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, cgroup: None })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Detaches every socket program a previous agent pinned (`--socket-lb false`).
    pub fn detach_all(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.cgroup = None;
    }

    /// Attaches (or adopts the pinned links of) every socket program on `cgroup`; all or
    /// none: a failure releases what this call attached. True when every link was adopted.
    /// The links are assumed to be on `cgroup` when adopted: a changed `--cgroup-path`
    /// needs the old pins removed (`--socket-lb false` once, or by hand).
    pub fn ensure(&mut self, ebpf: &mut Ebpf, cgroup: &Path) -> Result<bool, AttachError> {
        check_cgroup2(cgroup)?;
        let dir = File::open(cgroup).map_err(|e| CgroupError::NotCgroup2 {
            path: cgroup.to_owned(),
            reason: e.to_string(),
        })?;
        let mut created: Vec<PathBuf> = Vec::new();
        let mut adopted_all = true;
        for program in SOCK_PROGRAMS {
            match self.hold(ebpf, &dir, cgroup, program) {
                Ok(adopted) => {
                    adopted_all &= adopted;
                    if !adopted {
                        created.push(self.dir.join(program));
                    }
                }
                Err(e) => {
                    for path in created {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            }
        }
        debug!(cgroup = %cgroup.display(), ino = dir.metadata().map(|m| m.ino()).unwrap_or(0), "socket programs attached");
        self.cgroup = Some(cgroup.to_owned());
        Ok(adopted_all)
    }

    fn hold(
        &self,
        ebpf: &mut Ebpf,
        cgroup_dir: &File,
        cgroup: &Path,
        program: &'static str,
    ) -> Result<bool, AttachError> {
        let load = |e| CgroupError::Load {
            program,
            source: Box::new(e),
        };
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(program)
            .ok_or(AttachError::MissingProgram(program))?
            .try_into()
            .map_err(load)?;
        if prog.fd().is_err() {
            prog.load().map_err(load)?;
        }
        let prog_fd = prog.fd().map_err(load)?;
        let path = self.dir.join(program);
        if path.exists() {
            match sys::obj_get(&path).and_then(|link| sys::link_update(&link, prog_fd)) {
                Ok(()) => return Ok(true),
                Err(e) => {
                    debug!(path = %path.display(), "replacing a pinned socket link that cannot be adopted: {e}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let link =
            sys::link_create(prog_fd, cgroup_dir, attach_type(program)).map_err(|source| {
                CgroupError::Attach {
                    program,
                    path: cgroup.to_owned(),
                    source,
                }
            })?;
        sys::obj_pin(&link, &path).map_err(|source| CgroupError::Pin {
            program,
            path: path.clone(),
            source,
        })?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_proc_mounts() {
        let hybrid = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
";
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
    fn a_path_that_is_not_cgroup2_is_refused_with_what_to_do() {
        let e = check_cgroup2(Path::new("/proc")).expect_err("procfs");
        let text = e.to_string();
        assert!(
            text.starts_with("--cgroup-path /proc: not on a cgroup2"),
            "{text}"
        );
        assert!(text.contains("--socket-lb false"), "{text}");
        let e = check_cgroup2(Path::new("/nonexistent/cg")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/cg"), "{e}");
    }

    #[test]
    fn every_socket_program_has_its_hook() {
        let types: Vec<u32> = SOCK_PROGRAMS.iter().map(|p| attach_type(p)).collect();
        assert_eq!(types, [10, 14, 19, 29]);
    }
}
