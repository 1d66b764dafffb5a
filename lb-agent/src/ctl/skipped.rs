//! `lbctl services --skipped`: what the agent leaves out and why. The maps cannot say (what
//! is not programmed is not there), so this asks the agent's `/state` ([`super::desired`]),
//! whose `skipped` list holds the model's own reasons ([`crate::model::SkipReason`]).

use serde::Serialize;

use super::{services::ServiceFilter, table::Table};
use crate::serve::report::{SkippedReport, State};

/// `lbctl services --skipped -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedView {
    /// The node the agent runs on.
    pub node: String,
    /// False until the agent's first full sync: the list may then be incomplete.
    pub synced: bool,
    pub skipped: Vec<SkippedReport>,
}

/// The agent's list; with `filter`, only the Service's own entries (its ports, its address
/// conflicts): an EndpointSlice's name does not say whose it is.
pub fn view(state: &State, filter: Option<&ServiceFilter>) -> SkippedView {
    let wanted = |s: &SkippedReport| match filter {
        None => true,
        Some(f) => {
            let object = format!("Service {}", f.service);
            let rest = match s.object.strip_prefix(&object) {
                Some(rest) if s.kind == "Service" => rest,
                _ => return false,
            };
            match &f.port {
                None => rest.is_empty() || rest.starts_with(' '),
                Some(port) => rest == format!(" port {port}") || rest.is_empty(),
            }
        }
    };
    SkippedView {
        node: state.node.name.clone(),
        synced: state.synced,
        skipped: state
            .skipped
            .iter()
            .filter(|s| wanted(s))
            .cloned()
            .collect(),
    }
}

/// ```text
/// OBJECT                               REASON    WHY
/// Service default/bad-port port huge   bad_port  port 70000 is outside 1..=65535
/// 1 left out on worker: 1 invalid (counted in lb_invalid_objects_total), 0 by design
/// ```
///
/// `wide` adds the kind and whether it is by design.
pub fn render(view: &SkippedView, wide: bool) -> String {
    let mut headers = vec!["OBJECT", "REASON", "WHY"];
    if wide {
        headers.extend(["KIND", "BY-DESIGN"]);
    }
    let mut t = Table::new(&headers);
    for s in &view.skipped {
        let mut row = vec![s.object.clone(), s.reason.clone(), s.message.clone()];
        if wide {
            row.extend([
                s.kind.clone(),
                if s.by_design { "yes" } else { "no" }.into(),
            ]);
        }
        t.row(row);
    }
    let by_design = view.skipped.iter().filter(|s| s.by_design).count();
    let mut out = if view.skipped.is_empty() {
        format!("Nothing left out on {}.\n", view.node)
    } else {
        format!(
            "{t}{} left out on {}: {} invalid (counted in lb_invalid_objects_total), {by_design} by design\n",
            view.skipped.len(),
            view.node,
            view.skipped.len() - by_design,
        )
    };
    if !view.synced {
        out.push_str(
            "note: the agent has not finished its first sync; the list may be incomplete\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ctl::diff::state_of,
        ctl::fixtures::sample,
        model::{ObjectKind, SkipReason, Skipped},
    };

    fn state() -> State {
        let mut state = state_of(&sample());
        state.node.name = "worker".into();
        state.skipped = [
            (
                "Service default/bad-port port huge",
                SkipReason::BadPort(70000),
            ),
            ("Service default/web-db", SkipReason::Headless),
            (
                "Service default/webby port http",
                SkipReason::DuplicateFrontend("default/echo:http".into()),
            ),
        ]
        .into_iter()
        .map(|(object, reason)| {
            SkippedReport::from(&Skipped {
                object: object.into(),
                kind: ObjectKind::Service,
                reason,
            })
        })
        .chain([SkippedReport::from(&Skipped {
            object: "EndpointSlice default/bad-port-1 endpoint 2".into(),
            kind: ObjectKind::EndpointSlice,
            reason: SkipReason::BadAddress {
                field: "addresses",
                value: "x".into(),
            },
        })])
        .collect();
        state
    }

    #[test]
    fn the_agents_list_is_shown_with_its_reasons() {
        let out = render(&view(&state(), None), false);
        let expected = "\
OBJECT                                       REASON              WHY
Service default/bad-port port huge           bad_port            port 70000 is outside 1..=65535
Service default/web-db                       headless            headless (clusterIP None): no virtual address to serve
Service default/webby port http              duplicate_frontend  address already served for default/echo:http
EndpointSlice default/bad-port-1 endpoint 2  bad_address         addresses \"x\" is not an IP address
4 left out on worker: 3 invalid (counted in lb_invalid_objects_total), 1 by design
";
        assert_eq!(out, expected);
    }

    #[test]
    fn the_service_filter_keeps_that_services_entries_only() {
        let objects = |f: &str| -> Vec<String> {
            view(&state(), Some(&f.parse().expect("filter")))
                .skipped
                .into_iter()
                .map(|s| s.object)
                .collect()
        };
        assert_eq!(
            objects("default/bad-port"),
            ["Service default/bad-port port huge"]
        );
        assert_eq!(
            objects("default/bad-port:huge"),
            ["Service default/bad-port port huge"]
        );
        assert!(objects("default/bad-port:other").is_empty());
        // Whole names only: default/web is neither web-db nor webby.
        assert!(objects("default/web").is_empty());
        assert_eq!(objects("default/web-db"), ["Service default/web-db"]);
    }

    #[test]
    fn wide_json_and_an_unsynced_agent() {
        let mut s = state();
        s.synced = false;
        let v = view(&s, None);
        let out = render(&v, true);
        assert!(out.contains("  KIND  "), "{out}");
        assert!(out.contains("  Service        yes\n"), "{out}");
        assert!(
            out.ends_with(
                "note: the agent has not finished its first sync; the list may be incomplete\n"
            ),
            "{out}"
        );
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(json["skipped"][0]["reason"], "bad_port");
        assert_eq!(json["skipped"][1]["byDesign"], true);
        s.skipped.clear();
        s.synced = true;
        assert_eq!(
            render(&view(&s, None), false),
            "Nothing left out on worker.\n"
        );
    }
}
