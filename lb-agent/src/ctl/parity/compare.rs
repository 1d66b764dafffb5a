//! kube-proxy's [`View`] against lb's, frontend by frontend, reported per service port.
//!
//! Compared for each frontend: that both sides have it, its kind (where both know it), the
//! endpoints and their shares, the traffic policy, the endpoints in-cluster clients get
//! under externalTrafficPolicy=Local, the affinity timeout, the source ranges and the
//! masquerade. Affinity and masquerade are not compared where neither side has an
//! endpoint: nothing is forwarded then.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{Endpoint, FrontendId, FrontendState, Kind, NotUnderstood, Source, View};
use crate::ctl::table::Table;

/// Shares closer than this are equal (iptables-save prints probabilities rounded).
const WEIGHT_TOLERANCE: f64 = 1e-3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Match,
    Diff,
}

/// `lbctl parity -o json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub source: Source,
    pub service_ports: Vec<ServicePort>,
    /// kube-proxy's rules that could not be read: each counts as a difference.
    pub not_understood: Vec<NotUnderstood>,
    /// lb's own inconsistencies: each counts as a difference.
    pub lb_problems: Vec<String>,
    pub notes: Vec<String>,
    pub summary: Summary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub service_ports: usize,
    pub matching: usize,
    pub differing: usize,
    pub not_understood: usize,
    pub lb_problems: usize,
}

impl Report {
    /// Nothing differs, everything was understood.
    pub fn same(&self) -> bool {
        self.summary.differing == 0
            && self.summary.not_understood == 0
            && self.summary.lb_problems == 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServicePort {
    /// `namespace/name:port` as kube-proxy names it (lb's name where kube-proxy has none).
    pub service: String,
    pub status: Status,
    pub frontends: Vec<FrontendReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrontendReport {
    pub frontend: String,
    pub kind: String,
    pub status: Status,
    pub differences: Vec<FieldDiff>,
    /// Why a frontend only one side shows still matches.
    pub note: Option<String>,
    pub kube_proxy: Option<FrontendState>,
    pub lb: Option<FrontendState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    pub field: &'static str,
    pub kube_proxy: String,
    pub lb: String,
}

/// Compares the views.
pub fn compare(source: Source, kube: &View, lb: &View) -> Report {
    let ids: BTreeSet<&FrontendId> = kube.frontends.keys().chain(lb.frontends.keys()).collect();
    // lb names an unnamed port `ns/name:80`, kube-proxy `ns/name`: the frontends both have
    // say which of lb's names is which of kube-proxy's.
    let mut lb_to_kube: HashMap<&str, &str> = HashMap::new();
    for id in &ids {
        if let (Some(Some(k)), Some(Some(l))) = (
            kube.frontends.get(*id).map(|s| s.service.as_deref()),
            lb.frontends.get(*id).map(|s| s.service.as_deref()),
        ) {
            lb_to_kube.insert(l, k);
        }
    }
    let mut by_service: BTreeMap<String, Vec<FrontendReport>> = BTreeMap::new();
    for id in ids {
        let k = kube.frontends.get(id);
        let l = lb.frontends.get(id);
        let service = k
            .and_then(|s| s.service.clone())
            .or_else(|| {
                let name = l.and_then(|s| s.service.as_deref())?;
                Some(lb_to_kube.get(name).copied().unwrap_or(name).to_owned())
            })
            .unwrap_or_else(|| "(unnamed)".into());
        by_service
            .entry(service)
            .or_default()
            .push(frontend(id, k, l, kube.shows_empty));
    }
    let service_ports: Vec<ServicePort> = by_service
        .into_iter()
        .map(|(service, frontends)| ServicePort {
            status: if frontends.iter().all(|f| f.status == Status::Match) {
                Status::Match
            } else {
                Status::Diff
            },
            service,
            frontends,
        })
        .collect();
    let differing = service_ports
        .iter()
        .filter(|s| s.status == Status::Diff)
        .count();
    let mut notes: Vec<String> = kube
        .notes
        .iter()
        .map(|n| format!("kube-proxy: {n}"))
        .collect();
    notes.extend(lb.notes.iter().map(|n| format!("lb: {n}")));
    Report {
        source,
        summary: Summary {
            service_ports: service_ports.len(),
            matching: service_ports.len() - differing,
            differing,
            not_understood: kube.not_understood.len(),
            lb_problems: lb.problems.len(),
        },
        service_ports,
        not_understood: kube.not_understood.clone(),
        lb_problems: lb.problems.clone(),
        notes,
    }
}

fn frontend(
    id: &FrontendId,
    k: Option<&FrontendState>,
    l: Option<&FrontendState>,
    kube_shows_empty: bool,
) -> FrontendReport {
    let mut differences = Vec::new();
    let mut note = None;
    match (k, l) {
        (Some(k), Some(l)) => differences = fields(k, l),
        (Some(k), None) => differences.push(FieldDiff {
            field: "frontend",
            kube_proxy: format!("{} ({} endpoints)", k.kind, k.endpoints.len()),
            lb: "missing".into(),
        }),
        (None, Some(l)) if !kube_shows_empty && is_empty(l) => {
            note = Some(
                "no endpoints on either side: kube-proxy writes no nat rule for it (its \
                 REJECT/DROP is in the filter table, which was not given)"
                    .into(),
            );
        }
        (None, Some(l)) => differences.push(FieldDiff {
            field: "frontend",
            kube_proxy: "missing".into(),
            lb: format!("{} ({} endpoints)", l.kind, l.endpoints.len()),
        }),
        (None, None) => {}
    }
    let kind = match (k, l) {
        (Some(k), _) if k.kind != Kind::External => k.kind,
        (_, Some(l)) => l.kind,
        (Some(k), None) => k.kind,
        (None, None) => Kind::External,
    };
    FrontendReport {
        frontend: id.to_string(),
        kind: kind.to_string(),
        status: if differences.is_empty() {
            Status::Match
        } else {
            Status::Diff
        },
        differences,
        note,
        kube_proxy: k.cloned(),
        lb: l.cloned(),
    }
}

fn is_empty(s: &FrontendState) -> bool {
    s.endpoints.is_empty() && s.internal_endpoints.as_ref().is_none_or(Vec::is_empty)
}

fn fields(k: &FrontendState, l: &FrontendState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    let mut field = |name: &'static str, a: String, b: String| {
        if a != b {
            out.push(FieldDiff {
                field: name,
                kube_proxy: a,
                lb: b,
            });
        }
    };
    if k.kind != Kind::External && l.kind != Kind::External {
        field("kind", k.kind.to_string(), l.kind.to_string());
    }
    field(
        "endpoints",
        endpoints(&k.endpoints),
        endpoints(&l.endpoints),
    );
    if same_endpoints(&k.endpoints, &l.endpoints) {
        field("weights", weights(&k.endpoints), weights(&l.endpoints));
    }
    field("policy", policy(k.policy_local), policy(l.policy_local));
    if k.internal_endpoints.is_some() || l.internal_endpoints.is_some() {
        let show = |s: &FrontendState| {
            s.internal_endpoints
                .as_deref()
                .map_or("-".into(), endpoints)
        };
        field("internal endpoints", show(k), show(l));
    }
    let forwards = !is_empty(k) || !is_empty(l);
    if forwards {
        let affinity = |s: &FrontendState| {
            s.affinity_timeout_s
                .map_or("none".into(), |t| format!("ClientIP {t}s"))
        };
        field("affinity", affinity(k), affinity(l));
        let masq = |s: &FrontendState| {
            let hairpin = if s.hairpin { "" } else { ", no hairpin" };
            format!("{}{hairpin}", s.masquerade)
        };
        field("masquerade", masq(k), masq(l));
    }
    let ranges = |s: &FrontendState| {
        s.source_ranges
            .as_ref()
            .map_or("unrestricted".into(), |r| match r.is_empty() {
                true => "nobody".into(),
                false => r.join(", "),
            })
    };
    field("source ranges", ranges(k), ranges(l));
    out
}

fn policy(local: bool) -> String {
    if local { "Local" } else { "Cluster" }.into()
}

fn same_endpoints(a: &[Endpoint], b: &[Endpoint]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.address, x.port) == (y.address, y.port))
}

/// `a:p, b:p`, or `none`.
fn endpoints(eps: &[Endpoint]) -> String {
    if eps.is_empty() {
        return "none".into();
    }
    eps.iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `equal`, or each endpoint's share when they are not.
fn weights(eps: &[Endpoint]) -> String {
    let n = eps.len() as f64;
    if eps
        .iter()
        .all(|e| (e.weight - 1.0 / n).abs() < WEIGHT_TOLERANCE)
    {
        return "equal".into();
    }
    eps.iter()
        .map(|e| format!("{}:{} {:.3}", e.address, e.port, e.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line per service port, the differences under it, then what could not be read.
///
/// ```text
/// SERVICE PORT         FRONTENDS                                    STATUS  DIFFERS IN
/// default/web:http     10.96.0.10:80/TCP ClusterIP, *:30080/TCP ..  MATCH   -
/// ```
pub fn render(r: &Report) -> String {
    let mut t = Table::new(&["SERVICE PORT", "FRONTENDS", "STATUS", "DIFFERS IN"]);
    for s in &r.service_ports {
        let fields: BTreeSet<&str> = s
            .frontends
            .iter()
            .flat_map(|f| f.differences.iter().map(|d| d.field))
            .collect();
        t.row(vec![
            s.service.clone(),
            s.frontends
                .iter()
                .map(|f| format!("{} {}", f.frontend, f.kind))
                .collect::<Vec<_>>()
                .join(", "),
            match s.status {
                Status::Match => "MATCH".into(),
                Status::Diff => "DIFF".into(),
            },
            if fields.is_empty() {
                "-".into()
            } else {
                fields.into_iter().collect::<Vec<_>>().join(", ")
            },
        ]);
    }
    let mut out = format!("kube-proxy ({}) against lb:\n", r.source);
    out.push_str(&if t.is_empty() {
        "No services on either side.\n".to_owned()
    } else {
        t.aligned_lines().join("\n") + "\n"
    });
    let differing: Vec<&ServicePort> = r
        .service_ports
        .iter()
        .filter(|s| s.status == Status::Diff)
        .collect();
    if !differing.is_empty() {
        out.push_str("\nDifferences:\n");
        for s in differing {
            out.push_str(&format!("  {}\n", s.service));
            for f in s.frontends.iter().filter(|f| f.status == Status::Diff) {
                out.push_str(&format!("    {} {}\n", f.frontend, f.kind));
                for d in &f.differences {
                    out.push_str(&format!(
                        "      {}: kube-proxy {}; lb {}\n",
                        d.field, d.kube_proxy, d.lb
                    ));
                }
            }
        }
    }
    if !r.not_understood.is_empty() {
        out.push_str("\nNot understood (each counts as a difference):\n");
        for n in &r.not_understood {
            out.push_str(&format!("  line {}: {}: {}\n", n.line, n.reason, n.text));
        }
    }
    if !r.lb_problems.is_empty() {
        out.push_str("\nlb's maps are inconsistent (each counts as a difference):\n");
        for p in &r.lb_problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let s = &r.summary;
    out.push_str(&format!(
        "{} service ports: {} match, {} differ; {} rules not understood\n",
        s.service_ports, s.matching, s.differing, s.not_understood
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ctl::parity::{Class, Masquerade};

    fn ep(last: u8, weight: f64) -> Endpoint {
        Endpoint {
            address: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            weight,
        }
    }

    fn state(service: &str, eps: Vec<Endpoint>) -> FrontendState {
        FrontendState {
            endpoints: eps,
            masquerade: Masquerade::OffCluster("10.244.0.0/16".into()),
            ..FrontendState::empty(Some(service.into()), Kind::ClusterIP)
        }
    }

    fn id(last: u8) -> FrontendId {
        FrontendId {
            class: Class::ClusterIp,
            address: Some(Ipv4Addr::new(10, 96, 0, last)),
            port: 80,
            protocol: "TCP",
        }
    }

    fn view(frontends: Vec<(FrontendId, FrontendState)>, shows_empty: bool) -> View {
        View {
            frontends: frontends.into_iter().collect(),
            shows_empty,
            ..View::default()
        }
    }

    #[test]
    fn one_changed_endpoint_is_one_differing_service_port() {
        let kube = view(
            vec![
                (id(1), state("a/x:http", vec![ep(2, 0.5), ep(3, 0.5)])),
                (id(2), state("a/y:http", vec![ep(4, 1.0)])),
            ],
            true,
        );
        let mut lb = kube.clone();
        lb.frontends.get_mut(&id(1)).unwrap().endpoints = vec![ep(2, 0.5), ep(9, 0.5)];
        let r = compare(Source::IptablesSave, &kube, &lb);
        assert!(!r.same());
        assert_eq!(r.summary.differing, 1);
        let diff: Vec<_> = r
            .service_ports
            .iter()
            .filter(|s| s.status == Status::Diff)
            .collect();
        assert_eq!(diff[0].service, "a/x:http");
        assert_eq!(
            diff[0].frontends[0].differences,
            [FieldDiff {
                field: "endpoints",
                kube_proxy: "10.244.1.2:8080, 10.244.1.3:8080".into(),
                lb: "10.244.1.2:8080, 10.244.1.9:8080".into(),
            }]
        );
        let out = render(&r);
        assert!(
            out.contains("endpoints: kube-proxy 10.244.1.2:8080, 10.244.1.3:8080; lb 10.244.1.2:8080, 10.244.1.9:8080"),
            "{out}"
        );
        assert!(
            out.ends_with("2 service ports: 1 match, 1 differ; 0 rules not understood\n"),
            "{out}"
        );
    }

    #[test]
    fn uneven_shares_are_a_difference() {
        let kube = view(
            vec![(id(1), state("a/x:http", vec![ep(2, 0.7), ep(3, 0.3)]))],
            true,
        );
        let lb = view(
            vec![(id(1), state("a/x:http", vec![ep(2, 0.5), ep(3, 0.5)]))],
            true,
        );
        let r = compare(Source::IptablesSave, &kube, &lb);
        let d = &r.service_ports[0].frontends[0].differences;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "weights");
        assert_eq!(d[0].lb, "equal");
    }

    #[test]
    fn an_empty_frontend_the_nat_table_cannot_show_matches_with_a_note() {
        let kube = view(vec![], false);
        let lb = view(vec![(id(1), state("a/x:80", vec![]))], true);
        let r = compare(Source::IptablesSave, &kube, &lb);
        assert!(r.same(), "{r:?}");
        assert!(r.service_ports[0].frontends[0].note.is_some());
        // With the filter table (or nftables' maps) it must be there.
        let kube = view(vec![], true);
        assert!(!compare(Source::IptablesSave, &kube, &lb).same());
    }

    #[test]
    fn not_understood_rules_make_it_differ() {
        let mut kube = view(vec![], true);
        kube.not_understood.push(NotUnderstood {
            line: 7,
            text: "-A KUBE-SVC-X -j FOO".into(),
            reason: "jumps to \"FOO\"".into(),
        });
        let r = compare(Source::IptablesSave, &kube, &view(vec![], true));
        assert!(!r.same());
        assert!(render(&r).contains("line 7: jumps to \"FOO\": -A KUBE-SVC-X -j FOO"));
    }

    #[test]
    fn lb_names_of_unnamed_ports_group_under_kube_proxys() {
        let np = FrontendId {
            class: Class::NodePort,
            address: None,
            port: 30080,
            protocol: "TCP",
        };
        let kube = view(vec![(id(1), state("a/x", vec![ep(2, 1.0)]))], true);
        let lb = view(
            vec![
                (id(1), state("a/x:80", vec![ep(2, 1.0)])),
                (np, state("a/x:80", vec![ep(2, 1.0)])),
            ],
            true,
        );
        let r = compare(Source::NftListRuleset, &kube, &lb);
        assert_eq!(r.service_ports.len(), 1);
        assert_eq!(r.service_ports[0].service, "a/x");
        assert_eq!(
            r.service_ports[0].frontends[1].differences[0].field,
            "frontend"
        );
    }
}
