//! The datapath fuzzer's short run (the long one is `cargo xtask fuzz`): the seed corpus
//! with every truncation of each packet, every regression case, and a fixed-seed run of
//! generated and mutated packets, all through every packet program and checked by the
//! oracle of `lb_ebpf_tests::fuzz`.

use lb_common::Reason;
use lb_ebpf_tests::{
    fuzz::{self, corpus},
    privilege::require_bpf,
};

/// Enough to reach every path below in well under a minute on two cores.
const PACKETS: u64 = 100_000;
const SEED: u64 = 0x1b_f022;

fn assert_clean(report: &fuzz::Report, names: &[(String, Vec<u8>)]) {
    eprintln!("{}", report.summary());
    let found: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            let name = names
                .get(f.packet as usize)
                .map(|n| n.0.as_str())
                .unwrap_or("generated");
            format!("{name} ({}): {}", f.program, f.message)
        })
        .collect();
    assert!(
        found.is_empty() && report.more_findings == 0,
        "the oracle refused {} runs:\n{}",
        found.len() as u64 + report.more_findings,
        found.join("\n")
    );
}

#[test]
fn the_committed_corpus_holds_every_seed() {
    let files = corpus::load(&corpus::dir().join("corpus")).expect("corpus");
    for (name, bytes) in corpus::seeds() {
        let file = format!("{name}.hex");
        let held = files.iter().find(|(n, _)| *n == file);
        assert_eq!(
            held.map(|(_, b)| b),
            Some(&bytes),
            "{file} is missing or stale (cargo xtask fuzz --write-corpus)"
        );
    }
}

#[test]
fn corpus_packets_and_every_truncation_of_them_pass_the_oracle() {
    if !require_bpf("fuzz corpus") {
        return;
    }
    let files = corpus::load(&corpus::dir().join("corpus")).expect("corpus");
    assert!(!files.is_empty(), "no seed corpus");
    let report = fuzz::replay(&files, true).expect("replay");
    assert_clean(&report, &files);
    // Every truncation from the Ethernet header on, through five programs each.
    let lengths: u64 = files.iter().map(|(_, b)| (b.len() - 13) as u64).sum();
    assert_eq!(report.packets, lengths);
}

#[test]
fn regression_cases_pass_the_oracle() {
    if !require_bpf("fuzz regressions") {
        return;
    }
    let files = corpus::load(&corpus::dir().join("regressions")).expect("regressions");
    assert!(!files.is_empty(), "no regression cases");
    let report = fuzz::replay(&files, false).expect("replay");
    assert_clean(&report, &files);
}

#[test]
fn generated_and_mutated_packets_pass_the_oracle() {
    if !require_bpf("fuzz short run") {
        return;
    }
    let packets = std::env::var("LB_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PACKETS);
    let mut opts = fuzz::Options::new(SEED, packets);
    opts.corpus = corpus::load(&corpus::dir().join("corpus"))
        .expect("corpus")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let report = fuzz::run(&opts).expect("fuzz run");
    assert_clean(&report, &[]);
    assert_eq!(report.runs, report.packets * fuzz::PROGRAMS.len() as u64);
    // The run reached the paths it is meant to: a generator that stopped producing one of
    // these would leave it unfuzzed.
    use Reason::*;
    let missing: Vec<&str> = [
        NewFlow,
        EstablishedFlow,
        ReplyTranslated,
        PassMalformed,
        PassFragment,
        PassFragUnknown,
        DropNoBackend,
        DropNoBackendSlot,
        DropBackendMissing,
        RejectNoBackend,
        DropNoLocalBackend,
        DropSourceRange,
        DropSnatExhausted,
        PassNoRoute,
        IcmpErrorTranslated,
        XdpTx,
        PassToTc,
        DropCtFull,
        PortRemapped,
        CtRepaired,
        PassCsumPartial,
        DropTtlExceeded,
        RejectFragNeeded,
        PassMtu,
    ]
    .into_iter()
    .filter(|r| report.count(*r) == 0)
    .map(|r| r.name())
    .collect();
    assert!(missing.is_empty(), "never counted: {missing:?}");
    assert!(
        report.walks >= 2 && report.max_entries > 300,
        "the tables were walked with flows in them"
    );
}
