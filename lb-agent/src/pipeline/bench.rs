//! Scale measurements (ignored by default; run them in release):
//! `cargo test -p lb-agent --release --lib pipeline::bench -- --ignored --nocapture`.
//! They print the full-sync time for 10k services × 10 endpoints, and the latency of single
//! endpoint changes with that many services loaded, against the in-memory maps and, as
//! root, against real BPF maps.

use std::time::{Duration, Instant};

use super::*;
use crate::{
    datapath::maps::{aya::AyaMaps, memory::MemoryMaps},
    fixtures::{service, slice},
    model::{parse_service, parse_slice},
    source::Change,
};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, 1 + i % 250)
}

fn endpoint(i: usize, j: usize) -> String {
    let n = i * ENDPOINTS + j;
    format!("10.{}.{}.{}", 64 + n / 62_500, (n / 250) % 250, 1 + n % 250)
}

fn slice_of(i: usize, extra: usize) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut s =
        slice("bench", &format!("svc-{i}-1"), &format!("svc-{i}")).port("http", 8080, "TCP");
    for j in 0..ENDPOINTS + extra {
        s = s.ready(&endpoint(i, j));
    }
    s.build()
}

/// Loads the store with 10k × 10 in one snapshot; returns the pipeline after its full sync.
fn loaded<M: DatapathMaps>(maps: M) -> (Pipeline<M>, Duration) {
    let mut p = Pipeline::new(
        Syncer::new(maps),
        PipelineConfig {
            node_name: "node-a".into(),
            overrides: Default::default(),
            expect_node: false,
            datapath: Default::default(),
        },
        Metrics::new(None),
        Arc::new(Health::new(Duration::from_secs(60))),
    );
    let services = (0..SERVICES)
        .map(|i| {
            parse_service(
                &service("bench", &format!("svc-{i}"), &cluster_ip(i))
                    .port("http", 80, "TCP")
                    .build(),
            )
        })
        .collect();
    let slices = (0..SERVICES)
        .map(|i| parse_slice(&slice_of(i, 0), "node-a"))
        .collect();
    p.apply(SourceEvent::now(Update::snapshot(
        Change::Replace(services),
        Change::Replace(slices),
    )));
    let started = Instant::now();
    let r = p.sync().expect("full sync").expect("synced");
    let took = started.elapsed();
    assert_eq!(r.frontends, SERVICES);
    assert_eq!(r.backends, SERVICES * ENDPOINTS);
    (p, took)
}

/// p50 and p99 of `n` single-endpoint changes, event to end of writes.
fn endpoint_changes<M: DatapathMaps>(p: &mut Pipeline<M>, n: usize) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let i = (k / 2 * 7919) % SERVICES;
        // Add an 11th endpoint to a service, then take it away again.
        let extra = usize::from(k % 2 == 0);
        let event = SourceEvent::now(Update::Slices(Change::Apply(parse_slice(
            &slice_of(i, extra),
            "node-a",
        ))));
        let received = event.received;
        p.apply(event);
        let r = p.sync().expect("sync").expect("synced");
        assert_eq!(r.mode, SyncMode::Incremental);
        samples.push(r.written_at - received);
    }
    samples.sort();
    (samples[n / 2], samples[n * 99 / 100])
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn scale_against_memory_maps() {
    let before = rss_kib();
    let (mut p, full) = loaded(MemoryMaps::default());
    let after = rss_kib();
    let (p50, p99) = endpoint_changes(&mut p, 2000);
    println!(
        "memory maps: full sync of {SERVICES} services x {ENDPOINTS} endpoints in {full:?}; \
         one endpoint change p50 {p50:?} p99 {p99:?}; RSS {before} KiB -> {after} KiB \
         (the in-memory maps themselves are part of it)"
    );
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture (root)"]
fn scale_against_kernel_maps() {
    use crate::{
        datapath::loader::{self, BpfLogLevel, Object},
        testing::{require_object, require_root, PinDir},
    };
    if !require_root("a benchmark on real BPF maps") || !require_object() {
        return;
    }
    let pins = PinDir::new("bench-scale");
    let mut ebpf =
        loader::load(&Object::Embedded, pins.path(), BpfLogLevel::Off, &[]).expect("load");
    let maps = AyaMaps::from_ebpf(&mut ebpf).expect("maps");
    let before = rss_kib();
    let (mut p, full) = loaded(maps);
    let after = rss_kib();
    let (p50, p99) = endpoint_changes(&mut p, 2000);
    // A full resync with nothing to change: the cost of reading every map.
    p.request_full_resync();
    let started = Instant::now();
    let r = p.sync().expect("resync").expect("synced");
    let resync = started.elapsed();
    assert_eq!(r.writes, 0);
    println!(
        "kernel maps: full sync of {SERVICES} services x {ENDPOINTS} endpoints in {full:?}; \
         one endpoint change p50 {p50:?} p99 {p99:?}; no-op full resync {resync:?}; \
         RSS {before} KiB -> {after} KiB"
    );
}
