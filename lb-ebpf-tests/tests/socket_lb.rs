//! Socket-level load balancing with the real kernel and real sockets: the four cgroup
//! programs attached to a throwaway cgroup, echo servers as backends in a throwaway network
//! namespace, and a client process (this binary again, in client mode) placed in both.
//!
//! The namespace has no route to the service range, so a destination the programs leave
//! untranslated fails at once with ENETUNREACH: every outcome is immediate and unambiguous.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lb_common::{
    frontend::{flags, scope},
    proto::{TCP, UDP},
    Config, FrontendKey, Reason,
};
use lb_ebpf_tests::{
    cgroup::{attach_sock_programs, place, Cgroup, EchoServers, Netns, PREFIX},
    privilege::require_bpf,
    Datapath,
};
use libtest_mimic::{Arguments, Failed, Trial};

/// Set in the environment of the re-executed binary: run the client, not the tests.
const CLIENT_ENV: &str = "LB_SOCK_TEST_CLIENT";

const BACKEND_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 1), 8080);
const BACKEND_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 2), 8080);
/// ClusterIP with both backends, TCP and UDP.
const SVC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// ClusterIP without endpoints, TCP and UDP: rejected.
const SVC_EMPTY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 80);
/// internalTrafficPolicy=Local without a local endpoint: dropped (left untranslated).
const SVC_LOCAL_EMPTY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 13), 80);
/// A LoadBalancer IP with externalTrafficPolicy=Local: no local endpoint in the external
/// entry, backend B in the internal twin that node processes must use.
const SVC_ETP_LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 14), 80);
/// In the service range but not a service.
const NOT_A_SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 99), 80);

const ECONNREFUSED: i32 = 111;
const ENETUNREACH: i32 = 101;

fn main() {
    if std::env::var_os(CLIENT_ENV).is_some() {
        client::main();
        return;
    }
    let mut args = Arguments::from_args();
    // The checks read counter deltas, so they must not overlap.
    args.test_threads = Some(1);

    let fixture = if args.list || !require_bpf("socket-level LB tests") {
        None
    } else {
        match Fixture::set_up() {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                eprintln!("setting up the socket LB test failed: {e:#}");
                std::process::exit(1);
            }
        }
    };
    let conclusion = libtest_mimic::run(&args, trials(fixture.as_ref()));
    // The trials are gone with `run`; this is the last owner, so the namespace, cgroup and
    // pins are removed here, before exiting.
    drop(fixture);
    conclusion.exit();
}

type Check = fn(&Fixture) -> Result<()>;

fn trials(fixture: Option<&Arc<Fixture>>) -> Vec<Trial> {
    let checks: [(&str, Check); 9] = [
        (
            "tcp_connect_reaches_a_backend_and_the_peer_is_the_service",
            tcp_to_service,
        ),
        (
            "connected_udp_reaches_a_backend_and_the_peer_is_the_service",
            connected_udp,
        ),
        (
            "unconnected_udp_reply_comes_from_the_service",
            unconnected_udp,
        ),
        (
            "service_without_backends_refuses_at_once",
            no_backends_refused,
        ),
        (
            "internal_local_without_local_backend_is_dropped_untranslated",
            internal_local_dropped,
        ),
        (
            "external_local_service_uses_the_internal_twin",
            external_local_twin,
        ),
        (
            "non_service_destinations_are_untouched",
            non_service_untouched,
        ),
        ("connects_spread_over_both_backends", spread),
        (
            "process_outside_the_cgroup_is_not_translated",
            outside_cgroup,
        ),
    ];
    checks
        .into_iter()
        .map(|(name, check)| match fixture {
            Some(f) => {
                let f = f.clone();
                Trial::test(name, move || {
                    check(&f).map_err(|e| Failed::from(format!("{e:#}")))
                })
            }
            // Skipped (the reason was printed once) or only listed.
            None => Trial::test(name, || Ok(())).with_ignored_flag(true),
        })
        .collect()
}

/// Everything one run needs. Fields drop in order: programs and pins first, then the
/// cgroup, the servers and last the namespace.
struct Fixture {
    dp: Mutex<Datapath>,
    cgroup: Cgroup,
    _servers: EchoServers,
    netns: Netns,
}

impl Fixture {
    fn set_up() -> Result<Self> {
        let name = format!("{PREFIX}{}", std::process::id());
        let netns = Netns::create(&name, &["10.250.0.1/24", "10.250.0.2/24"])?;
        let servers = EchoServers::start(&netns, &[BACKEND_A, BACKEND_B])?;
        let cgroup = Cgroup::create(&name)?;
        let mut dp = Datapath::load()?;
        let config = Config {
            hash_seed: 0x5eed,
            node_addr: lb_common::addr_be(*BACKEND_A.ip()),
            ..dp.config()
        };
        dp.set_config(config);
        let backends = [
            (*BACKEND_A.ip(), BACKEND_A.port()),
            (*BACKEND_B.ip(), BACKEND_B.port()),
        ];
        for proto in [TCP, UDP] {
            dp.add_frontend(
                key(SVC, proto, scope::EXTERNAL),
                flags::CLUSTER_IP,
                &backends,
                0,
            );
            dp.add_frontend(
                key(SVC_EMPTY, proto, scope::EXTERNAL),
                flags::CLUSTER_IP,
                &[],
                0,
            );
        }
        dp.add_frontend(
            key(SVC_LOCAL_EMPTY, TCP, scope::EXTERNAL),
            flags::CLUSTER_IP | flags::INTERNAL_LOCAL,
            &[],
            0,
        );
        let lb_local = flags::LOAD_BALANCER | flags::EXTERNAL_LOCAL;
        dp.add_frontend(key(SVC_ETP_LOCAL, TCP, scope::EXTERNAL), lb_local, &[], 0);
        dp.add_frontend(
            key(SVC_ETP_LOCAL, TCP, scope::INTERNAL),
            lb_local,
            &backends[1..],
            0,
        );
        attach_sock_programs(&mut dp, &cgroup)?;
        Ok(Self {
            dp: Mutex::new(dp),
            cgroup,
            _servers: servers,
            netns,
        })
    }

    fn counter(&self, reason: Reason) -> u64 {
        self.dp.lock().unwrap().counter(reason)
    }

    /// Runs the client with `ops` inside the namespace (and the cgroup if `in_cgroup`) and
    /// returns one outcome per op.
    fn client(&self, in_cgroup: bool, ops: &[Op]) -> Result<Vec<Outcome>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(CLIENT_ENV, "1")
            .args(ops.iter().map(Op::arg))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        place(&mut cmd, &self.netns, in_cgroup.then_some(&self.cgroup))?;
        let out = cmd.output().context("running the client")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("client failed ({}): {stdout}", out.status);
        }
        let outcomes: Vec<Outcome> = stdout.lines().map(Outcome::parse).collect::<Result<_>>()?;
        if outcomes.len() != ops.len() {
            bail!(
                "client answered {} of {} ops: {stdout}",
                outcomes.len(),
                ops.len()
            );
        }
        Ok(outcomes)
    }

    fn one(&self, in_cgroup: bool, op: Op) -> Result<Outcome> {
        Ok(self.client(in_cgroup, &[op])?.remove(0))
    }
}

fn key(addr: SocketAddrV4, proto: u8, scope: u8) -> FrontendKey {
    FrontendKey {
        scope,
        ..FrontendKey::new(*addr.ip(), addr.port(), proto)
    }
}

/// One thing the client does with a fresh socket.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// connect(), send, read the reply, getpeername().
    Tcp(SocketAddrV4),
    /// UDP connect(), send, recv, getpeername().
    UdpConnected(SocketAddrV4),
    /// UDP sendto(), recvfrom(): the peer is recvfrom's source.
    UdpUnconnected(SocketAddrV4),
}

impl Op {
    fn arg(&self) -> String {
        match self {
            Op::Tcp(a) => format!("tcp:{a}"),
            Op::UdpConnected(a) => format!("udpc:{a}"),
            Op::UdpUnconnected(a) => format!("udpu:{a}"),
        }
    }
}

/// What one op saw: its peer as the application sees it and the reply (the address of the
/// backend that answered), or the errno of the first call that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok { peer: SocketAddrV4, reply: String },
    Err(i32),
}

impl Outcome {
    fn parse(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["ok", peer, reply] => Ok(Outcome::Ok {
                peer: peer.parse()?,
                reply: reply.to_string(),
            }),
            ["err", errno] => Ok(Outcome::Err(errno.parse()?)),
            _ => bail!("unexpected client output {line:?}"),
        }
    }

    fn expect_ok(self, op: &str) -> Result<(SocketAddrV4, String)> {
        match self {
            Outcome::Ok { peer, reply } => Ok((peer, reply)),
            Outcome::Err(errno) => bail!("{op}: failed with errno {errno}"),
        }
    }
}

fn is_backend(reply: &str) -> bool {
    reply == BACKEND_A.to_string() || reply == BACKEND_B.to_string()
}

fn ensure_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<()> {
    if got != want {
        bail!("{what}: got {got:?}, want {want:?}");
    }
    Ok(())
}

fn tcp_to_service(f: &Fixture) -> Result<()> {
    let before = f.counter(Reason::SockTranslated);
    let (peer, reply) = f.one(true, Op::Tcp(SVC))?.expect_ok("tcp to the service")?;
    ensure_eq("getpeername", peer, SVC)?;
    if !is_backend(&reply) {
        bail!("reply {reply:?} is not from a backend");
    }
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated) - before,
        1,
    )
}

fn connected_udp(f: &Fixture) -> Result<()> {
    let before = f.counter(Reason::SockTranslated);
    let (peer, reply) = f
        .one(true, Op::UdpConnected(SVC))?
        .expect_ok("connected udp to the service")?;
    ensure_eq("getpeername", peer, SVC)?;
    if !is_backend(&reply) {
        bail!("reply {reply:?} is not from a backend");
    }
    // connect() translated; send() on a connected socket carries no address, so sendmsg4
    // does not run again.
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated) - before,
        1,
    )
}

fn unconnected_udp(f: &Fixture) -> Result<()> {
    let before = f.counter(Reason::SockTranslated);
    let (peer, reply) = f
        .one(true, Op::UdpUnconnected(SVC))?
        .expect_ok("sendto the service")?;
    ensure_eq("recvfrom source", peer, SVC)?;
    if !is_backend(&reply) {
        bail!("reply {reply:?} is not from a backend");
    }
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated) - before,
        1,
    )
}

fn no_backends_refused(f: &Fixture) -> Result<()> {
    let before = f.counter(Reason::RejectNoBackend);
    let translated = f.counter(Reason::SockTranslated);
    let ops = [
        Op::Tcp(SVC_EMPTY),
        Op::UdpConnected(SVC_EMPTY),
        Op::UdpUnconnected(SVC_EMPTY),
    ];
    let outcomes = f.client(true, &ops)?;
    for (op, outcome) in ops.iter().zip(outcomes) {
        // bpf_set_retval(-ECONNREFUSED): refused as kube-proxy's REJECT would, not EPERM.
        ensure_eq(&format!("{op:?}"), outcome, Outcome::Err(ECONNREFUSED))?;
    }
    ensure_eq(
        "reject_no_backend",
        f.counter(Reason::RejectNoBackend) - before,
        3,
    )?;
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated),
        translated,
    )
}

fn internal_local_dropped(f: &Fixture) -> Result<()> {
    let before = f.counter(Reason::DropNoLocalBackend);
    // Left untranslated: here that means no route (on a node the connection would time out).
    let outcome = f.one(true, Op::Tcp(SVC_LOCAL_EMPTY))?;
    ensure_eq("tcp to the service", outcome, Outcome::Err(ENETUNREACH))?;
    ensure_eq(
        "drop_no_local_backend",
        f.counter(Reason::DropNoLocalBackend) - before,
        1,
    )
}

fn external_local_twin(f: &Fixture) -> Result<()> {
    let (peer, reply) = f
        .one(true, Op::Tcp(SVC_ETP_LOCAL))?
        .expect_ok("tcp to the externalTrafficPolicy=Local address")?;
    ensure_eq("getpeername", peer, SVC_ETP_LOCAL)?;
    ensure_eq("backend", reply, BACKEND_B.to_string())
}

fn non_service_untouched(f: &Fixture) -> Result<()> {
    let translated = f.counter(Reason::SockTranslated);
    let outcomes = f.client(
        true,
        &[
            Op::Tcp(BACKEND_A),
            Op::UdpUnconnected(BACKEND_B),
            Op::Tcp(NOT_A_SERVICE),
            Op::UdpUnconnected(NOT_A_SERVICE),
        ],
    )?;
    ensure_eq(
        "tcp to a backend directly",
        &outcomes[0],
        &Outcome::Ok {
            peer: BACKEND_A,
            reply: BACKEND_A.to_string(),
        },
    )?;
    ensure_eq(
        "udp to a backend directly",
        &outcomes[1],
        &Outcome::Ok {
            peer: BACKEND_B,
            reply: BACKEND_B.to_string(),
        },
    )?;
    // The kernel's own answer for an unrouted destination, not the programs' refusal.
    ensure_eq(
        "tcp to a non-service",
        &outcomes[2],
        &Outcome::Err(ENETUNREACH),
    )?;
    ensure_eq(
        "udp to a non-service",
        &outcomes[3],
        &Outcome::Err(ENETUNREACH),
    )?;
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated),
        translated,
    )
}

fn spread(f: &Fixture) -> Result<()> {
    const N: usize = 50;
    let before = f.counter(Reason::SockTranslated);
    let outcomes = f.client(true, &[Op::Tcp(SVC); N])?;
    let (mut a, mut b) = (0, 0);
    for outcome in outcomes {
        let (peer, reply) = outcome.expect_ok("tcp to the service")?;
        ensure_eq("getpeername", peer, SVC)?;
        match reply {
            r if r == BACKEND_A.to_string() => a += 1,
            r if r == BACKEND_B.to_string() => b += 1,
            r => bail!("reply {r:?} is not from a backend"),
        }
    }
    if a == 0 || b == 0 {
        bail!("{N} connects hit backend A {a} times and B {b} times");
    }
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated) - before,
        N as u64,
    )
}

fn outside_cgroup(f: &Fixture) -> Result<()> {
    let translated = f.counter(Reason::SockTranslated);
    let outcomes = f.client(false, &[Op::Tcp(SVC), Op::UdpUnconnected(SVC)])?;
    for outcome in outcomes {
        ensure_eq(
            "service from outside the cgroup",
            outcome,
            Outcome::Err(ENETUNREACH),
        )?;
    }
    ensure_eq(
        "sock_translated",
        f.counter(Reason::SockTranslated),
        translated,
    )
}

/// The client side: runs in its own process so that it can sit in the cgroup.
mod client {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);
    const REQUEST: &[u8] = b"hello\n";

    pub fn main() {
        for arg in std::env::args().skip(1) {
            let Some((kind, addr)) = arg.split_once(':') else {
                eprintln!("client: bad op {arg}");
                std::process::exit(2);
            };
            let addr: SocketAddrV4 = addr.parse().expect("op address");
            let result = match kind {
                "tcp" => tcp(addr),
                "udpc" => udp_connected(addr),
                "udpu" => udp_unconnected(addr),
                _ => {
                    eprintln!("client: bad op {arg}");
                    std::process::exit(2);
                }
            };
            match result {
                Ok((peer, reply)) => println!("ok {peer} {}", reply.trim()),
                Err(e) => println!("err {}", e.raw_os_error().unwrap_or(-1)),
            }
        }
    }

    fn v4(addr: std::net::SocketAddr) -> std::io::Result<SocketAddrV4> {
        match addr {
            std::net::SocketAddr::V4(a) => Ok(a),
            other => Err(std::io::Error::other(format!("not IPv4: {other}"))),
        }
    }

    fn tcp(addr: SocketAddrV4) -> std::io::Result<(SocketAddrV4, String)> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let peer = v4(s.peer_addr()?)?;
        s.write_all(REQUEST)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok((peer, reply))
    }

    fn udp_connected(addr: SocketAddrV4) -> std::io::Result<(SocketAddrV4, String)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.connect(addr)?;
        let peer = v4(s.peer_addr()?)?;
        s.send(REQUEST)?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok((peer, String::from_utf8_lossy(&buf[..n]).into_owned()))
    }

    fn udp_unconnected(addr: SocketAddrV4) -> std::io::Result<(SocketAddrV4, String)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send_to(REQUEST, addr)?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((v4(from)?, String::from_utf8_lossy(&buf[..n]).into_owned()))
    }
}
