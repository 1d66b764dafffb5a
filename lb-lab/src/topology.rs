//! Builds the lab's namespaces, links, addresses and routes from a [`Plan`], and tears them down.

use anyhow::{Context, Result};

use crate::cmd::ip;
use crate::netns;
use crate::plan::{Node, Plan, Pod, BRIDGE, HOST_IP, HOST_NS, NET_NS, NODE_NETWORK};

/// Creates every namespace, link, address and route of `plan`.
///
/// Every command runs with `ip -n <lab namespace>`, and veth peers are created directly in
/// their target namespace, so no interface ever appears in the root namespace.
///
/// # Errors
/// The first `ip` command or sysctl that fails; what was created so far stays (see [`destroy`]).
pub fn create(plan: &Plan) -> Result<()> {
    create_network()?;
    create_host()?;
    for node in &plan.nodes {
        create_node(node, plan).with_context(|| format!("creating node {}", node.name))?;
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

fn create_host() -> Result<()> {
    netns::add(HOST_NS)?;
    ip(&["-n", HOST_NS, "link", "set", "lo", "up"])?;
    attach_to_bridge("host", HOST_NS)?;
    let addr = format!("{HOST_IP}/{}", NODE_NETWORK.prefix);
    ip(&["-n", HOST_NS, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", HOST_NS, "link", "set", "eth0", "up"])?;
    full_checksums(HOST_NS)?;
    Ok(())
}

fn create_node(node: &Node, plan: &Plan) -> Result<()> {
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
    full_checksums(ns)?;
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

/// Turns transmit checksum offload off on `eth0` in namespace `ns`: a veth otherwise sends
/// CHECKSUM_PARTIAL packets (checksum left to "hardware" that never computes it), and once
/// BPF has rewritten addresses and redirected such a packet, the receiver gets a wrong
/// checksum. Real NICs hand over full checksums, which is what this simulates.
fn full_checksums(ns: &str) -> Result<()> {
    ethtool(ns, &["-K", "eth0", "tx", "off"])
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
