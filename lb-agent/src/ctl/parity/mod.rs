//! `lbctl parity`: does lb serve a node's Services as kube-proxy did?
//!
//! kube-proxy's ruleset, as a node prints it (`iptables-save -t nat`, or `nft list ruleset`),
//! is read by [`iptables`] or [`nft`] into the same few facts ([`Ruleset`]: frontends that
//! lead to chains, and what each chain does), which [`Ruleset::view`] follows into a
//! [`View`]: per frontend, the endpoints, traffic policy, affinity, source ranges and
//! masquerade. [`lb`] builds a [`View`] of the same shape from the node's pinned maps, and
//! [`compare`] sets the two side by side, per service port.
//!
//! A rule in one of kube-proxy's chains that the readers do not recognise is listed as "not
//! understood" and counts as a difference: it may change what happens to packets, and a
//! migration aid must not call two nodes equal when it could not read one of them. Rules
//! in chains that are not kube-proxy's (Docker's, kindnet's) are skipped and only counted.

pub mod compare;
pub mod iptables;
pub mod lb;
pub mod nft;

#[cfg(test)]
mod readback_tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::Ipv4Addr,
};

use serde::Serialize;

/// Which of kube-proxy's dumps a ruleset came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    IptablesSave,
    NftListRuleset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::IptablesSave => "iptables-save",
            Source::NftListRuleset => "nft list ruleset",
        })
    }
}

/// A file that cannot be a ruleset dump (exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub message: String,
}

impl ParseError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// A rule of kube-proxy's that the reader could not interpret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotUnderstood {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// How a frontend is reached, as both sides can tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Class {
    ClusterIp,
    /// An external IP or a LoadBalancer ingress IP (nftables mode does not say which).
    External,
    NodePort,
}

/// A service address: for NodePorts the address is `None` (every NodePort address of the
/// node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FrontendId {
    pub class: Class,
    pub address: Option<Ipv4Addr>,
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: &'static str,
}

impl fmt::Display for FrontendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            None => write!(f, "*:{}/{}", self.port, self.protocol),
        }
    }
}

/// The protocol as Kubernetes spells it, from kube-proxy's lower-case spelling.
pub fn protocol(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Some("TCP"),
        "udp" | "17" => Some("UDP"),
        "sctp" | "132" => Some("SCTP"),
        _ => None,
    }
}

/// The kinds of frontend, as far as a side knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
    /// nftables mode: an external IP or a LoadBalancer IP.
    External,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::ClusterIP => "ClusterIP",
            Kind::NodePort => "NodePort",
            Kind::ExternalIP => "ExternalIP",
            Kind::LoadBalancer => "LoadBalancer",
            Kind::External => "ExternalIP/LoadBalancer",
        })
    }
}

/// One endpoint of a frontend and the share of new connections it gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: f64,
}

/// Whose source address is replaced by the node's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode", content = "cidr")]
pub enum Masquerade {
    /// Nobody's (the client address is kept).
    None,
    /// Every client's.
    All,
    /// Clients outside this CIDR (kube-proxy's `! -s <cluster CIDR> -j KUBE-MARK-MASQ`).
    OffCluster(String),
}

impl fmt::Display for Masquerade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Masquerade::None => f.write_str("none"),
            Masquerade::All => f.write_str("all"),
            Masquerade::OffCluster(cidr) => write!(f, "from outside {cidr}"),
        }
    }
}

/// What one frontend does, on one side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendState {
    /// `namespace/name:port` (kube-proxy writes `namespace/name` for an unnamed port).
    pub service: Option<String>,
    pub kind: Kind,
    /// The endpoints new connections go to, sorted by address and port. Empty: no
    /// endpoints (rejected, or dropped under a Local policy).
    pub endpoints: Vec<Endpoint>,
    /// The traffic policy of this frontend is Local (internal for a ClusterIP, external
    /// for the others): only this node's endpoints, and none means drop.
    pub policy_local: bool,
    /// Under externalTrafficPolicy=Local: the endpoints that clients inside the cluster
    /// (pods, the node) get instead.
    pub internal_endpoints: Option<Vec<Endpoint>>,
    pub affinity_timeout_s: Option<u32>,
    /// loadBalancerSourceRanges (`address/prefix`, sorted); `None` when unrestricted.
    pub source_ranges: Option<Vec<String>>,
    pub masquerade: Masquerade,
    /// Every endpoint masquerades itself when it reaches itself through the service.
    pub hairpin: bool,
    /// NodePorts: the addresses they are served on, when a side says.
    pub addresses: Option<Vec<String>>,
}

impl FrontendState {
    /// A frontend without endpoints, policies or restrictions, to fill in.
    pub fn empty(service: Option<String>, kind: Kind) -> Self {
        Self {
            service,
            kind,
            endpoints: Vec::new(),
            policy_local: false,
            internal_endpoints: None,
            affinity_timeout_s: None,
            source_ranges: None,
            masquerade: Masquerade::None,
            hairpin: true,
            addresses: None,
        }
    }
}

/// Endpoints from their shares, sorted by address and port.
pub fn endpoints_of(shares: BTreeMap<(Ipv4Addr, u16), f64>) -> Vec<Endpoint> {
    shares
        .into_iter()
        .map(|((address, port), weight)| Endpoint {
            address,
            port,
            weight,
        })
        .collect()
}

/// One side's frontends.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct View {
    pub frontends: BTreeMap<FrontendId, FrontendState>,
    /// Whether frontends without endpoints are visible at all (iptables' REJECT rules are
    /// in the filter table, which `iptables-save -t nat` leaves out).
    pub shows_empty: bool,
    pub not_understood: Vec<NotUnderstood>,
    /// Inconsistencies of this side's own (lb's maps mid-update or damaged), which count as
    /// differences.
    pub problems: Vec<String>,
    /// Facts about the whole ruleset worth knowing (e.g. rules skipped as not kube-proxy's).
    pub notes: Vec<String>,
}

/// Where a frontend of kube-proxy's leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Chain(String),
    /// No endpoints: rejected, or dropped (`drop`: a Local policy without local endpoints).
    NoEndpoints {
        drop: bool,
    },
}

/// A frontend rule (a `KUBE-SERVICES`/`KUBE-NODEPORTS` rule, a map element).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub line: usize,
    pub id: FrontendId,
    pub kind: Kind,
    pub service: Option<String>,
    pub target: Target,
}

/// What a per-service chain does.
#[derive(Clone, Debug)]
pub(crate) enum Chain {
    /// KUBE-SVC / KUBE-SVL, `service-…` / `local-…`: pick an endpoint chain.
    Dispatch {
        masquerade: Option<Masquerade>,
        affinity_timeout_s: Option<u32>,
        /// Endpoint chains with the share each gets.
        endpoints: Vec<(String, f64)>,
    },
    /// KUBE-EXT, `external-…`.
    External {
        masquerade_all: bool,
        /// Pods and the node itself go here (ETP=Local's short-circuit).
        short_circuit: Option<String>,
        /// Everyone else goes here; `None`: dropped (ETP=Local without local endpoints).
        policy: Option<String>,
    },
    /// KUBE-FW, `firewall-…`: sources admitted, then where they go.
    Firewall {
        ranges: Vec<String>,
        target: Option<String>,
    },
    /// KUBE-SEP, `endpoint-…`.
    Endpoint {
        destination: Option<(Ipv4Addr, u16)>,
        hairpin: bool,
    },
}

/// The facts a reader found in a dump, before they are followed into a [`View`].
#[derive(Debug)]
pub(crate) struct Ruleset {
    pub entries: Vec<Entry>,
    pub chains: HashMap<String, Chain>,
    /// nftables mode: LoadBalancer frontends subject to source ranges, and their chains.
    pub firewalls: HashMap<FrontendId, String>,
    /// KUBE-POSTROUTING / `masquerading` masquerades what is marked.
    pub masquerades_marked: bool,
    pub shows_empty: bool,
    pub not_understood: Vec<NotUnderstood>,
    pub notes: Vec<String>,
}

impl Chain {
    pub fn dispatch() -> Self {
        Chain::Dispatch {
            masquerade: None,
            affinity_timeout_s: None,
            endpoints: Vec::new(),
        }
    }

    pub fn external() -> Self {
        Chain::External {
            masquerade_all: false,
            short_circuit: None,
            policy: None,
        }
    }

    pub fn firewall() -> Self {
        Chain::Firewall {
            ranges: Vec::new(),
            target: None,
        }
    }

    pub fn endpoint() -> Self {
        Chain::Endpoint {
            destination: None,
            hairpin: false,
        }
    }
}

impl Ruleset {
    /// The facts of chain `name`, created as `new` on its first rule; an error if its
    /// rules say it is something else.
    pub fn chain(&mut self, name: &str, new: fn() -> Chain) -> Result<&mut Chain, String> {
        let fresh = new();
        let c = self
            .chains
            .entry(name.to_owned())
            .or_insert_with(|| fresh.clone());
        if std::mem::discriminant(c) != std::mem::discriminant(&fresh) {
            return Err(format!("{name} mixes rules of different chain kinds"));
        }
        Ok(c)
    }

    pub fn new(shows_empty: bool) -> Self {
        Self {
            entries: Vec::new(),
            chains: HashMap::new(),
            firewalls: HashMap::new(),
            masquerades_marked: false,
            shows_empty,
            not_understood: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Follows every frontend through its chains.
    pub fn view(mut self) -> View {
        let mut frontends = BTreeMap::new();
        let mut problems = Vec::new();
        // Frontends with a chain first, so a "no (local) endpoints" entry for the same
        // frontend only adds what it knows.
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_key(|e| matches!(e.target, Target::NoEndpoints { .. }));
        for entry in &entries {
            match &entry.target {
                Target::Chain(chain) => match self.follow(entry, chain) {
                    Ok(state) => {
                        frontends.insert(entry.id, state);
                    }
                    Err(reason) => problems.push(NotUnderstood {
                        line: entry.line,
                        text: format!("{} {} -> {chain}", entry.kind, entry.id),
                        reason,
                    }),
                },
                Target::NoEndpoints { drop } => {
                    let state = frontends
                        .entry(entry.id)
                        .or_insert_with(|| FrontendState::empty(entry.service.clone(), entry.kind));
                    state.policy_local |= *drop;
                }
            }
        }
        if !self.masquerades_marked {
            self.notes.push(
                "no rule masquerades marked packets (KUBE-POSTROUTING / masquerading): \
                 masquerade marks have no effect"
                    .into(),
            );
            for state in frontends.values_mut() {
                state.masquerade = Masquerade::None;
            }
        }
        self.not_understood.extend(problems);
        self.not_understood.sort_by_key(|n| n.line);
        View {
            frontends,
            shows_empty: self.shows_empty,
            not_understood: self.not_understood,
            problems: Vec::new(),
            notes: self.notes,
        }
    }

    fn follow(&self, entry: &Entry, chain: &str) -> Result<FrontendState, String> {
        let mut state = FrontendState::empty(entry.service.clone(), entry.kind);
        let mut chain = chain.to_owned();
        if let Some(fw) = self.firewalls.get(&entry.id) {
            let Some(Chain::Firewall { ranges, .. }) = self.chains.get(fw) else {
                return Err(format!("firewall chain {fw} is missing"));
            };
            state.source_ranges = Some(sorted(ranges));
        }
        for _ in 0..4 {
            match self.chains.get(&chain) {
                None => return Err(format!("chain {chain} is missing or empty")),
                Some(Chain::Firewall { ranges, target }) => {
                    state.source_ranges = Some(sorted(ranges));
                    match target {
                        Some(t) => chain = t.clone(),
                        None => return Ok(state),
                    }
                }
                Some(Chain::External {
                    masquerade_all,
                    short_circuit,
                    policy,
                }) => {
                    if *masquerade_all {
                        state.masquerade = Masquerade::All;
                    }
                    if let Some(sc) = short_circuit {
                        state.policy_local = true;
                        let (eps, _, _, hairpin) = self.dispatch(sc)?;
                        state.internal_endpoints = Some(eps);
                        state.hairpin &= hairpin;
                    }
                    match policy {
                        Some(p) => {
                            let (eps, affinity, _, hairpin) = self.dispatch(p)?;
                            state.endpoints = eps;
                            state.affinity_timeout_s = affinity;
                            state.hairpin &= hairpin;
                            state.policy_local |= self.is_local_chain(p);
                        }
                        None => {
                            if state.internal_endpoints.is_none() {
                                return Err(format!("{chain} leads nowhere"));
                            }
                            // Same affinity for in-cluster clients.
                            if let Some(sc) = short_circuit {
                                state.affinity_timeout_s = self.dispatch(sc)?.1;
                            }
                        }
                    }
                    return Ok(state);
                }
                Some(Chain::Dispatch { .. }) => {
                    let (eps, affinity, masq, hairpin) = self.dispatch(&chain)?;
                    state.endpoints = eps;
                    state.affinity_timeout_s = affinity;
                    state.hairpin &= hairpin;
                    if entry.id.class == Class::ClusterIp {
                        state.masquerade = masq.unwrap_or(Masquerade::None);
                        state.policy_local = self.is_local_chain(&chain);
                    }
                    return Ok(state);
                }
                Some(Chain::Endpoint { .. }) => {
                    return Err(format!("{chain} is an endpoint chain"))
                }
            }
        }
        Err(format!("{chain}: chains lead too deep"))
    }

    /// KUBE-SVL / `local-…`.
    fn is_local_chain(&self, chain: &str) -> bool {
        chain.starts_with("KUBE-SVL-") || chain.starts_with("local-")
    }

    /// The endpoints a dispatch chain leads to (merged, sorted), its affinity timeout and
    /// masquerade rule, and whether every endpoint masquerades hairpin traffic.
    #[allow(clippy::type_complexity)]
    fn dispatch(
        &self,
        chain: &str,
    ) -> Result<(Vec<Endpoint>, Option<u32>, Option<Masquerade>, bool), String> {
        let Some(Chain::Dispatch {
            masquerade,
            affinity_timeout_s,
            endpoints,
        }) = self.chains.get(chain)
        else {
            return Err(format!("{chain} is missing or is not a service chain"));
        };
        let mut by_dest: BTreeMap<(Ipv4Addr, u16), f64> = BTreeMap::new();
        let mut hairpin = true;
        for (sep, weight) in endpoints {
            match self.chains.get(sep) {
                Some(Chain::Endpoint {
                    destination: Some(dest),
                    hairpin: h,
                }) => {
                    *by_dest.entry(*dest).or_default() += weight;
                    hairpin &= h;
                }
                _ => return Err(format!("{chain} jumps to {sep}, which has no DNAT")),
            }
        }
        Ok((
            endpoints_of(by_dest),
            *affinity_timeout_s,
            masquerade.clone(),
            hairpin,
        ))
    }
}

/// Source ranges in one order on both sides (lb's trie walks by prefix length).
pub(crate) fn sorted(ranges: &[String]) -> Vec<String> {
    ranges
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `address/prefix` with host bits cleared; a bare address is a /32.
pub fn cidr(text: &str) -> Option<String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Some(format!(
        "{}/{prefix}",
        Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

/// `address:port`.
pub fn destination(text: &str) -> Option<(Ipv4Addr, u16)> {
    let (a, p) = text.split_once(':')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_normalised() {
        assert_eq!(cidr("172.18.0.1").as_deref(), Some("172.18.0.1/32"));
        assert_eq!(cidr("203.0.113.7/25").as_deref(), Some("203.0.113.0/25"));
        assert_eq!(cidr("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(cidr("10.0.0.0/33"), None);
        assert_eq!(cidr("nope"), None);
    }

    #[test]
    fn a_missing_chain_is_not_understood_not_a_panic() {
        let mut r = Ruleset::new(true);
        r.masquerades_marked = true;
        r.entries.push(Entry {
            line: 3,
            id: FrontendId {
                class: Class::ClusterIp,
                address: Some(Ipv4Addr::new(10, 96, 0, 1)),
                port: 80,
                protocol: "TCP",
            },
            kind: Kind::ClusterIP,
            service: Some("a/b:c".into()),
            target: Target::Chain("KUBE-SVC-X".into()),
        });
        let v = r.view();
        assert!(v.frontends.is_empty());
        assert_eq!(v.not_understood.len(), 1);
        assert_eq!(v.not_understood[0].line, 3);
        assert!(v.not_understood[0].reason.contains("KUBE-SVC-X"));
    }
}
