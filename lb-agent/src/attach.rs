//! Attaches the programs to pod interfaces with tcx, and keeps them attached as pods come
//! and go.
//!
//! Interfaces are listed with `if_nameindex(3)`, which asks the kernel about the network
//! namespace this thread is in; /sys/class/net would describe whichever namespace /sys was
//! mounted in, which is not ours when the agent was moved into a node's namespace with
//! setns. tcx (Linux 6.6+) links coexist with other tc programs (a CNI's) instead of
//! replacing them, and are detached by the kernel when the interface goes away or when
//! this process drops them.

use std::collections::BTreeMap;

use aya::{
    programs::{
        links::LinkOrder,
        tc::{SchedClassifierLink, TcAttachOptions},
        ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use nix::net::if_::{if_nameindex, if_nametoindex};

use crate::loader::{FROM_POD, TO_POD};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot list network interfaces: {0}")]
    List(nix::Error),
    #[error("no interface named {0:?} in this network namespace")]
    UnknownInterface(String),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("attaching {program} to {iface} ({direction}) failed")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        source: Box<ProgramError>,
    },
}

/// Both programs on one interface. Dropping it detaches them.
struct Attachment {
    ifindex: u32,
    _links: [SchedClassifierLink; 2],
}

/// What a rescan changed.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Interfaces the programs were attached to.
    pub attached: Vec<String>,
    /// Interfaces that went away (or were replaced by a new one with the same name).
    pub gone: Vec<String>,
    /// Interfaces that could not be attached to; each failure is reported once per
    /// interface, and retried at every rescan.
    pub failed: Vec<AttachError>,
}

/// The set of interfaces the programs are attached to.
pub struct Attacher {
    prefix: String,
    attached: BTreeMap<String, Attachment>,
    /// Interfaces (name, ifindex) whose last attach failed, so failures are reported once.
    failing: BTreeMap<String, u32>,
}

impl Attacher {
    /// An attacher for interfaces whose name starts with `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            attached: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Names of the interfaces the programs are attached to, sorted.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Attaches to every matching interface not yet attached, and forgets the ones that are
    /// gone. An interface deleted and recreated under the same name between two scans has
    /// a new index and is attached anew.
    pub fn rescan(&mut self, ebpf: &mut Ebpf) -> Result<ScanReport, AttachError> {
        let current: BTreeMap<String, u32> = if_nameindex()
            .map_err(AttachError::List)?
            .iter()
            .filter_map(|i| Some((i.name().to_str().ok()?.to_owned(), i.index())))
            .filter(|(name, _)| name.starts_with(&self.prefix))
            .collect();

        let mut report = ScanReport::default();
        self.attached.retain(|name, a| {
            let alive = current.get(name) == Some(&a.ifindex);
            if !alive {
                report.gone.push(name.clone());
            }
            alive
        });
        self.failing
            .retain(|name, index| current.get(name) == Some(index));

        for (name, &ifindex) in &current {
            if self.attached.contains_key(name) {
                continue;
            }
            match attach_both(ebpf, name) {
                Ok(links) => {
                    self.failing.remove(name);
                    self.attached.insert(
                        name.clone(),
                        Attachment {
                            ifindex,
                            _links: links,
                        },
                    );
                    report.attached.push(name.clone());
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
        let links = attach_both(ebpf, iface)?;
        self.attached.insert(
            iface.to_owned(),
            Attachment {
                ifindex,
                _links: links,
            },
        );
        Ok(())
    }
}

/// Attaches both programs, or neither: if the second fails, the first is detached when its
/// link is dropped.
fn attach_both(ebpf: &mut Ebpf, iface: &str) -> Result<[SchedClassifierLink; 2], AttachError> {
    let ingress = attach_one(ebpf, FROM_POD, iface, TcAttachType::Ingress)?;
    let egress = attach_one(ebpf, TO_POD, iface, TcAttachType::Egress)?;
    Ok([ingress, egress])
}

fn attach_one(
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
    // Owning the link (rather than leaving it in the program) lets it be dropped per
    // interface.
    prog.take_link(id).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        loader::{self, BpfLogLevel, Object},
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
                loader::load(&Object::Embedded, &pin_dir, BpfLogLevel::Off).expect("load");
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
}
