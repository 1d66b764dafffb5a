//! Map contents for `lbctl`'s tests: two services, their backends, two flows, one sticky
//! client.

use lb_common::{
    addr_be, backend,
    conntrack::{dir, seen},
    frontend, proto, AffinityEntry, AffinityKey, Backend, BackendSlotKey, BackendStats, Config,
    CtEntry, CtKey, Frontend, FrontendKey,
};

use super::snapshot::Snapshot;

pub const S: u64 = 1_000_000_000;
/// The clock the fixture's ages are measured against.
pub const NOW: u64 = 200 * S;

pub const ECHO: u32 = 1;
pub const DNS: u32 = 2;

pub fn echo_vip() -> FrontendKey {
    FrontendKey::new([10, 96, 0, 10].into(), 80, proto::TCP)
}

pub fn dns_vip() -> FrontendKey {
    FrontendKey::new([10, 96, 0, 53].into(), 53, proto::UDP)
}

pub fn backend(addr: [u8; 4], port: u16, protocol: u8, flags: u8) -> Backend {
    Backend {
        flags,
        ..Backend::new(addr.into(), port, protocol)
    }
}

pub fn slot(service_id: u32, slot: u32) -> BackendSlotKey {
    BackendSlotKey { service_id, slot }
}

/// The forward and reply entries the datapath writes for a client's flow through `vip` to
/// backend `id`.
pub fn flow(
    client: [u8; 4],
    client_port: u16,
    vip: FrontendKey,
    (id, b): (u32, Backend),
    service_id: u32,
    (created_s, last_seen_s): (u64, u64),
    seen: u8,
) -> [(CtKey, CtEntry); 2] {
    let client = addr_be(client.into());
    let sport = client_port.to_be();
    let forward = CtEntry {
        created_ns: created_s * S,
        last_seen_ns: last_seen_s * S,
        nat_addr: b.addr,
        nat_port: b.port,
        seen,
        service_id,
        backend_id: id,
        ..Default::default()
    };
    let reply = CtEntry {
        nat_addr: vip.addr,
        nat_port: vip.port,
        seen: 0,
        ..forward
    };
    [
        (
            CtKey::new(client, vip.addr, sport, vip.port, vip.proto, dir::FORWARD),
            forward,
        ),
        (
            CtKey::new(b.addr, client, b.port, sport, vip.proto, dir::REPLY),
            reply,
        ),
    ]
}

pub fn echo_backends() -> [(u32, Backend); 2] {
    [
        (
            1,
            backend([10, 244, 1, 2], 8080, proto::TCP, backend::flags::LOCAL),
        ),
        (2, backend([10, 244, 2, 2], 8080, proto::TCP, 0)),
    ]
}

pub fn dns_backend() -> (u32, Backend) {
    (
        3,
        backend(
            [10, 244, 1, 3],
            53,
            proto::UDP,
            backend::flags::LOCAL | backend::flags::TERMINATING,
        ),
    )
}

/// A TCP flow to echo (both entries, established) and a UDP flow to dns (forward entry
/// only: the reply entry was evicted).
pub fn flows() -> Vec<(CtKey, CtEntry)> {
    let [b1, _] = echo_backends();
    let tcp = flow(
        [10, 244, 1, 5],
        40000,
        echo_vip(),
        b1,
        ECHO,
        (100, 190),
        seen::SYN | seen::REPLY,
    );
    let [udp, _] = flow(
        [10, 244, 2, 9],
        33000,
        dns_vip(),
        dns_backend(),
        DNS,
        (150, 195),
        0,
    );
    let mut all = tcp.to_vec();
    all.push(udp);
    all
}

pub fn sample() -> Snapshot {
    let [b1, b2] = echo_backends();
    let b3 = dns_backend();
    Snapshot {
        service_names: [
            (ECHO, "default/echo:http".to_owned()),
            (DNS, "kube-system/dns:dns".to_owned()),
        ]
        .into(),
        frontends: [
            (
                echo_vip(),
                Frontend {
                    service_id: ECHO,
                    backend_count: 2,
                    flags: frontend::flags::CLUSTER_IP,
                    ..Default::default()
                },
            ),
            (
                dns_vip(),
                Frontend {
                    service_id: DNS,
                    backend_count: 1,
                    flags: frontend::flags::CLUSTER_IP,
                    affinity_timeout_s: 10_800,
                    _reserved: 0,
                },
            ),
        ]
        .into(),
        slots: [(slot(ECHO, 1), 1), (slot(ECHO, 2), 2), (slot(DNS, 1), 3)].into(),
        backends: [b1, b2, b3].into(),
        backend_stats: [
            (
                1,
                BackendStats {
                    packets: 12,
                    bytes: 1_536,
                },
            ),
            (2, BackendStats::default()),
            (
                3,
                BackendStats {
                    packets: 2,
                    bytes: 140,
                },
            ),
        ]
        .into(),
        conntrack: flows().into_iter().collect(),
        affinity: [(
            AffinityKey {
                service_id: DNS,
                client_addr: addr_be([10, 244, 2, 9].into()),
            },
            AffinityEntry {
                last_used_ns: 150 * S,
                backend_id: 3,
                slot: 1,
            },
        )]
        .into(),
        counters: vec![5, 0, 4, 0, 0, 1],
        config: Some(
            Config {
                hash_seed: 0x5eed,
                node_addr: addr_be([172, 18, 0, 3].into()),
                snat_port_min: 61_000,
                snat_port_max: 65_535,
                ..Default::default()
            }
            .with_cluster_cidr([10, 244, 0, 0].into(), 16),
        ),
        source_ranges: Default::default(),
        sock_rev: Default::default(),
        unavailable: Vec::new(),
    }
}

/// `shop/web:http` added to `snapshot`: a LoadBalancer with externalTrafficPolicy=Local and
/// source ranges, programmed as the agent programs it on a node with two addresses
/// (172.18.0.3, 10.0.0.3): the ClusterIP, and the LB IP, an external IP and a NodePort per
/// node address and 127.0.0.1, each external one with its internal-scope twin: eleven
/// frontends, each under its own service id (100..=110), all with the one endpoint, which
/// is local.
pub fn with_local_load_balancer(mut snapshot: Snapshot) -> Snapshot {
    use lb_common::frontend::{flags, scope};
    use std::net::Ipv4Addr;
    let web = backend([10, 244, 1, 7], 8080, proto::TCP, backend::flags::LOCAL);
    snapshot.backends.insert(20, web);
    let mut id = 100;
    let mut add = |s: &mut Snapshot, addr: Ipv4Addr, port: u16, kind: u16, internal: bool| {
        let mut key = FrontendKey::new(addr, port, proto::TCP);
        let mut f = kind;
        if kind != flags::CLUSTER_IP {
            f |= if internal { 0 } else { flags::EXTERNAL_LOCAL };
        }
        if kind == flags::LOAD_BALANCER {
            f |= flags::SOURCE_RANGES;
            let range = lb_common::SourceRange::range(id, [172, 18, 0, 0].into(), 16);
            s.source_ranges.insert(range);
        }
        if internal {
            key.scope = scope::INTERNAL;
        }
        s.frontends.insert(
            key,
            Frontend {
                service_id: id,
                backend_count: 1,
                flags: f,
                ..Default::default()
            },
        );
        s.slots.insert(slot(id, 1), 20);
        s.service_names.insert(id, "shop/web:http".to_owned());
        id += 1;
    };
    add(
        &mut snapshot,
        [10, 96, 0, 80].into(),
        80,
        flags::CLUSTER_IP,
        false,
    );
    let external: [(Ipv4Addr, u16, u16); 5] = [
        ([172, 18, 255, 10].into(), 80, flags::LOAD_BALANCER),
        ([192, 0, 2, 10].into(), 80, flags::EXTERNAL_IP),
        ([172, 18, 0, 3].into(), 30080, flags::NODE_PORT),
        ([10, 0, 0, 3].into(), 30080, flags::NODE_PORT),
        (Ipv4Addr::LOCALHOST, 30080, flags::NODE_PORT),
    ];
    for (addr, port, kind) in external {
        add(&mut snapshot, addr, port, kind, false);
        add(&mut snapshot, addr, port, kind, true);
    }
    snapshot
}
