//! Per-packet cost of each program (BPF_PROG_TEST_RUN), next to the floor program that only
//! parses and does one lookup (`lb-ebpf/src/floor.rs`).
//!
//! For each size the real object is loaded at the agent's map sizes and filled as the agent
//! would be with N ClusterIP services × E backends, plus NodePort frontends for the first
//! [`NODE_PORTS`] of them; the floor's map holds the same keys. Each case then runs one
//! packet per BPF_PROG_TEST_RUN and takes the kernel's duration of each run (see
//! `lb_ebpf_tests::bench` for why not the kernel's `repeat`):
//!
//! - `new`: every run is another flow (another source port, services taken in turn), so
//!   every run misses conntrack and creates the flow; for `lb_to_pod`, the first reply of a
//!   flow whose first packet went through `lb_from_pod` untimed.
//! - `established`: the same packet of one flow, over and over, after its handshake went
//!   through (so conntrack holds an established entry).
//!
//! Everything runs on a thread moved into a network namespace of its own
//! (`lb_ebpf_tests::testnet`): the FIB lookups of `lb_from_net` and `lb_xdp` see a Kind
//! node's routes there and nothing of the machine's.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::mpsc,
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};
use lb_common::{
    conntrack::tcp_flags::{ACK, SYN},
    frontend::flags,
    maps::{BACKEND_SLOTS_MAX, FRONTENDS_MAX},
    proto::TCP,
    BackendId, Frontend, FrontendKey,
};
use lb_ebpf_tests::{
    bench,
    packet::check,
    testnet::{self, HOST, NODE},
    Datapath, PacketSpec, Program, Run,
};

use super::results::{Figure, Results, Settings};

/// NodePort frontends programmed next to the ClusterIPs (the NodePort cases take turns
/// over them).
const NODE_PORTS: usize = 1000;
const FIRST_NODE_PORT: u16 = 30000;
/// The floor looped in the kernel on one buffer (repeat = runs): without the per-run timer
/// reading that every single-run figure includes.
const LOOPED_FLOOR: &str = "floor/looped";
const TC_PASS: i32 = -1;
const TC_REDIRECT: i32 = 7;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// Runs per case: one packet each.
fn runs(settings: &Settings) -> usize {
    if settings.quick {
        10_000
    } else {
        50_000
    }
}

/// Figures and notes from the measuring thread, or what it is doing.
enum Msg {
    Status(String),
    Figure(Figure),
    Note(String),
}

pub fn run(settings: &Settings, results: &mut Results, status: &mut dyn FnMut(&str)) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        results.note("datapath: not measured (BPF_PROG_TEST_RUN needs root)");
        return Ok(());
    }
    let object = lb_ebpf_tests::privilege::ebpf_object();
    if !object.exists() {
        crate::build::run_build(&crate::build::BuildArgs::default())?;
    }
    let (tx, rx) = mpsc::channel();
    let sizes = settings.sizes();
    let runs = runs(settings);
    // The thread leaves this process's network namespace for one of its own; it ends with
    // it, so nothing needs cleaning up.
    let worker = std::thread::spawn(move || -> Result<()> {
        let net = testnet::enter().context("private network namespace for the datapath")?;
        for size in sizes {
            measure_size(size, runs, net.uplink_ifindex, &tx)
                .with_context(|| format!("datapath at {}x{}", size.0, size.1))?;
        }
        Ok(())
    });
    for msg in rx {
        match msg {
            Msg::Status(s) => status(&s),
            Msg::Figure(f) => results.push(f),
            Msg::Note(n) => results.note(n),
        }
    }
    worker
        .join()
        .map_err(|_| anyhow!("the datapath thread panicked"))??;
    for size in settings.sizes() {
        if let Some(note) = ratio_note(results, size) {
            results.note(note);
        }
    }
    Ok(())
}

/// Every per-packet case at one size, on a freshly loaded and filled datapath.
fn measure_size(
    size: (usize, usize),
    runs: usize,
    uplink: u32,
    tx: &mpsc::Sender<Msg>,
) -> Result<()> {
    let say = |s: String| {
        let _ = tx.send(Msg::Status(s));
    };
    let (n, e) = size;
    if let Some(why) = too_big(n, e) {
        let _ = tx.send(Msg::Note(format!("datapath {n}x{e}: not measured: {why}")));
        return Ok(());
    }
    say(format!("datapath {n}x{e}: loading and filling the maps"));
    let mut dp = bench::load(n + n.min(NODE_PORTS))?;
    dp.set_config(testnet::node_config());
    let fill = Fill::program(&mut dp, n, e)?;
    let case = |name: &str, samples: Vec<Duration>| {
        if let Some(f) = Figure::durations("ns_per_packet", name, size, "ns", &samples) {
            let _ = tx.send(Msg::Figure(f));
        }
    };
    let to_backend = |run: &Run| -> Result<()> {
        let out = check(&run.data);
        ensure!(
            out.dst.ip().octets()[..3] == [10, 244, 2],
            "not sent to a backend: {out:?}"
        );
        Ok(())
    };
    let verdict = |want: i32| {
        move |run: &Run| -> Result<()> {
            ensure!(run.retval == want, "verdict {} (want {want})", run.retval);
            Ok(())
        }
    };

    say(format!("datapath {n}x{e}: lb_from_pod"));
    case(
        "lb_from_pod/new",
        bench::time_runs(
            &mut dp,
            Program::FromPod,
            0,
            runs,
            |i| fill.pod_syn(i, 0).build(),
            |run| {
                verdict(TC_PASS)(run)?;
                to_backend(run)
            },
        )?,
    );
    let flow = PacketSpec::tcp(pod_client(0, 0), fill.cluster_ip(0), SYN);
    let backend = check(&dp.run(Program::FromPod, &flow.build())?.data).dst;
    let synack = PacketSpec::tcp(backend, flow.src, SYN | ACK);
    dp.run(Program::ToPod, &synack.build())?;
    case(
        "lb_from_pod/established",
        bench::time_runs(
            &mut dp,
            Program::FromPod,
            0,
            runs,
            |_| PacketSpec::tcp(flow.src, flow.dst, ACK).build(),
            |run| {
                verdict(TC_PASS)(run)?;
                ensure!(check(&run.data).dst == backend, "not to the flow's backend");
                Ok(())
            },
        )?,
    );

    say(format!("datapath {n}x{e}: lb_to_pod"));
    // First packets of `runs` flows (untimed), then the first reply of each (timed).
    let mut replies = Vec::with_capacity(runs);
    for i in 0..runs {
        let syn = fill.pod_syn(i, 1);
        let out = dp.run(Program::FromPod, &syn.build())?;
        replies.push(PacketSpec::tcp(check(&out.data).dst, syn.src, SYN | ACK).build());
    }
    case(
        "lb_to_pod/new",
        bench::time_runs(
            &mut dp,
            Program::ToPod,
            0,
            runs,
            |i| replies[i].clone(),
            |run| {
                verdict(TC_PASS)(run)?;
                ensure!(
                    check(&run.data).src.ip().octets()[..2] == [10, 96],
                    "reply not from the service"
                );
                Ok(())
            },
        )?,
    );
    drop(replies);
    case(
        "lb_to_pod/established",
        bench::time_runs(
            &mut dp,
            Program::ToPod,
            0,
            runs,
            |_| PacketSpec::tcp(backend, flow.src, ACK).build(),
            |run| {
                verdict(TC_PASS)(run)?;
                ensure!(
                    check(&run.data).src == fill.cluster_ip(0),
                    "not reverse-NATed"
                );
                Ok(())
            },
        )?,
    );

    for (program, name, ifindex, forwarded) in [
        (Program::FromNet, "lb_from_net", 0, TC_REDIRECT),
        (Program::Xdp, "lb_xdp", uplink, XDP_TX),
    ] {
        say(format!("datapath {n}x{e}: {name}"));
        let client_net = if matches!(program, Program::Xdp) {
            2
        } else {
            1
        };
        let masqueraded = |run: &Run| -> Result<()> {
            verdict(forwarded)(run)?;
            to_backend(run)?;
            ensure!(*check(&run.data).src.ip() == NODE, "not masqueraded");
            Ok(())
        };
        case(
            &format!("{name}/new"),
            bench::time_runs(
                &mut dp,
                program,
                ifindex,
                runs,
                |i| fill.external_syn(i, client_net).build(),
                masqueraded,
            )?,
        );
        let flow = PacketSpec::tcp(
            SocketAddrV4::new(HOST, 50000 + u16::from(client_net)),
            fill.node_port(0),
            SYN,
        );
        let out = check(&dp.run_on(program, &flow.build(), ifindex)?.data);
        let back = dp.run_on(
            program,
            &PacketSpec::tcp(out.dst, out.src, SYN | ACK).build(),
            ifindex,
        )?;
        ensure!(
            back.retval == forwarded && check(&back.data).dst == flow.src,
            "{name}: the handshake's reply did not go back to the client"
        );
        case(
            &format!("{name}/established"),
            bench::time_runs(
                &mut dp,
                program,
                ifindex,
                runs,
                |_| PacketSpec::tcp(flow.src, fill.node_port(0), ACK).build(),
                masqueraded,
            )?,
        );
    }

    say(format!("datapath {n}x{e}: floor"));
    let ack = PacketSpec::tcp(pod_client(0, 0), fill.cluster_ip(0), ACK).build();
    let unchanged = |want: i32, packet: Vec<u8>| {
        move |run: &Run| -> Result<()> {
            verdict(want)(run)?;
            ensure!(run.data == packet, "the floor changed the packet");
            Ok(())
        }
    };
    case(
        "floor",
        bench::time_runs(
            &mut dp,
            Program::FloorTc,
            0,
            runs,
            |_| ack.clone(),
            unchanged(TC_PASS, ack.clone()),
        )?,
    );
    let np_ack = PacketSpec::tcp(SocketAddrV4::new(HOST, 50000), fill.node_port(0), ACK).build();
    case(
        "floor/xdp",
        bench::time_runs(
            &mut dp,
            Program::FloorXdp,
            uplink,
            runs,
            |_| np_ack.clone(),
            unchanged(XDP_PASS, np_ack.clone()),
        )?,
    );
    let hot = bench::hot_loop_ns(&mut dp, Program::FloorTc, 0, &ack, runs as u32)?;
    let _ = tx.send(Msg::Figure(Figure::single(
        "ns_per_packet",
        LOOPED_FLOOR,
        size,
        "ns",
        hot,
    )));
    Ok(())
}

/// Distinct backend addresses at most: endpoints of service `i` are pods
/// `(i·E + j) mod POD_POOL`, so past that many endpoints in total pods back several services
/// (a cluster has at most 150 000 pods; `LB_BACKENDS` holds one entry per address).
const POD_POOL: usize = 200_000;

/// Why the maps cannot hold `n` services × `e` backends as this bench programs them, if
/// they cannot.
fn too_big(n: usize, e: usize) -> Option<String> {
    let frontends = n + n.min(NODE_PORTS);
    let slots = frontends * e;
    if frontends > FRONTENDS_MAX as usize {
        Some(format!(
            "{frontends} frontends > LB_FRONTENDS {FRONTENDS_MAX}"
        ))
    } else if slots > BACKEND_SLOTS_MAX as usize {
        Some(format!("{slots} slots > LB_SLOTS {BACKEND_SLOTS_MAX}"))
    } else if n > 1 << 20 {
        Some("more services than 10.96.0.0/12 holds".into())
    } else {
        None
    }
}

/// The services programmed at one size.
struct Fill {
    services: usize,
}

impl Fill {
    /// N ClusterIP frontends (service `i` at [`Fill::cluster_ip`]) with `e` backends each,
    /// then NodePort frontends for the first [`NODE_PORTS`] over the same backends, in the
    /// agent's order; the floor's map gets the same keys.
    fn program(dp: &mut Datapath, n: usize, e: usize) -> Result<Fill> {
        let fill = Fill { services: n };
        let pods: Vec<BackendId> = (0..(n * e).min(POD_POOL))
            .map(|k| {
                let (ip, port) = backend_addr(k);
                dp.add_backend(ip, port, TCP)
            })
            .collect();
        let backends =
            |i: usize| -> Vec<BackendId> { (0..e).map(|j| pods[(i * e + j) % POD_POOL]).collect() };
        let add = |dp: &mut Datapath, addr: SocketAddrV4, flag: u16, ids: &[BackendId]| {
            let key = FrontendKey::new(*addr.ip(), addr.port(), TCP);
            let service_id = dp.add_frontend_with_ids(key, flag, ids, 0);
            let fe = Frontend {
                service_id,
                backend_count: e as u16,
                flags: flag,
                ..Default::default()
            };
            bench::add_floor_key(dp, key, fe)
        };
        for i in 0..n {
            add(dp, fill.cluster_ip(i), flags::CLUSTER_IP, &backends(i))?;
        }
        for i in 0..n.min(NODE_PORTS) {
            add(dp, fill.node_port(i), flags::NODE_PORT, &backends(i))?;
        }
        Ok(fill)
    }

    /// Service `i`'s ClusterIP and port: 10.96.0.0/12 from 10.96.0.1 on.
    fn cluster_ip(&self, i: usize) -> SocketAddrV4 {
        let ip = u32::from(Ipv4Addr::new(10, 96, 0, 0)) + (i % self.services) as u32 + 1;
        SocketAddrV4::new(Ipv4Addr::from(ip), 80)
    }

    /// The `i`-th NodePort frontend (taken in turn) on the node's address.
    fn node_port(&self, i: usize) -> SocketAddrV4 {
        let count = self.services.min(NODE_PORTS);
        SocketAddrV4::new(NODE, FIRST_NODE_PORT + (i % count) as u16)
    }

    /// The first packet of flow `i` from a pod to a service (services taken in a scattered
    /// order); `set` keeps the flows of different cases apart.
    fn pod_syn(&self, i: usize, set: u8) -> PacketSpec {
        PacketSpec::tcp(pod_client(i, set), self.cluster_ip(scatter(i)), SYN)
    }

    /// The first packet of flow `i` from outside the cluster to a NodePort.
    fn external_syn(&self, i: usize, set: u8) -> PacketSpec {
        let client = Ipv4Addr::new(172, 18, 10 + set, 1 + (i / 60_000 % 250) as u8);
        PacketSpec::tcp(
            SocketAddrV4::new(client, source_port(i)),
            self.node_port(scatter(i)),
            SYN,
        )
    }
}

/// Pod `k` (< [`POD_POOL`]): every address is in 10.244.2.0/24, behind the other
/// node (so north-south translations go back out of the uplink: XDP_TX), with distinct
/// ports once the 250 addresses are used.
fn backend_addr(k: usize) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(10, 244, 2, 1 + (k % 250) as u8),
        1024 + (k / 250) as u16,
    )
}

/// Pod client of flow `i` on this node (10.244.0.0/24): a new source port per flow, a new
/// address every 60 000 flows; `set` picks a separate range of addresses.
fn pod_client(i: usize, set: u8) -> SocketAddrV4 {
    let host = 10 + set as usize * 20 + i / 60_000;
    SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, host as u8), source_port(i))
}

fn source_port(i: usize) -> u16 {
    1024 + (i % 60_000) as u16
}

/// Spreads consecutive flows over the services (a large odd stride) so successive lookups
/// do not hit the same few entries.
fn scatter(i: usize) -> usize {
    i.wrapping_mul(7919)
}

/// "established / floor" for each program at `size`, if both were measured; and the same
/// with the kernel timer's reading per run (floor single run − floor looped) taken out of
/// both, when the looped floor was measured too.
fn ratio_note(results: &Results, size: (usize, usize)) -> Option<String> {
    let p50 = |subject: &str| results.find("ns_per_packet", subject, size).map(|f| f.p50);
    let overhead = p50("floor")
        .zip(p50(LOOPED_FLOOR))
        .map(|(single, looped)| (single - looped).max(0.0));
    let mut raw = Vec::new();
    let mut net = Vec::new();
    for (program, floor) in [
        ("lb_from_pod", "floor"),
        ("lb_to_pod", "floor"),
        ("lb_from_net", "floor"),
        ("lb_xdp", "floor/xdp"),
    ] {
        let (Some(est), Some(base)) = (p50(&format!("{program}/established")), p50(floor)) else {
            continue;
        };
        raw.push(format!("{program} {:.2}x ({floor})", est / base));
        if let Some(o) = overhead {
            net.push(format!("{program} {:.2}x", (est - o) / (base - o)));
        }
    }
    if raw.is_empty() {
        return None;
    }
    let mut note = format!(
        "datapath {}x{}: established p50 / floor p50: {}",
        size.0,
        size.1,
        raw.join(", ")
    );
    if let Some(o) = overhead.filter(|_| !net.is_empty()) {
        note.push_str(&format!(
            "; without the {o:.0} ns timer reading per run: {}",
            net.join(", ")
        ));
    }
    Some(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_distinct_and_behind_the_other_node() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..POD_POOL {
            let (ip, port) = backend_addr(k);
            assert_eq!(ip.octets()[..3], [10, 244, 2]);
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255);
            assert!(seen.insert((ip, port)), "backend {k} repeats");
        }
    }

    #[test]
    fn flows_of_a_case_are_distinct_and_sets_do_not_overlap() {
        let fill = Fill { services: 100 };
        let mut seen = std::collections::HashSet::new();
        for set in 0..2 {
            for i in 0..100_000 {
                let syn = fill.pod_syn(i, set);
                assert!(seen.insert(syn.src), "flow {i} of set {set} repeats");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for set in 1..3 {
            for i in 0..100_000 {
                assert!(seen.insert(fill.external_syn(i, set).src));
            }
        }
    }

    #[test]
    fn flows_cover_every_service() {
        let fill = Fill { services: 1000 };
        let hit: std::collections::HashSet<_> = (0..1000).map(|i| fill.pod_syn(i, 0).dst).collect();
        assert_eq!(hit.len(), 1000);
        assert_eq!(fill.cluster_ip(0), "10.96.0.1:80".parse().unwrap());
        assert_eq!(fill.cluster_ip(999), "10.96.3.232:80".parse().unwrap());
    }

    #[test]
    fn sizes_beyond_the_maps_are_refused_with_the_map_named() {
        assert_eq!(too_big(30_000, 10), None);
        assert_eq!(too_big(100_000, 10), None);
        assert!(POD_POOL <= lb_common::maps::BACKENDS_MAX as usize);
        assert!(too_big(110_000, 10).unwrap().contains("LB_SLOTS"));
        assert!(too_big(200_000, 1).unwrap().contains("LB_FRONTENDS"));
    }

    #[test]
    fn ratios_are_established_over_the_matching_floor() {
        let mut results = Results::default();
        let size = (100, 2);
        for (subject, v) in [
            ("lb_from_pod/established", 90.0),
            ("lb_xdp/established", 60.0),
            ("floor", 30.0),
            ("floor/xdp", 20.0),
        ] {
            results.push(Figure::single("ns_per_packet", subject, size, "ns", v));
        }
        let note = ratio_note(&results, size).unwrap();
        assert_eq!(
            note,
            "datapath 100x2: established p50 / floor p50: lb_from_pod 3.00x (floor), \
             lb_xdp 3.00x (floor/xdp)"
        );
        assert!(ratio_note(&results, (1000, 2)).is_none());

        results.push(Figure::single(
            "ns_per_packet",
            LOOPED_FLOOR,
            size,
            "ns",
            20.0,
        ));
        let note = ratio_note(&results, size).unwrap();
        assert!(
            note.ends_with(
                "; without the 10 ns timer reading per run: lb_from_pod 4.00x, lb_xdp 5.00x"
            ),
            "{note}"
        );
    }
}
