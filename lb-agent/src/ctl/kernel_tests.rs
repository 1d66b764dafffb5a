//! Root-only tests: real maps pinned in bpffs and filled as the agent and the datapath fill
//! them, then read back through `lbctl`'s commands.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{
        lpm_trie::{Key as TrieKey, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
    },
    EbpfLoader,
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendSlotKey, BackendStats, Config, CtEntry, CtKey,
    Frontend, FrontendKey, ServiceName, SockRevEntry, SockRevKey, SourceRange,
};
use lb_lab::testing::{root_or_skip, PinDir};
use serde_json::Value;

use super::{
    cli::{run, Args, CtlError, Outcome, EXIT_DIFFERENCES, EXIT_OK},
    diff::state_of,
    fixtures::{sample, DNS, NOW},
    http::tests::{ok_json, serve},
    map_id::MapId,
    monotonic_ns,
    snapshot::Snapshot,
};

/// The datapath's maps pinned in a fresh directory: those the eBPF object declares (when
/// one was embedded) with their real types and sizes, and plain stand-ins for any it does
/// not declare yet.
fn pinned_maps(test: &str) -> PinDir {
    let pins = PinDir::new(test);
    if let Some(object) = crate::datapath::loader::EMBEDDED {
        // Creates and pins every map; the programs are not loaded, which this does not need.
        EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .load(object)
            .expect("load the embedded eBPF object");
    }
    for (map, name) in MapId::ALL
        .into_iter()
        .flat_map(|m| m.pinned_names().iter().map(move |n| (m, *n)))
    {
        let path = pins.path().join(name);
        if path.exists() {
            continue;
        }
        let pinned = match map {
            MapId::ServiceNames => {
                HashMap::<MapData, u32, ServiceName>::create(1024, 0).map(|m| m.pin(&path))
            }
            MapId::Frontends => {
                HashMap::<MapData, FrontendKey, Frontend>::create(1024, 0).map(|m| m.pin(&path))
            }
            MapId::Slots => {
                HashMap::<MapData, BackendSlotKey, u32>::create(1024, 0).map(|m| m.pin(&path))
            }
            MapId::Backends => {
                HashMap::<MapData, u32, Backend>::create(1024, 0).map(|m| m.pin(&path))
            }
            MapId::BackendStats => {
                Array::<MapData, BackendStats>::create(1024, 0).map(|m| m.pin(&path))
            }
            // A plain hash stands in for the LRU ones: the same to a reader.
            MapId::Conntrack => {
                HashMap::<MapData, CtKey, CtEntry>::create(1024, 0).map(|m| m.pin(&path))
            }
            MapId::Affinity => HashMap::<MapData, AffinityKey, AffinityEntry>::create(1024, 0)
                .map(|m| m.pin(&path)),
            MapId::Counters => PerCpuArray::<MapData, u64>::create(64, 0).map(|m| m.pin(&path)),
            MapId::Config => Array::<MapData, Config>::create(1, 0).map(|m| m.pin(&path)),
            // LPM tries must be created without preallocation (BPF_F_NO_PREALLOC).
            MapId::SourceRanges => {
                LpmTrie::<MapData, SourceRange, u32>::create(1024, 1).map(|m| m.pin(&path))
            }
            MapId::SockRev => {
                HashMap::<MapData, SockRevKey, SockRevEntry>::create(1024, 0).map(|m| m.pin(&path))
            }
        };
        pinned
            .expect("create map")
            .unwrap_or_else(|e| panic!("pin {}: {e}", path.display()));
    }
    pins
}

fn open<T: TryFrom<Map>>(dir: &Path, map: MapId) -> T
where
    T::Error: std::fmt::Debug,
{
    open_named(dir, map.pinned_names()[0])
}

fn open_named<T: TryFrom<Map>>(dir: &Path, name: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let data = MapData::from_pin(dir.join(name)).expect("open pinned map");
    T::try_from(Map::from_map_data(data).expect("map")).expect("typed map")
}

/// The conntrack table that holds `key`.
fn ct_table(dir: &Path, key: &CtKey) -> HashMap<MapData, CtKey, CtEntry> {
    open_named(dir, lb_common::maps::conntrack_table(key.proto))
}

/// Writes `s` into the pinned maps, its timestamps moved so that "now" in the fixture is
/// now on CLOCK_MONOTONIC. Counters are split over CPUs 0 and 1 (when there are two) to
/// check that lbctl sums them.
fn write(dir: &Path, s: &Snapshot) {
    let shift = monotonic_ns().expect("clock").saturating_sub(NOW);
    let mut names: HashMap<MapData, u32, ServiceName> = open(dir, MapId::ServiceNames);
    for (id, name) in &s.service_names {
        names.insert(id, ServiceName::new(name), 0).expect("insert");
    }
    let mut frontends: HashMap<MapData, FrontendKey, Frontend> = open(dir, MapId::Frontends);
    for (k, v) in &s.frontends {
        frontends.insert(k, v, 0).expect("insert");
    }
    let mut slots: HashMap<MapData, BackendSlotKey, u32> = open(dir, MapId::Slots);
    for (k, v) in &s.slots {
        slots.insert(k, v, 0).expect("insert");
    }
    let mut backends: HashMap<MapData, u32, Backend> = open(dir, MapId::Backends);
    for (k, v) in &s.backends {
        backends.insert(k, v, 0).expect("insert");
    }
    let mut stats: Array<MapData, BackendStats> = open(dir, MapId::BackendStats);
    for (k, v) in &s.backend_stats {
        stats.set(*k, v, 0).expect("set");
    }
    for (k, v) in &s.conntrack {
        let mut e = *v;
        e.created_ns += shift;
        e.last_seen_ns += shift;
        ct_table(dir, k).insert(k, e, 0).expect("insert");
    }
    let mut affinity: HashMap<MapData, AffinityKey, AffinityEntry> = open(dir, MapId::Affinity);
    for (k, v) in &s.affinity {
        let mut e = *v;
        e.last_used_ns += shift;
        affinity.insert(k, e, 0).expect("insert");
    }
    let mut counters: PerCpuArray<MapData, u64> = open(dir, MapId::Counters);
    let cpus = aya::util::nr_cpus().expect("cpus");
    for (i, n) in (0u32..).zip(&s.counters) {
        let mut per_cpu = vec![0u64; cpus];
        per_cpu[0] = n / 2;
        per_cpu[cpus.min(2) - 1] += n - n / 2;
        let values = PerCpuValues::try_from(per_cpu).expect("per-cpu values");
        counters.set(i, values, 0).expect("set");
    }
    let mut config: Array<MapData, Config> = open(dir, MapId::Config);
    config.set(0, s.config.unwrap_or_default(), 0).expect("set");
    let mut ranges: LpmTrie<MapData, SourceRange, u32> = open(dir, MapId::SourceRanges);
    for (len, r) in &s.source_ranges {
        ranges
            .insert(&TrieKey::new(*len, *r), 1, 0)
            .expect("insert");
    }
    let mut socks: HashMap<MapData, SockRevKey, SockRevEntry> = open(dir, MapId::SockRev);
    for (k, v) in &s.sock_rev {
        socks.insert(k, v, 0).expect("insert");
    }
}

fn lbctl(dir: &Path, args: &[&str]) -> Result<Outcome, CtlError> {
    let dir = dir.to_str().expect("utf-8 path");
    let argv = ["lbctl", "--pin-dir", dir]
        .into_iter()
        .chain(args.iter().copied());
    run(<Args as clap::Parser>::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")))
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let outcome = lbctl(dir, args)
        .unwrap_or_else(|e| panic!("lbctl {args:?}: {}", crate::error_chain::error_chain(&e)));
    assert_eq!(outcome.code, EXIT_OK, "lbctl {args:?}: {}", outcome.stdout);
    outcome.stdout
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = ok(dir, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn conntrack_entries(dir: &Path) -> Vec<(CtKey, CtEntry)> {
    lb_common::maps::CONNTRACK
        .iter()
        .flat_map(|name| {
            let ct: HashMap<MapData, CtKey, CtEntry> = open_named(dir, name);
            ct.iter().collect::<Result<Vec<_>, _>>().expect("iterate")
        })
        .collect()
}

#[test]
fn the_dump_reads_every_pinned_map_back() {
    if !root_or_skip("lbctl maps dump on pinned maps") {
        return;
    }
    let pins = pinned_maps("ctl-dump");
    write(pins.path(), &sample());
    let d = json(pins.path(), &["maps", "dump", "-o", "json"]);
    assert_eq!(d["unavailable"], serde_json::json!([]));
    assert_eq!(d["services"][1]["name"], "kube-system/dns:dns");
    assert_eq!(d["frontends"][0]["service"], "default/echo:http");
    assert_eq!(d["frontends"][1]["affinity_timeout_s"], 10800);
    assert_eq!(d["slots"].as_array().map(Vec::len), Some(3));
    assert_eq!(d["backends"][0]["packets"], 12);
    assert_eq!(d["backends"][0]["bytes"], 1536);
    assert_eq!(
        d["backends"][2]["flags"],
        serde_json::json!(["local", "terminating"])
    );
    let ct = d["conntrack"].as_array().expect("conntrack");
    assert_eq!(ct.len(), 3);
    assert_eq!(ct[0]["state"], "ESTABLISHED");
    assert_eq!(ct[1]["direction"], "reply");
    let age = ct[0]["age_s"].as_u64().expect("age");
    assert!((100..=102).contains(&age), "age {age}");
    assert_eq!(d["affinity"][0]["client"], "10.244.2.9");
    assert_eq!(d["affinity"][0]["backend"], "10.244.1.3:53/UDP");
    assert_eq!(d["counters"][0]["packets"], 5);
    assert_eq!(d["counters"][5]["reason"], "drop_no_backend");
    assert_eq!(d["counters"][5]["packets"], 1);
    assert_eq!(d["config"]["hash_seed"], 0x5eed);
    assert_eq!(d["config"]["snat_port_range"], "61000-65535");
    assert_eq!(d["config"]["cluster_cidr"], "10.244.0.0/16");
    assert_eq!(d["source_ranges"], serde_json::json!([]));

    // The table form, one map chosen by alias and by pinned name.
    let t = ok(pins.path(), &["maps", "dump", "--map", "frontends"]);
    assert!(t.starts_with("FRONTENDS (2)\n"), "{t}");
    assert!(
        t.contains("10.96.0.53:53/UDP  external  2        kube-system/dns:dns"),
        "{t}"
    );
    let t = ok(pins.path(), &["maps", "dump", "--map", "LB_CT4_ANY"]);
    assert!(t.starts_with("CONNTRACK (3)\n"), "{t}");
}

#[test]
fn a_missing_map_is_named_and_the_others_are_shown() {
    if !root_or_skip("lbctl with a map missing") {
        return;
    }
    let pins = pinned_maps("ctl-missing");
    write(pins.path(), &sample());
    for map in [MapId::BackendStats, MapId::Affinity, MapId::ServiceNames] {
        std::fs::remove_file(pins.path().join(map.pinned_name())).expect("unpin");
    }
    let t = ok(pins.path(), &["maps", "dump"]);
    assert!(t.contains("FRONTENDS (2)"), "{t}");
    assert!(
        t.contains("AFFINITY\n  unavailable: LB_AFFINITY: not pinned"),
        "{t}"
    );
    assert!(t.contains("note: LB_BE_STATS: not pinned"), "{t}");
    let d = json(pins.path(), &["maps", "dump", "-o", "json"]);
    let missing: Vec<&str> = d["unavailable"]
        .as_array()
        .expect("unavailable")
        .iter()
        .filter_map(|u| u["map"].as_str())
        .collect();
    assert_eq!(missing, ["LB_SVC_NAMES", "LB_BE_STATS", "LB_AFFINITY"]);
    assert_eq!(d["backends"][0]["packets"], Value::Null);

    let services = ok(pins.path(), &["services"]);
    assert!(
        services.starts_with("(no name recorded)\n  port svc#1\n"),
        "{services}"
    );
    assert!(
        services.contains("note: LB_BE_STATS: not pinned"),
        "{services}"
    );

    // A view that cannot work without a map says which one.
    std::fs::remove_file(pins.path().join(MapId::Counters.pinned_name())).expect("unpin");
    let e = lbctl(pins.path(), &["stats"]).unwrap_err().to_string();
    assert!(
        e.starts_with("LB_COUNTERS is needed here but cannot be read: not pinned"),
        "{e}"
    );
}

#[test]
fn a_pin_dir_without_an_agent_says_so() {
    if !root_or_skip("lbctl without pinned maps") {
        return;
    }
    let e = lbctl(Path::new("/sys/fs/bpf/lb-no-such-dir"), &["services"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pin directory /sys/fs/bpf/lb-no-such-dir does not exist: lb-agent may not be running, or runs with another --pin-dir"
    );
}

#[test]
fn services_show_each_backend_s_traffic() {
    if !root_or_skip("lbctl services on pinned maps") {
        return;
    }
    let pins = pinned_maps("ctl-services");
    write(pins.path(), &sample());
    let out = ok(pins.path(), &["services"]);
    assert_eq!(
        out,
        super::services::render(&super::services::view(&sample()), false)
    );
    let v = json(pins.path(), &["services", "-o", "json"]);
    assert_eq!(
        v["services"][0]["ports"][0]["backend_sets"][0]["backends"][0]["packets"],
        12
    );
}

#[test]
fn conntrack_flush_removes_both_entries_of_each_flow() {
    if !root_or_skip("lbctl conntrack flush on pinned maps") {
        return;
    }
    let pins = pinned_maps("ctl-flush");
    write(pins.path(), &sample());
    let listed = json(
        pins.path(),
        &[
            "conntrack",
            "list",
            "--backend",
            "10.244.1.3:53",
            "-o",
            "json",
        ],
    );
    assert_eq!(listed["flows"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["flows"][0]["client"], "10.244.2.9");

    let out = ok(
        pins.path(),
        &["conntrack", "flush", "--service", "default/echo:http"],
    );
    assert_eq!(out, "flushed 1 flow (2 conntrack entries)\n");
    let left = conntrack_entries(pins.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1.service_id, DNS);

    let report = json(pins.path(), &["conntrack", "flush", "-o", "json"]);
    assert_eq!(report, serde_json::json!({"flows": 1, "entries": 1}));
    assert!(conntrack_entries(pins.path()).is_empty());
    assert_eq!(
        ok(pins.path(), &["conntrack", "flush"]),
        "flushed 0 flows (0 conntrack entries)\n"
    );
}

#[test]
fn stats_sum_counters_over_cpus() {
    if !root_or_skip("lbctl stats on pinned maps") {
        return;
    }
    let pins = pinned_maps("ctl-stats");
    let mut s = sample();
    s.counters = vec![5_001, 0, 4, 0, 0, 3];
    write(pins.path(), &s);
    let out = ok(pins.path(), &["stats"]);
    assert!(
        out.contains("translated               5,005\n  new_flow               5,001\n"),
        "{out}"
    );
    assert!(
        out.contains("dropped                  3\n  drop_no_backend        3\n"),
        "{out}"
    );
    assert!(out.starts_with("ATTACHMENTS\n"), "{out}");
    let j = json(pins.path(), &["stats", "-o", "json"]);
    assert_eq!(j["groups"][2]["kind"], "rejected");
    assert_eq!(j["groups"][3]["kind"], "dropped");
    assert_eq!(j["groups"][3]["packets"], 3);
    assert_eq!(j["attachments"]["socket_programs"], 0);
}

#[test]
fn diff_compares_the_agent_s_state_with_the_pinned_maps() {
    if !root_or_skip("lbctl diff on pinned maps") {
        return;
    }
    let pins = pinned_maps("ctl-diff");
    write(pins.path(), &sample());
    let state = state_of(&sample());

    let url = serve(ok_json(&serde_json::to_string(&state).expect("json")));
    let same = lbctl(pins.path(), &["diff", "--agent", &format!("{url}/state")]).expect("diff");
    assert_eq!(
        same,
        Outcome {
            stdout: "no differences: the maps hold the agent's 2 frontends and 3 backends\n".into(),
            code: EXIT_OK
        }
    );

    // The agent wants one more echo backend than the maps hold.
    let mut more = state.clone();
    let mut extra = more.frontends[0].backends[0].clone();
    extra.address = Ipv4Addr::new(10, 244, 3, 7);
    more.frontends[0].backends.push(extra);
    let url = serve(ok_json(&serde_json::to_string(&more).expect("json")));
    let differs = lbctl(pins.path(), &["diff", "--agent", &url]).expect("diff");
    assert_eq!(differs.code, EXIT_DIFFERENCES);
    assert_eq!(
        differs.stdout,
        "\
10.96.0.10:80/TCP: backend count 2, the agent wants 3 backends
10.96.0.10:80/TCP: backend 10.244.3.7:8080/TCP missing
2 differences between the agent's desired state and the maps
"
    );

    // Nobody listens: the error says the agent is unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let e = lbctl(
        pins.path(),
        &["diff", "--agent", &format!("http://{closed}/state")],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot get the agent's desired state from http://127.0.0.1:"),
        "{e}"
    );
    assert!(
        crate::error_chain::error_chain(&e).contains("is lb-agent running"),
        "{e}"
    );
}
