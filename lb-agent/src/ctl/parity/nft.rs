//! Reads kube-proxy's nftables mode from `nft list ruleset` output (or `nft list table ip
//! kube-proxy`): table `ip kube-proxy`, its verdict maps (`service-ips`, `service-nodeports`,
//! `no-endpoint-*`, `firewall-ips`), sets (`cluster-ips`, `affinity-…`) and per-service
//! chains. Other tables are skipped.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::{
    cidr, destination, protocol, Chain, Class, Entry, FrontendId, Kind, Masquerade, NotUnderstood,
    ParseError, Ruleset, Target, View,
};

const TABLE: &str = "ip kube-proxy";

/// kube-proxy's chains with fixed names, whose rules hold nothing per service (the
/// `masquerading` chain is read for its `masquerade`).
const FIXED_CHAINS: [&str; 15] = [
    "filter-prerouting",
    "filter-input",
    "filter-forward",
    "filter-output",
    "filter-output-post-dnat",
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "services",
    "cluster-ips-check",
    "mark-for-masquerade",
    "reject-chain",
    "nodeport-endpoints-check",
    "service-endpoints-check",
    "firewall-check",
];

/// A statement with the line it starts on; multi-line ones (long `elements = { … }`) are
/// joined with their newlines kept.
struct Statement {
    line: usize,
    text: String,
}

#[derive(Default)]
struct Block {
    /// `set` / `map` / `chain`.
    kind: String,
    name: String,
    line: usize,
    statements: Vec<Statement>,
}

/// Reads a dump.
///
/// # Errors
/// When braces do not balance, a quote is left open, or there is no `table ip kube-proxy`.
pub fn parse(text: &str) -> Result<View, ParseError> {
    let (blocks, skipped_tables) = blocks(text)?;
    let Some(blocks) = blocks else {
        return Err(ParseError::new(
            0,
            "no `table ip kube-proxy`: give the output of `nft list ruleset` on a node where \
             kube-proxy runs in nftables mode",
        ));
    };
    let mut set = Ruleset::new(true);
    if skipped_tables > 0 {
        set.notes.push(format!(
            "{skipped_tables} tables other than {TABLE} were skipped"
        ));
    }
    let by_name = |kind: &str, name: &str| blocks.iter().find(|b| b.kind == kind && b.name == name);
    let cluster_ips: BTreeSet<Ipv4Addr> = by_name("set", "cluster-ips")
        .map(|b| {
            elements(b)
                .filter_map(|(_, e)| e.key.first().and_then(|k| k.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let timeouts: HashMap<&str, u32> = blocks
        .iter()
        .filter(|b| b.kind == "set")
        .filter_map(|b| {
            let t = b
                .statements
                .iter()
                .find_map(|s| s.text.strip_prefix("timeout "))?;
            Some((b.name.as_str(), duration_s(t)?))
        })
        .collect();

    for b in &blocks {
        match (b.kind.as_str(), b.name.as_str()) {
            ("map", "service-ips" | "no-endpoint-services" | "firewall-ips") => {
                for (line, e) in elements(b) {
                    if let Err(reason) = address_element(&mut set, b, line, &e, &cluster_ips) {
                        set.not_understood.push(NotUnderstood {
                            line,
                            text: e.text.clone(),
                            reason,
                        });
                    }
                }
            }
            ("map", "service-nodeports" | "no-endpoint-nodeports") => {
                for (line, e) in elements(b) {
                    if let Err(reason) = nodeport_element(&mut set, b, line, &e) {
                        set.not_understood.push(NotUnderstood {
                            line,
                            text: e.text.clone(),
                            reason,
                        });
                    }
                }
            }
            ("chain", name) => {
                for s in &b.statements {
                    if is_chain_property(&s.text) {
                        continue;
                    }
                    if let Err(reason) = chain_rule(&mut set, name, &s.text, &timeouts) {
                        set.not_understood.push(NotUnderstood {
                            line: s.line,
                            text: s.text.clone(),
                            reason,
                        });
                    }
                }
            }
            ("set", "cluster-ips" | "nodeport-ips") => {}
            ("set", n) if n.starts_with("affinity-") => {}
            (kind, name) => set.notes.push(format!(
                "{kind} {name} (line {}) is not one kube-proxy makes; skipped",
                b.line
            )),
        }
    }
    Ok(set.view())
}

/// `type … hook …;`, `policy …;`, a chain's own `comment "…"`.
fn is_chain_property(text: &str) -> bool {
    text.starts_with("type ") || text.starts_with("policy ") || text.starts_with("comment ")
}

/// The blocks of `table ip kube-proxy` (`None` if there is none) and how many other tables
/// were skipped.
fn blocks(text: &str) -> Result<(Option<Vec<Block>>, usize), ParseError> {
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut ours: Option<Vec<Block>> = None;
    let mut current: Option<Block> = None;
    let mut others = 0;
    let mut pending: Option<(Statement, i64)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if let Some((mut s, depth)) = pending.take() {
            s.text.push('\n');
            s.text.push_str(l);
            let depth = depth + brace_balance(l, line)?;
            if depth > 0 {
                pending = Some((s, depth));
            } else if let Some(b) = current.as_mut() {
                b.statements.push(s);
            }
            continue;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l == "}" {
            let Some((opened, _)) = stack.pop() else {
                return Err(ParseError::new(line, "`}` closes nothing"));
            };
            if stack.len() == 1 && stack[0].0 == format!("table {TABLE}") {
                if let Some(b) = current.take() {
                    ours.get_or_insert_with(Vec::new).push(b);
                }
            } else if stack.is_empty() && opened != format!("table {TABLE}") {
                others += 1;
            }
            continue;
        }
        if let Some(head) = l.strip_suffix('{').map(str::trim) {
            let word = head.split_whitespace().next().unwrap_or("");
            let opens_block = matches!(
                word,
                "table"
                    | "chain"
                    | "set"
                    | "map"
                    | "flowtable"
                    | "counter"
                    | "quota"
                    | "ct"
                    | "limit"
                    | "secmark"
                    | "synproxy"
            ) && !head.contains('=');
            if opens_block {
                if stack.len() == 1 && stack[0].0 == format!("table {TABLE}") {
                    let (kind, name) = head.split_once(' ').unwrap_or((head, ""));
                    current = Some(Block {
                        kind: kind.to_owned(),
                        name: name.trim().to_owned(),
                        line,
                        ..Block::default()
                    });
                } else if stack.is_empty() && head == format!("table {TABLE}") {
                    ours.get_or_insert_with(Vec::new);
                }
                stack.push((head.to_owned(), line));
                continue;
            }
        }
        if stack.is_empty() {
            return Err(ParseError::new(
                line,
                format!("{l:?} is outside a table (nft list ruleset prints `table … {{`)"),
            ));
        }
        let depth = brace_balance(l, line)?;
        let s = Statement {
            line,
            text: l.to_owned(),
        };
        if depth > 0 {
            pending = Some((s, depth));
        } else if depth < 0 {
            return Err(ParseError::new(line, "`}` closes nothing"));
        } else if let Some(b) = current.as_mut() {
            b.statements.push(s);
        }
    }
    if let Some((s, _)) = pending {
        return Err(ParseError::new(s.line, "a `{` here is never closed"));
    }
    if let Some((head, line)) = stack.pop() {
        return Err(ParseError::new(
            line,
            format!("`{head} {{` is never closed"),
        ));
    }
    Ok((ours, others))
}

/// `{` minus `}` outside quotes.
fn brace_balance(l: &str, line: usize) -> Result<i64, ParseError> {
    let mut depth = 0;
    let mut quoted = false;
    for c in l.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ => {}
        }
    }
    if quoted {
        return Err(ParseError::new(line, "a quote is not closed"));
    }
    Ok(depth)
}

/// One element of a set or map: `KEY [comment "…"] [: VERDICT]`.
struct Element {
    text: String,
    /// The key's parts (`10.96.0.1 . tcp . 80` → three).
    key: Vec<String>,
    comment: Option<String>,
    verdict: Vec<String>,
}

/// The elements of a set or map block, each with its line.
fn elements(b: &Block) -> impl Iterator<Item = (usize, Element)> + '_ {
    b.statements
        .iter()
        .filter_map(|s| {
            let body = s
                .text
                .strip_prefix("elements = {")?
                .trim_end()
                .strip_suffix('}')?;
            Some((s.line, body))
        })
        .flat_map(|(start, body)| {
            let mut out = Vec::new();
            let mut line = start;
            for part in split_top(body, ',') {
                let lead = part.len() - part.trim_start_matches(['\n', ' ', '\t']).len();
                line += part[..lead].matches('\n').count();
                let text = part.trim().to_owned();
                let here = line;
                line += part[lead..].matches('\n').count();
                if !text.is_empty() {
                    out.push((here, element(&text)));
                }
            }
            out
        })
}

fn element(text: &str) -> Element {
    let words = words(text);
    let mut key = Vec::new();
    let mut comment = None;
    let mut verdict = Vec::new();
    let mut it = words.into_iter();
    let mut in_verdict = false;
    while let Some(w) = it.next() {
        match w.as_str() {
            _ if in_verdict => verdict.push(w),
            ":" => in_verdict = true,
            "comment" => comment = it.next(),
            "." => {}
            _ => key.push(w),
        }
    }
    Element {
        text: text.to_owned(),
        key,
        comment,
        verdict,
    }
}

/// `text` split at `sep` outside quotes and braces.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Whitespace-separated words, a `"…"` being one word without its quotes.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// nft's durations: `3h`, `10800s`, `1d2h30m`, `500ms`.
fn duration_s(text: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = std::mem::take(&mut number).parse().ok()?;
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0
            }
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total += n * unit;
    }
    if !number.is_empty() {
        total += number.parse::<u64>().ok()?;
    }
    u32::try_from(total).ok()
}

/// `ns/name:port` from a chain name `service-HASH-ns/name/proto/port`.
fn service_of_chain(chain: &str) -> Option<String> {
    let (_, rest) = chain.split_once('-')?;
    let (_, base) = rest.split_once('-')?;
    let mut parts = base.splitn(4, '/');
    let (ns, name, _proto, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let port = port.split("__").next().unwrap_or(port);
    Some(if port.is_empty() {
        format!("{ns}/{name}")
    } else {
        format!("{ns}/{name}:{port}")
    })
}

/// `goto X` / `jump X` → X.
fn verdict_chain(v: &[String]) -> Option<&str> {
    match v {
        [w, chain] if w == "goto" || w == "jump" => Some(chain),
        _ => None,
    }
}

fn address_element(
    set: &mut Ruleset,
    map: &Block,
    line: usize,
    e: &Element,
    cluster_ips: &BTreeSet<Ipv4Addr>,
) -> Result<(), String> {
    let [addr, proto, port] = e.key.as_slice() else {
        return Err("not an address . protocol . port key".into());
    };
    let address: Ipv4Addr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let cluster = cluster_ips.contains(&address);
    let id = FrontendId {
        class: if cluster {
            Class::ClusterIp
        } else {
            Class::External
        },
        address: Some(address),
        port: port.parse().map_err(|_| format!("bad port {port}"))?,
        protocol: protocol(proto).ok_or_else(|| format!("bad protocol {proto}"))?,
    };
    let kind = if cluster {
        Kind::ClusterIP
    } else {
        Kind::External
    };
    let chain = verdict_chain(&e.verdict);
    match (map.name.as_str(), chain) {
        ("service-ips", Some(chain)) => set.entries.push(Entry {
            line,
            id,
            kind,
            service: service_of_chain(chain),
            target: Target::Chain(chain.to_owned()),
        }),
        ("firewall-ips", Some(chain)) => {
            set.firewalls.insert(id, chain.to_owned());
        }
        ("no-endpoint-services", _) => set.entries.push(Entry {
            line,
            id,
            kind,
            service: e.comment.clone(),
            target: Target::NoEndpoints {
                drop: no_endpoint_drop(&e.verdict)?,
            },
        }),
        _ => return Err("not a verdict kube-proxy maps this to".into()),
    }
    Ok(())
}

fn nodeport_element(
    set: &mut Ruleset,
    map: &Block,
    line: usize,
    e: &Element,
) -> Result<(), String> {
    let [proto, port] = e.key.as_slice() else {
        return Err("not a protocol . port key".into());
    };
    let id = FrontendId {
        class: Class::NodePort,
        address: None,
        port: port.parse().map_err(|_| format!("bad port {port}"))?,
        protocol: protocol(proto).ok_or_else(|| format!("bad protocol {proto}"))?,
    };
    let target = if map.name == "service-nodeports" {
        let chain = verdict_chain(&e.verdict).ok_or("not a goto")?;
        Target::Chain(chain.to_owned())
    } else {
        Target::NoEndpoints {
            drop: no_endpoint_drop(&e.verdict)?,
        }
    };
    let service = match &target {
        Target::Chain(c) => service_of_chain(c),
        Target::NoEndpoints { .. } => e.comment.clone(),
    };
    set.entries.push(Entry {
        line,
        id,
        kind: Kind::NodePort,
        service,
        target,
    });
    Ok(())
}

/// `goto reject-chain` (no endpoints) or `drop` (none local).
fn no_endpoint_drop(v: &[String]) -> Result<bool, String> {
    match v {
        [d] if d == "drop" => Ok(true),
        [g, r] if g == "goto" && r == "reject-chain" => Ok(false),
        _ => Err("neither `drop` nor `goto reject-chain`".into()),
    }
}

fn chain_rule(
    set: &mut Ruleset,
    chain: &str,
    text: &str,
    timeouts: &HashMap<&str, u32>,
) -> Result<(), String> {
    let mut w = words(text);
    // A trailing `comment "…"` says nothing about what the rule does.
    if w.len() >= 2 && w[w.len() - 2] == "comment" {
        w.truncate(w.len() - 2);
    }
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    if chain == "masquerading" {
        set.masquerades_marked |= w.first() == Some(&"masquerade");
        return Ok(());
    }
    if FIXED_CHAINS.contains(&chain) {
        return Ok(());
    }
    let kind = chain.split('-').next().unwrap_or("");
    match kind {
        "service" | "local" => {
            let entry = set.chain(chain, Chain::dispatch)?;
            let Chain::Dispatch {
                masquerade,
                affinity_timeout_s,
                endpoints,
            } = entry
            else {
                unreachable!("Ruleset::chain checked the kind")
            };
            match w.as_slice() {
                ["ip", "daddr", _, _, "dport", _, "jump", "mark-for-masquerade"] => {
                    *masquerade = Some(Masquerade::All);
                }
                ["ip", "daddr", _, _, "dport", _, "ip", "saddr", "!=", c, "jump", "mark-for-masquerade"] =>
                {
                    *masquerade = Some(Masquerade::OffCluster(
                        cidr(c).ok_or_else(|| format!("bad CIDR {c}"))?,
                    ));
                }
                ["ip", "saddr", s, "goto", _] if s.starts_with('@') => {
                    let t = timeouts
                        .get(&s[1..])
                        .ok_or_else(|| format!("affinity set {s} has no timeout"))?;
                    *affinity_timeout_s = Some(*t);
                }
                ["numgen", "random", "mod", n, "vmap", ..] => {
                    let n: usize = n.parse().map_err(|_| format!("bad modulus {n}"))?;
                    let body = text
                        .split_once('{')
                        .and_then(|(_, b)| b.rsplit_once('}'))
                        .map(|(b, _)| b)
                        .ok_or("no vmap")?;
                    for e in split_top(body, ',') {
                        let e = element(e.trim());
                        let to = verdict_chain(&e.verdict).ok_or("a vmap element is not a goto")?;
                        endpoints.push((to.to_owned(), 1.0 / n as f64));
                    }
                }
                _ => return Err("not a service chain rule".into()),
            }
        }
        "external" => {
            let entry = set.chain(chain, Chain::external)?;
            let Chain::External {
                masquerade_all,
                short_circuit,
                policy,
            } = entry
            else {
                unreachable!("Ruleset::chain checked the kind")
            };
            match w.as_slice() {
                ["jump", "mark-for-masquerade"] => *masquerade_all = true,
                ["fib", "saddr", "type", "local", "jump", "mark-for-masquerade"] => {}
                ["ip", "saddr", _, "goto", to] | ["fib", "saddr", "type", "local", "goto", to] => {
                    *short_circuit = Some((*to).to_owned());
                }
                ["goto", to] => *policy = Some((*to).to_owned()),
                _ => return Err("not an external chain rule".into()),
            }
        }
        "firewall" => {
            let ranges = match w.as_slice() {
                ["ip", "saddr", "!=", "{", .., "}", "drop"] => w[3..w.len() - 1]
                    .iter()
                    .map(|s| s.trim_matches(['{', '}', ',']))
                    .filter(|s| !s.is_empty())
                    .map(|s| cidr(s).ok_or_else(|| format!("bad source {s}")))
                    .collect::<Result<Vec<_>, _>>()?,
                ["ip", "saddr", "!=", s, "drop"] => {
                    vec![cidr(s).ok_or_else(|| format!("bad source {s}"))?]
                }
                _ => return Err("not a firewall rule".into()),
            };
            let Chain::Firewall { ranges: r, .. } = set.chain(chain, Chain::firewall)? else {
                unreachable!("Ruleset::chain checked the kind")
            };
            r.extend(ranges);
        }
        "endpoint" => {
            let entry = set.chain(chain, Chain::endpoint)?;
            let Chain::Endpoint {
                destination: dest,
                hairpin,
            } = entry
            else {
                unreachable!("Ruleset::chain checked the kind")
            };
            match w.as_slice() {
                ["ip", "saddr", _, "jump", "mark-for-masquerade"] => *hairpin = true,
                ["update", s, "{", "ip", "saddr", "}"] if s.starts_with('@') => {}
                ["meta", "l4proto", _, "dnat", "to", to]
                | ["meta", "l4proto", _, "dnat", "ip", "to", to] => {
                    *dest = Some(destination(to).ok_or_else(|| format!("bad DNAT target {to}"))?);
                }
                _ => return Err("not an endpoint chain rule".into()),
            }
        }
        _ => return Err(format!("chain {chain} is not one kube-proxy makes")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_nfts_spelling() {
        assert_eq!(duration_s("3h"), Some(10_800));
        assert_eq!(duration_s("10800s"), Some(10_800));
        assert_eq!(duration_s("1d2h3m4s"), Some(93_784));
        assert_eq!(duration_s("1m500ms"), Some(60));
        assert_eq!(duration_s("3x"), None);
    }

    #[test]
    fn service_names_come_from_chain_names() {
        assert_eq!(
            service_of_chain("service-SAQX6RRJ-default/a/tcp/http").as_deref(),
            Some("default/a:http")
        );
        assert_eq!(
            service_of_chain("external-SAQX6RRJ-default/a/tcp/").as_deref(),
            Some("default/a")
        );
        assert_eq!(
            service_of_chain("endpoint-ZLNLHPWJ-default/a/tcp/http__10.244.0.2/8080").as_deref(),
            Some("default/a:http")
        );
    }

    #[test]
    fn elements_with_comments_and_wrapped_lines() {
        let b = Block {
            kind: "map".into(),
            name: "x".into(),
            line: 1,
            statements: vec![Statement {
                line: 4,
                text: "elements = { 10.96.0.3 . tcp . 81 comment \"a/b:c, d\" : goto reject-chain,\n10.96.0.4 . udp . 53 : drop }".into(),
            }],
        };
        let es: Vec<_> = elements(&b).collect();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].0, 4);
        assert_eq!(es[0].1.key, ["10.96.0.3", "tcp", "81"]);
        assert_eq!(es[0].1.comment.as_deref(), Some("a/b:c, d"));
        assert_eq!(es[0].1.verdict, ["goto", "reject-chain"]);
        assert_eq!(es[1].0, 5);
        assert_eq!(es[1].1.verdict, ["drop"]);
    }

    #[test]
    fn malformed_dumps_name_the_line() {
        let e = parse("table ip kube-proxy {\n\tchain x {\n\t\tjump y\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse("table ip kube-proxy {\n}\n}\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse("jump y\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = parse("table ip filter {\n}\n").unwrap_err();
        assert!(e.message.contains("no `table ip kube-proxy`"), "{e}");
    }

    #[test]
    fn unknown_rules_are_listed_with_their_line() {
        let v = parse(
            "table ip kube-proxy {\n\tchain services {\n\t\tjump x\n\t}\n\tchain service-AAAAAAAA-a/b/tcp/c {\n\t\tip daddr 1.2.3.4 counter\n\t}\n}\n",
        )
        .unwrap();
        assert_eq!(v.not_understood.len(), 1, "{v:?}");
        assert_eq!(v.not_understood[0].line, 6);
    }
}
