//! Reads kube-proxy's iptables mode from `iptables-save` output (`-t nat`, or every table:
//! the filter table adds the services without endpoints). Also reads
//! `iptables-restore` input as kube-proxy writes it: the rules are the same, only the order
//! of their options differs, and options are read in any order.

use std::net::Ipv4Addr;

use super::{
    cidr, destination, protocol, Chain, Class, Entry, FrontendId, Kind, Masquerade, NotUnderstood,
    ParseError, Ruleset, Target, View,
};

/// Reads a dump.
///
/// # Errors
/// When the text is not `iptables-save` output: a line of another shape, a quote left open,
/// a rule outside a table, or no nat table at all.
pub fn parse(text: &str) -> Result<View, ParseError> {
    let mut set = Ruleset::new(false);
    let mut table: Option<String> = None;
    let mut seen_nat = false;
    let mut foreign = 0usize;
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('*') {
            if table.is_some() {
                return Err(ParseError::new(
                    line,
                    format!("table *{name} starts before COMMIT"),
                ));
            }
            seen_nat |= name == "nat";
            set.shows_empty |= name == "filter";
            table = Some(name.to_owned());
            continue;
        }
        let Some(t) = table.as_deref() else {
            return Err(ParseError::new(
                line,
                format!("{l:?} is outside a table (iptables-save output starts tables with *nat)"),
            ));
        };
        if l == "COMMIT" {
            table = None;
        } else if l.starts_with(':') {
            // Chain declarations: chains are known by their rules.
        } else if l.starts_with("-A ") {
            let rule = Rule::parse(l).map_err(|m| ParseError::new(line, m))?;
            if !rule.chain.starts_with("KUBE-") && !rule.target.as_deref().is_some_and(kube) {
                foreign += 1;
                continue;
            }
            if t == "nat" || t == "filter" {
                rules.push((line, t.to_owned(), l.to_owned(), rule));
            }
        } else {
            return Err(ParseError::new(
                line,
                format!("{l:?} is not an iptables-save line (*table, :chain, -A rule, COMMIT)"),
            ));
        }
    }
    if table.is_some() {
        return Err(ParseError::new(0, "the last table has no COMMIT"));
    }
    if !seen_nat {
        return Err(ParseError::new(
            0,
            "no *nat table: give the output of `iptables-save -t nat` (or of `iptables-save`)",
        ));
    }
    for (line, table, text, rule) in rules {
        let outcome = if table == "nat" {
            nat_rule(&mut set, line, &rule)
        } else {
            filter_rule(&mut set, line, &rule)
        };
        if let Err(reason) = outcome {
            set.not_understood
                .push(NotUnderstood { line, text, reason });
        }
    }
    if foreign > 0 {
        set.notes.push(format!(
            "{foreign} rules in chains that are not kube-proxy's were skipped"
        ));
    }
    Ok(set.view())
}

fn kube(chain: &str) -> bool {
    chain.starts_with("KUBE-")
}

/// One `-A` line, its options in whatever order they came.
#[derive(Debug, Default)]
struct Rule {
    chain: String,
    source: Option<(bool, String)>,
    destination: Option<(bool, String)>,
    protocol: Option<String>,
    dport: Option<u16>,
    comment: Option<String>,
    probability: Option<f64>,
    recent_name: Option<String>,
    recent_set: bool,
    recent_seconds: Option<u32>,
    src_type_local: bool,
    dst_type_local: bool,
    target: Option<String>,
    to_destination: Option<String>,
    masquerade: bool,
    /// Options this reader does not know.
    unknown: Vec<String>,
}

impl Rule {
    fn parse(line: &str) -> Result<Rule, String> {
        let words = split_words(line)?;
        let mut rule = Rule::default();
        let mut it = words.into_iter().peekable();
        let mut negated = false;
        let value = |it: &mut std::iter::Peekable<std::vec::IntoIter<String>>, opt: &str| {
            it.next().ok_or_else(|| format!("{opt} has no value"))
        };
        while let Some(w) = it.next() {
            match w.as_str() {
                "!" => {
                    negated = true;
                    continue;
                }
                "-A" => rule.chain = value(&mut it, &w)?,
                "-s" | "--source" => rule.source = Some((negated, value(&mut it, &w)?)),
                "-d" | "--destination" => rule.destination = Some((negated, value(&mut it, &w)?)),
                "-p" | "--protocol" => rule.protocol = Some(value(&mut it, &w)?),
                "--dport" | "--destination-port" => {
                    let v = value(&mut it, &w)?;
                    rule.dport = Some(v.parse().map_err(|_| format!("bad port {v:?}"))?);
                }
                "--comment" => rule.comment = Some(value(&mut it, &w)?),
                "--probability" => {
                    let v = value(&mut it, &w)?;
                    rule.probability = Some(
                        v.parse()
                            .ok()
                            .filter(|p: &f64| (0.0..=1.0).contains(p))
                            .ok_or_else(|| format!("bad probability {v:?}"))?,
                    );
                }
                "--name" => rule.recent_name = Some(value(&mut it, &w)?),
                "--set" => rule.recent_set = true,
                "--seconds" => {
                    let v = value(&mut it, &w)?;
                    rule.recent_seconds =
                        Some(v.parse().map_err(|_| format!("bad seconds {v:?}"))?);
                }
                "--src-type" => rule.src_type_local = value(&mut it, &w)? == "LOCAL" && !negated,
                "--dst-type" => rule.dst_type_local = value(&mut it, &w)? == "LOCAL" && !negated,
                "-j" | "--jump" => rule.target = Some(value(&mut it, &w)?),
                "--to-destination" => rule.to_destination = Some(value(&mut it, &w)?),
                "--random-fully" => rule.masquerade = true,
                // Matches and target options kube-proxy writes that change nothing here.
                "-m" | "--match" | "--mode" | "--mask" | "--or-mark" | "--set-xmark"
                | "--xor-mark" | "--mark" | "--ctstate" | "--nfacct-name" | "--reject-with" => {
                    value(&mut it, &w)?;
                }
                "--rcheck" | "--reap" | "--rsource" => {}
                other => rule.unknown.push(other.to_owned()),
            }
            negated = false;
        }
        if rule.chain.is_empty() {
            return Err("a rule without a chain".into());
        }
        if rule.target.as_deref() == Some("MASQUERADE") {
            rule.masquerade = true;
        }
        Ok(rule)
    }

    fn understood(&self) -> Result<(), String> {
        match self.unknown.first() {
            Some(o) => Err(format!("option {o} is not one kube-proxy writes")),
            None => Ok(()),
        }
    }

    fn protocol(&self) -> Result<&'static str, String> {
        let p = self.protocol.as_deref().ok_or("no protocol (-p)")?;
        protocol(p).ok_or_else(|| format!("protocol {p} is not TCP, UDP or SCTP"))
    }

    /// `-d` as a single address.
    fn address(&self) -> Result<Ipv4Addr, String> {
        let (neg, d) = self.destination.as_ref().ok_or("no destination (-d)")?;
        let c = cidr(d).filter(|c| c.ends_with("/32") && !neg);
        c.and_then(|c| c.trim_end_matches("/32").parse().ok())
            .ok_or_else(|| format!("destination {d} is not one address"))
    }

    /// The service port named in the comment, without kube-proxy's suffix.
    fn service(&self, suffixes: &[&str]) -> Option<String> {
        let c = self.comment.as_deref()?;
        let name = suffixes.iter().find_map(|s| c.strip_suffix(s)).unwrap_or(c);
        Some(name.to_owned())
    }
}

/// Words of a rule, with `"…"` (and `\"` inside it) as iptables-save quotes them.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => word.extend(chars.next()),
                    Some('"') => break,
                    Some(ch) => word.push(ch),
                    None => return Err("a quote is not closed".into()),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.push(ch);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

fn nat_rule(set: &mut Ruleset, line: usize, r: &Rule) -> Result<(), String> {
    r.understood()?;
    let target = r.target.as_deref().unwrap_or("");
    let chain = r.chain.as_str();
    match chain {
        "KUBE-SERVICES" if target == "KUBE-NODEPORTS" => {
            if let Some((false, d)) = &r.destination {
                set.notes.push(format!("NodePorts are served on {d} only"));
            }
            Ok(())
        }
        "KUBE-SERVICES" => {
            let kind = match r.comment.as_deref() {
                Some(c) if c.ends_with(" cluster IP") => Kind::ClusterIP,
                Some(c) if c.ends_with(" external IP") => Kind::ExternalIP,
                Some(c) if c.ends_with(" loadbalancer IP") => Kind::LoadBalancer,
                _ if target.starts_with("KUBE-SVC-") || target.starts_with("KUBE-SVL-") => {
                    Kind::ClusterIP
                }
                _ if target.starts_with("KUBE-FW-") => Kind::LoadBalancer,
                _ if target.starts_with("KUBE-EXT-") => Kind::External,
                _ => return Err(format!("jumps to {target:?}, not a service chain")),
            };
            let class = if kind == Kind::ClusterIP {
                Class::ClusterIp
            } else {
                Class::External
            };
            set.entries.push(Entry {
                line,
                id: FrontendId {
                    class,
                    address: Some(r.address()?),
                    port: r.dport.ok_or("no --dport")?,
                    protocol: r.protocol()?,
                },
                kind,
                service: r.service(&[" cluster IP", " external IP", " loadbalancer IP"]),
                target: Target::Chain(target.to_owned()),
            });
            Ok(())
        }
        "KUBE-NODEPORTS" => {
            if matches!(&r.destination, Some((false, d)) if d.starts_with("127.")) {
                // The localhost copy of a NodePort rule (route_localnet).
                return Ok(());
            }
            if r.destination.is_some() {
                return Err("a NodePort rule for one address".into());
            }
            set.entries.push(Entry {
                line,
                id: FrontendId {
                    class: Class::NodePort,
                    address: None,
                    port: r.dport.ok_or("no --dport")?,
                    protocol: r.protocol()?,
                },
                kind: Kind::NodePort,
                service: r.service(&[]),
                target: Target::Chain(target.to_owned()),
            });
            Ok(())
        }
        "KUBE-MARK-MASQ" => Ok(()),
        "KUBE-POSTROUTING" => {
            set.masquerades_marked |= r.masquerade;
            Ok(())
        }
        "PREROUTING" | "OUTPUT" | "POSTROUTING" => Ok(()),
        c if c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SVL-") => dispatch_rule(set, r),
        c if c.starts_with("KUBE-EXT-") => external_rule(set, r),
        c if c.starts_with("KUBE-FW-") => {
            let Chain::Firewall { ranges, target: to } = set.chain(chain, Chain::firewall)? else {
                unreachable!("Ruleset::chain checked the kind")
            };
            match (&r.source, target) {
                // The last rule: what is not admitted falls through, un-DNATed, to the
                // filter table's DROP.
                (None, "") => Ok(()),
                (Some((false, s)), t) if t.starts_with("KUBE-EXT-") => {
                    ranges.push(cidr(s).ok_or_else(|| format!("bad source {s}"))?);
                    *to = Some(t.to_owned());
                    Ok(())
                }
                _ => Err("not a source-range rule".into()),
            }
        }
        c if c.starts_with("KUBE-SEP-") => {
            let Chain::Endpoint {
                destination: dest,
                hairpin,
            } = set.chain(chain, Chain::endpoint)?
            else {
                unreachable!("Ruleset::chain checked the kind")
            };
            match target {
                "KUBE-MARK-MASQ" if matches!(r.source, Some((false, _))) => {
                    *hairpin = true;
                    Ok(())
                }
                "DNAT" => {
                    let to = r
                        .to_destination
                        .as_deref()
                        .ok_or("DNAT without --to-destination")?;
                    *dest = Some(destination(to).ok_or_else(|| format!("bad DNAT target {to}"))?);
                    Ok(())
                }
                _ => Err("not an endpoint rule".into()),
            }
        }
        "KUBE-KUBELET-CANARY" | "KUBE-PROXY-CANARY" => Ok(()),
        _ => Err(format!(
            "chain {chain} is not one of kube-proxy's nat chains"
        )),
    }
}

fn dispatch_rule(set: &mut Ruleset, r: &Rule) -> Result<(), String> {
    let Chain::Dispatch {
        masquerade,
        affinity_timeout_s,
        endpoints,
    } = set.chain(&r.chain, Chain::dispatch)?
    else {
        unreachable!("Ruleset::chain checked the kind")
    };
    let target = r.target.as_deref().unwrap_or("");
    if target == "KUBE-MARK-MASQ" {
        *masquerade = Some(match &r.source {
            None => Masquerade::All,
            Some((true, s)) => {
                Masquerade::OffCluster(cidr(s).ok_or_else(|| format!("bad source {s}"))?)
            }
            Some((false, _)) => return Err("masquerades one source only".into()),
        });
        return Ok(());
    }
    if !target.starts_with("KUBE-SEP-") {
        return Err(format!("jumps to {target:?}, not an endpoint chain"));
    }
    if let Some(seconds) = r.recent_seconds {
        // `-m recent --rcheck`: affinity, checked before the random choice.
        *affinity_timeout_s = Some(seconds);
        return Ok(());
    }
    // Each rule takes its probability of what the rules before it left.
    let left = 1.0 - endpoints.iter().map(|(_, w)| w).sum::<f64>();
    endpoints.push((target.to_owned(), left * r.probability.unwrap_or(1.0)));
    Ok(())
}

fn external_rule(set: &mut Ruleset, r: &Rule) -> Result<(), String> {
    let Chain::External {
        masquerade_all,
        short_circuit,
        policy,
    } = set.chain(&r.chain, Chain::external)?
    else {
        unreachable!("Ruleset::chain checked the kind")
    };
    let target = r.target.as_deref().unwrap_or("");
    let conditional = r.source.is_some() || r.src_type_local;
    match target {
        "KUBE-MARK-MASQ" if !conditional => *masquerade_all = true,
        // The node's own traffic to a Local service: masqueraded and sent to any endpoint.
        "KUBE-MARK-MASQ" if r.src_type_local => {}
        t if (t.starts_with("KUBE-SVC-") || t.starts_with("KUBE-SVL-")) && conditional => {
            *short_circuit = Some(t.to_owned());
        }
        t if t.starts_with("KUBE-SVC-") || t.starts_with("KUBE-SVL-") => {
            *policy = Some(t.to_owned());
        }
        _ => return Err(format!("jumps to {target:?}, not a service chain")),
    }
    Ok(())
}

/// The filter table: frontends without (local) endpoints.
fn filter_rule(set: &mut Ruleset, line: usize, r: &Rule) -> Result<(), String> {
    r.understood()?;
    let target = r.target.as_deref().unwrap_or("");
    match r.chain.as_str() {
        "KUBE-SERVICES" | "KUBE-EXTERNAL-SERVICES" if target == "REJECT" || target == "DROP" => {
            let (id, kind) = if r.dst_type_local {
                let id = FrontendId {
                    class: Class::NodePort,
                    address: None,
                    port: r.dport.ok_or("no --dport")?,
                    protocol: r.protocol()?,
                };
                (id, Kind::NodePort)
            } else {
                let class = if r.chain == "KUBE-SERVICES" {
                    Class::ClusterIp
                } else {
                    Class::External
                };
                let id = FrontendId {
                    class,
                    address: Some(r.address()?),
                    port: r.dport.ok_or("no --dport")?,
                    protocol: r.protocol()?,
                };
                let kind = if class == Class::ClusterIp {
                    Kind::ClusterIP
                } else {
                    Kind::External
                };
                (id, kind)
            };
            set.entries.push(Entry {
                line,
                id,
                kind,
                service: r.service(&[" has no endpoints", " has no local endpoints"]),
                target: Target::NoEndpoints {
                    drop: target == "DROP",
                },
            });
            Ok(())
        }
        // Health-check NodePorts, the LoadBalancer firewall's drops (the nat table's
        // KUBE-FW chain says who is admitted), forwarding and localnet rules.
        "KUBE-NODEPORTS" | "KUBE-PROXY-FIREWALL" | "KUBE-FORWARD" | "KUBE-FIREWALL" => Ok(()),
        "INPUT" | "FORWARD" | "OUTPUT" => Ok(()),
        "KUBE-KUBELET-CANARY" | "KUBE-PROXY-CANARY" => Ok(()),
        c => Err(format!(
            "chain {c} is not one of kube-proxy's filter chains"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_comments_whole() {
        assert_eq!(
            split_words(r#"-A X -m comment --comment "a b \"c\"" -j Y"#).unwrap(),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a b \"c\"",
                "-j",
                "Y"
            ]
        );
        assert!(split_words(r#"-A X --comment "open"#).is_err());
    }

    #[test]
    fn options_are_read_in_either_order() {
        let restore = Rule::parse(
            "-A KUBE-SVC-X -m comment --comment \"a/b:c cluster IP\" -m tcp -p tcp -d 10.96.0.1 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
        )
        .unwrap();
        let saved = Rule::parse(
            "-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment \"a/b:c cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ",
        )
        .unwrap();
        for r in [restore, saved] {
            assert_eq!(r.source, Some((true, "10.244.0.0/16".into())));
            assert_eq!(r.address().unwrap(), Ipv4Addr::new(10, 96, 0, 1));
            assert_eq!(r.dport, Some(80));
            assert_eq!(r.target.as_deref(), Some("KUBE-MARK-MASQ"));
            assert!(r.unknown.is_empty());
        }
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        let e = parse("*nat\n-A KUBE-SERVICES --comment \"x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("quote"), "{e}");
        let e = parse("*nat\nhello\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("-A KUBE-SERVICES -j X\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("*filter\nCOMMIT\n").unwrap_err();
        assert!(e.message.contains("no *nat table"), "{e}");
        let e = parse("*nat\n-A KUBE-SERVICES -j X\n").unwrap_err();
        assert!(e.message.contains("COMMIT"), "{e}");
    }

    /// internalTrafficPolicy=Local, as kube-proxy writes it (the generators only write
    /// Cluster): the ClusterIP leads to KUBE-SVL, which also carries the masquerade rule.
    #[test]
    fn a_clusterip_into_the_local_chain_has_a_local_policy() {
        let v = parse(
            "*nat\n\
             -A KUBE-SERVICES -d 10.96.0.7/32 -p tcp -m comment --comment \"a/b:c cluster IP\" -m tcp --dport 80 -j KUBE-SVL-X\n\
             -A KUBE-SVL-X ! -s 10.244.0.0/16 -d 10.96.0.7/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A KUBE-SVL-X -j KUBE-SEP-A\n\
             -A KUBE-SEP-A -s 10.244.1.2/32 -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080\n\
             -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
             COMMIT\n",
        )
        .unwrap();
        assert!(v.not_understood.is_empty(), "{:?}", v.not_understood);
        let s = v.frontends.values().next().expect("one frontend");
        assert!(s.policy_local);
        assert_eq!(s.masquerade, Masquerade::OffCluster("10.244.0.0/16".into()));
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.service.as_deref(), Some("a/b:c"));
    }

    #[test]
    fn unknown_rules_in_kube_chains_are_listed_and_others_skipped() {
        let v = parse(
            "*nat\n-A POSTROUTING -j KIND-MASQ-AGENT\n-A KIND-MASQ-AGENT -j MASQUERADE\n\
             -A KUBE-SERVICES -i eth9 -d 10.96.0.1/32 -p tcp --dport 80 -j KUBE-SVC-X\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(v.not_understood.len(), 1, "{v:?}");
        assert_eq!(v.not_understood[0].line, 4);
        assert!(v.not_understood[0].reason.contains("-i"));
        assert!(
            v.notes.iter().any(|n| n.contains("2 rules")),
            "{:?}",
            v.notes
        );
    }
}
