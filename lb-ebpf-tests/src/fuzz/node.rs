//! The node the fuzzer runs on: services of every kind, programmed in the agent's order,
//! and live flows opened through the programs themselves (handshakes, masquerade, closes,
//! resets; some aged, some with a lost reply entry), so mutated packets meet the maps of a
//! real node rather than empty ones.
//!
//! Everything here is deterministic (fixed addresses and client ports; masqueraded flows
//! use client ports inside the SNAT range, which the datapath keeps), so a packet saved
//! from one run finds the same flows when it is replayed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use lb_common::{
    backend::flags as backend_flags,
    conntrack::dir,
    frontend::{flags, scope},
    proto::{TCP, UDP},
    Backend, BackendId, Config, CtKey, Frontend, FrontendKey, Reason,
};

use crate::{
    packet::check,
    testnet::{self, HOST, LOCAL_POD, NODE, REMOTE_POD},
    Datapath, PacketSpec, Program,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
pub const VIP_HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
pub const VIP_BROKEN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
pub const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 10);
pub const LB_RANGES: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 11);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Another pod on this node, without a route of its own in the test namespace.
pub const LOCAL_POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
pub const REMOTE_POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 4);
/// An external client on the uplink's network whose neighbour entry is unknown.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 77);
/// An external client without any route back (the FIB says "not forwarded").
pub const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// An external client behind an unreachable route ([`add_routes`]): what is translated
/// towards it is left to the stack (`pass_no_route`).
pub const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Routes the fuzzer's namespace has beyond the test node's: an unreachable prefix.
pub fn add_routes() -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(["route", "add", "unreachable", "192.0.2.0/24"])
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip route add unreachable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A programmed frontend.
#[derive(Clone, Debug)]
pub struct Service {
    pub key: FrontendKey,
    pub fe: Frontend,
}

/// A flow opened through the programs.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: u8,
    pub client: SocketAddrV4,
    pub service: SocketAddrV4,
    /// What the backend sees as the source (the client, or the masquerade address).
    pub inner_src: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// Where the client's packets enter.
    pub from: Program,
    /// Where the backend's replies are translated (None: they bypass this node).
    pub reply_at: Option<Program>,
}

/// The node: what is programmed and which flows are open.
pub struct Node {
    pub services: Vec<Service>,
    pub backends: HashMap<BackendId, Backend>,
    /// Service id -> its slots' backend ids (slot 1 first), as written.
    pub slots: HashMap<u32, Vec<BackendId>>,
    pub flows: Vec<Flow>,
    pub config: Config,
    pub uplink: u32,
    /// Addresses clients and routers use, for the generator.
    pub clients: Vec<Ipv4Addr>,
    /// Forward keys of flows whose reply entry the harness removed (as a flush would):
    /// another flow may since hold their tuple, which repair then leaves it.
    pub lost: std::collections::HashSet<CtKey>,
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

impl Node {
    /// Programs the services into `dp` (once per datapath).
    pub fn program(dp: &mut Datapath, uplink: u32) -> Self {
        let mut node = Node {
            services: Vec::new(),
            backends: HashMap::new(),
            slots: HashMap::new(),
            flows: Vec::new(),
            config: testnet::node_config(),
            uplink,
            clients: vec![
                LOCAL_POD,
                LOCAL_POD2,
                REMOTE_POD,
                REMOTE_POD2,
                HOST,
                STRANGER,
                FAR,
                UNREACHABLE,
                NODE,
                testnet::OTHER_NODE,
            ],
            lost: Default::default(),
        };
        dp.set_config(node.config);
        let fe = |ip, port, proto| FrontendKey::new(ip, port, proto);
        let twin = |k: FrontendKey| FrontendKey {
            scope: scope::INTERNAL,
            ..k
        };
        let ext_local = flags::EXTERNAL_LOCAL;
        node.add(
            dp,
            fe(VIP, 80, TCP),
            flags::CLUSTER_IP,
            &[(LOCAL_POD, 8080, 0), (REMOTE_POD, 8080, 0)],
            0,
        );
        node.add(
            dp,
            fe(VIP, 53, UDP),
            flags::CLUSTER_IP,
            &[(REMOTE_POD, 53, 0), (LOCAL_POD, 53, 0)],
            0,
        );
        node.add(
            dp,
            fe(VIP_AFFINITY, 443, TCP),
            flags::CLUSTER_IP,
            &[
                (REMOTE_POD, 8443, 0),
                (REMOTE_POD2, 8443, backend_flags::TERMINATING),
            ],
            10_800,
        );
        node.add(dp, fe(VIP_EMPTY, 80, TCP), flags::CLUSTER_IP, &[], 0);
        node.add(dp, fe(VIP_EMPTY, 80, UDP), flags::CLUSTER_IP, &[], 0);
        node.add(
            dp,
            fe(VIP_LOCAL, 80, UDP),
            flags::CLUSTER_IP | flags::INTERNAL_LOCAL,
            &[],
            0,
        );
        node.add(
            dp,
            fe(VIP_HAIRPIN, 80, TCP),
            flags::CLUSTER_IP,
            &[(LOCAL_POD, 9090, backend_flags::LOCAL)],
            0,
        );
        // NodePorts: externalTrafficPolicy Cluster (masqueraded), Local with its twin, and
        // a hostNetwork backend.
        node.add(
            dp,
            fe(NODE, 30080, TCP),
            flags::NODE_PORT,
            &[(REMOTE_POD, 8080, 0), (LOCAL_POD, 8080, 0)],
            0,
        );
        node.add(
            dp,
            fe(NODE, 30081, UDP),
            flags::NODE_PORT,
            &[(REMOTE_POD, 9000, 0)],
            0,
        );
        node.add(
            dp,
            fe(NODE, 30082, TCP),
            flags::NODE_PORT | ext_local,
            &[(LOCAL_POD, 8080, backend_flags::LOCAL)],
            0,
        );
        node.add(
            dp,
            twin(fe(NODE, 30082, TCP)),
            flags::NODE_PORT | ext_local,
            &[(LOCAL_POD, 8080, 0), (REMOTE_POD, 8080, 0)],
            0,
        );
        node.add(
            dp,
            fe(NODE, 30090, TCP),
            flags::NODE_PORT,
            &[(NODE, 10250, backend_flags::HOST)],
            0,
        );
        // LoadBalancers: Local without a local endpoint (its twin has one elsewhere), and
        // Cluster behind source ranges.
        node.add(
            dp,
            fe(LB_LOCAL, 80, TCP),
            flags::LOAD_BALANCER | ext_local,
            &[],
            0,
        );
        node.add(
            dp,
            twin(fe(LB_LOCAL, 80, TCP)),
            flags::LOAD_BALANCER | ext_local,
            &[(REMOTE_POD, 8080, 0)],
            0,
        );
        let ranged = node.add(
            dp,
            fe(LB_RANGES, 80, TCP),
            flags::LOAD_BALANCER | flags::SOURCE_RANGES,
            &[(REMOTE_POD, 8080, 0), (LOCAL_POD, 8080, 0)],
            0,
        );
        dp.add_source_range(ranged, Ipv4Addr::new(172, 18, 0, 0), 24);
        dp.add_source_range(ranged, Ipv4Addr::new(10, 244, 0, 0), 16);
        node.add(
            dp,
            fe(EXTERNAL_IP, 8080, UDP),
            flags::EXTERNAL_IP,
            &[(LOCAL_POD, 8080, 0)],
            0,
        );
        node.add(
            dp,
            fe(EXTERNAL_IP, 8080, TCP),
            flags::EXTERNAL_IP,
            &[(REMOTE_POD, 8080, 0)],
            0,
        );
        // Maps caught mid-update: a slot naming a backend that is gone, and a count above
        // the slots written.
        let (missing, ids) = dp.add_frontend(
            fe(VIP_BROKEN, 80, TCP),
            flags::CLUSTER_IP,
            &[(REMOTE_POD, 8080)],
            0,
        );
        dp.set_slot(missing, 2, 0xdead);
        let mut broken = Frontend {
            service_id: missing,
            backend_count: 2,
            flags: flags::CLUSTER_IP,
            ..Default::default()
        };
        dp.set_frontend(fe(VIP_BROKEN, 80, TCP), broken);
        node.remember(
            dp,
            fe(VIP_BROKEN, 80, TCP),
            broken,
            &ids,
            &[(REMOTE_POD, 8080, 0)],
        );
        node.slots.get_mut(&missing).expect("slots").push(0xdead);
        let (short, ids) = dp.add_frontend(
            fe(VIP_BROKEN, 81, TCP),
            flags::CLUSTER_IP,
            &[(REMOTE_POD, 8080)],
            0,
        );
        broken.service_id = short;
        broken.backend_count = 3;
        dp.set_frontend(fe(VIP_BROKEN, 81, TCP), broken);
        node.remember(
            dp,
            fe(VIP_BROKEN, 81, TCP),
            broken,
            &ids,
            &[(REMOTE_POD, 8080, 0)],
        );
        node
    }

    fn add(
        &mut self,
        dp: &mut Datapath,
        key: FrontendKey,
        fe_flags: u16,
        backends: &[(Ipv4Addr, u16, u8)],
        affinity: u32,
    ) -> u32 {
        let ids: Vec<BackendId> = backends
            .iter()
            .map(|(ip, port, f)| dp.add_backend_with_flags(*ip, *port, key.proto, *f))
            .collect();
        let service_id = dp.add_frontend_with_ids(key, fe_flags, &ids, affinity);
        let fe = Frontend {
            service_id,
            backend_count: ids.len() as u16,
            flags: fe_flags,
            affinity_timeout_s: affinity,
            ..Default::default()
        };
        self.remember(dp, key, fe, &ids, backends);
        service_id
    }

    fn remember(
        &mut self,
        _dp: &mut Datapath,
        key: FrontendKey,
        fe: Frontend,
        ids: &[BackendId],
        backends: &[(Ipv4Addr, u16, u8)],
    ) {
        for (id, (ip, port, f)) in ids.iter().zip(backends) {
            self.backends.insert(
                *id,
                Backend {
                    flags: *f,
                    ..Backend::new(*ip, *port, key.proto)
                },
            );
        }
        self.slots.insert(fe.service_id, ids.to_vec());
        self.services.push(Service { key, fe });
    }

    /// The frontends of service id `id` (one, or a twin pair sharing an address).
    pub fn service(&self, id: u32) -> Option<&Service> {
        self.services.iter().find(|s| s.fe.service_id == id)
    }

    /// Sets the masquerade port range (0, 0: the default) for the next epoch.
    pub fn set_snat_range(&mut self, dp: &mut Datapath, range: (u16, u16)) {
        self.config.snat_port_min = range.0;
        self.config.snat_port_max = range.1;
        dp.set_config(self.config);
    }

    /// The masquerade port range in force.
    pub fn snat_range(&self) -> (u16, u16) {
        let c = &self.config;
        if c.snat_port_min != 0 && c.snat_port_max >= c.snat_port_min {
            (c.snat_port_min, c.snat_port_max)
        } else {
            (
                lb_common::conntrack::snat_ports::MIN,
                lb_common::conntrack::snat_ports::MAX,
            )
        }
    }

    /// Empties conntrack and opens the node's flows again, through the programs.
    pub fn open_flows(&mut self, dp: &mut Datapath) -> Result<()> {
        dp.ct_clear();
        self.flows.clear();
        self.lost.clear();
        // (client, service, proto, entry program, how many, first client port)
        let plan: [(Ipv4Addr, SocketAddrV4, u8, Program, u16, u16); 13] = [
            (LOCAL_POD, sa(VIP, 80), TCP, Program::FromPod, 28, 40000),
            (LOCAL_POD2, sa(VIP, 53), UDP, Program::FromPod, 16, 41000),
            (
                LOCAL_POD,
                sa(VIP_AFFINITY, 443),
                TCP,
                Program::FromPod,
                8,
                42000,
            ),
            (HOST, sa(NODE, 30080), TCP, Program::FromNet, 28, 61100),
            (HOST, sa(NODE, 30081), UDP, Program::FromNet, 16, 61200),
            (STRANGER, sa(NODE, 30082), TCP, Program::FromNet, 8, 43000),
            (HOST, sa(LB_RANGES, 80), TCP, Program::FromNet, 8, 61300),
            (REMOTE_POD, sa(VIP, 80), TCP, Program::FromNet, 8, 44000),
            (HOST, sa(NODE, 30090), TCP, Program::FromNet, 8, 45000),
            (FAR, sa(EXTERNAL_IP, 8080), UDP, Program::FromNet, 8, 61400),
            (
                LOCAL_POD,
                sa(VIP_HAIRPIN, 80),
                TCP,
                Program::FromPod,
                4,
                61500,
            ),
            (
                LOCAL_POD2,
                sa(LB_LOCAL, 80),
                TCP,
                Program::FromPod,
                4,
                46000,
            ),
            (
                UNREACHABLE,
                sa(NODE, 30081),
                UDP,
                Program::FromNet,
                4,
                61600,
            ),
        ];
        let mut i = 0usize;
        for (client, service, proto, from, n, port) in plan {
            for k in 0..n {
                self.open(dp, sa(client, port + k), service, proto, from, i)
                    .with_context(|| format!("opening flow {client}:{} -> {service}", port + k))?;
                i += 1;
            }
        }
        Ok(())
    }

    /// Opens one flow and takes it to stage `i` (of a cycle through the TCP states).
    fn open(
        &mut self,
        dp: &mut Datapath,
        client: SocketAddrV4,
        service: SocketAddrV4,
        proto: u8,
        from: Program,
        i: usize,
    ) -> Result<()> {
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        const FIN: u8 = 0x01;
        const RST: u8 = 0x04;
        let timestamps = i.is_multiple_of(2);
        // Every 13th TCP flow is picked up mid-stream (its first packet an ACK, as after
        // a restart that lost it), and left established.
        let mid_stream = proto == TCP && i % 13 == 12;
        let first = if mid_stream {
            PacketSpec::tcp(client, service, ACK)
        } else if proto == TCP {
            let syn = PacketSpec::tcp(client, service, SYN);
            if timestamps {
                syn.tsval(1000 + i as u32)
            } else {
                syn
            }
        } else {
            PacketSpec::udp(client, service).payload(b"query")
        };
        let before = dp.counter(Reason::NewFlow);
        let run = self.run(dp, from, &first.build())?;
        ensure!(
            dp.counter(Reason::NewFlow) == before + 1,
            "the first packet did not open a flow (verdict {})",
            run.retval
        );
        let out = check(&run.data);
        let backend_host = self
            .backends
            .values()
            .find(|b| b.addr == lb_common::addr_be(*out.dst.ip()))
            .map(|b| b.flags & backend_flags::HOST != 0)
            .unwrap_or(false);
        let reply_at = if *out.dst.ip() == LOCAL_POD {
            Some(Program::FromPod)
        } else if backend_host {
            Some(Program::ToNet)
        } else if *out.src.ip() == NODE {
            Some(Program::FromNet)
        } else if client.ip().octets()[..3] == [10, 244, 0] {
            Some(Program::ToPod)
        } else {
            None
        };
        let flow = Flow {
            proto,
            client,
            service,
            inner_src: out.src,
            backend: out.dst,
            from,
            reply_at,
        };
        self.flows.push(flow);
        let stage = i % 7;
        let Some(reply_at) = reply_at else {
            return Ok(());
        };
        if mid_stream {
            self.run(
                dp,
                reply_at,
                &PacketSpec::tcp(flow.backend, flow.inner_src, ACK).build(),
            )?;
            return Ok(());
        }
        if proto == UDP {
            if stage % 2 == 1 {
                let reply = PacketSpec::udp(flow.backend, flow.inner_src).payload(b"answer");
                self.run(dp, reply_at, &reply.build())?;
            }
        } else {
            let reply = |flags| PacketSpec::tcp(flow.backend, flow.inner_src, flags);
            let forward = |flags| {
                let p = PacketSpec::tcp(client, service, flags);
                if timestamps {
                    p.tsval(2000 + i as u32)
                } else {
                    p
                }
            };
            if stage >= 1 {
                self.run(dp, reply_at, &reply(SYN | ACK).build())?;
            }
            if stage >= 2 {
                self.run(dp, from, &forward(ACK).build())?;
            }
            if stage >= 4 && stage != 6 {
                self.run(dp, from, &forward(FIN | ACK).build())?;
            }
            if stage == 5 {
                self.run(dp, reply_at, &reply(FIN | ACK).build())?;
            }
            if stage == 6 {
                self.run(dp, reply_at, &reply(RST).build())?;
            }
        }
        self.age(dp, &flow, i)
    }

    /// Ages some flows as time would (quiet for two seconds, or well past the SYN and UDP
    /// timeouts), and loses the reply entry of a few, as a flush or crash would.
    fn age(&mut self, dp: &mut Datapath, flow: &Flow, i: usize) -> Result<()> {
        let by = match i % 5 {
            3 => 2,
            4 => 100,
            _ => return Ok(()),
        } * 1_000_000_000u64;
        let fwd = CtKey::new(
            lb_common::addr_be(*flow.client.ip()),
            lb_common::addr_be(*flow.service.ip()),
            flow.client.port().to_be(),
            flow.service.port().to_be(),
            flow.proto,
            dir::FORWARD,
        );
        let entry = dp.ct_get(&fwd).context("forward entry of an opened flow")?;
        let rev = fwd.reply_of_forward(&entry);
        let aged = |e: lb_common::CtEntry| lb_common::CtEntry {
            created_ns: e.created_ns.saturating_sub(by),
            last_seen_ns: e.last_seen_ns.saturating_sub(by),
            ..e
        };
        dp.ct_set(&fwd, aged(entry));
        if let Some(reply) = dp.ct_get(&rev) {
            if i % 10 == 3 {
                dp.ct_remove(&rev);
                self.lost.insert(fwd);
            } else {
                dp.ct_set(&rev, aged(reply));
            }
        }
        Ok(())
    }

    /// Runs a packet through `program` as it arrives on this node.
    pub fn run(&self, dp: &mut Datapath, program: Program, bytes: &[u8]) -> Result<crate::Run> {
        match program {
            Program::Xdp => dp.run_on(program, bytes, self.uplink),
            _ => dp.run(program, bytes),
        }
    }
}

/// CLOCK_MONOTONIC_COARSE, the datapath's clock (bpf_ktime_get_coarse_ns).
pub fn now_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
