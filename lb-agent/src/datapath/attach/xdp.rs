//! `lb_xdp` on the uplink: the fast path for north-south traffic, in the driver (native
//! mode) when it supports XDP, else in the stack's generic hook (skb mode, as fast as tc but
//! earlier).
//!
//! `--xdp-mode auto` tries native first and falls back to generic, except on veth: native
//! XDP on a veth copies every packet into a fresh page before the program runs (an skb
//! from the peer never has the headroom XDP needs) and takes TSO from the peer, which
//! costs all traffic on the uplink far more than the program saves (measured in the lab:
//! about half the TCP throughput between pods on two nodes, where generic mode costs
//! nothing measurable). `native` and `generic` insist; `off` detaches. The link is pinned under a directory named after the mode it was
//! attached in (`<links>/xdp-native/<iface>`, `<links>/xdp-generic/<iface>`), because the
//! kernel does not report an XDP link's mode: so the next agent knows it, adopts the link
//! with BPF_LINK_UPDATE (no gap), and `lbctl` can show it while no agent runs. Changing the
//! mode of a running attachment needs a detach first (the kernel refuses native and generic
//! XDP on one device at once): the one short gap, logged.

use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf,
};
use nix::net::if_::if_nametoindex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::{iface_of_pin, pin_err, pin_name, AttachError};
use crate::datapath::loader::XDP;

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeFlag {
    /// Native (driver) mode if the driver supports it, else generic; generic on veth.
    #[default]
    Auto,
    Native,
    Generic,
    /// No XDP program; tc alone handles the uplink.
    Off,
}

/// The mode an XDP attachment runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeUsed {
    Native,
    Generic,
}

impl XdpModeUsed {
    pub const ALL: [XdpModeUsed; 2] = [XdpModeUsed::Native, XdpModeUsed::Generic];

    pub fn name(self) -> &'static str {
        match self {
            XdpModeUsed::Native => "native",
            XdpModeUsed::Generic => "generic",
        }
    }

    /// The links subdirectory pins of this mode live in.
    pub fn pin_dir(self) -> &'static str {
        match self {
            XdpModeUsed::Native => "xdp-native",
            XdpModeUsed::Generic => "xdp-generic",
        }
    }

    fn aya(self) -> XdpMode {
        match self {
            XdpModeUsed::Native => XdpMode::Driver,
            XdpModeUsed::Generic => XdpMode::Skb,
        }
    }
}

impl XdpModeFlag {
    /// The modes to try, in order, on an interface run by `driver`.
    pub fn candidates(self, driver: Option<&str>) -> &'static [XdpModeUsed] {
        match self {
            XdpModeFlag::Auto if driver == Some("veth") => &[XdpModeUsed::Generic],
            XdpModeFlag::Auto => &XdpModeUsed::ALL,
            XdpModeFlag::Native => &[XdpModeUsed::Native],
            XdpModeFlag::Generic => &[XdpModeUsed::Generic],
            XdpModeFlag::Off => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_native_but_not_on_veth() {
        let auto = XdpModeFlag::Auto;
        assert_eq!(auto.candidates(Some("mlx5_core")), &XdpModeUsed::ALL);
        assert_eq!(auto.candidates(None), &XdpModeUsed::ALL);
        assert_eq!(auto.candidates(Some("veth")), &[XdpModeUsed::Generic]);
        assert_eq!(
            XdpModeFlag::Native.candidates(Some("veth")),
            &[XdpModeUsed::Native]
        );
        assert!(XdpModeFlag::Off.candidates(Some("veth")).is_empty());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdpAttachError {
    #[error("attaching {XDP} to {iface} in {mode} mode failed (--xdp-mode {requested}); XDP links need Linux 5.9 or later; try --xdp-mode generic, or off")]
    Attach {
        iface: String,
        mode: &'static str,
        requested: &'static str,
        source: Box<ProgramError>,
    },
    #[error("the kernel attached {XDP} to {iface} without a BPF link (Linux before 5.9?), which cannot be pinned to survive restarts; use --xdp-mode off on this kernel")]
    NoLink { iface: String },
}

/// `lb_xdp` on the uplink.
pub struct UplinkXdp {
    links_dir: PathBuf,
    requested: XdpModeFlag,
    current: Option<(String, u32, XdpModeUsed)>,
}

impl UplinkXdp {
    pub fn new(links_dir: &Path, requested: XdpModeFlag) -> Result<Self, AttachError> {
        for mode in XdpModeUsed::ALL {
            let dir = links_dir.join(mode.pin_dir());
            std::fs::create_dir_all(&dir)
                .map_err(|source| AttachError::LinksDir { path: dir, source })?;
        }
        Ok(Self {
            links_dir: links_dir.to_owned(),
            requested,
            current: None,
        })
    }

    /// The mode in use, `None` when not attached (off, or no uplink yet).
    pub fn mode(&self) -> Option<XdpModeUsed> {
        self.current.as_ref().map(|(_, _, m)| *m)
    }

    fn pin(&self, mode: XdpModeUsed, iface: &str) -> PathBuf {
        self.links_dir.join(mode.pin_dir()).join(pin_name(iface))
    }

    /// Detaches every pinned XDP link (`--xdp-mode off`, or another uplink).
    pub fn detach_all_except(&mut self, keep: Option<&str>) {
        for mode in XdpModeUsed::ALL {
            let Ok(entries) = std::fs::read_dir(self.links_dir.join(mode.pin_dir())) else {
                continue;
            };
            for entry in entries.flatten() {
                let iface = entry.file_name().to_str().map(iface_of_pin);
                if keep.is_none() || iface.as_deref() != keep {
                    remove_pin(&entry.path());
                }
            }
        }
        if keep.is_none() {
            self.current = None;
        }
    }

    /// Makes `iface` (and no other) run `lb_xdp` as `--xdp-mode` asks. Returns the mode and
    /// whether a pinned link was adopted, when something changed.
    pub fn ensure(
        &mut self,
        ebpf: &mut Ebpf,
        iface: &str,
    ) -> Result<Option<(XdpModeUsed, bool)>, AttachError> {
        if self.requested == XdpModeFlag::Off {
            self.detach_all_except(None);
            return Ok(None);
        }
        let ifindex =
            if_nametoindex(iface).map_err(|_| AttachError::UnknownInterface(iface.to_owned()))?;
        if let Some((name, index, _)) = &self.current {
            if name == iface && *index == ifindex {
                return Ok(None);
            }
        }
        self.current = None;
        self.detach_all_except(Some(iface));
        let prog = program(ebpf)?;
        let driver = super::driver::driver_of(iface)
            .map_err(|e| debug!(%iface, "no driver information: {e}"))
            .ok();
        let allowed = self.requested.candidates(driver.as_deref());
        for mode in XdpModeUsed::ALL {
            let path = self.pin(mode, iface);
            if !path.exists() {
                continue;
            }
            if allowed.contains(&mode) {
                match adopt(prog, &path) {
                    Ok(()) => {
                        self.current = Some((iface.to_owned(), ifindex, mode));
                        return Ok(Some((mode, true)));
                    }
                    Err(e) => {
                        debug!(path = %path.display(), "replacing a pinned XDP link that cannot be adopted: {e}")
                    }
                }
            } else {
                info!(
                    %iface,
                    from = mode.name(),
                    "--xdp-mode changed: detaching the {} XDP program first (a short gap)",
                    mode.name()
                );
            }
            remove_pin(&path);
        }
        let mut last = None;
        for &mode in allowed {
            match prog.attach(iface, mode.aya()) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|e| attach_err(self.requested, iface, mode, e))?;
                    // Dropping a link that is not an fd link detaches it.
                    let fd_link = FdLink::try_from(link).map_err(|_| XdpAttachError::NoLink {
                        iface: iface.to_owned(),
                    })?;
                    let path = self.pin(mode, iface);
                    fd_link
                        .pin(&path)
                        .map_err(|e| pin_err(XDP, iface, &path, e))?;
                    self.current = Some((iface.to_owned(), ifindex, mode));
                    return Ok(Some((mode, false)));
                }
                Err(e) => {
                    debug!(%iface, mode = mode.name(), "XDP attach failed: {e}");
                    last = Some(attach_err(self.requested, iface, mode, e));
                }
            }
        }
        Err(last
            .map(AttachError::from)
            .unwrap_or(AttachError::MissingProgram(XDP)))
    }
}

fn attach_err(
    requested: XdpModeFlag,
    iface: &str,
    mode: XdpModeUsed,
    e: ProgramError,
) -> XdpAttachError {
    XdpAttachError::Attach {
        iface: iface.to_owned(),
        mode: mode.name(),
        requested: match requested {
            XdpModeFlag::Auto => "auto",
            XdpModeFlag::Native => "native",
            XdpModeFlag::Generic => "generic",
            XdpModeFlag::Off => "off",
        },
        source: Box::new(e),
    }
}

/// Detaches the XDP link pinned at `path` at once (so that the other mode can attach next),
/// and removes the pin.
fn remove_pin(path: &Path) {
    if let Err(e) = super::sys::detach_pinned(path) {
        debug!(path = %path.display(), "detaching a pinned XDP link: {e}; unpinning it");
        let _ = std::fs::remove_file(path);
    }
}

/// The XDP program, loaded.
fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, AttachError> {
    let load = |e| AttachError::Load {
        program: XDP,
        source: Box::new(e),
    };
    let prog: &mut Xdp = ebpf
        .program_mut(XDP)
        .ok_or(AttachError::MissingProgram(XDP))?
        .try_into()
        .map_err(load)?;
    if prog.fd().is_err() {
        prog.load().map_err(load)?;
    }
    Ok(prog)
}

/// Points the pinned XDP link at `path` at `prog`, atomically.
fn adopt(prog: &mut Xdp, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let fd_link = FdLink::from(PinnedLink::from_pin(path)?);
    let link = aya::programs::xdp::XdpLink::try_from(fd_link)?;
    let id = prog.attach_to_link(link)?;
    // The pin keeps the link; this descriptor can go.
    drop(prog.take_link(id)?);
    Ok(())
}
