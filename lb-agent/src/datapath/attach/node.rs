//! Everything attached on the node's side, beyond the pod interfaces: the uplink's tc and
//! XDP programs and the socket programs, with what is attached reported to `/state`, the
//! log and the `lb_xdp_mode` metric.
//!
//! The socket programs go on at start. The uplink is the `--uplink` interface (which must
//! exist at start), else the one holding this node's address, which may only be known once
//! the Node has been read: so [`NodeAttacher::tick`] retries every rescan until it is found,
//! and follows it if the address moves.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::Ebpf;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    cgroup::{check_cgroup2, default_cgroup_path, SocketLb},
    uplink::{self, UplinkTc},
    xdp::{UplinkXdp, XdpModeFlag},
    AttachError,
};
use crate::{
    error_chain::error_chain,
    serve::{metrics::Metrics, report::AttachmentsReport},
};

/// The node-side flags.
#[derive(Clone, Debug)]
pub struct NodeAttachOptions {
    pub uplink: Option<String>,
    pub xdp_mode: XdpModeFlag,
    pub socket_lb: bool,
    pub cgroup_path: Option<PathBuf>,
}

pub struct NodeAttacher {
    options: NodeAttachOptions,
    tc: UplinkTc,
    xdp: UplinkXdp,
    sockets: SocketLb,
    report: watch::Sender<AttachmentsReport>,
    metrics: Option<Arc<Metrics>>,
    /// The last uplink problem logged, so each is logged once.
    last_problem: Option<String>,
}

impl NodeAttachOptions {
    /// Fails on flags that name what is not there: an `--uplink` interface this network
    /// namespace does not have, or (with socket LB on) a `--cgroup-path` that is not a
    /// cgroup2 directory, or no cgroup2 mount to default to. The agent calls this before it
    /// loads anything, so a bad flag leaves nothing pinned or attached.
    pub fn check(&self) -> Result<(), AttachError> {
        if let Some(name) = &self.uplink {
            uplink::resolve(Some(name), &[])?;
        }
        if self.socket_lb {
            let path = match &self.cgroup_path {
                Some(p) => p.clone(),
                None => default_cgroup_path()?,
            };
            check_cgroup2(&path)?;
        }
        Ok(())
    }
}

impl NodeAttacher {
    /// Checks the flags ([`NodeAttachOptions::check`]), then attaches the socket programs
    /// (or removes them with `--socket-lb false`) and applies `--xdp-mode off` to links a
    /// previous agent left.
    pub fn start(
        ebpf: &mut Ebpf,
        links_dir: &Path,
        options: NodeAttachOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, AttachError> {
        options.check()?;
        let mut this = Self {
            tc: UplinkTc::new(links_dir)?,
            xdp: UplinkXdp::new(links_dir, options.xdp_mode)?,
            sockets: SocketLb::new(links_dir)?,
            options,
            report: watch::Sender::new(AttachmentsReport::default()),
            metrics,
            last_problem: None,
        };
        if this.options.xdp_mode == XdpModeFlag::Off {
            this.xdp.detach_all_except(None);
        }
        if this.options.socket_lb {
            let path = match &this.options.cgroup_path {
                Some(p) => p.clone(),
                None => default_cgroup_path()?,
            };
            let adopted = this.sockets.ensure(ebpf, &path)?;
            info!(cgroup = %path.display(), adopted, "socket-level load balancing attached");
        } else {
            this.sockets.detach_all();
            info!("socket-level load balancing off (--socket-lb false)");
        }
        this.publish();
        Ok(this)
    }

    /// Follows the attachments (for `/state`).
    pub fn subscribe(&self) -> watch::Receiver<AttachmentsReport> {
        self.report.subscribe()
    }

    /// Attaches to the uplink once it is known; called at every rescan with this node's
    /// addresses. Problems are logged once each, and retried.
    pub fn tick(&mut self, ebpf: &mut Ebpf, node_ips: &[Ipv4Addr]) {
        let result = uplink::resolve(self.options.uplink.as_deref(), node_ips)
            .map_err(AttachError::from)
            .and_then(|found| match found {
                Some(iface) => self.attach_uplink(ebpf, &iface).map(|()| None),
                None => Ok(Some(
                    "the uplink is not attached until this node's address is known (from the Node, or --node-ip); or pass --uplink".to_owned(),
                )),
            });
        let problem = match result {
            Ok(note) => note,
            Err(e) => Some(error_chain(&e)),
        };
        if problem != self.last_problem {
            if let Some(p) = &problem {
                warn!("{p}");
            }
            self.last_problem = problem;
        }
        self.publish();
    }

    fn attach_uplink(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<(), AttachError> {
        if let Some(adopted) = self.tc.ensure(ebpf, iface)? {
            info!(%iface, adopted, "lb_from_net and lb_to_net attached to the uplink (tcx ingress and egress)");
        }
        if let Some((mode, adopted)) = self.xdp.ensure(ebpf, iface)? {
            info!(%iface, mode = mode.name(), adopted, "lb_xdp attached to the uplink");
        }
        Ok(())
    }

    fn xdp_mode_name(&self) -> &'static str {
        match (self.options.xdp_mode, self.xdp.mode()) {
            (XdpModeFlag::Off, _) => "off",
            (_, Some(m)) => m.name(),
            (_, None) => "none",
        }
    }

    fn publish(&self) {
        let report = AttachmentsReport {
            uplink: self.tc.iface().map(str::to_owned),
            xdp_mode: self.xdp_mode_name().to_owned(),
            socket_lb_cgroup: self.sockets.cgroup().map(|p| p.display().to_string()),
        };
        if let Some(m) = &self.metrics {
            m.set_xdp_mode(self.xdp_mode_name());
        }
        self.report.send_if_modified(|r| {
            let changed = *r != report;
            *r = report;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{
            attach::{cgroup, xdp::XdpModeUsed},
            loader::{self, BpfLogLevel, Object, FROM_NET},
        },
        testing::{require_object, require_root, PinDir},
    };
    use aya::programs::{SchedClassifier, TcAttachType};
    use nix::sched::{unshare, CloneFlags};
    use std::process::Command;

    fn ip(args: &str) {
        let status = Command::new("ip")
            .args(args.split(' '))
            .status()
            .unwrap_or_else(|e| panic!("ip {args}: {e}"));
        assert!(status.success(), "ip {args} failed");
    }

    fn tcx_ids(iface: &str) -> Vec<u32> {
        let (_, programs) =
            SchedClassifier::query_tcx(iface, TcAttachType::Ingress).expect("query tcx");
        programs.iter().map(|p| p.id()).collect()
    }

    /// A cgroup of its own (`lbk-agt-*`, empty, removed at the end), so the host's
    /// processes never see the socket programs.
    struct TestCgroup(PathBuf);

    impl TestCgroup {
        fn new(name: &str) -> Option<Self> {
            let root = cgroup::default_cgroup_path().ok()?;
            let path = root.join(format!("lbk-agt-{name}-{}", std::process::id()));
            std::fs::create_dir(&path).ok()?;
            Some(Self(path))
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn the_uplink_xdp_and_socket_programs_attach_and_are_adopted_on_restart() {
        if !require_root("attaching to the uplink and a cgroup") || !require_object() {
            return;
        }
        let Some(cg) = TestCgroup::new("attach") else {
            eprintln!("skipped: cannot create a test cgroup");
            return;
        };
        let pins = PinDir::new("attach-node");
        let pin_dir = pins.path().to_owned();
        let cgroup_path = cg.0.clone();
        std::thread::spawn(move || {
            // An anonymous network namespace of this thread's own: nothing of the host's.
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
            ip("link add lbkup0 type veth peer name lbkup1");
            ip("addr add 192.0.2.10/24 dev lbkup0");
            ip("link set lbkup0 up");
            ip("link set lbkup1 up");
            let links = pin_dir.join("links");
            let options = |xdp_mode, socket_lb| NodeAttachOptions {
                uplink: None,
                xdp_mode,
                socket_lb,
                cgroup_path: Some(cgroup_path.clone()),
            };
            let load =
                || loader::load(&Object::Embedded, &pin_dir, BpfLogLevel::Off, &[]).expect("load");
            let node_ip = [Ipv4Addr::new(192, 0, 2, 10)];

            let mut ebpf = load();
            let mut a =
                NodeAttacher::start(&mut ebpf, &links, options(XdpModeFlag::Native, true), None)
                    .expect("start");
            let report = a.subscribe();
            assert_eq!(
                report.borrow().uplink,
                None,
                "the node address is not known yet"
            );
            a.tick(&mut ebpf, &node_ip);
            let r = report.borrow().clone();
            assert_eq!(r.uplink.as_deref(), Some("lbkup0"));
            // veth drivers run XDP natively when asked to.
            assert_eq!(r.xdp_mode, "native", "{r:?}");
            assert_eq!(r.socket_lb_cgroup, Some(cgroup_path.display().to_string()));
            assert!(links
                .join(XdpModeUsed::Native.pin_dir())
                .join("lbkup0")
                .exists());
            assert_eq!(
                std::fs::read_dir(links.join(cgroup::DIR))
                    .expect("dir")
                    .count(),
                4
            );
            let first = tcx_ids("lbkup0");
            assert_eq!(first.len(), 1);

            // The agent dies; the next one adopts everything: one program each, new ones.
            drop(a);
            drop(ebpf);
            assert_eq!(
                tcx_ids("lbkup0"),
                first,
                "the pinned link outlives the agent"
            );
            let mut ebpf = load();
            let mut a =
                NodeAttacher::start(&mut ebpf, &links, options(XdpModeFlag::Native, true), None)
                    .expect("restart");
            a.tick(&mut ebpf, &node_ip);
            let second = tcx_ids("lbkup0");
            assert_eq!(second.len(), 1);
            assert_ne!(second, first);
            assert_eq!(a.subscribe().borrow().xdp_mode, "native");

            // Auto on a veth means generic (native XDP on veth costs every packet a copy):
            // the native link is replaced.
            drop(a);
            let mut a =
                NodeAttacher::start(&mut ebpf, &links, options(XdpModeFlag::Auto, true), None)
                    .expect("generic");
            a.tick(&mut ebpf, &node_ip);
            assert_eq!(a.subscribe().borrow().xdp_mode, "generic");
            assert!(!links
                .join(XdpModeUsed::Native.pin_dir())
                .join("lbkup0")
                .exists());

            // Off and false remove what was pinned.
            drop(a);
            let mut a =
                NodeAttacher::start(&mut ebpf, &links, options(XdpModeFlag::Off, false), None)
                    .expect("off");
            a.tick(&mut ebpf, &node_ip);
            let r = a.subscribe().borrow().clone();
            assert_eq!((r.xdp_mode.as_str(), r.socket_lb_cgroup), ("off", None));
            for dir in [XdpModeUsed::Generic.pin_dir(), cgroup::DIR] {
                assert_eq!(
                    std::fs::read_dir(links.join(dir)).expect("dir").count(),
                    0,
                    "{dir}"
                );
            }
            assert_eq!(tcx_ids("lbkup0").len(), 1, "{FROM_NET} stays");
        })
        .join()
        .expect("attach test thread");
        drop(cg);
    }
}
