//! `lbctl stats`: packets by reason, summed over CPUs, grouped into translated, passed,
//! rejected and dropped; with where the programs are attached.

use serde::Serialize;

use super::{
    dump::{counters, CounterRecord},
    format::grouped,
    table::Table,
};

/// `lbctl stats -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `translated`, `passed`, `rejected`, `dropped`, then `unknown` if a newer datapath
    /// counts reasons this lbctl does not know.
    pub groups: Vec<Group>,
    /// Where the programs are attached; `None` when not read (tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<super::attachments::Attachments>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub kind: &'static str,
    /// Sum of the group's reasons.
    pub packets: u64,
    pub reasons: Vec<ReasonCount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

const KINDS: [&str; 5] = ["translated", "passed", "rejected", "dropped", "unknown"];

/// Groups the counters (per reason index, summed over CPUs) by kind; every known reason is
/// listed, zero or not, so the full list of what can happen is visible.
pub fn stats(values: &[u64]) -> Stats {
    let records = counters(values);
    let groups = KINDS
        .iter()
        .filter_map(|kind| {
            let reasons: Vec<&CounterRecord> = records.iter().filter(|r| r.kind == *kind).collect();
            (!reasons.is_empty()).then(|| Group {
                kind,
                packets: reasons
                    .iter()
                    .fold(0u64, |sum, r| sum.saturating_add(r.packets)),
                reasons: reasons
                    .iter()
                    .map(|r| ReasonCount {
                        reason: r.reason.clone(),
                        packets: r.packets,
                    })
                    .collect(),
            })
        })
        .collect();
    Stats {
        groups,
        attachments: None,
    }
}

/// One table: a total line per kind, its reasons indented under it.
///
/// ```text
/// KIND / REASON           PACKETS
/// translated              9
///   new_flow              5
/// ```
pub fn render(stats: &Stats) -> String {
    let mut t = Table::new(&["KIND / REASON", "PACKETS"]);
    for g in &stats.groups {
        t.row(vec![g.kind.to_owned(), grouped(g.packets)]);
        for r in &g.reasons {
            t.row(vec![format!("  {}", r.reason), grouped(r.packets)]);
        }
    }
    let counters = t.aligned_lines().join("\n") + "\n";
    match &stats.attachments {
        Some(a) => format!("{}\n{counters}", super::attachments::render(a)),
        None => counters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_grouped_by_kind_with_totals() {
        let s = stats(&[5_000, 0, 4, 0, 0, 1, 0, 0, 0, 0, 2]);
        let expected = "\
KIND / REASON            PACKETS
translated               5,004
  new_flow               5,000
  established_flow       0
  reply_translated       4
  icmp_error_translated  0
  xdp_tx                 0
  sock_translated        0
  xdp_redirect           0
  port_remapped          0
  ct_repaired            0
passed                   0
  pass_malformed         0
  pass_fragment          0
  pass_no_route          0
  pass_to_tc             0
  pass_csum_partial      0
  pass_frag_unknown      0
  pass_mtu               0
rejected                 2
  reject_no_backend      2
  reject_frag_needed     0
dropped                  1
  drop_no_backend        1
  drop_no_backend_slot   0
  drop_backend_missing   0
  drop_ct_insert         0
  drop_rewrite           0
  drop_no_local_backend  0
  drop_source_range      0
  drop_snat_exhausted    0
  drop_ct_full           0
  drop_ttl_exceeded      0
";
        assert_eq!(render(&s), expected);
    }

    #[test]
    fn counters_this_lbctl_does_not_know_get_their_own_group() {
        let index = lb_common::Reason::COUNT as usize + 1;
        let mut values = vec![0; index + 1];
        values[index] = 7;
        let s = stats(&values);
        let unknown = s.groups.last().expect("a group");
        assert_eq!(unknown.kind, "unknown");
        assert_eq!(unknown.reasons[0].reason, format!("reason_{index}"));
        assert_eq!(unknown.packets, 7);
    }

    #[test]
    fn json_groups_are_stable() {
        let json = serde_json::to_value(stats(&[1, 2, 3])).expect("json");
        assert_eq!(json["groups"][0]["kind"], "translated");
        assert_eq!(json["groups"][0]["packets"], 6);
        assert_eq!(
            json["groups"][0]["reasons"][1],
            serde_json::json!({"reason": "established_flow", "packets": 2})
        );
        // Every kind has reasons: translated, passed, rejected, dropped.
        assert_eq!(json["groups"].as_array().map(Vec::len), Some(4));
        assert_eq!(json["groups"][2]["kind"], "rejected");
        assert!(json.get("attachments").is_none());
    }
}
