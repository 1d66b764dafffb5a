//! The BPF commands the agent needs that aya 0.14 keeps to itself for cgroup links: aya
//! attaches sock_addr programs with a link but neither hands the link out for pinning nor
//! updates one, so the socket-level programs are linked (BPF_LINK_CREATE), pinned
//! (BPF_OBJ_PIN), reopened (BPF_OBJ_GET) and swapped over (BPF_LINK_UPDATE) here.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h); stable kernel ABI.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_attach_type` values of the cgroup sock_addr hooks (include/uapi/linux/bpf.h).
pub mod attach_type {
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
}

/// `union bpf_attr` for BPF_LINK_CREATE (the common head; the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// `union bpf_attr` for BPF_OBJ_GET and BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_LINK_UPDATE.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix for `cmd`, of the size given;
    // the kernel reads (and for some commands writes) only within it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A new link attaching `program` to `target` (a cgroup directory) at `attach_type`. Cgroup
/// links take no flags: they are always "multi", so other programs on the cgroup stay.
pub fn link_create(program: impl AsFd, target: impl AsFd, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        target_fd: target.as_fd().as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` (a link) at `path` on bpffs.
pub fn obj_pin(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The object pinned at `path` (a link, here), as an owned descriptor.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes link `link` run `program` instead of its current program, atomically.
pub fn link_update(link: impl AsFd, program: impl AsFd) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `union bpf_attr` for BPF_LINK_DETACH.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches the link pinned at `path` now and unpins it.
///
/// Unpinning alone leaves the detach to the kernel's deferred release of the last
/// reference, so a new attachment right after (XDP in the other mode) could still find the
/// old one there and be refused.
pub fn detach_pinned(path: &Path) -> io::Result<()> {
    let link = obj_get(path)?;
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr)?;
    std::fs::remove_file(path)
}
