//! Harness for the socket-level programs: a throwaway network namespace with echo servers,
//! a throwaway cgroup v2 directory with the four cgroup programs attached, and child
//! processes placed in both.
//!
//! Everything created here is named `lbk-sock-*` and removed by drop guards, also when a
//! test fails.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use nix::sched::{setns, CloneFlags};

use crate::Datapath;

/// Every namespace and cgroup this harness creates starts with this.
pub const PREFIX: &str = "lbk-sock-";

/// The cgroup programs of the object, in the order they are attached.
pub const SOCK_PROGRAMS: [&str; 4] = [
    "lb_sock_connect4",
    "lb_sock_sendmsg4",
    "lb_sock_recvmsg4",
    "lb_sock_getpeername4",
];

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on pure v2 systems,
/// `/sys/fs/cgroup/unified` on hybrid ones), from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// A cgroup v2 directory of our own, removed when dropped.
#[derive(Debug)]
pub struct Cgroup {
    root: PathBuf,
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/<name>`; `name` must start with [`PREFIX`].
    pub fn create(name: &str) -> Result<Self> {
        assert!(name.starts_with(PREFIX), "refusing cgroup name {name}");
        let root = cgroup2_mount().context("no cgroup2 mount in /proc/mounts")?;
        let path = root.join(name);
        if path.exists() {
            // Left over by a crashed run of this same process id: empty it and start over.
            drop(Cgroup {
                root: root.clone(),
                path: path.clone(),
            });
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { root, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, opened for attaching programs.
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))
    }

    /// `cgroup.procs`, opened for writing: writing "0" moves the writer into the cgroup.
    pub fn procs_for_writing(&self) -> Result<File> {
        let procs = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&procs)
            .with_context(|| format!("opening {}", procs.display()))
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: move whatever is left (only our own
        // children ever enter it) back to the root, then remove the directory.
        for _ in 0..50 {
            for pid in self.pids() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A named network namespace of our own with `lo` up, deleted when dropped.
///
/// The namespace is held open from creation on, so the servers and clients enter it by
/// this handle and never by name: lab teardown deletes every `lbk-*` name it finds, and a
/// concurrent one must not break a running test.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates namespace `name` (which must start with [`PREFIX`]) with `lo` up and an
    /// interface `lbs0` holding `addrs` (`a.b.c.d/len`).
    pub fn create(name: &str, addrs: &[&str]) -> Result<Self> {
        assert!(name.starts_with(PREFIX), "refusing namespace name {name}");
        if lb_lab::netns::exists(name) {
            // Left over by a crashed run of this same process id.
            let _ = lb_lab::netns::delete(name);
        }
        lb_lab::netns::add(name)?;
        let file = match lb_lab::netns::open(name) {
            Ok(file) => file,
            Err(e) => {
                let _ = lb_lab::netns::delete(name);
                return Err(e.into());
            }
        };
        let ns = Self {
            name: name.to_string(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // A veth pair with both ends inside: this kernel has no dummy driver, and veth is
        // what the lab uses anyway. Addresses on an up interface are local to the namespace.
        ns.ip(&[
            "link", "add", "lbs0", "type", "veth", "peer", "name", "lbs1",
        ])?;
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", "lbs0"])?;
        }
        ns.ip(&["link", "set", "lbs1", "up"])?;
        ns.ip(&["link", "set", "lbs0", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> args..`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        Ok(lb_lab::cmd::ip(&all)?)
    }

    /// Moves the calling thread into the namespace.
    pub fn enter_thread(&self) -> Result<()> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).context("setns into the test namespace")
    }

    /// A handle for a child process to enter the namespace with.
    fn handle(&self) -> Result<File> {
        Ok(self.file.try_clone()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if lb_lab::netns::exists(&self.name) {
            if let Err(e) = lb_lab::netns::delete(&self.name) {
                eprintln!("warning: could not delete namespace {}: {e}", self.name);
            }
        }
    }
}

/// Makes `cmd`'s child enter `netns` and, if given, `cgroup` between fork and exec, so
/// that every socket it creates belongs to both.
pub fn place(cmd: &mut Command, netns: &Netns, cgroup: Option<&Cgroup>) -> Result<()> {
    let ns = netns.handle()?;
    let procs = cgroup.map(Cgroup::procs_for_writing).transpose()?;
    // SAFETY: the closure runs in the forked child and only makes two syscalls on file
    // descriptors opened before the fork (write(2) and setns(2)); it allocates nothing and
    // takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // "0" is the writing process itself.
                let n = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
    Ok(())
}

/// Loads the four cgroup programs of the datapath's object (the verifier decides here) and
/// attaches them to `cgroup`. They stay attached until the datapath is dropped.
pub fn attach_sock_programs(dp: &mut Datapath, cgroup: &Cgroup) -> Result<()> {
    for name in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = dp
            .ebpf_mut()
            .program_mut(name)
            .with_context(|| format!("program {name} not in object"))?
            .try_into()?;
        crate::verifier::load(|| prog.load())
            .with_context(|| format!("verifier rejected {name}"))?;
        prog.attach(cgroup.open()?, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup.path().display()))?;
    }
    Ok(())
}

/// TCP and UDP echo servers inside a namespace, one pair per address. Each answers with its
/// own address (`a.b.c.d:port\n`), so a client can tell which backend it reached. Stopped
/// and joined when dropped.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(netns: &Netns, addrs: &[SocketAddrV4]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Self {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for &addr in addrs {
            // Bind on this thread after a round trip through one that entered the
            // namespace, so bind errors surface here.
            let (tx, rx) = std::sync::mpsc::channel();
            let ns = netns.handle()?;
            let stop_tcp = stop.clone();
            servers.threads.push(std::thread::spawn(move || {
                let bound = (|| -> Result<(TcpListener, UdpSocket)> {
                    setns(&ns, CloneFlags::CLONE_NEWNET)?;
                    let tcp = TcpListener::bind(addr)?;
                    tcp.set_nonblocking(true)?;
                    let udp = UdpSocket::bind(addr)?;
                    udp.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok((tcp, udp))
                })();
                match bound {
                    Ok((tcp, udp)) => {
                        let _ = tx.send(Ok(()));
                        serve(addr, &tcp, &udp, &stop_tcp);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }));
            rx.recv()
                .context("echo server thread died")?
                .with_context(|| format!("starting echo server on {addr}"))?;
        }
        Ok(servers)
    }
}

/// One thread serves both sockets of an address: requests are tiny and the test sends them
/// one at a time.
fn serve(addr: SocketAddrV4, tcp: &TcpListener, udp: &UdpSocket, stop: &AtomicBool) {
    let reply = format!("{addr}\n");
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match tcp.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply.as_bytes());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
        // Also the pause between polls of the listener.
        if let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(reply.as_bytes(), from);
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
