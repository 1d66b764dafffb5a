//! iptables mode: the `iptables-restore --noflush` input kube-proxy writes in `syncProxyRules`
//! (pkg/proxy/iptables/proxier.go, v1.30–1.31), line for line and in its order.
//!
//! kube-proxy walks its service map in Go's random map order; we walk the services in the
//! order given, which is one of the orders kube-proxy could produce. Everything else (the
//! order of chains, of rules inside a chain, the spelling of each match) is kube-proxy's.

use std::collections::{BTreeSet, HashSet};

use super::{
    chain_names::{iptables_endpoint_chain, IptablesChains},
    updated_services, BenchEndpoint, BenchService, ProxyConfig,
};

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// kubelet's anti-martian chain, which kube-proxy duplicates for localhost NodePorts.
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// Above this many endpoints in total kube-proxy drops per-endpoint comments to keep the
/// restore input small ("large cluster mode").
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

const NODEPORTS_LAST_RULE_COMMENT: &str =
    r#""kubernetes service nodeports; NOTE: this must be the last rule in this chain""#;

/// The full `iptables-restore --noflush` input of kube-proxy's first full sync: `*filter`
/// then `*nat`, each with its `:CHAIN - [0:0]` lines, rules and `COMMIT`.
///
/// The jumps from the built-in chains are not part of it (kube-proxy adds them with
/// separate iptables calls); see [`jump_rules_input`].
pub fn restore_input(services: &[BenchService], cfg: &ProxyConfig) -> String {
    Sync::new(cfg, services).run(services, None).text
}

/// The input of a partial sync from `previous` to `current`, as kube-proxy (1.28+) writes it
/// after Service or EndpointSlice changes: the filter table and the nat table's
/// KUBE-SERVICES / KUBE-NODEPORTS / KUBE-POSTROUTING / KUBE-MARK-MASQ are rewritten in full,
/// per-service chains only for the Services that changed, and chains no longer used are
/// flushed and deleted (`-X`).
///
/// In large cluster mode kube-proxy deletes stale chains at most once per sync period
/// (they are unreferenced, hence harmless); this input then leaves them, as the syncs in
/// between do.
pub fn partial_restore_input(
    previous: &[BenchService],
    current: &[BenchService],
    cfg: &ProxyConfig,
) -> String {
    let existing = Sync::new(cfg, previous)
        .run(previous, None)
        .active_nat_chains;
    let updated = updated_services(previous, current);
    Sync::new(cfg, current)
        .run(
            current,
            Some(Partial {
                updated: &updated,
                existing: &existing,
            }),
        )
        .text
}

/// One jump from a built-in chain into a kube-proxy chain.
struct Jump {
    table: &'static str,
    dst: &'static str,
    src: &'static str,
    comment: &'static str,
    extra: &'static str,
}

/// kube-proxy's `iptablesJumpChains` followed by `iptablesKubeletJumpChains`, in order.
const JUMPS: [Jump; 14] = {
    const NEW: &str = "-m conntrack --ctstate NEW";
    const fn j(
        table: &'static str,
        dst: &'static str,
        src: &'static str,
        comment: &'static str,
        extra: &'static str,
    ) -> Jump {
        Jump {
            table,
            dst,
            src,
            comment,
            extra,
        }
    }
    [
        j(
            "filter",
            KUBE_EXTERNAL_SERVICES,
            "INPUT",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        j(
            "filter",
            KUBE_EXTERNAL_SERVICES,
            "FORWARD",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        j(
            "filter",
            KUBE_NODEPORTS,
            "INPUT",
            "kubernetes health check service ports",
            "",
        ),
        j(
            "filter",
            KUBE_SERVICES,
            "FORWARD",
            "kubernetes service portals",
            NEW,
        ),
        j(
            "filter",
            KUBE_SERVICES,
            "OUTPUT",
            "kubernetes service portals",
            NEW,
        ),
        j(
            "filter",
            KUBE_FORWARD,
            "FORWARD",
            "kubernetes forwarding rules",
            "",
        ),
        j(
            "filter",
            KUBE_PROXY_FIREWALL,
            "INPUT",
            "kubernetes load balancer firewall",
            NEW,
        ),
        j(
            "filter",
            KUBE_PROXY_FIREWALL,
            "OUTPUT",
            "kubernetes load balancer firewall",
            NEW,
        ),
        j(
            "filter",
            KUBE_PROXY_FIREWALL,
            "FORWARD",
            "kubernetes load balancer firewall",
            NEW,
        ),
        j(
            "nat",
            KUBE_SERVICES,
            "OUTPUT",
            "kubernetes service portals",
            "",
        ),
        j(
            "nat",
            KUBE_SERVICES,
            "PREROUTING",
            "kubernetes service portals",
            "",
        ),
        j(
            "nat",
            KUBE_POSTROUTING,
            "POSTROUTING",
            "kubernetes postrouting rules",
            "",
        ),
        j("filter", KUBE_FIREWALL, "INPUT", "", ""),
        j("filter", KUBE_FIREWALL, "OUTPUT", "", ""),
    ]
};

impl Jump {
    /// The rule spec after `-I SRC` / `-D SRC`, as kube-proxy passes it to iptables.
    fn spec(&self) -> String {
        let mut spec = String::new();
        if !self.extra.is_empty() {
            spec += self.extra;
            spec += " ";
        }
        if !self.comment.is_empty() {
            spec += &format!(r#"-m comment --comment "{}" "#, self.comment);
        }
        spec + "-j " + self.dst
    }
}

/// What kube-proxy's full sync does before its restore, as restore input: create the
/// top-level chains and prepend the jumps into them (`EnsureChain` + `EnsureRule(Prepend)`
/// for each entry, in order, so the last one ends up first). Apply it before
/// [`restore_input`].
pub fn jump_rules_input() -> String {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let jumps: Vec<&Jump> = JUMPS.iter().filter(|j| j.table == table).collect();
        out += &format!("*{table}\n");
        let mut declared = Vec::new();
        for jump in &jumps {
            if !declared.contains(&jump.dst) {
                declared.push(jump.dst);
                out += &chain_line(jump.dst);
            }
        }
        for jump in &jumps {
            out += &format!("-I {} {}\n", jump.src, jump.spec());
        }
        out += "COMMIT\n";
    }
    out
}

/// Restore input that removes what [`jump_rules_input`] and [`restore_input`] put in: the
/// jumps from built-in chains, then every chain of ours, flushed and deleted. Like
/// kube-proxy's `CleanupLeftovers`, but it also removes KUBE-FIREWALL, which a benchmark
/// namespace has no kubelet to own.
pub fn cleanup_input(services: &[BenchService], cfg: &ProxyConfig) -> String {
    let full = restore_input(services, cfg);
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let mut chains: Vec<&str> = Vec::new();
        let declared = full
            .split(&format!("*{table}\n"))
            .nth(1)
            .and_then(|rest| rest.split("COMMIT\n").next())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next());
        let jump_targets = JUMPS.iter().filter(|j| j.table == table).map(|j| j.dst);
        for chain in declared.chain(jump_targets) {
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
        out += &format!("*{table}\n");
        for chain in &chains {
            out += &chain_line(chain);
        }
        for jump in JUMPS.iter().filter(|j| j.table == table) {
            out += &format!("-D {} {}\n", jump.src, jump.spec());
        }
        for chain in &chains {
            out += &format!("-X {chain}\n");
        }
        out += "COMMIT\n";
    }
    out
}

/// `:CHAIN - [0:0]`, which creates the chain, or flushes it if it exists.
fn chain_line(chain: &str) -> String {
    format!(":{chain} - [0:0]\n")
}

/// `1/n` as kube-proxy prints it (`%0.10f`; both Go and Rust round the exact binary value
/// half-to-even).
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// KUBE-SEP, KUBE-SVC, KUBE-SVL, KUBE-EXT and KUBE-FW chains are the per-service ones
/// kube-proxy deletes when unused.
fn is_service_chain(chain: &str) -> bool {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-SEP-",
        "KUBE-FW-",
        "KUBE-EXT-",
    ]
    .iter()
    .any(|p| chain.starts_with(p))
}

/// What a partial sync knows: which Services changed, and which chains exist already
/// (kube-proxy reads them with iptables-save).
struct Partial<'a> {
    updated: &'a HashSet<(String, String)>,
    existing: &'a BTreeSet<String>,
}

struct Synced {
    text: String,
    active_nat_chains: BTreeSet<String>,
}

/// One run of kube-proxy's `syncProxyRules`, writing into its four line buffers.
struct Sync<'a> {
    cfg: &'a ProxyConfig,
    mark: String,
    large_cluster: bool,
    filter_chains: Vec<String>,
    filter_rules: Vec<String>,
    nat_chains: Vec<String>,
    nat_rules: Vec<String>,
    active_nat_chains: BTreeSet<String>,
}

/// Where per-service nat chains and rules go: kube-proxy's real buffers, or the discarding
/// ones for Services a partial sync skips.
struct NatOut<'b> {
    chains: &'b mut Vec<String>,
    rules: &'b mut Vec<String>,
}

impl<'a> Sync<'a> {
    fn new(cfg: &'a ProxyConfig, services: &[BenchService]) -> Sync<'a> {
        let total_endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
        Sync {
            cfg,
            mark: cfg.masquerade_mark(),
            large_cluster: total_endpoints > LARGE_CLUSTER_ENDPOINTS,
            filter_chains: Vec::new(),
            filter_rules: Vec::new(),
            nat_chains: Vec::new(),
            nat_rules: Vec::new(),
            active_nat_chains: BTreeSet::new(),
        }
    }

    fn run(mut self, services: &[BenchService], partial: Option<Partial<'_>>) -> Synced {
        for chain in [
            KUBE_SERVICES,
            KUBE_EXTERNAL_SERVICES,
            KUBE_FORWARD,
            KUBE_NODEPORTS,
            KUBE_PROXY_FIREWALL,
        ] {
            self.filter_chains.push(chain_line(chain));
        }
        for chain in [
            KUBE_SERVICES,
            KUBE_NODEPORTS,
            KUBE_POSTROUTING,
            KUBE_MARK_MASQ,
        ] {
            self.nat_chains.push(chain_line(chain));
        }
        self.write_masquerade_rules();
        if self.cfg.effective_localhost_nodeports() {
            // route_localnet opens a hole (issue 90259) that this rule closes.
            self.filter_chains.push(chain_line(KUBE_FIREWALL));
            self.filter_rules.push(format!(
                "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" \
                 -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n"
            ));
        }

        for svc in services {
            let skip = partial.as_ref().is_some_and(|p| {
                !p.updated
                    .contains(&(svc.namespace.clone(), svc.name.clone()))
            });
            self.write_service(svc, skip);
        }

        if let Some(p) = &partial {
            if !self.large_cluster {
                for chain in p.existing.difference(&self.active_nat_chains) {
                    if is_service_chain(chain) {
                        self.nat_chains.push(chain_line(chain));
                        self.nat_rules.push(format!("-X {chain}\n"));
                    }
                }
            }
        }

        self.write_nodeports_jump();
        self.write_forward_rules();

        let mut text = String::from("*filter\n");
        text.extend(self.filter_chains.iter().map(String::as_str));
        text.extend(self.filter_rules.iter().map(String::as_str));
        text += "COMMIT\n*nat\n";
        text.extend(self.nat_chains.iter().map(String::as_str));
        text.extend(self.nat_rules.iter().map(String::as_str));
        text += "COMMIT\n";
        Synced {
            text,
            active_nat_chains: self.active_nat_chains,
        }
    }

    /// KUBE-POSTROUTING masquerades what KUBE-MARK-MASQ marked, once.
    fn write_masquerade_rules(&mut self) {
        let mark = &self.mark;
        self.nat_rules.push(format!(
            "-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n"
        ));
        // Clearing the mark keeps a packet that re-traverses the stack from being
        // masqueraded twice.
        self.nat_rules
            .push(format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}\n"));
        let random_fully = if self.cfg.random_fully {
            " --random-fully"
        } else {
            ""
        };
        self.nat_rules.push(format!(
            "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" \
             -j MASQUERADE{random_fully}\n"
        ));
        self.nat_rules
            .push(format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}\n"));
    }

    /// The per-service-port part of `syncProxyRules`.
    fn write_service(&mut self, svc: &BenchService, skip: bool) {
        let proto = svc.protocol.lower();
        let name = svc.port_name_string();
        let port = svc.port;
        let cat = svc.categorize();
        let chains = IptablesChains::for_service(svc);
        let ext_local = svc.external_policy_local();

        let uses_cluster_chain = !cat.cluster.is_empty();
        let uses_local_chain = !cat.local.is_empty();
        // Internal traffic policy is Cluster: ClusterIP traffic always uses KUBE-SVC.
        let internal_chain = &chains.cluster;
        let has_internal = cat.has_endpoints;
        let (external_policy_chain, has_external) = if ext_local {
            (&chains.local, cat.has_endpoints && uses_local_chain)
        } else {
            (&chains.cluster, cat.has_endpoints)
        };
        let external_chain = &chains.external;
        // The EXT chain also carries the short-circuit rules for in-cluster clients, so it
        // exists even when no endpoint serves external traffic.
        let uses_external_chain = cat.has_endpoints && svc.externally_accessible();
        let uses_fw_chain =
            cat.has_endpoints && !svc.lb_ips.is_empty() && !svc.lb_source_ranges.is_empty();
        let lb_chain = if uses_fw_chain {
            &chains.firewall
        } else {
            external_chain
        };

        // No endpoints anywhere: REJECT (connection refused). Endpoints, but none for
        // external traffic under ETP=Local: DROP what the EXT chain did not short-circuit.
        let (internal_filter, external_filter) = if !cat.has_endpoints {
            let reject = ("REJECT", format!("\"{name} has no endpoints\""));
            (Some(reject.clone()), Some(reject))
        } else if !has_external {
            (
                None,
                Some(("DROP", format!("\"{name} has no local endpoints\""))),
            )
        } else {
            (None, None)
        };
        let vip_match =
            |ip: &dyn std::fmt::Display| format!("-m {proto} -p {proto} -d {ip} --dport {port}");

        if has_internal {
            self.nat_rules.push(format!(
                "-A {KUBE_SERVICES} -m comment --comment \"{name} cluster IP\" {} -j {internal_chain}\n",
                vip_match(&svc.cluster_ip)
            ));
        } else if let Some((target, comment)) = &internal_filter {
            self.filter_rules.push(format!(
                "-A {KUBE_SERVICES} -m comment --comment {comment} {} -j {target}\n",
                vip_match(&svc.cluster_ip)
            ));
        }

        for ip in &svc.external_ips {
            if cat.has_endpoints {
                self.nat_rules.push(format!(
                    "-A {KUBE_SERVICES} -m comment --comment \"{name} external IP\" {} -j {external_chain}\n",
                    vip_match(ip)
                ));
            }
            if let Some((target, comment)) = &external_filter {
                self.filter_rules.push(format!(
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {comment} {} -j {target}\n",
                    vip_match(ip)
                ));
            }
        }

        for ip in &svc.lb_ips {
            if cat.has_endpoints {
                self.nat_rules.push(format!(
                    "-A {KUBE_SERVICES} -m comment --comment \"{name} loadbalancer IP\" {} -j {lb_chain}\n",
                    vip_match(ip)
                ));
            }
            if uses_fw_chain {
                self.filter_rules.push(format!(
                    "-A {KUBE_PROXY_FIREWALL} -m comment --comment \"{name} traffic not accepted by {}\" {} -j DROP\n",
                    chains.firewall,
                    vip_match(ip)
                ));
            }
        }
        if let Some((target, comment)) = &external_filter {
            for ip in &svc.lb_ips {
                self.filter_rules.push(format!(
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {comment} {} -j {target}\n",
                    vip_match(ip)
                ));
            }
        }

        if let Some(node_port) = svc.node_port {
            if cat.has_endpoints {
                if self.cfg.effective_localhost_nodeports() && self.cfg.nfacct {
                    self.nat_rules.push(format!(
                        "-A {KUBE_NODEPORTS} -m comment --comment {name} -m {proto} -p {proto} -d 127.0.0.0/8 \
                         --dport {node_port} -m nfacct --nfacct-name localhost_nps_accepted_pkts -j {external_chain}\n"
                    ));
                }
                // NodePorts are not subject to loadBalancerSourceRanges.
                self.nat_rules.push(format!(
                    "-A {KUBE_NODEPORTS} -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} \
                     -j {external_chain}\n"
                ));
            }
            if let Some((target, comment)) = &external_filter {
                self.filter_rules.push(format!(
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {comment} -m addrtype --dst-type LOCAL \
                     -m {proto} -p {proto} --dport {node_port} -j {target}\n"
                ));
            }
        }

        if let Some(hc) = svc.effective_health_check_node_port() {
            // Opened whether or not this node has local endpoints: the answer is the point.
            self.filter_rules.push(format!(
                "-A {KUBE_NODEPORTS} -m comment --comment \"{name} health check node port\" -m tcp -p tcp \
                 --dport {hc} -j ACCEPT\n"
            ));
        }

        // Everything below is the service's own chains, which a partial sync only rewrites
        // for changed services; kube-proxy still counts them as active.
        let (mut skipped_chains, mut skipped_rules) = (Vec::new(), Vec::new());
        let out = if skip {
            NatOut {
                chains: &mut skipped_chains,
                rules: &mut skipped_rules,
            }
        } else {
            NatOut {
                chains: &mut self.nat_chains,
                rules: &mut self.nat_rules,
            }
        };

        if has_internal {
            let args = format!(
                "-m comment --comment \"{name} cluster IP\" {}",
                vip_match(&svc.cluster_ip)
            );
            if self.cfg.masquerade_all {
                out.rules
                    .push(format!("-A {internal_chain} {args} -j {KUBE_MARK_MASQ}\n"));
            } else if let Some(cidr) = self.cfg.cluster_cidr {
                // Off-cluster clients routed to a service VIP may bounce off-node:
                // masquerade them.
                out.rules.push(format!(
                    "-A {internal_chain} {args} ! -s {cidr} -j {KUBE_MARK_MASQ}\n"
                ));
            }
        }

        if uses_external_chain {
            out.chains.push(chain_line(external_chain));
            self.active_nat_chains.insert(external_chain.clone());
            if !ext_local {
                // Endpoints may be on other nodes: masquerade so replies come back here.
                out.rules.push(format!(
                    "-A {external_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" \
                     -j {KUBE_MARK_MASQ}\n"
                ));
            } else {
                if let Some(cidr) = self.cfg.cluster_cidr {
                    // Pods reaching an external address of the service are treated as
                    // if they had gone out to the load balancer and come back in.
                    out.rules.push(format!(
                        "-A {external_chain} -m comment --comment \"pod traffic for {name} external destinations\" \
                         -s {cidr} -j {}\n",
                        chains.cluster
                    ));
                }
                // The node itself picks the (local) LB IP as source: masquerade it, and
                // send it to all endpoints.
                out.rules.push(format!(
                    "-A {external_chain} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
                     -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}\n"
                ));
                out.rules.push(format!(
                    "-A {external_chain} -m comment --comment \"route LOCAL traffic for {name} external destinations\" \
                     -m addrtype --src-type LOCAL -j {}\n",
                    chains.cluster
                ));
            }
            if has_external {
                out.rules
                    .push(format!("-A {external_chain} -j {external_policy_chain}\n"));
            }
        }

        if uses_fw_chain {
            let fw = &chains.firewall;
            out.chains.push(chain_line(fw));
            self.active_nat_chains.insert(fw.clone());
            let head = format!("-A {fw} -m comment --comment \"{name} loadbalancer IP\"");
            let mut allow_from_node = false;
            for cidr in &svc.lb_source_ranges {
                out.rules
                    .push(format!("{head} -s {cidr} -j {external_chain}\n"));
                allow_from_node |= cidr.contains(self.cfg.primary_node_ip);
            }
            if allow_from_node {
                // A node reaching a VIP-like LB IP loops back with the LB IP as source.
                for ip in &svc.lb_ips {
                    out.rules
                        .push(format!("{head} -s {ip} -j {external_chain}\n"));
                }
            }
            // Falls through un-DNATed, so KUBE-PROXY-FIREWALL drops it in filter.
            out.rules.push(format!(
                "-A {fw} -m comment --comment \"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL\"\n"
            ));
        }

        if uses_cluster_chain {
            out.chains.push(chain_line(&chains.cluster));
            self.active_nat_chains.insert(chains.cluster.clone());
            write_dispatch(
                out.rules,
                self.large_cluster,
                svc,
                &chains.cluster,
                &cat.cluster,
            );
        }
        if uses_local_chain {
            out.chains.push(chain_line(&chains.local));
            self.active_nat_chains.insert(chains.local.clone());
            write_dispatch(
                out.rules,
                self.large_cluster,
                svc,
                &chains.local,
                &cat.local,
            );
        }

        for ep in &cat.reachable {
            let sep = iptables_endpoint_chain(svc, ep);
            out.chains.push(chain_line(&sep));
            let head = format!("-A {sep}{}", comment(self.large_cluster, &name));
            // Hairpin: a pod reaching itself through the service must see another
            // source, or it would answer itself directly.
            out.rules
                .push(format!("{head} -s {} -j {KUBE_MARK_MASQ}\n", ep.ip));
            let affinity = if svc.affinity_timeout_s.is_some() {
                format!(" -m recent --name {sep} --set")
            } else {
                String::new()
            };
            out.rules.push(format!(
                "{head}{affinity} -m {proto} -p {proto} -j DNAT --to-destination {}\n",
                ep.addr_port()
            ));
            self.active_nat_chains.insert(sep);
        }
    }

    /// The tail call to KUBE-NODEPORTS, which must stay the last rule of KUBE-SERVICES.
    fn write_nodeports_jump(&mut self) {
        if self.cfg.node_ips.is_empty() {
            // Block localhost NodePorts unless route_localnet was set for them.
            let no_localhost = if self.cfg.effective_localhost_nodeports() {
                ""
            } else {
                " ! -d 127.0.0.0/8"
            };
            self.nat_rules.push(format!(
                "-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_LAST_RULE_COMMENT} \
                 -m addrtype --dst-type LOCAL{no_localhost} -j {KUBE_NODEPORTS}\n"
            ));
        } else {
            for ip in &self.cfg.node_ips {
                if ip.is_loopback() && !self.cfg.effective_localhost_nodeports() {
                    continue;
                }
                self.nat_rules.push(format!(
                    "-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_LAST_RULE_COMMENT} -d {ip} -j {KUBE_NODEPORTS}\n"
                ));
            }
        }
    }

    fn write_forward_rules(&mut self) {
        if !self.cfg.conntrack_tcp_liberal {
            // An out-of-window packet would otherwise reach the pod un-NATed and make it
            // reset the connection (issues 74839, 117924).
            let nfacct = if self.cfg.nfacct {
                " -m nfacct --nfacct-name ct_state_invalid_dropped_pkts"
            } else {
                ""
            };
            self.filter_rules.push(format!(
                "-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{nfacct} -j DROP\n"
            ));
        }
        let mark = &self.mark;
        // Forward what kube-proxy NATed even when the FORWARD policy is DROP.
        self.filter_rules.push(format!(
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT\n"
        ));
        self.filter_rules.push(format!(
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" \
             -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        ));
    }
}

/// `writeServiceToEndpointRules`: affinity lookups first, then one rule per endpoint with
/// probability 1/(n-i), the last one unconditional, so each endpoint gets 1/n.
fn write_dispatch(
    rules: &mut Vec<String>,
    large_cluster: bool,
    svc: &BenchService,
    chain: &str,
    endpoints: &[&BenchEndpoint],
) {
    let name = svc.port_name_string();
    let ep_comment =
        |ep: &BenchEndpoint| comment(large_cluster, &format!("\"{name} -> {}\"", ep.addr_port()));
    if let Some(timeout) = svc.affinity_timeout_s {
        for ep in endpoints {
            let sep = iptables_endpoint_chain(svc, ep);
            rules.push(format!(
                "-A {chain}{} -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}\n",
                ep_comment(ep)
            ));
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let sep = iptables_endpoint_chain(svc, ep);
        let statistic = if i < n - 1 {
            format!(
                " -m statistic --mode random --probability {}",
                probability(n - i)
            )
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {chain}{}{statistic} -j {sep}\n",
            ep_comment(ep)
        ));
    }
}

/// ` -m comment --comment C`, left out in large cluster mode (saves 40%+ of the input).
fn comment(large_cluster: bool, comment: &str) -> String {
    if large_cluster {
        String::new()
    } else {
        format!(" -m comment --comment {comment}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{fixtures, synthetic_services};

    /// kube-proxy's `sortIPTablesRules`: tables by name; chains KUBE-NODEPORTS,
    /// KUBE-SERVICES, then alphabetical; rules grouped by chain in written order, with
    /// KUBE-NODEPORTS and KUBE-SERVICES stably sorted by the service name in their comment
    /// (keeping the "must be the last rule" rule last).
    fn sort_like_kube_proxy_tests(input: &str) -> String {
        struct Table<'a> {
            name: &'a str,
            chains: Vec<&'a str>,
            rules: Vec<(&'a str, &'a str)>,
        }
        let mut tables: Vec<Table> = Vec::new();
        for line in input.lines() {
            if let Some(name) = line.strip_prefix('*') {
                tables.push(Table {
                    name,
                    chains: Vec::new(),
                    rules: Vec::new(),
                });
            } else if let Some(chain) = line.strip_prefix(':') {
                tables
                    .last_mut()
                    .unwrap()
                    .chains
                    .push(chain.split(' ').next().unwrap());
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split(' ').next().unwrap();
                tables.last_mut().unwrap().rules.push((chain, line));
            }
        }
        fn chain_rank(c: &str) -> (u8, &str) {
            match c {
                KUBE_NODEPORTS => (0, ""),
                KUBE_SERVICES => (1, ""),
                c if c.starts_with("KUBE-") => (2, c),
                c => (3, c),
            }
        }
        fn service_in_comment(rule: &str) -> String {
            let Some((_, after)) = rule.split_once("--comment ") else {
                return String::new();
            };
            let value = match after.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap(),
                None => after.split(' ').next().unwrap(),
            };
            value.split([' ', ':']).next().unwrap().to_string()
        }
        tables.sort_by_key(|t| t.name);
        let mut out = String::new();
        for t in &mut tables {
            t.chains.sort_by_key(|c| chain_rank(c));
            out += &format!("*{}\n", t.name);
            for c in &t.chains {
                out += &format!(":{c} - [0:0]\n");
            }
            for c in &t.chains {
                let mut rules: Vec<&str> = t
                    .rules
                    .iter()
                    .filter(|(rc, _)| rc == c)
                    .map(|(_, r)| *r)
                    .collect();
                if *c == KUBE_NODEPORTS || *c == KUBE_SERVICES {
                    rules.sort_by_key(|r| {
                        (r.contains("must be the last rule"), service_in_comment(r))
                    });
                }
                for r in rules {
                    out += r;
                    out += "\n";
                }
            }
            out += "COMMIT\n";
        }
        out
    }

    /// kube-proxy's `TestOverallIPTablesRules` expected output (v1.31+, with nfacct).
    const OVERALL_EXPECTED: &str = r#"*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3003 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3002 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"#;

    #[test]
    fn full_sync_reproduces_kube_proxys_overall_rules_test() {
        let cfg = fixtures::iptables_fake_proxier_config();
        // The fake proxier is given the mark as "0x4000"; the real one formats it itself.
        let ours =
            restore_input(&fixtures::overall_services(), &cfg).replace("0x00004000", "0x4000");
        let sorted = sort_like_kube_proxy_tests(&ours);
        for (i, (got, want)) in sorted.lines().zip(OVERALL_EXPECTED.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(sorted, OVERALL_EXPECTED);
    }

    fn one_service(endpoints: usize) -> BenchService {
        let mut svc = fixtures::svc("ns1", "svc1", 41);
        svc.endpoints = (1..=endpoints)
            .map(|i| fixtures::ep(&format!("10.180.0.{i}"), false))
            .collect();
        svc
    }

    fn rules_of<'t>(text: &'t str, chain: &str) -> Vec<&'t str> {
        let prefix = format!("-A {chain} ");
        text.lines().filter(|l| l.starts_with(&prefix)).collect()
    }

    fn statistic_probabilities(endpoints: usize) -> Vec<Option<String>> {
        let svc = one_service(endpoints);
        let text = restore_input(std::slice::from_ref(&svc), &ProxyConfig::default());
        rules_of(&text, &IptablesChains::for_service(&svc).cluster)
            .iter()
            .filter(|r| r.contains("KUBE-SEP-"))
            .map(|r| {
                r.split_once("--probability ")
                    .map(|(_, p)| p.split(' ').next().unwrap().to_string())
            })
            .collect()
    }

    #[test]
    fn probabilities_for_one_two_three_and_ten_endpoints() {
        let p = |s: &str| Some(s.to_string());
        assert_eq!(statistic_probabilities(1), [None]);
        assert_eq!(statistic_probabilities(2), [p("0.5000000000"), None]);
        assert_eq!(
            statistic_probabilities(3),
            [p("0.3333333333"), p("0.5000000000"), None]
        );
        assert_eq!(
            statistic_probabilities(10),
            [
                p("0.1000000000"),
                p("0.1111111111"),
                p("0.1250000000"),
                p("0.1428571429"),
                p("0.1666666667"),
                p("0.2000000000"),
                p("0.2500000000"),
                p("0.3333333333"),
                p("0.5000000000"),
                None
            ]
        );
    }

    #[test]
    fn probability_rounds_like_go() {
        // 1/2048 = 0.00048828125 exactly: a tie, which Go's strconv rounds to even.
        assert_eq!(probability(2048), "0.0004882812");
        assert_eq!(probability(7), "0.1428571429");
    }

    #[test]
    fn clusterip_service_rules_in_kube_proxy_order() {
        let svc = one_service(3);
        let text = restore_input(&[svc], &ProxyConfig::default());
        let expected = r#"*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-LXVODXWDISEETFEF - [0:0]
:KUBE-SEP-ICDUIKC33SFI6ZPR - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-LXVODXWDISEETFEF
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.3:80" -j KUBE-SEP-ICDUIKC33SFI6ZPR
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-LXVODXWDISEETFEF -m comment --comment ns1/svc1:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-LXVODXWDISEETFEF -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-ICDUIKC33SFI6ZPR -m comment --comment ns1/svc1:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-ICDUIKC33SFI6ZPR -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"#;
        for (i, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn nodeports_rule_is_last_in_kube_services() {
        let mut svcs = fixtures::overall_services();
        svcs.extend(synthetic_services(20, 2));
        for cfg in [
            ProxyConfig::default(),
            ProxyConfig {
                node_ips: vec![fixtures::ip("192.168.0.2"), fixtures::ip("192.168.1.2")],
                ..ProxyConfig::default()
            },
        ] {
            let text = restore_input(&svcs, &cfg);
            let nat = text.split("*nat\n").nth(1).unwrap();
            let rules = rules_of(nat, KUBE_SERVICES);
            let n = cfg.node_ips.len().max(1);
            let (body, tail) = rules.split_at(rules.len() - n);
            assert!(tail.iter().all(|r| r.contains("must be the last rule")));
            assert!(body.iter().all(|r| !r.contains("must be the last rule")));
            if !cfg.node_ips.is_empty() {
                assert!(tail[0].ends_with("-d 192.168.0.2 -j KUBE-NODEPORTS"));
                assert!(tail[1].ends_with("-d 192.168.1.2 -j KUBE-NODEPORTS"));
            }
        }
    }

    #[test]
    fn localhost_nodeports_off_blocks_loopback_and_drops_kube_firewall() {
        let cfg = ProxyConfig {
            localhost_nodeports: false,
            ..ProxyConfig::default()
        };
        let text = restore_input(&[one_service(1)], &cfg);
        assert!(text.contains("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS\n"));
        assert!(!text.contains("KUBE-FIREWALL"));
    }

    #[test]
    fn masquerade_rules_and_masquerade_all() {
        let text = restore_input(&[one_service(1)], &ProxyConfig::default());
        assert!(text.contains(
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n"
        ));
        assert!(text.contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ\n"));

        let all = ProxyConfig {
            masquerade_all: true,
            ..ProxyConfig::default()
        };
        let text = restore_input(&[one_service(1)], &all);
        assert!(text.contains(
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ\n"
        ));

        let no_detector = ProxyConfig {
            cluster_cidr: None,
            ..ProxyConfig::default()
        };
        let text = restore_input(&[one_service(1)], &no_detector);
        assert_eq!(rules_of(&text, "KUBE-SVC-XPGD46QRK7WJZT7O").len(), 1);
    }

    #[test]
    fn external_local_with_local_endpoints_uses_svl_and_ext() {
        let mut svc = fixtures::svc("ns2", "svc2", 42);
        svc.external_local = true;
        svc.node_port = Some(3001);
        svc.health_check_node_port = Some(30000);
        svc.endpoints = vec![
            fixtures::ep("10.180.0.2", false),
            fixtures::ep("10.180.0.3", true),
        ];
        let text = restore_input(
            std::slice::from_ref(&svc),
            &fixtures::iptables_fake_proxier_config(),
        );
        let c = IptablesChains::for_service(&svc);
        let local_sep = iptables_endpoint_chain(&svc, &svc.endpoints[1]);
        let remote_sep = iptables_endpoint_chain(&svc, &svc.endpoints[0]);

        assert_eq!(
            rules_of(&text, &c.external),
            [
                format!("-A {} -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\" -s 10.0.0.0/8 -j {}", c.external, c.cluster),
                format!("-A {} -m comment --comment \"masquerade LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ", c.external),
                format!("-A {} -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j {}", c.external, c.cluster),
                format!("-A {} -j {}", c.external, c.local),
            ]
        );
        assert_eq!(
            rules_of(&text, &c.local),
            [format!(
                "-A {} -m comment --comment \"ns2/svc2:p80 -> 10.180.0.3:80\" -j {local_sep}",
                c.local
            )]
        );
        // Both endpoints stay in KUBE-SVC for in-cluster traffic, and both get a SEP chain.
        assert_eq!(rules_of(&text, &c.cluster).len(), 3);
        assert!(text.contains(&format!(":{remote_sep} - [0:0]\n")));
        assert!(text.contains(&format!(":{local_sep} - [0:0]\n")));
        // The NodePort enters through KUBE-EXT; no DROP since a local endpoint exists.
        assert!(text.contains(&format!(
            "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j {}\n",
            c.external
        )));
        assert!(!text.contains("has no local endpoints"));
        assert!(text.contains(
            "-A KUBE-NODEPORTS -m comment --comment \"ns2/svc2:p80 health check node port\" -m tcp -p tcp --dport 30000 -j ACCEPT\n"
        ));
    }

    #[test]
    fn session_affinity_writes_recent_rules() {
        let mut svc = one_service(2);
        svc.affinity_timeout_s = Some(300);
        let text = restore_input(std::slice::from_ref(&svc), &ProxyConfig::default());
        let c = IptablesChains::for_service(&svc);
        let seps: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| iptables_endpoint_chain(&svc, e))
            .collect();
        let rules = rules_of(&text, &c.cluster);
        assert_eq!(rules.len(), 5, "{rules:#?}");
        for (i, sep) in seps.iter().enumerate() {
            assert_eq!(
                rules[1 + i],
                format!(
                    "-A {} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.{}:80\" -m recent --name {sep} --rcheck --seconds 300 --reap -j {sep}",
                    c.cluster,
                    i + 1
                )
            );
            assert!(text.contains(&format!(
                "-A {sep} -m comment --comment ns1/svc1:p80 -m recent --name {sep} --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.{}:80\n",
                i + 1
            )));
        }
    }

    #[test]
    fn udp_service_matches_udp() {
        let mut svc = BenchService::cluster_ip(
            "kube-system",
            "kube-dns",
            "dns",
            crate::kube_proxy::Protocol::Udp,
            fixtures::ip("10.96.0.10"),
            53,
        );
        svc.endpoints = vec![BenchEndpoint {
            ip: fixtures::ip("10.244.0.5"),
            port: 53,
            local: true,
        }];
        let text = restore_input(&[svc], &ProxyConfig::default());
        assert!(text.contains(
            "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp -p udp -d 10.96.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU\n"
        ));
        assert!(text.contains("-m udp -p udp -j DNAT --to-destination 10.244.0.5:53\n"));
    }

    #[test]
    fn large_cluster_mode_drops_endpoint_comments() {
        let svcs = synthetic_services(101, 10);
        let text = restore_input(&svcs, &ProxyConfig::default());
        let c = IptablesChains::for_service(&svcs[0]);
        let rules = rules_of(&text, &c.cluster);
        assert!(rules[0].contains("--comment \"bench/svc-0:http cluster IP\""));
        assert!(
            rules[1..].iter().all(|r| !r.contains("--comment")),
            "{rules:#?}"
        );
        let sep = iptables_endpoint_chain(&svcs[0], &svcs[0].endpoints[0]);
        assert!(rules_of(&text, &sep)
            .iter()
            .all(|r| !r.contains("--comment")));
        // 1000 endpoints is still below the threshold.
        let text = restore_input(&synthetic_services(100, 10), &ProxyConfig::default());
        assert!(rules_of(&text, &c.cluster)[1].contains("--comment \"bench/svc-0:http -> "));
    }

    #[test]
    fn partial_sync_rewrites_only_changed_service_chains() {
        let before = synthetic_services(3, 2);
        let mut after = before.clone();
        after[1].endpoints.pop();
        let removed_sep = iptables_endpoint_chain(&before[1], &before[1].endpoints[1]);
        let text = partial_restore_input(&before, &after, &ProxyConfig::default());

        // KUBE-SERVICES is complete and ends with the NodePorts jump.
        let nat = text.split("*nat\n").nth(1).unwrap();
        let services = rules_of(nat, KUBE_SERVICES);
        assert_eq!(services.len(), 4);
        assert!(services[3].contains("must be the last rule"));
        // Only svc-1's chains are declared and filled.
        for (i, svc) in after.iter().enumerate() {
            let chain = IptablesChains::for_service(svc).cluster;
            assert_eq!(
                text.contains(&format!(":{chain} - [0:0]")),
                i == 1,
                "{chain}"
            );
            assert_eq!(rules_of(&text, &chain).is_empty(), i != 1);
        }
        assert_eq!(
            rules_of(&text, &IptablesChains::for_service(&after[1]).cluster).len(),
            2
        );
        // The endpoint that went away: flushed and deleted.
        assert!(text.contains(&format!(":{removed_sep} - [0:0]\n")));
        assert!(text.ends_with(&format!(
            "-X {removed_sep}\n-A KUBE-SERVICES -m comment --comment {NODEPORTS_LAST_RULE_COMMENT} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n"
        )));
        // The filter table is always complete.
        assert!(text.starts_with("*filter\n:KUBE-SERVICES - [0:0]\n"));
        assert_eq!(rules_of(&text, KUBE_FORWARD).len(), 3);
    }

    #[test]
    fn partial_sync_deletes_a_removed_services_chains() {
        let before = synthetic_services(2, 1);
        let after = before[..1].to_vec();
        let text = partial_restore_input(&before, &after, &ProxyConfig::default());
        let gone = IptablesChains::for_service(&before[1]).cluster;
        let gone_sep = iptables_endpoint_chain(&before[1], &before[1].endpoints[0]);
        let mut deleted: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("-X ")).collect();
        deleted.sort();
        let mut want = vec![gone.as_str(), gone_sep.as_str()];
        want.sort();
        assert_eq!(deleted, want);
        assert!(!text.contains(&format!("-j {gone}")));
        // Nothing changed for svc-0: none of its chains is rewritten.
        let kept = IptablesChains::for_service(&before[0]).cluster;
        assert!(!text.contains(&format!(":{kept} - [0:0]")));
    }

    #[test]
    fn partial_sync_with_no_change_writes_only_top_level_chains() {
        let svcs = synthetic_services(5, 3);
        let text = partial_restore_input(&svcs, &svcs, &ProxyConfig::default());
        let declared: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(
            declared,
            [
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-EXTERNAL-SERVICES - [0:0]",
                ":KUBE-FORWARD - [0:0]",
                ":KUBE-NODEPORTS - [0:0]",
                ":KUBE-PROXY-FIREWALL - [0:0]",
                ":KUBE-FIREWALL - [0:0]",
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-NODEPORTS - [0:0]",
                ":KUBE-POSTROUTING - [0:0]",
                ":KUBE-MARK-MASQ - [0:0]",
            ]
        );
        assert_eq!(rules_of(&text, KUBE_SERVICES).len(), 6);
    }

    #[test]
    fn jump_rules_follow_kube_proxys_list() {
        let text = jump_rules_input();
        assert!(text.starts_with(
            "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n\
             :KUBE-FORWARD - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-FIREWALL - [0:0]\n\
             -I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n"
        ));
        assert!(text.contains("-I INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n"));
        assert!(text.contains("-I INPUT -j KUBE-FIREWALL\n"));
        assert!(text.ends_with(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
             -I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n"
        ));
    }

    #[test]
    fn cleanup_deletes_every_chain_it_declares() {
        let svcs = fixtures::overall_services();
        let cfg = fixtures::iptables_fake_proxier_config();
        let text = cleanup_input(&svcs, &cfg);
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let deleted: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("-X ")).collect();
        assert_eq!(declared, deleted);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("-D ")).count(),
            JUMPS.len()
        );
        let created = restore_input(&svcs, &cfg)
            .lines()
            .filter(|l| l.starts_with(':'))
            .count();
        assert_eq!(declared.len(), created);
    }
}
