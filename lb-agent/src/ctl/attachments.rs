//! Where the programs are attached, read from the links the agent pins under
//! `<pin-dir>/links` (so it is known while no agent runs): pod interfaces, the uplink's tc
//! program, its XDP program and mode (the directory a link is pinned in names its mode),
//! and the socket programs.

use std::path::Path;

use serde::Serialize;

use crate::datapath::attach::{cgroup, iface_of_pin, uplink, xdp::XdpModeUsed};

/// `lbctl stats -o json`'s `attachments`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attachments {
    /// Pod interfaces with the pod programs.
    pub pod_interfaces: usize,
    /// The interface `lb_from_net` runs on.
    pub uplink: Option<String>,
    /// The interface `lb_to_net` runs on (the uplink's egress).
    pub uplink_egress: Option<String>,
    /// `native` or `generic`; `None`: no XDP program.
    pub xdp_mode: Option<&'static str>,
    pub xdp_interface: Option<String>,
    /// Socket programs attached (4 when socket-level LB is on).
    pub socket_programs: usize,
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(iface_of_pin))
        .collect();
    out.sort();
    out
}

/// The attachments pinned under `<pin_dir>/links`.
pub fn read(pin_dir: &Path) -> Attachments {
    let links = pin_dir.join("links");
    let mut a = Attachments {
        pod_interfaces: names(&links.join("ingress")).len(),
        uplink: names(&links.join(uplink::DIR)).into_iter().next(),
        uplink_egress: names(&links.join(uplink::EGRESS_DIR)).into_iter().next(),
        socket_programs: names(&links.join(cgroup::DIR)).len(),
        ..Default::default()
    };
    for mode in XdpModeUsed::ALL {
        if let Some(iface) = names(&links.join(mode.pin_dir())).into_iter().next() {
            a.xdp_mode = Some(mode.name());
            a.xdp_interface = Some(iface);
        }
    }
    a
}

/// One line per attachment point.
///
/// ```text
/// ATTACHMENTS
///   pods:       12 interfaces
///   uplink:     eth0 (tcx ingress and egress)
///   xdp:        native on eth0
///   socket LB:  on (4 programs)
/// ```
pub fn render(a: &Attachments) -> String {
    let xdp = match (a.xdp_mode, &a.xdp_interface) {
        (Some(mode), Some(iface)) => format!("{mode} on {iface}"),
        _ => "off".into(),
    };
    let sockets = match a.socket_programs {
        0 => "off".to_owned(),
        n => format!("on ({n} programs)"),
    };
    format!(
        "ATTACHMENTS\n  pods:       {} interfaces\n  uplink:     {}\n  xdp:        {xdp}\n  socket LB:  {sockets}\n",
        a.pod_interfaces,
        match (&a.uplink, &a.uplink_egress) {
            (Some(u), Some(e)) if u == e => format!("{u} (tcx ingress and egress)"),
            (Some(u), Some(e)) => format!("{u} (tcx ingress), {e} (tcx egress)"),
            (Some(u), None) => format!("{u} (tcx ingress)"),
            (None, Some(e)) => format!("{e} (tcx egress)"),
            (None, None) => "-".into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_read_from_the_pinned_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let links = dir.path().join("links");
        for (sub, name) in [
            ("ingress", "veth1"),
            ("ingress", "veth2"),
            ("uplink", "eth0"),
            ("uplink-egress", "eth0"),
            ("xdp-generic", "eth0"),
            ("cgroup", "lb_sock_connect4"),
            ("cgroup", "lb_sock_sendmsg4"),
        ] {
            std::fs::create_dir_all(links.join(sub)).expect("mkdir");
            std::fs::write(links.join(sub).join(name), "").expect("touch");
        }
        let a = read(dir.path());
        assert_eq!(
            render(&a),
            "ATTACHMENTS\n  pods:       2 interfaces\n  uplink:     eth0 (tcx ingress and egress)\n  xdp:        generic on eth0\n  socket LB:  on (2 programs)\n"
        );
        let none = read(&dir.path().join("nothing"));
        assert!(render(&none).contains("xdp:        off"));
    }
}
