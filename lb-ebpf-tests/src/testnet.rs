//! A private network namespace for the calling test thread, with the routes and neighbours
//! of a Kind node, so that the datapath's FIB lookups (bpf_fib_lookup runs in the netns of
//! the thread doing BPF_PROG_TEST_RUN) give the same answers on every machine.
//!
//! The namespace is unnamed: it belongs to the thread and disappears with it. Nothing in it
//! is linked to the machine's real interfaces.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{ensure, Context, Result};

/// The node's address on its uplink.
pub const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// An external client, on the uplink's network.
pub const HOST: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// Another node, through which 10.244.2.0/24 is reached.
pub const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
/// A pod on this node, behind the `pod0` veth.
pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
/// A pod on the other node.
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x04];
pub const LOCAL_POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x03];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const POD_VETH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];

/// The datapath settings of the node this namespace builds: a fixed hash seed (so runs
/// repeat), its address for masquerading, and Kind's cluster CIDR.
pub fn node_config() -> lb_common::Config {
    lb_common::Config {
        hash_seed: 0x5eed,
        node_addr: lb_common::addr_be(NODE),
        ..lb_common::Config::default()
    }
    .with_cluster_cidr(Ipv4Addr::new(10, 244, 0, 0), 16)
}

/// The calling thread's namespace, built.
pub struct TestNet {
    pub uplink_ifindex: u32,
    pub pod_veth_ifindex: u32,
}

/// Moves the calling thread into a new network namespace and builds a node in it.
pub fn enter() -> Result<TestNet> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET) for the test thread")?;
    // /proc/sys/net shows the namespace of the task that opens it.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling forwarding")?;
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let script: Vec<Vec<String>> = [
        "link set lo up".to_string(),
        format!(
            "link add up0 address {} type veth peer name up1",
            mac(UPLINK_MAC)
        ),
        "link set up0 up".into(),
        "link set up1 up".into(),
        format!("addr add {NODE}/16 dev up0"),
        format!(
            "neigh add {HOST} lladdr {} dev up0 nud permanent",
            mac(HOST_MAC)
        ),
        format!(
            "neigh add {OTHER_NODE} lladdr {} dev up0 nud permanent",
            mac(OTHER_NODE_MAC)
        ),
        format!("route add 10.244.2.0/24 via {OTHER_NODE} dev up0"),
        format!(
            "link add pod0 address {} type veth peer name pod1",
            mac(POD_VETH_MAC)
        ),
        "link set pod0 up".into(),
        "link set pod1 up".into(),
        "addr add 10.244.0.1/32 dev pod0".into(),
        format!("route add {LOCAL_POD}/32 dev pod0 scope link"),
        format!(
            "neigh add {LOCAL_POD} lladdr {} dev pod0 nud permanent",
            mac(LOCAL_POD_MAC)
        ),
    ]
    .iter()
    .map(|line| line.split(' ').map(str::to_string).collect())
    .collect();
    for args in script {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .context("running ip")?;
        ensure!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(TestNet {
        uplink_ifindex: ifindex("up0")?,
        pod_veth_ifindex: ifindex("pod0")?,
    })
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| anyhow::anyhow!("no interface {name:?} in the test namespace: {e}"))
}
