//! Builds the lab's namespaces, links, addresses, routes, offloads and kindnet's masquerade
//! from a [`Plan`], and tears them down.

use anyhow::{Context, Result};

use crate::cmd::ip;
use crate::kindnet;
use crate::netns;
use crate::plan::{Node, Plan, Pod, BRIDGE, HOST_IP, HOST_NS, NET_NS, NODE_NETWORK};

/// Transmit offloads on `eth0` of the host and of every node (pods always keep the veth
/// defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Offloads {
    /// The veth defaults, as Docker leaves a Kind node's `eth0`: transmit checksum offload
    /// and TSO on. Senders hand over CHECKSUM_PARTIAL packets (the checksum left to a
    /// "hardware" no veth has) and TCP as GSO packets of up to 64 KiB; whatever BPF rewrites
    /// or redirects must stay consistent with both, as in Kind.
    #[default]
    Kind,
    /// `ethtool -K eth0 tx off` (which takes TSO with it): every packet leaves with its full
    /// checksum and at most MTU-sized, as from a NIC that computes checksums. The lab's
    /// setting before it followed Kind; kept for comparison, since it hides checksum bugs.
    Off,
}

impl Offloads {
    /// The name `--offloads` takes and the state directory records.
    pub fn name(self) -> &'static str {
        match self {
            Offloads::Kind => "kind",
            Offloads::Off => "off",
        }
    }

    /// The setting called `name` ([`Offloads::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Offloads::Kind, Offloads::Off]
            .into_iter()
            .find(|o| o.name() == name)
    }

    /// What the setting means on the wire, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Offloads::Kind => "veth defaults as in Kind: tx checksum and TSO on",
            Offloads::Off => "tx checksum offload (and with it TSO) off on eth0 of host and nodes",
        }
    }
}

/// Creates every namespace, link, address and route of `plan`, with `offloads` on the
/// host's and nodes' `eth0`, and kindnet's masquerade in every node.
///
/// Every command runs with `ip -n <lab namespace>` (or inside one), and veth peers are
/// created directly in their target namespace, so no interface ever appears in the root
/// namespace.
///
/// # Errors
/// The first command or sysctl that fails; what was created so far stays (see [`destroy`]).
pub fn create(plan: &Plan, offloads: Offloads) -> Result<()> {
    create_network()?;
    create_host(offloads)?;
    for node in &plan.nodes {
        create_node(node, plan, offloads)
            .with_context(|| format!("creating node {}", node.name))?;
    }
    // As kindnetd does on every node once it runs, before any pod has sent a packet.
    for node in &plan.nodes {
        kindnet::install(&node.ns)
            .with_context(|| format!("installing kindnet's masquerade on node {}", node.name))?;
    }
    for pod in &plan.pods {
        let node = plan
            .node(&pod.node)
            .with_context(|| format!("pod {} names unknown node {}", pod.name, pod.node))?;
        create_pod(pod, node).with_context(|| format!("creating pod {}", pod.name))?;
    }
    Ok(())
}

/// Deletes every `lbk-*` namespace (whatever created it) and returns their names.
///
/// Deleting a namespace deletes its interfaces, and with them their veth peers.
///
/// # Errors
/// If the namespaces cannot be listed or one cannot be deleted (the others are still tried).
pub fn destroy() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for name in netns::list_lab().context("listing network namespaces")? {
        match netns::delete(&name) {
            Ok(()) => removed.push(name),
            Err(e) => failures.push(e.to_string()),
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(removed)
}

fn create_network() -> Result<()> {
    netns::add(NET_NS)?;
    ip(&["-n", NET_NS, "link", "set", "lo", "up"])?;
    ip(&["-n", NET_NS, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", NET_NS, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

fn create_host(offloads: Offloads) -> Result<()> {
    netns::add(HOST_NS)?;
    ip(&["-n", HOST_NS, "link", "set", "lo", "up"])?;
    attach_to_bridge("host", HOST_NS)?;
    let addr = format!("{HOST_IP}/{}", NODE_NETWORK.prefix);
    ip(&["-n", HOST_NS, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", HOST_NS, "link", "set", "eth0", "up"])?;
    set_offloads(HOST_NS, offloads)?;
    Ok(())
}

fn create_node(node: &Node, plan: &Plan, offloads: Offloads) -> Result<()> {
    let ns = node.ns.as_str();
    netns::add(ns)?;
    // Before any interface exists, so that `default` is what every new veth inherits; the
    // kernel uses max(all, <iface>) for rp_filter, and asymmetric pod paths need it off.
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        netns::set_sysctl(ns, key, value)?;
    }
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    attach_to_bridge(&node.bridge_port, ns)?;
    netns::set_sysctl(ns, "net.ipv4.conf.eth0.rp_filter", "0")?;
    let addr = format!("{}/{}", node.ip, NODE_NETWORK.prefix);
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    set_offloads(ns, offloads)?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &HOST_IP.to_string(),
    ])?;
    for other in plan.nodes.iter().filter(|o| o.name != node.name) {
        let cidr = other.pod_cidr.to_string();
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &cidr,
            "via",
            &other.ip.to_string(),
        ])?;
    }
    Ok(())
}

fn create_pod(pod: &Pod, node: &Node) -> Result<()> {
    let ns = pod.ns.as_str();
    netns::add(ns)?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &node.ns, "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns",
        ns,
    ])?;
    let pod_addr = format!("{}/{}", pod.ip, node.pod_cidr.prefix);
    let pod_ip = pod.ip.to_string();
    let gateway = node.pod_gateway.to_string();
    let cidr = node.pod_cidr.to_string();
    // Routes as the ptp CNI plugin (kindnet) sets them. Without `noprefixroute` the /24 would
    // be on-link and a pod would ARP for its same-node neighbours on a point-to-point veth,
    // where nobody answers; instead everything, same-node pods included, goes via the node.
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &pod_addr,
        "dev",
        "eth0",
        "noprefixroute",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n", ns, "route", "add", &gateway, "dev", "eth0", "scope", "link", "src", &pod_ip,
    ])?;
    ip(&[
        "-n", ns, "route", "add", &cidr, "via", &gateway, "dev", "eth0", "src", &pod_ip,
    ])?;
    // `onlink`: the gateway is the node's end of this veth, reached directly.
    ip(&[
        "-n", ns, "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
    ])?;

    // As kindnet/ptp do: the gateway address on every node-side veth, and a /32 route per pod.
    let gateway_addr = format!("{gateway}/32");
    let pod_route = format!("{}/32", pod.ip);
    ip(&[
        "-n",
        &node.ns,
        "addr",
        "add",
        &gateway_addr,
        "dev",
        &pod.veth,
    ])?;
    ip(&["-n", &node.ns, "link", "set", &pod.veth, "up"])?;
    ip(&[
        "-n", &node.ns, "route", "add", &pod_route, "dev", &pod.veth, "scope", "link",
    ])?;
    Ok(())
}

/// Creates a veth pair: `port` on the bridge in [`NET_NS`], `eth0` in namespace `ns`.
fn attach_to_bridge(port: &str, ns: &str) -> Result<()> {
    ip(&[
        "-n", NET_NS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", NET_NS, "link", "set", port, "master", BRIDGE, "up"])?;
    // XDP_TX on a node's eth0 (lb_xdp in native mode) hands the frame to this peer's NAPI
    // queue, which a veth only has with GRO (or an XDP program) on: without it the kernel
    // drops every XDP_TX frame.
    ethtool(NET_NS, &["-K", port, "gro", "on"])?;
    Ok(())
}

/// Applies `offloads` to `eth0` in namespace `ns`: [`Offloads::Kind`] leaves the veth as
/// created, [`Offloads::Off`] turns transmit checksum offload (and so TSO) off.
fn set_offloads(ns: &str, offloads: Offloads) -> Result<()> {
    match offloads {
        Offloads::Kind => Ok(()),
        Offloads::Off => ethtool(ns, &["-K", "eth0", "tx", "off"]),
    }
}

/// Runs `ethtool <args>` inside namespace `ns` (entering only its network namespace).
fn ethtool(ns: &str, args: &[&str]) -> Result<()> {
    let mut cmd = std::process::Command::new("ethtool");
    cmd.args(args);
    netns::enter_on_spawn(&mut cmd, ns)?;
    crate::cmd::run(&mut cmd)
        .map(drop)
        .with_context(|| format!("in {ns} (ethtool is needed to build the lab)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_names_round_trip_and_match_the_command_line() {
        use clap::ValueEnum;
        for o in Offloads::value_variants() {
            assert_eq!(Offloads::from_name(o.name()), Some(*o));
            let clap_name = o.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(clap_name, o.name());
        }
        assert_eq!(Offloads::default(), Offloads::Kind);
        assert_eq!(Offloads::from_name("on"), None);
    }
}
