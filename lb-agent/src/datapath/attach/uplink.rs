//! The node's uplink: which interface it is, and two tcx programs on it:
//! - `lb_from_net` on its ingress: what reaches the node from outside (NodePorts, external
//!   and LoadBalancer addresses, replies to masqueraded flows);
//! - `lb_to_net` on its egress: what the node's own stack sends out, i.e. the replies of a
//!   backend that is the node itself (a hostNetwork pod), translated back to the service.
//!
//! Pinned as `<links>/uplink/<iface>` and `<links>/uplink-egress/<iface>` and adopted by the
//! next agent with BPF_LINK_UPDATE, like the pod links, so a restart or upgrade leaves no
//! gap.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, SchedClassifier, TcAttachType},
    Ebpf,
};
use nix::net::if_::if_nametoindex;
use tracing::debug;

use super::{adopt, attach_one, iface_of_pin, pin_err, pin_name, release_one, AttachError, Held};
use crate::datapath::loader::{FROM_NET, TO_NET};

/// Subdirectory of the links directory for the uplink's ingress link.
pub const DIR: &str = "uplink";
/// Subdirectory of the links directory for the uplink's egress link.
pub const EGRESS_DIR: &str = "uplink-egress";

/// The uplink's programs: (program, hook, pin subdirectory).
const LINKS: [(&str, TcAttachType, &str); 2] = [
    (FROM_NET, TcAttachType::Ingress, DIR),
    (TO_NET, TcAttachType::Egress, EGRESS_DIR),
];

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("--uplink {0}: no interface of that name in this network namespace")]
    Unknown(String),
    #[error("no interface in this network namespace holds this node's address ({}); pass --uplink IFACE", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<Ipv4Addr>),
    #[error("cannot list the interfaces' addresses: {0}")]
    List(nix::Error),
}

/// The uplink: the `--uplink` interface when given (it must exist), else the interface that
/// holds the first of `node_ips` found on one. `None` while the node's addresses are not
/// known yet.
pub fn resolve(flag: Option<&str>, node_ips: &[Ipv4Addr]) -> Result<Option<String>, UplinkError> {
    if let Some(name) = flag {
        return match if_nametoindex(name) {
            Ok(_) => Ok(Some(name.to_owned())),
            Err(_) => Err(UplinkError::Unknown(name.to_owned())),
        };
    }
    if node_ips.is_empty() {
        return Ok(None);
    }
    let held: Vec<(Ipv4Addr, String)> = nix::ifaddrs::getifaddrs()
        .map_err(UplinkError::List)?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((ip, a.interface_name))
        })
        .collect();
    node_ips
        .iter()
        .find_map(|ip| held.iter().find(|(a, _)| a == ip).map(|(_, n)| n.clone()))
        .map(Some)
        .ok_or_else(|| UplinkError::NotFound(node_ips.to_vec()))
}

/// Loads `name` (a tc program) unless it already is.
pub(crate) fn ensure_loaded(ebpf: &mut Ebpf, name: &'static str) -> Result<(), AttachError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|e| AttachError::Load {
            program: name,
            source: Box::new(e),
        })?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| AttachError::Load {
            program: name,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// `lb_from_net` on the uplink's ingress and `lb_to_net` on its egress.
pub struct UplinkTc {
    links_dir: PathBuf,
    current: Option<(String, u32, Vec<Held>)>,
}

impl UplinkTc {
    /// Links are pinned in `<links_dir>/uplink` and `<links_dir>/uplink-egress` (created if
    /// missing).
    pub fn new(links_dir: &Path) -> Result<Self, AttachError> {
        for (_, _, sub) in LINKS {
            let dir = links_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| AttachError::LinksDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self {
            links_dir: links_dir.to_owned(),
            current: None,
        })
    }

    /// The interface attached to.
    pub fn iface(&self) -> Option<&str> {
        self.current.as_ref().map(|(n, _, _)| n.as_str())
    }

    /// Makes `iface` (and no other) carry both programs. Returns `Some(adopted)` when it
    /// attached or adopted just now (`adopted`: every link was taken over from a previous
    /// agent), `None` when they already were in place.
    pub fn ensure(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<Option<bool>, AttachError> {
        let ifindex =
            if_nametoindex(iface).map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
        if let Some((name, index, _)) = &self.current {
            if name == iface && *index == ifindex {
                return Ok(None);
            }
        }
        if let Some((_, _, held)) = self.current.take() {
            held.into_iter().for_each(release_one);
        }
        let mut all_adopted = true;
        let mut held = Vec::new();
        for (program, hook, sub) in LINKS {
            let (link, adopted) = self.ensure_one(ebpf, program, hook, sub, iface)?;
            all_adopted &= adopted;
            held.push(link);
        }
        for (_, _, sub) in LINKS {
            self.unpin_others(sub, iface);
        }
        self.current = Some((iface.to_owned(), ifindex, held));
        Ok(Some(all_adopted))
    }

    /// `program` on `iface`'s `hook`, adopted from its pin in `sub` or attached anew.
    fn ensure_one(
        &self,
        ebpf: &mut Ebpf,
        program: &'static str,
        hook: TcAttachType,
        sub: &str,
        iface: &str,
    ) -> Result<(Held, bool), AttachError> {
        ensure_loaded(ebpf, program)?;
        let path = self.links_dir.join(sub).join(pin_name(iface));
        if path.exists() && adopt(ebpf, program, &path).is_ok() {
            let pinned = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| pin_err(program, iface, &path, e))?;
            return Ok((Held::Pinned(pinned), true));
        }
        if path.exists() {
            debug!(path = %path.display(), "replacing a pinned uplink link that cannot be adopted");
            let _ = std::fs::remove_file(&path);
        }
        let link = attach_one(ebpf, program, iface, hook)?;
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(program, iface, &path, e))?;
        let pinned = fd_link
            .pin(&path)
            .map_err(|e| pin_err(program, iface, &path, e))?;
        Ok((Held::Pinned(pinned), false))
    }

    /// Removes the pins of any other interface (a previous uplink) in `sub`.
    fn unpin_others(&self, sub: &str, iface: &str) {
        let Ok(entries) = std::fs::read_dir(self.links_dir.join(sub)) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().map(iface_of_pin).as_deref() != Some(iface) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_uplink_must_exist() {
        let e = resolve(Some("lbk-nope0"), &[]).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "--uplink lbk-nope0: no interface of that name in this network namespace"
        );
        assert_eq!(resolve(Some("lo"), &[]).expect("lo"), Some("lo".into()));
    }

    #[test]
    fn the_default_uplink_holds_the_node_address() {
        assert_eq!(resolve(None, &[]).expect("unknown yet"), None);
        assert_eq!(
            resolve(None, &[Ipv4Addr::new(192, 0, 2, 77), Ipv4Addr::LOCALHOST]).expect("lo"),
            Some("lo".into())
        );
        let e = resolve(None, &[Ipv4Addr::new(192, 0, 2, 77)]).expect_err("nowhere");
        assert!(e.to_string().contains("192.0.2.77"), "{e}");
        assert!(e.to_string().contains("--uplink"), "{e}");
    }
}
