//! `deploy/grafana/lb.json` queries only what the agent exports: the exported names come
//! from rendering the agent's own registry with every source present, not from a list.

use std::{collections::BTreeSet, time::Duration};

use super::metrics::{DatapathStats, Metrics, ResourceLabels, SkipLabels};
use crate::sync::{
    conntrack_gc::{PassReport, TableReport},
    programmed::MapCounts,
    SyncMode,
};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/lb.json");

/// A datapath whose every map and counter reads, so that the scrape-time families render.
#[derive(Debug)]
struct EveryMap;

impl DatapathStats for EveryMap {
    fn counters(&self) -> Result<Vec<u64>, String> {
        Ok(vec![0; lb_common::Reason::ALL.len()])
    }

    fn conntrack_entries(&self) -> Vec<(&'static str, u64)> {
        vec![(lb_common::maps::CONNTRACK_TCP, 0)]
    }

    fn max_entries(&self) -> Vec<(&'static str, u64)> {
        vec![(lb_common::maps::CONNTRACK_TCP, 1)]
    }
}

/// Every series name the agent's exposition can carry: each `# TYPE` family, with
/// `_total` for counters and `_bucket`, `_sum`, `_count` for histograms. A labelled family
/// renders only once it has a child, so each gets one, as a running agent's do.
fn exported_series() -> BTreeSet<String> {
    let m = Metrics::new(Some(Box::new(EveryMap)));
    m.set_xdp_mode("native");
    m.invalid_objects
        .get_or_create(&SkipLabels {
            kind: "Service",
            reason: "bad_port",
        })
        .inc();
    m.watch_errors
        .get_or_create(&ResourceLabels {
            resource: "services",
        })
        .inc();
    m.conntrack_gc.record(&PassReport {
        tables: vec![TableReport {
            name: lb_common::maps::CONNTRACK_TCP,
            max_entries: 1,
            finished: true,
            entries: Some(0),
            ..Default::default()
        }],
        duration: Duration::ZERO,
        cpu: Duration::ZERO,
        round_complete: true,
    });
    m.sync_done(
        SyncMode::Full,
        Duration::ZERO,
        Some(MapCounts {
            frontends: 0,
            slots: 0,
            backends: 0,
        }),
    );
    let text = m.encode().expect("encode");
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// The metric names a PromQL expression uses: identifiers starting with `lb_` outside
/// string literals (label names and functions never start so).
fn metric_names(expr: &str) -> Vec<String> {
    let mut code = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                code.push(' ');
            }
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                code.push(' ');
            }
            None => code.push(c),
        }
    }
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("lb_"))
        .map(str::to_owned)
        .collect()
}

/// Every query of the dashboard: panel targets (also in rows) and template variables.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// What is wrong with `exprs` against `exported`: queries without a metric, and unknown
/// metrics.
fn problems(exprs: &[String], exported: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for e in exprs {
        let names = metric_names(e);
        if names.is_empty() {
            out.push(format!("names no lb_ metric: {e}"));
        }
        for n in names {
            if !exported.contains(&n) {
                out.push(format!("{n} is not exported by the agent (in {e})"));
            }
        }
    }
    out
}

#[test]
fn every_dashboard_query_names_a_metric_the_agent_exports() {
    let text = std::fs::read_to_string(DASHBOARD).expect("reading deploy/grafana/lb.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs = queries(&dashboard);
    assert!(exprs.len() > 10, "{exprs:?}");
    let exported = exported_series();
    let problems = problems(&exprs, &exported);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The issue's five views are there.
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "lb_network_programming_duration_seconds_bucket",
        "lb_sync_proxy_rules_duration_seconds_bucket",
        "lb_datapath_packets_total",
        "lb_map_entries",
        "lb_map_max_entries",
        "lb_conntrack_gc_deleted_total",
        "lb_conntrack_gc_duration_seconds_bucket",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("lb_datapath_packets_total{kind=~\"dropped")),
        "no drops-by-reason query"
    );
}

#[test]
fn the_check_finds_unknown_metrics_and_reads_around_strings() {
    let exported = exported_series();
    assert!(exported.contains("lb_datapath_packets_total"));
    assert!(exported.contains("lb_conntrack_gc_duration_seconds_count"));
    assert!(exported.contains("lb_map_max_entries"));
    // A counter's family name without _total is not a series.
    assert!(!exported.contains("lb_conntrack_gc_runs"));
    assert_eq!(
        metric_names(r#"sum by (le) (rate(lb_x_bucket{map="lb_not_a_metric"}[5m])) / lb_y"#),
        ["lb_x_bucket", "lb_y"]
    );
    let bad = problems(
        &[
            "rate(lb_sync_proxy_rules_total[5m])".into(),
            "rate(lb_nope_total[5m])".into(),
            "vector(1)".into(),
        ],
        &exported,
    );
    assert_eq!(
        bad,
        [
            "lb_nope_total is not exported by the agent (in rate(lb_nope_total[5m]))",
            "names no lb_ metric: vector(1)"
        ]
    );
}
