//! Attaches the programs to pod interfaces with tcx, and keeps them attached as pods come
//! and go, and across agent restarts and upgrades.
//!
//! Interfaces are listed with `if_nameindex(3)`, which asks the kernel about the network
//! namespace this thread is in; /sys/class/net would describe whichever namespace /sys was
//! mounted in, which is not ours when the agent was moved into a node's namespace with
//! setns. tcx (Linux 6.6+) links coexist with other tc programs (a CNI's) instead of
//! replacing them.
//!
//! With a links directory on bpffs, every link is pinned there as `<direction>/<iface>`, so
//! the programs stay attached while the agent is down (killed, restarting, upgrading). The
//! next agent adopts each pinned link by swapping its program for the newly loaded one with
//! BPF_LINK_UPDATE: one atomic step, so no packet ever goes untranslated or sees two
//! programs.
//!
//! The node's own side lives in submodules: [`uplink`] (`lb_from_net` with tcx on the
//! uplink, and which interface that is), [`xdp`] (`lb_xdp` on the uplink, native or
//! generic), [`cgroup`] (the socket-level programs on the cgroup2 hierarchy), with the
//! raw BPF commands aya does not expose in [`sys`].

pub mod cgroup;
pub mod driver;
pub mod node;
pub mod sys;
pub mod uplink;
pub mod xdp;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use nix::net::if_::{if_nameindex, if_nametoindex};
use tracing::debug;

use crate::datapath::loader::{FROM_POD, TO_POD};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot list network interfaces: {0}")]
    List(nix::Error),
    #[error("no interface named {0:?} in this network namespace")]
    UnknownInterface(String),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("attaching {program} to {iface} ({direction}) failed; tcx needs Linux 6.6 or later, and root or CAP_BPF with CAP_NET_ADMIN")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        source: Box<ProgramError>,
    },
    #[error("pinning the link of {program} on {iface} at {path} failed")]
    Pin {
        program: &'static str,
        iface: String,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("loading {program} failed")]
    Load {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("cannot use the links directory {path}")]
    LinksDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Xdp(#[from] xdp::XdpAttachError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// One program's hold on an interface.
pub(crate) enum Held {
    /// Detached when dropped.
    Owned(#[allow(dead_code)] SchedClassifierLink),
    /// Stays attached through its pin; removing the pin detaches.
    Pinned(PinnedLink),
}

/// Both programs on one interface.
struct Attachment {
    ifindex: u32,
    links: [Held; 2],
}

/// What a rescan changed.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Interfaces the programs were newly attached to.
    pub attached: Vec<String>,
    /// Interfaces whose pinned links (left by an earlier agent) now run this agent's programs.
    pub adopted: Vec<String>,
    /// Interfaces that went away (or were replaced by a new one with the same name).
    pub gone: Vec<String>,
    /// Interfaces that could not be attached to; each failure is reported once per
    /// interface, and retried at every rescan.
    pub failed: Vec<AttachError>,
}

/// The programs and where they go, in the order they are attached.
const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (FROM_POD, TcAttachType::Ingress, "ingress"),
    (TO_POD, TcAttachType::Egress, "egress"),
];

/// The set of interfaces the programs are attached to.
pub struct Attacher {
    prefix: String,
    /// Where links are pinned; `None`: links live as long as this attacher.
    links_dir: Option<PathBuf>,
    attached: BTreeMap<String, Attachment>,
    /// Interfaces (name, ifindex) whose last attach failed, so failures are reported once.
    failing: BTreeMap<String, u32>,
}

impl Attacher {
    /// An attacher for interfaces whose name starts with `prefix`; links are detached when
    /// it is dropped.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            links_dir: None,
            attached: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// An attacher whose links are pinned in `links_dir` (on bpffs, created if missing):
    /// they outlive the agent, and the next agent adopts them.
    pub fn pinned(prefix: impl Into<String>, links_dir: &Path) -> Result<Self, AttachError> {
        for (_, _, direction) in PROGRAMS {
            let dir = links_dir.join(direction);
            std::fs::create_dir_all(&dir)
                .map_err(|source| AttachError::LinksDir { path: dir, source })?;
        }
        Ok(Self {
            links_dir: Some(links_dir.to_owned()),
            ..Self::new(prefix)
        })
    }

    /// Names of the interfaces the programs are attached to, sorted.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Attaches to (or adopts the pinned links of) every matching interface not yet
    /// handled, forgets the ones that are gone, and unpins links of interfaces that no
    /// longer exist. An interface deleted and recreated under the same name between two
    /// scans has a new index and is attached anew.
    pub fn rescan(&mut self, ebpf: &mut Ebpf) -> Result<ScanReport, AttachError> {
        let current: BTreeMap<String, u32> = if_nameindex()
            .map_err(AttachError::List)?
            .iter()
            .filter_map(|i| Some((i.name().to_str().ok()?.to_owned(), i.index())))
            .filter(|(name, _)| name.starts_with(&self.prefix))
            .collect();

        let mut report = ScanReport::default();
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| current.get(*name) != Some(&a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(attachment) = self.attached.remove(&name) {
                release(attachment);
            }
            report.gone.push(name);
        }
        self.failing
            .retain(|name, index| current.get(name) == Some(index));
        self.unpin_vanished(&current);

        for (name, &ifindex) in &current {
            if self.attached.contains_key(name) {
                continue;
            }
            match self.attach_or_adopt(ebpf, name) {
                Ok((links, adopted)) => {
                    self.failing.remove(name);
                    self.attached
                        .insert(name.clone(), Attachment { ifindex, links });
                    if adopted {
                        report.adopted.push(name.clone());
                    } else {
                        report.attached.push(name.clone());
                    }
                }
                Err(e) => {
                    if self.failing.insert(name.clone(), ifindex) != Some(ifindex) {
                        report.failed.push(e);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Attaches to one interface by name, whatever its name (for interfaces outside the
    /// prefix, e.g. in tests).
    pub fn attach(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<(), AttachError> {
        let ifindex =
            if_nametoindex(iface).map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
        let (links, _) = self.attach_or_adopt(ebpf, iface)?;
        self.attached
            .insert(iface.to_owned(), Attachment { ifindex, links });
        Ok(())
    }

    /// Both programs on `iface`, or neither: if the second fails, the first is released.
    /// True when both came from pinned links.
    fn attach_or_adopt(
        &self,
        ebpf: &mut Ebpf,
        iface: &str,
    ) -> Result<([Held; 2], bool), AttachError> {
        let [(p0, t0, d0), (p1, t1, d1)] = PROGRAMS;
        let (first, adopted0) = self.hold(ebpf, iface, p0, t0, d0)?;
        let (second, adopted1) = match self.hold(ebpf, iface, p1, t1, d1) {
            Ok(held) => held,
            Err(e) => {
                // Only what this call attached: an adopted link keeps serving.
                if !adopted0 {
                    release_one(first);
                }
                return Err(e);
            }
        };
        Ok(([first, second], adopted0 && adopted1))
    }

    fn hold(
        &self,
        ebpf: &mut Ebpf,
        iface: &str,
        program: &'static str,
        attach_type: TcAttachType,
        direction: &'static str,
    ) -> Result<(Held, bool), AttachError> {
        let Some(dir) = &self.links_dir else {
            return Ok((
                Held::Owned(attach_one(ebpf, program, iface, attach_type)?),
                false,
            ));
        };
        let path = dir.join(direction).join(pin_name(iface));
        if path.exists() {
            match adopt(ebpf, program, &path) {
                Ok(()) => {
                    let pinned = PinnedLink::from_pin(&path)
                        .map_err(|e| pin_err(program, iface, &path, e))?;
                    return Ok((Held::Pinned(pinned), true));
                }
                // Typically ENOLINK: the interface it was attached to was deleted (and maybe
                // recreated under the same name) while no agent was watching.
                Err(e) => {
                    debug!(path = %path.display(), "replacing a pinned link that cannot be adopted: {e}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let link = attach_one(ebpf, program, iface, attach_type)?;
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(program, iface, &path, e))?;
        let pinned = fd_link
            .pin(&path)
            .map_err(|e| pin_err(program, iface, &path, e))?;
        Ok((Held::Pinned(pinned), false))
    }

    /// Unpins links whose interface no longer exists (deleted while the agent was down, or
    /// never reported gone by a rescan).
    fn unpin_vanished(&self, current: &BTreeMap<String, u32>) {
        let Some(dir) = &self.links_dir else {
            return;
        };
        for (_, _, direction) in PROGRAMS {
            let Ok(entries) = std::fs::read_dir(dir.join(direction)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(iface) = entry.file_name().to_str().map(iface_of_pin) else {
                    continue;
                };
                if !current.contains_key(&iface) && !self.attached.contains_key(&iface) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// bpffs refuses names with a dot (reserved for its own files), and interface names may
/// have one (`eth0.100`) but never a colon.
pub(crate) fn pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

pub(crate) fn iface_of_pin(pin: &str) -> String {
    pin.replace(':', ".")
}

pub(crate) fn pin_err(
    program: &'static str,
    iface: &str,
    path: &Path,
    source: impl std::error::Error + Send + Sync + 'static,
) -> AttachError {
    AttachError::Pin {
        program,
        iface: iface.to_owned(),
        path: path.to_owned(),
        source: Box::new(source),
    }
}

/// Points the pinned link at `path` at this agent's `program`, atomically.
pub(crate) fn adopt(
    ebpf: &mut Ebpf,
    program: &'static str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let fd_link = FdLink::from(PinnedLink::from_pin(path)?);
    let link = SchedClassifierLink::try_from(fd_link)?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram(program))?
        .try_into()?;
    let id = prog.attach_to_link(link)?;
    // The pin keeps the link; the program's own copy of the descriptor can go.
    drop(prog.take_link(id)?);
    Ok(())
}

/// Detaches what an attachment holds: a pinned link goes when its pin is removed.
fn release(attachment: Attachment) {
    for held in attachment.links {
        release_one(held);
    }
}

pub(crate) fn release_one(held: Held) {
    if let Held::Pinned(pinned) = held {
        let _ = pinned.unpin();
    }
}

pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    program: &'static str,
    iface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLink, AttachError> {
    let direction = match attach_type {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let err = |source| AttachError::Attach {
        program,
        iface: iface.to_owned(),
        direction,
        source: Box::new(source),
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram(program))?
        .try_into()
        .map_err(err)?;
    // After any program already there (a CNI's), so that traffic it drops stays dropped.
    let id = prog
        .attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| match e {
            // The name no longer resolves: the interface went away since it was listed.
            ProgramError::TcError(aya::programs::tc::TcError::IoError(_))
                if if_nametoindex(iface).is_err() =>
            {
                AttachError::UnknownInterface(iface.to_owned())
            }
            e => err(e),
        })?;
    // Owning the link (rather than leaving it in the program) lets it be dropped or pinned
    // per interface.
    prog.take_link(id).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::loader::{self, BpfLogLevel, Object},
        testing::{require_object, require_root, PinDir},
    };
    use aya::programs::SchedClassifier;
    use nix::sched::{unshare, CloneFlags};
    use std::process::Command;

    fn ip(args: &str) {
        let status = Command::new("ip")
            .args(args.split(' '))
            .status()
            .unwrap_or_else(|e| panic!("ip {args}: {e}"));
        assert!(status.success(), "ip {args} failed");
    }

    fn attached_programs(iface: &str, attach_type: TcAttachType) -> Vec<String> {
        let (_, programs) = SchedClassifier::query_tcx(iface, attach_type).expect("query tcx");
        programs
            .iter()
            .filter_map(|p| p.name_as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn programs_follow_interfaces_as_they_come_and_go() {
        if !require_root("attaching tc programs") || !require_object() {
            return;
        }
        let pins = PinDir::new("attach");
        let pin_dir = pins.path().to_owned();
        // A thread of its own in a network namespace of its own: nothing in the host's
        // namespace is touched, and the namespace (and its veths) vanish with the thread.
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let mut ebpf =
                loader::load(&Object::Embedded, &pin_dir, BpfLogLevel::Off, &[]).expect("load");
            let mut attacher = Attacher::new("lbt");

            ip("link add lbt0 type veth peer name peer0");
            let report = attacher.rescan(&mut ebpf).expect("rescan");
            assert_eq!(report.attached, ["lbt0"]);
            assert!(report.gone.is_empty() && report.failed.is_empty());
            assert_eq!(attached_programs("lbt0", TcAttachType::Ingress), [FROM_POD]);
            assert_eq!(attached_programs("lbt0", TcAttachType::Egress), [TO_POD]);
            assert!(attached_programs("peer0", TcAttachType::Ingress).is_empty());

            ip("link add lbt1 type veth peer name peer1");
            ip("link del lbt0");
            let report = attacher.rescan(&mut ebpf).expect("rescan");
            assert_eq!(
                (report.attached, report.gone),
                (vec!["lbt1".to_string()], vec!["lbt0".to_string()])
            );
            assert!(attacher
                .rescan(&mut ebpf)
                .expect("rescan")
                .attached
                .is_empty());

            // Recreated under the same name between two scans: a new interface.
            ip("link del lbt1");
            ip("link add lbt1 type veth peer name peer1");
            let report = attacher.rescan(&mut ebpf).expect("rescan");
            assert_eq!(
                (report.attached, report.gone),
                (vec!["lbt1".to_string()], vec!["lbt1".to_string()])
            );
            assert_eq!(attached_programs("lbt1", TcAttachType::Ingress), [FROM_POD]);
            assert_eq!(attacher.attached().collect::<Vec<_>>(), ["lbt1"]);

            // Dropping the attacher detaches.
            drop(attacher);
            assert!(attached_programs("lbt1", TcAttachType::Ingress).is_empty());

            let mut attacher = Attacher::new("lbt");
            let err = attacher
                .attach(&mut ebpf, "nope0")
                .expect_err("unknown interface");
            assert!(
                matches!(err, AttachError::UnknownInterface(ref name) if name == "nope0"),
                "{err}"
            );
            attacher.attach(&mut ebpf, "peer1").expect("attach by name");
            assert_eq!(attached_programs("peer1", TcAttachType::Egress), [TO_POD]);
        })
        .join()
        .expect("attach test thread");
    }

    #[test]
    fn pin_names_avoid_dots_and_map_back() {
        assert_eq!(pin_name("eth0.100"), "eth0:100");
        assert_eq!(iface_of_pin(&pin_name("eth0.100")), "eth0.100");
        assert_eq!(pin_name("veth1-client"), "veth1-client");
    }

    fn program_ids(iface: &str, attach_type: TcAttachType) -> Vec<u32> {
        let (_, programs) = SchedClassifier::query_tcx(iface, attach_type).expect("query tcx");
        programs.iter().map(|p| p.id()).collect()
    }

    #[test]
    fn pinned_links_outlive_the_agent_and_the_next_agent_adopts_them() {
        if !require_root("attaching tc programs") || !require_object() {
            return;
        }
        let pins = PinDir::new("attach-pinned");
        let pin_dir = pins.path().to_owned();
        let links = pin_dir.join("links");
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let load =
                || loader::load(&Object::Embedded, &pin_dir, BpfLogLevel::Off, &[]).expect("load");
            ip("link add lbp0 type veth peer name peerp0");

            let mut ebpf = load();
            let mut agent = Attacher::pinned("lbp", &links).expect("links dir");
            let report = agent.rescan(&mut ebpf).expect("rescan");
            assert!(
                report.failed.is_empty(),
                "{:?}",
                report
                    .failed
                    .iter()
                    .map(|e| format!("{e}: {:?}", std::error::Error::source(e)))
                    .collect::<Vec<_>>()
            );
            assert_eq!(report.attached, ["lbp0"]);
            let first = program_ids("lbp0", TcAttachType::Ingress);
            assert_eq!(first.len(), 1);

            // The agent dies (kill -9 drops everything it held): the programs stay.
            drop(agent);
            drop(ebpf);
            assert_eq!(program_ids("lbp0", TcAttachType::Ingress), first);
            assert_eq!(attached_programs("lbp0", TcAttachType::Egress), [TO_POD]);

            // The next agent (or a new object) takes the links over: same single slot, new
            // program.
            let mut ebpf = load();
            let mut agent = Attacher::pinned("lbp", &links).expect("links dir");
            let report = agent.rescan(&mut ebpf).expect("rescan");
            assert_eq!(
                (report.adopted, report.attached),
                (vec!["lbp0".to_string()], vec![])
            );
            let second = program_ids("lbp0", TcAttachType::Ingress);
            assert_eq!(second.len(), 1, "adopting must not add a second program");
            assert_ne!(
                second, first,
                "the new agent's program must replace the old one"
            );
            assert_eq!(program_ids("lbp0", TcAttachType::Egress).len(), 1);

            // The interface is replaced while no agent runs: its pinned links are defunct,
            // so the next agent attaches afresh.
            drop(agent);
            drop(ebpf);
            ip("link del lbp0");
            ip("link add lbp0 type veth peer name peerp0");
            let mut ebpf = load();
            let mut agent = Attacher::pinned("lbp", &links).expect("links dir");
            let report = agent.rescan(&mut ebpf).expect("rescan");
            assert_eq!(
                (report.adopted, report.attached),
                (vec![], vec!["lbp0".to_string()])
            );
            assert_eq!(program_ids("lbp0", TcAttachType::Ingress).len(), 1);

            // The interface is deleted while no agent runs: its pins are cleaned up.
            drop(agent);
            drop(ebpf);
            ip("link del lbp0");
            let mut ebpf = load();
            let mut agent = Attacher::pinned("lbp", &links).expect("links dir");
            agent.rescan(&mut ebpf).expect("rescan");
            let left: Vec<_> = ["ingress", "egress"]
                .iter()
                .flat_map(|d| std::fs::read_dir(links.join(d)).expect("links dir"))
                .collect();
            assert!(left.is_empty(), "stale pins left: {left:?}");
        })
        .join()
        .expect("pinned attach test thread");
    }
}
