//! The seed corpus and the regression cases: one packet per file under
//! `lb-ebpf-tests/fuzz/{corpus,regressions}/`, as hex (whitespace ignored) after `#`
//! comment lines that say what it is or what it found.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lb_common::proto::{TCP, UDP};

use super::{
    gen::{self, Ip, Spec, L4, V4},
    node, Finding,
};
use crate::testnet::{self, HOST, LOCAL_POD, NODE, REMOTE_POD};

/// `lb-ebpf-tests/fuzz`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses a packet file: `#` lines are comments, the rest is hex.
pub fn parse(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    anyhow::ensure!(digits.len().is_multiple_of(2), "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).context("not hex"))
        .collect()
}

/// Every `*.hex` file of `dir`, sorted by name.
pub fn load(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "hex") {
            let text = std::fs::read_to_string(&path)?;
            let bytes = parse(&text).with_context(|| format!("{}", path.display()))?;
            out.push((
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a finding as a regression case named after its packet's hash; returns the path.
pub fn save_finding(dir: &Path, f: &Finding, seed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let hash = f.input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}.hex"));
    let text = format!(
        "# found by `cargo xtask fuzz --seed {seed:#x}`, packet {}\n# {}: {} (verdict {}, reasons {:?})\n{}\n",
        f.packet,
        f.program,
        f.message.replace('\n', " "),
        f.retval,
        f.reasons,
        hex(&f.input)
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> V4 {
    V4 {
        src,
        dst,
        ttl: 64,
        id: 0x1234,
        df: true,
        fragment: None,
        options: Vec::new(),
    }
}

fn frame(ip: V4, l4: L4) -> Vec<u8> {
    gen::build(&Spec {
        dst_mac: testnet::UPLINK_MAC,
        src_mac: testnet::HOST_MAC,
        vlan: None,
        ip: Ip::V4(ip),
        l4,
    })
    .0
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> L4 {
    L4::Tcp {
        sport: src.port(),
        dport: dst.port(),
        flags,
        options: Vec::new(),
        payload: Vec::new(),
    }
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> L4 {
    L4::Udp {
        sport: src.port(),
        dport: dst.port(),
        payload: payload.to_vec(),
        no_checksum: false,
    }
}

/// The seed corpus: one packet per path of the datapath, against the fuzzer's node
/// ([`node`]): its flows' first client ports, its frontends, its masquerade address.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pod = sa(LOCAL_POD, 40000);
    let vip = sa(node::VIP, 80);
    let host = sa(HOST, 61100);
    let np = sa(NODE, 30080);
    let ts = {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&7u32.to_be_bytes());
        o.extend_from_slice(&[0, 0, 0, 1]);
        o
    };
    let mut out = vec![
        (
            "clusterip-syn",
            frame(v4(*pod.ip(), *vip.ip()), tcp(pod, vip, 0x02)),
        ),
        (
            "clusterip-ack",
            frame(v4(*pod.ip(), *vip.ip()), tcp(pod, vip, 0x10)),
        ),
        (
            "clusterip-fin-timestamp",
            frame(
                v4(*pod.ip(), *vip.ip()),
                L4::Tcp {
                    sport: pod.port(),
                    dport: vip.port(),
                    flags: 0x11,
                    options: ts,
                    payload: b"bye".to_vec(),
                },
            ),
        ),
        (
            "clusterip-udp",
            frame(
                v4(node::LOCAL_POD2, node::VIP),
                udp(sa(node::LOCAL_POD2, 41000), sa(node::VIP, 53), b"query"),
            ),
        ),
        (
            "nodeport-syn",
            frame(v4(*host.ip(), *np.ip()), tcp(host, np, 0x02)),
        ),
        (
            "nodeport-reply",
            frame(v4(REMOTE_POD, NODE), tcp(sa(REMOTE_POD, 8080), host, 0x12)),
        ),
        (
            "nodeport-udp",
            frame(
                v4(HOST, NODE),
                udp(sa(HOST, 61200), sa(NODE, 30081), b"ping"),
            ),
        ),
        (
            "nodeport-local-external",
            frame(
                v4(node::STRANGER, NODE),
                tcp(sa(node::STRANGER, 43000), sa(NODE, 30082), 0x02),
            ),
        ),
        (
            "hostnetwork-reply",
            frame(v4(NODE, HOST), tcp(sa(NODE, 10250), sa(HOST, 45000), 0x12)),
        ),
        (
            "reject-no-endpoints",
            frame(
                v4(LOCAL_POD, node::VIP_EMPTY),
                tcp(sa(LOCAL_POD, 47000), sa(node::VIP_EMPTY, 80), 0x02),
            ),
        ),
        (
            "drop-source-range",
            frame(
                v4(node::FAR, node::LB_RANGES),
                tcp(sa(node::FAR, 47001), sa(node::LB_RANGES, 80), 0x02),
            ),
        ),
        (
            "drop-backend-missing",
            frame(
                v4(LOCAL_POD, node::VIP_BROKEN),
                tcp(sa(LOCAL_POD, 47002), sa(node::VIP_BROKEN, 80), 0x02),
            ),
        ),
        (
            "external-ip-udp",
            frame(
                v4(node::FAR, node::EXTERNAL_IP),
                udp(sa(node::FAR, 61400), sa(node::EXTERNAL_IP, 8080), b"x"),
            ),
        ),
        (
            "frag-needed",
            frame(
                v4(HOST, NODE),
                L4::Udp {
                    sport: 61201,
                    dport: 30081,
                    payload: vec![0x5a; 1600],
                    no_checksum: false,
                },
            ),
        ),
    ];
    // IP options, fragments, TTL 1, VLAN.
    let mut opts = v4(*pod.ip(), *vip.ip());
    opts.options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    out.push(("ip-options", frame(opts, tcp(pod, vip, 0x10))));
    let mut first = v4(HOST, NODE);
    first.df = false;
    first.fragment = Some((0, true));
    let big = |n| L4::Udp {
        sport: 61200,
        dport: 30081,
        payload: vec![0x33; n],
        no_checksum: false,
    };
    out.push(("fragment-first", frame(first.clone(), big(200))));
    let mut later = first;
    later.fragment = Some((13, false));
    out.push(("fragment-later", frame(later, big(200))));
    let mut ttl = v4(*host.ip(), *np.ip());
    ttl.ttl = 1;
    out.push(("ttl-one", frame(ttl, tcp(host, np, 0x10))));
    let mut tagged = frame(v4(*pod.ip(), *vip.ip()), tcp(pod, vip, 0x02));
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    out.push(("vlan-tagged", tagged));
    // ICMP errors: about a forward packet as the backend saw it, about a reply as the
    // client saw it, and about nothing.
    let icmp = |from: Ipv4Addr, to: Ipv4Addr, proto: u8, qs: SocketAddrV4, qd: SocketAddrV4| {
        let mut rest = [0u8; 4];
        rest[2..].copy_from_slice(&1400u16.to_be_bytes());
        frame(
            v4(from, to),
            L4::Icmp {
                kind: 3,
                code: 4,
                rest,
                body: gen::quote(proto, qs, qd, 0x10),
            },
        )
    };
    out.push((
        "icmp-about-forward",
        icmp(REMOTE_POD, NODE, TCP, sa(NODE, 61100), sa(REMOTE_POD, 8080)),
    ));
    out.push((
        "icmp-about-reply",
        icmp(Ipv4Addr::new(172, 18, 0, 254), NODE, TCP, np, host),
    ));
    out.push((
        "icmp-about-pod-flow",
        icmp(
            REMOTE_POD,
            LOCAL_POD,
            UDP,
            sa(node::LOCAL_POD2, 41000),
            sa(REMOTE_POD, 53),
        ),
    ));
    out.push((
        "icmp-bogus",
        icmp(
            Ipv4Addr::new(192, 0, 2, 1),
            HOST,
            UDP,
            sa(HOST, 1),
            sa(Ipv4Addr::new(192, 0, 2, 9), 2),
        ),
    ));
    let mut arp = testnet::UPLINK_MAC.to_vec();
    arp.extend_from_slice(&testnet::HOST_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 18]);
    out.push(("arp", arp));
    out
}

/// Writes [`seeds`] into `dir` (what `cargo xtask fuzz --write-corpus` does).
pub fn write_seeds(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let seeds = seeds();
    for (name, bytes) in &seeds {
        std::fs::write(
            dir.join(format!("{name}.hex")),
            format!("# seed: {name}\n{}\n", hex(bytes)),
        )?;
    }
    Ok(seeds.len())
}
