//! The node's uplink: which interface it is, and `lb_from_net` on its ingress with tcx
//! (what reaches the node from outside: NodePorts, external and LoadBalancer addresses,
//! replies to masqueraded flows).
//!
//! Pinned as `<links>/uplink/<iface>` and adopted by the next agent with BPF_LINK_UPDATE,
//! like the pod links, so a restart or upgrade leaves no gap.

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
use crate::loader::FROM_NET;

/// Subdirectory of the links directory for the uplink's tc link.
pub const DIR: &str = "uplink";

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

/// `lb_from_net` on the uplink's ingress.
pub struct UplinkTc {
    dir: PathBuf,
    current: Option<(String, u32, Held)>,
}

impl UplinkTc {
    /// Links are pinned in `<links_dir>/uplink` (created if missing).
    pub fn new(links_dir: &Path) -> Result<Self, AttachError> {
        let dir = links_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| AttachError::LinksDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, current: None })
    }

    /// The interface attached to.
    pub fn iface(&self) -> Option<&str> {
        self.current.as_ref().map(|(n, _, _)| n.as_str())
    }

    /// Makes `iface` (and no other) carry `lb_from_net`. Returns `Some(adopted)` when it
    /// attached or adopted just now, `None` when it already was in place.
    pub fn ensure(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<Option<bool>, AttachError> {
        let ifindex =
            if_nametoindex(iface).map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
        if let Some((name, index, _)) = &self.current {
            if name == iface && *index == ifindex {
                return Ok(None);
            }
        }
        if let Some((_, _, held)) = self.current.take() {
            release_one(held);
        }
        ensure_loaded(ebpf, FROM_NET)?;
        let path = self.dir.join(pin_name(iface));
        let mut adopted = false;
        let held = if path.exists() && adopt(ebpf, FROM_NET, &path).is_ok() {
            adopted = true;
            Held::Pinned(
                aya::programs::links::PinnedLink::from_pin(&path)
                    .map_err(|e| pin_err(FROM_NET, iface, &path, e))?,
            )
        } else {
            if path.exists() {
                debug!(path = %path.display(), "replacing a pinned uplink link that cannot be adopted");
                let _ = std::fs::remove_file(&path);
            }
            let link = attach_one(ebpf, FROM_NET, iface, TcAttachType::Ingress)?;
            let fd_link = FdLink::try_from(link).map_err(|e| pin_err(FROM_NET, iface, &path, e))?;
            Held::Pinned(
                fd_link
                    .pin(&path)
                    .map_err(|e| pin_err(FROM_NET, iface, &path, e))?,
            )
        };
        self.unpin_others(iface);
        self.current = Some((iface.to_owned(), ifindex, held));
        Ok(Some(adopted))
    }

    /// Removes the pins of any other interface (a previous uplink).
    fn unpin_others(&self, iface: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
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
