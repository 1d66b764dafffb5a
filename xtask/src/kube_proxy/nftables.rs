//! nftables mode: the `nft -f` transaction kube-proxy's nftables proxier (pkg/proxy/nftables,
//! v1.31) sends through knftables, spelled as knftables writes it.
//!
//! Everything lives in table `ip kube-proxy`. ClusterIPs, external IPs and LB IPs are keys of
//! one verdict map (`service-ips`), NodePorts of another (`service-nodeports`), so the
//! first-packet lookup does not grow with the number of services; each service chain picks
//! an endpoint with `numgen random mod N vmap { … }`.
//!
//! As in the iptables generator, services are walked in the order given (kube-proxy's Go
//! map order is random); the rest follows kube-proxy.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{
    chain_names::{NftChains, NftEndpointNames},
    updated_services, BenchEndpoint, BenchService, ProxyConfig,
};

const TABLE: &str = "ip kube-proxy";

const SERVICES: &str = "services";
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NODEPORT_IPS: &str = "nodeport-ips";
const CLUSTER_IPS: &str = "cluster-ips";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const REJECT_CHAIN: &str = "reject-chain";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const FIREWALL_IPS: &str = "firewall-ips";
const FIREWALL_CHECK: &str = "firewall-check";
const MARK_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";

/// Base chains: name, type, hook, priority. knftables writes named priorities as numbers
/// (dstnat = -100, srcnat = 100) because older nft rejects some names on some hooks; the
/// filter chains run 10 before DNAT so they see the original destination.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains jumped to from base chains: destination, source, match.
const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    // Reject needs an input/forward/output hook on kernels before 5.9, hence not prerouting.
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting", "ct state new"),
    (FIREWALL_CHECK, "filter-output", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output-post-dnat", "ct state new"),
];

/// The transaction of kube-proxy's first full sync: table, base and top-level chains, maps
/// and sets, then every service's chains, rules and map elements.
pub fn ruleset(services: &[BenchService], cfg: &ProxyConfig) -> String {
    Sync::full(cfg).run(services).text
}

/// The transaction of a partial sync from `previous` to `current` (what kube-proxy sends
/// after Service or EndpointSlice changes): only map/set elements that changed, the chains of
/// the Services that changed (re-created and flushed, then refilled), stale chains flushed
/// and stale affinity sets deleted.
pub fn partial_ruleset(
    previous: &[BenchService],
    current: &[BenchService],
    cfg: &ProxyConfig,
) -> String {
    let before = Sync::full(cfg).run(previous);
    let updated = updated_services(previous, current);
    Sync::partial(cfg, &before, &updated).run(current).text
}

/// The transaction kube-proxy sends at least a second after [`partial_ruleset`] flushed
/// stale chains: deleting them (kernels before 6.2 notice a chain is unreferenced only a
/// little after its map element goes). Empty if nothing went stale.
pub fn stale_chain_deletes(
    previous: &[BenchService],
    current: &[BenchService],
    cfg: &ProxyConfig,
) -> String {
    let before = Sync::full(cfg).run(previous);
    let after = Sync::full(cfg).run(current);
    before
        .chains
        .difference(&after.chains)
        .map(|chain| format!("delete chain {TABLE} {chain}\n"))
        .collect()
}

/// Removes everything kube-proxy created (its `CleanupLeftovers`).
pub fn cleanup() -> String {
    format!("delete table {TABLE}\n")
}

/// kube-proxy's `nftElementStorage`: the elements of one set or map as last written, so a
/// partial sync adds, replaces and deletes only what changed.
#[derive(Clone)]
struct Elements {
    /// "set" or "map".
    kind: &'static str,
    name: &'static str,
    /// Key → value, and the keys in the order they were written.
    values: HashMap<String, String>,
    order: Vec<String>,
    /// Keys from before this sync not written again yet.
    leftover: HashSet<String>,
}

impl Elements {
    fn new(kind: &'static str, name: &'static str) -> Elements {
        Elements {
            kind,
            name,
            values: HashMap::new(),
            order: Vec::new(),
            leftover: HashSet::new(),
        }
    }

    /// `ensureElem`: add if new, delete and re-add if the value changed.
    fn ensure(&mut self, tx: &mut Vec<String>, key: &str, value: &str, comment: Option<&str>) {
        let add = || {
            let comment = comment
                .map(|c| format!(" comment \"{c}\""))
                .unwrap_or_default();
            let value = if value.is_empty() {
                String::new()
            } else {
                format!(" : {value}")
            };
            format!(
                "add element {TABLE} {} {{ {key}{comment}{value} }}\n",
                self.name
            )
        };
        match self.values.get(key) {
            Some(old) if old == value => {}
            Some(_) => {
                tx.push(self.delete_line(key));
                tx.push(add());
                self.values.insert(key.to_string(), value.to_string());
            }
            None => {
                tx.push(add());
                self.values.insert(key.to_string(), value.to_string());
                self.order.push(key.to_string());
            }
        }
        self.leftover.remove(key);
    }

    fn delete_line(&self, key: &str) -> String {
        format!("delete element {TABLE} {} {{ {key} }}\n", self.name)
    }

    /// `cleanupLeftoverKeys`: delete what this sync did not write.
    fn delete_leftovers(&mut self, tx: &mut Vec<String>) {
        let order = std::mem::take(&mut self.order);
        for key in order {
            if self.leftover.remove(&key) {
                tx.push(self.delete_line(&key));
                self.values.remove(&key);
            } else {
                self.order.push(key);
            }
        }
    }

    /// `reset` on a full sync: flush and forget.
    fn reset(&mut self, tx: &mut Vec<String>) {
        tx.push(format!("flush {} {TABLE} {}\n", self.kind, self.name));
        self.values.clear();
        self.order.clear();
        self.leftover.clear();
    }
}

/// The six element stores, in the order kube-proxy resets and cleans them.
#[derive(Clone)]
struct Stores {
    cluster_ips: Elements,
    service_ips: Elements,
    firewall_ips: Elements,
    no_endpoint_services: Elements,
    no_endpoint_nodeports: Elements,
    service_nodeports: Elements,
}

impl Stores {
    fn new() -> Stores {
        Stores {
            cluster_ips: Elements::new("set", CLUSTER_IPS),
            service_ips: Elements::new("map", SERVICE_IPS),
            firewall_ips: Elements::new("map", FIREWALL_IPS),
            no_endpoint_services: Elements::new("map", NO_ENDPOINT_SERVICES),
            no_endpoint_nodeports: Elements::new("map", NO_ENDPOINT_NODEPORTS),
            service_nodeports: Elements::new("map", SERVICE_NODEPORTS),
        }
    }

    fn all(&mut self) -> [&mut Elements; 6] {
        [
            &mut self.cluster_ips,
            &mut self.service_ips,
            &mut self.firewall_ips,
            &mut self.no_endpoint_services,
            &mut self.no_endpoint_nodeports,
            &mut self.service_nodeports,
        ]
    }
}

/// The result of one sync: the transaction and the state the next sync starts from.
struct Synced {
    text: String,
    chains: BTreeSet<String>,
    affinity_sets: BTreeSet<String>,
    stores: Stores,
}

/// One run of kube-proxy's nftables `syncProxyRules`.
struct Sync<'a> {
    cfg: &'a ProxyConfig,
    mark: String,
    /// `None` on a full sync; the previous state and the changed Services otherwise.
    partial: Option<(&'a Synced, &'a HashSet<(String, String)>)>,
    tx: Vec<String>,
    active_chains: BTreeSet<String>,
    active_affinity_sets: BTreeSet<String>,
    stores: Stores,
}

impl<'a> Sync<'a> {
    fn full(cfg: &'a ProxyConfig) -> Sync<'a> {
        Sync {
            cfg,
            mark: cfg.masquerade_mark(),
            partial: None,
            tx: Vec::new(),
            active_chains: BTreeSet::new(),
            active_affinity_sets: BTreeSet::new(),
            stores: Stores::new(),
        }
    }

    fn partial(
        cfg: &'a ProxyConfig,
        before: &'a Synced,
        updated: &'a HashSet<(String, String)>,
    ) -> Sync<'a> {
        let mut stores = before.stores.clone();
        for store in stores.all() {
            store.leftover = store.values.keys().cloned().collect();
        }
        Sync {
            partial: Some((before, updated)),
            stores,
            ..Sync::full(cfg)
        }
    }

    fn run(mut self, services: &[BenchService]) -> Synced {
        if self.partial.is_none() {
            self.setup();
        }
        for svc in services {
            self.write_service(svc);
        }
        if let Some((before, _)) = self.partial {
            // Deleting a chain right after its map element fails on kernels before 6.2,
            // so stale chains are only flushed now and deleted by a later sync.
            for chain in before.chains.difference(&self.active_chains) {
                self.tx.push(format!("flush chain {TABLE} {chain}\n"));
            }
            for set in before.affinity_sets.difference(&self.active_affinity_sets) {
                self.tx.push(format!("delete set {TABLE} {set}\n"));
            }
        }
        let mut stores = self.stores;
        for store in stores.all() {
            store.delete_leftovers(&mut self.tx);
        }
        Synced {
            text: self.tx.concat(),
            chains: self.active_chains,
            affinity_sets: self.active_affinity_sets,
            stores,
        }
    }

    fn add_chain(&mut self, chain: &str) {
        self.tx.push(format!("add chain {TABLE} {chain}\n"));
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.tx.push(format!("add rule {TABLE} {chain} {rule}\n"));
    }

    fn rule_with_comment(&mut self, chain: &str, rule: &str, comment: &str) {
        self.tx.push(format!(
            "add rule {TABLE} {chain} {rule} comment \"{comment}\"\n"
        ));
    }

    /// `ensureChain`: create and flush a chain once per transaction, unless this is an
    /// unchanged service in a partial sync (then it only counts as in use).
    fn ensure_chain(&mut self, chain: &str, skip_creation: bool) {
        if !self.active_chains.insert(chain.to_string()) || skip_creation {
            return;
        }
        self.add_chain(chain);
        self.tx.push(format!("flush chain {TABLE} {chain}\n"));
    }

    /// `setupNFTables`, as on kube-proxy's first sync.
    fn setup(&mut self) {
        let cfg = self.cfg;
        self.tx.push(format!(
            "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}\n"
        ));
        // Once per process: re-create base chains so changed properties (e.g. priority)
        // do not fail the transaction.
        for (name, ..) in BASE_CHAINS {
            self.add_chain(name);
            self.tx.push(format!("delete chain {TABLE} {name}\n"));
        }
        for (name, kind, hook, priority) in BASE_CHAINS {
            self.tx.push(format!(
                "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}\n"
            ));
            self.tx.push(format!("flush chain {TABLE} {name}\n"));
        }

        // The top-level chains go in a set of their own, separate from service chains.
        let mut created = BTreeSet::new();
        let mut ensure = |tx: &mut Vec<String>, chain: &str| {
            if created.insert(chain.to_string()) {
                tx.push(format!("add chain {TABLE} {chain}\n"));
                tx.push(format!("flush chain {TABLE} {chain}\n"));
            }
        };
        for (dst, src, matches) in JUMP_CHAINS {
            ensure(&mut self.tx, dst);
            let rule = if matches.is_empty() {
                format!("jump {dst}")
            } else {
                format!("{matches} jump {dst}")
            };
            self.rule(src, &rule);
        }
        for chain in [SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_MASQ] {
            ensure(&mut self.tx, chain);
        }

        let mark = self.mark.clone();
        self.rule(MARK_MASQ, &format!("mark set mark or {mark}"));
        self.rule(MASQUERADING, &format!("mark and {mark} == 0 return"));
        // Clear the mark so a packet re-traversing the stack is not masqueraded twice.
        self.rule(MASQUERADING, &format!("mark set mark xor {mark}"));
        self.rule(MASQUERADING, "masquerade fully-random");

        self.tx.push(format!(
            "add set {TABLE} {CLUSTER_IPS} {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n"
        ));
        self.rule_with_comment(
            CLUSTER_IPS_CHECK,
            &format!("ip daddr @{CLUSTER_IPS} reject"),
            "Reject traffic to invalid ports of ClusterIPs",
        );
        if !cfg.service_cidrs.is_empty() {
            let cidrs: Vec<String> = cfg.service_cidrs.iter().map(|c| c.to_string()).collect();
            self.rule_with_comment(
                CLUSTER_IPS_CHECK,
                &format!("ip daddr {{ {} }} drop", cidrs.join(",")),
                "Drop traffic to unallocated ClusterIPs",
            );
        }

        // "add" then "delete" so the set is gone whether or not it existed.
        self.tx.push(format!(
            "add set {TABLE} {NODEPORT_IPS} {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n"
        ));
        if cfg.node_ips.is_empty() {
            self.tx.push(format!("delete set {TABLE} {NODEPORT_IPS}\n"));
        } else {
            self.tx.push(format!("flush set {TABLE} {NODEPORT_IPS}\n"));
            // Localhost NodePorts are not supported in nftables mode.
            for ip in cfg.node_ips.iter().filter(|ip| !ip.is_loopback()) {
                self.tx
                    .push(format!("add element {TABLE} {NODEPORT_IPS} {{ {ip} }}\n"));
            }
        }

        self.tx.push(format!(
            "add map {TABLE} {NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n"
        ));
        self.tx.push(format!(
            "add map {TABLE} {NO_ENDPOINT_NODEPORTS} {{ type inet_proto . inet_service : verdict ; \
             comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n"
        ));
        self.tx.push(format!(
            "add chain {TABLE} {REJECT_CHAIN} {{ comment \"helper for @{NO_ENDPOINT_SERVICES} / @{NO_ENDPOINT_NODEPORTS}\" ; }}\n"
        ));
        self.tx
            .push(format!("flush chain {TABLE} {REJECT_CHAIN}\n"));
        self.rule(REJECT_CHAIN, "reject");
        self.rule(
            SERVICE_ENDPOINTS_CHECK,
            &format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
        );
        let nodeport_dst = if cfg.node_ips.is_empty() {
            "ip daddr != 127.0.0.0/8".to_string()
        } else {
            format!("ip daddr @{NODEPORT_IPS}")
        };
        self.rule(
            NODEPORT_ENDPOINTS_CHECK,
            &format!("{nodeport_dst} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
        );

        self.tx.push(format!(
            "add map {TABLE} {FIREWALL_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n"
        ));
        ensure(&mut self.tx, FIREWALL_CHECK);
        self.rule(
            FIREWALL_CHECK,
            &format!("ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"),
        );

        self.tx.push(format!(
            "add map {TABLE} {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n"
        ));
        self.tx.push(format!(
            "add map {TABLE} {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict ; \
             comment \"NodePort traffic\" ; }}\n"
        ));
        // The whole service lookup: one rule, one map.
        self.rule(
            SERVICES,
            &format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        );
        let nodeport_match = if cfg.node_ips.is_empty() {
            "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
        } else {
            format!("ip daddr @{NODEPORT_IPS}")
        };
        self.rule(
            SERVICES,
            &format!("{nodeport_match} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        );

        let mut stores = std::mem::replace(&mut self.stores, Stores::new());
        for store in stores.all() {
            store.reset(&mut self.tx);
        }
        self.stores = stores;
    }

    /// The per-service-port part of `syncProxyRules`.
    fn write_service(&mut self, svc: &BenchService) {
        let proto = svc.protocol.lower();
        let name = svc.port_name_string();
        let port = svc.port;
        let cat = svc.categorize();
        let chains = NftChains::for_service(svc);
        let ext_local = svc.external_policy_local();
        let affinity = svc.affinity_timeout_s;
        let skip = self.partial.is_some_and(|(_, updated)| {
            !updated.contains(&(svc.namespace.clone(), svc.name.clone()))
        });

        for ep in &cat.reachable {
            let names = NftEndpointNames::for_endpoint(svc, ep);
            self.ensure_chain(&names.chain, skip);
            if affinity.is_some() {
                self.active_affinity_sets.insert(names.affinity_set);
            }
        }
        let uses_cluster_chain = !cat.cluster.is_empty();
        if uses_cluster_chain {
            self.ensure_chain(&chains.cluster, skip);
        }
        let uses_local_chain = !cat.local.is_empty();
        if uses_local_chain {
            self.ensure_chain(&chains.local, skip);
        }
        // Internal traffic policy is Cluster: ClusterIP traffic always uses `service-…`.
        let internal_chain = &chains.cluster;
        let has_internal = cat.has_endpoints;
        let (external_policy_chain, has_external) = if ext_local {
            (&chains.local, cat.has_endpoints && uses_local_chain)
        } else {
            (&chains.cluster, cat.has_endpoints)
        };
        let external_chain = &chains.external;
        // Exists even without external endpoints: it short-circuits in-cluster clients.
        let uses_external_chain = cat.has_endpoints && svc.externally_accessible();
        if uses_external_chain {
            self.ensure_chain(external_chain, skip);
        }

        // No endpoints anywhere: reject. None for external traffic under ETP=Local: drop.
        let reject = format!("goto {REJECT_CHAIN}");
        let (internal_filter, external_filter) = if !cat.has_endpoints {
            (Some(reject.as_str()), Some(reject.as_str()))
        } else if !has_external {
            (None, Some("drop"))
        } else {
            (None, None)
        };
        let vip_key = |ip: &dyn std::fmt::Display| format!("{ip} . {proto} . {port}");

        let cip = svc.cluster_ip.to_string();
        self.stores.cluster_ips.ensure(&mut self.tx, &cip, "", None);
        if has_internal {
            self.stores.service_ips.ensure(
                &mut self.tx,
                &vip_key(&cip),
                &format!("goto {internal_chain}"),
                None,
            );
        } else if let Some(verdict) = internal_filter {
            self.stores.no_endpoint_services.ensure(
                &mut self.tx,
                &vip_key(&cip),
                verdict,
                Some(&name),
            );
        }

        for ip in &svc.external_ips {
            if cat.has_endpoints {
                self.stores.service_ips.ensure(
                    &mut self.tx,
                    &vip_key(ip),
                    &format!("goto {external_chain}"),
                    None,
                );
            }
            if let Some(verdict) = external_filter {
                self.stores.no_endpoint_services.ensure(
                    &mut self.tx,
                    &vip_key(ip),
                    verdict,
                    Some(&name),
                );
            }
        }

        // Unlike iptables mode, the firewall chain does not depend on having endpoints.
        let uses_fw_chain = !svc.lb_ips.is_empty() && !svc.lb_source_ranges.is_empty();
        if uses_fw_chain {
            self.ensure_chain(&chains.firewall, skip);
        }
        for ip in &svc.lb_ips {
            if cat.has_endpoints {
                self.stores.service_ips.ensure(
                    &mut self.tx,
                    &vip_key(ip),
                    &format!("goto {external_chain}"),
                    None,
                );
            }
            if uses_fw_chain {
                self.stores.firewall_ips.ensure(
                    &mut self.tx,
                    &vip_key(ip),
                    &format!("goto {}", chains.firewall),
                    None,
                );
            }
        }
        if let Some(verdict) = external_filter {
            for ip in &svc.lb_ips {
                self.stores.no_endpoint_services.ensure(
                    &mut self.tx,
                    &vip_key(ip),
                    verdict,
                    Some(&name),
                );
            }
        }

        if let Some(node_port) = svc.node_port {
            let key = format!("{proto} . {node_port}");
            if cat.has_endpoints {
                // NodePorts are not subject to loadBalancerSourceRanges.
                self.stores.service_nodeports.ensure(
                    &mut self.tx,
                    &key,
                    &format!("goto {external_chain}"),
                    None,
                );
            }
            if let Some(verdict) = external_filter {
                self.stores
                    .no_endpoint_nodeports
                    .ensure(&mut self.tx, &key, verdict, Some(&name));
            }
        }

        // Everything below fills the service's own chains, which a partial sync leaves
        // alone for unchanged services.
        if skip {
            return;
        }

        if has_internal {
            let vip = format!("ip daddr {cip} {proto} dport {port}");
            if self.cfg.masquerade_all {
                self.rule(internal_chain, &format!("{vip} jump {MARK_MASQ}"));
            } else if let Some(cidr) = self.cfg.cluster_cidr {
                // Off-cluster clients routed to a service VIP may bounce off-node:
                // masquerade them.
                self.rule(
                    internal_chain,
                    &format!("{vip} ip saddr != {cidr} jump {MARK_MASQ}"),
                );
            }
        }

        if uses_external_chain {
            if !ext_local {
                // Endpoints may be on other nodes: masquerade so replies come back here.
                self.rule(external_chain, &format!("jump {MARK_MASQ}"));
            } else {
                if let Some(cidr) = self.cfg.cluster_cidr {
                    // Pods reaching an external address of the service are treated as if
                    // they had gone out to the load balancer and come back in.
                    self.rule_with_comment(
                        external_chain,
                        &format!("ip saddr {cidr} goto {}", chains.cluster),
                        "short-circuit pod traffic",
                    );
                }
                // The node itself picks the (local) LB IP as source: masquerade it and send
                // it to all endpoints.
                self.rule_with_comment(
                    external_chain,
                    &format!("fib saddr type local jump {MARK_MASQ}"),
                    "masquerade local traffic",
                );
                self.rule_with_comment(
                    external_chain,
                    &format!("fib saddr type local goto {}", chains.cluster),
                    "short-circuit local traffic",
                );
            }
            if has_external {
                self.rule(external_chain, &format!("goto {external_policy_chain}"));
            }
        }

        if uses_fw_chain {
            let mut sources: Vec<String> =
                svc.lb_source_ranges.iter().map(|c| c.to_string()).collect();
            // A node reaching a VIP-like LB IP loops back with the LB IP as source.
            if svc
                .lb_source_ranges
                .iter()
                .any(|c| c.contains(self.cfg.primary_node_ip))
            {
                sources.extend(svc.lb_ips.iter().map(|ip| ip.to_string()));
            }
            self.rule(
                &chains.firewall,
                &format!("ip saddr != {{ {} }} drop", sources.join(" , ")),
            );
        }

        if let Some(timeout) = affinity {
            for ep in &cat.reachable {
                let set = NftEndpointNames::for_endpoint(svc, ep).affinity_set;
                // "dynamic" because the kernel adds it anyway on some systems, and a
                // later add with different flags would fail.
                self.tx.push(format!(
                    "add set {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}\n"
                ));
            }
        }

        if uses_cluster_chain {
            self.write_dispatch(svc, &chains.cluster, &cat.cluster);
        }
        if uses_local_chain {
            self.write_dispatch(svc, &chains.local, &cat.local);
        }

        for ep in &cat.reachable {
            let names = NftEndpointNames::for_endpoint(svc, ep);
            // Hairpin: a pod reaching itself through the service must see another source.
            self.rule(
                &names.chain,
                &format!("ip saddr {} jump {MARK_MASQ}", ep.ip),
            );
            if affinity.is_some() {
                self.rule(
                    &names.chain,
                    &format!("update @{} {{ ip saddr }}", names.affinity_set),
                );
            }
            self.rule(
                &names.chain,
                &format!("meta l4proto {proto} dnat to {}", ep.addr_port()),
            );
        }
    }

    /// `writeServiceToEndpointRules`: affinity lookups, then one `numgen` vmap that picks
    /// an endpoint uniformly.
    fn write_dispatch(&mut self, svc: &BenchService, chain: &str, endpoints: &[&BenchEndpoint]) {
        let names: Vec<NftEndpointNames> = endpoints
            .iter()
            .map(|ep| NftEndpointNames::for_endpoint(svc, ep))
            .collect();
        if svc.affinity_timeout_s.is_some() {
            for n in &names {
                self.rule(
                    chain,
                    &format!("ip saddr @{} goto {}", n.affinity_set, n.chain),
                );
            }
        }
        let elements: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i} : goto {}", n.chain))
            .collect();
        self.rule(
            chain,
            &format!(
                "numgen random mod {} vmap {{ {} }}",
                names.len(),
                elements.join(" , ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{fixtures, synthetic_services};

    fn ep_chain(svc: &BenchService, i: usize) -> String {
        NftEndpointNames::for_endpoint(svc, &svc.endpoints[i]).chain
    }

    #[test]
    fn first_sync_of_one_service_in_kube_proxy_order() {
        let mut svc = fixtures::svc("ns1", "svc1", 41);
        svc.endpoints = vec![
            fixtures::ep("10.180.0.1", false),
            fixtures::ep("10.180.0.2", false),
        ];
        let text = ruleset(
            std::slice::from_ref(&svc),
            &fixtures::nftables_fake_proxier_config(),
        );
        let ep1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
        assert_eq!(ep_chain(&svc, 0), ep1);
        let ep2 = ep_chain(&svc, 1);
        let svc1 = "service-ULMVA6XW-ns1/svc1/tcp/p80";
        let expected = format!(
            r#"add table ip kube-proxy {{ comment "rules for kube-proxy" ; }}
add chain ip kube-proxy filter-prerouting
delete chain ip kube-proxy filter-prerouting
add chain ip kube-proxy filter-input
delete chain ip kube-proxy filter-input
add chain ip kube-proxy filter-forward
delete chain ip kube-proxy filter-forward
add chain ip kube-proxy filter-output
delete chain ip kube-proxy filter-output
add chain ip kube-proxy filter-output-post-dnat
delete chain ip kube-proxy filter-output-post-dnat
add chain ip kube-proxy nat-prerouting
delete chain ip kube-proxy nat-prerouting
add chain ip kube-proxy nat-output
delete chain ip kube-proxy nat-output
add chain ip kube-proxy nat-postrouting
delete chain ip kube-proxy nat-postrouting
add chain ip kube-proxy filter-prerouting {{ type filter hook prerouting priority -110 ; }}
flush chain ip kube-proxy filter-prerouting
add chain ip kube-proxy filter-input {{ type filter hook input priority -110 ; }}
flush chain ip kube-proxy filter-input
add chain ip kube-proxy filter-forward {{ type filter hook forward priority -110 ; }}
flush chain ip kube-proxy filter-forward
add chain ip kube-proxy filter-output {{ type filter hook output priority -110 ; }}
flush chain ip kube-proxy filter-output
add chain ip kube-proxy filter-output-post-dnat {{ type filter hook output priority -90 ; }}
flush chain ip kube-proxy filter-output-post-dnat
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
flush chain ip kube-proxy nat-prerouting
add chain ip kube-proxy nat-output {{ type nat hook output priority -100 ; }}
flush chain ip kube-proxy nat-output
add chain ip kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; }}
flush chain ip kube-proxy nat-postrouting
add chain ip kube-proxy nodeport-endpoints-check
flush chain ip kube-proxy nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add chain ip kube-proxy service-endpoints-check
flush chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add chain ip kube-proxy firewall-check
flush chain ip kube-proxy firewall-check
add rule ip kube-proxy filter-prerouting ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump firewall-check
add chain ip kube-proxy services
flush chain ip kube-proxy services
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-prerouting jump services
add chain ip kube-proxy masquerading
flush chain ip kube-proxy masquerading
add rule ip kube-proxy nat-postrouting jump masquerading
add chain ip kube-proxy cluster-ips-check
flush chain ip kube-proxy cluster-ips-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
add chain ip kube-proxy mark-for-masquerade
flush chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000
add rule ip kube-proxy masquerading mark and 0x00004000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x00004000
add rule ip kube-proxy masquerading masquerade fully-random
add set ip kube-proxy cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr {{ 172.30.0.0/16 }} drop comment "Drop traffic to unallocated ClusterIPs"
add set ip kube-proxy nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
flush set ip kube-proxy nodeport-ips
add element ip kube-proxy nodeport-ips {{ 192.168.0.2 }}
add map ip kube-proxy no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map ip kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add chain ip kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
flush chain ip kube-proxy reject-chain
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add map ip kube-proxy firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
flush set ip kube-proxy cluster-ips
flush map ip kube-proxy service-ips
flush map ip kube-proxy firewall-ips
flush map ip kube-proxy no-endpoint-services
flush map ip kube-proxy no-endpoint-nodeports
flush map ip kube-proxy service-nodeports
add chain ip kube-proxy {ep1}
flush chain ip kube-proxy {ep1}
add chain ip kube-proxy {ep2}
flush chain ip kube-proxy {ep2}
add chain ip kube-proxy {svc1}
flush chain ip kube-proxy {svc1}
add element ip kube-proxy cluster-ips {{ 172.30.0.41 }}
add element ip kube-proxy service-ips {{ 172.30.0.41 . tcp . 80 : goto {svc1} }}
add rule ip kube-proxy {svc1} ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy {svc1} numgen random mod 2 vmap {{ 0 : goto {ep1} , 1 : goto {ep2} }}
add rule ip kube-proxy {ep1} ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy {ep1} meta l4proto tcp dnat to 10.180.0.1:80
add rule ip kube-proxy {ep2} ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy {ep2} meta l4proto tcp dnat to 10.180.0.2:80
"#
        );
        for (i, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(text, expected);
    }

    /// The per-service objects of kube-proxy's `TestOverallNFTablesRules`. That test is from
    /// a later release whose ClusterIP masquerade rule no longer matches the port; here it
    /// has v1.31's `tcp dport 80`, the only difference.
    const OVERALL_SERVICE_OBJECTS: &str = r#"add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }
add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 comment "ns2/svc2:p80" : drop }
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 goto service-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.33 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80
add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add chain ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop
add element ip kube-proxy cluster-ips { 172.30.0.45 }
add element ip kube-proxy service-ips { 172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-ips { 5.6.7.8 . tcp . 80 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
"#;

    /// The lines that create per-service objects: service/endpoint chains and sets (their
    /// names have a "/") and every map or set element.
    fn service_objects(text: &str) -> BTreeSet<&str> {
        text.lines()
            .filter(|l| {
                let mut words = l.split(' ');
                let (verb, kind) = (words.next(), words.next());
                let name = words.nth(2).unwrap_or_default();
                verb == Some("add") && (kind == Some("element") || name.contains('/'))
            })
            .collect()
    }

    #[test]
    fn full_sync_has_the_objects_of_kube_proxys_overall_rules_test() {
        let text = ruleset(
            &fixtures::overall_services(),
            &fixtures::nftables_fake_proxier_config(),
        );
        let ours = service_objects(&text);
        let want: BTreeSet<&str> = OVERALL_SERVICE_OBJECTS.lines().collect();
        assert_eq!(
            ours.symmetric_difference(&want).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "lines only in one of ours / kube-proxy's"
        );
    }

    fn numgen_rule(endpoints: usize) -> String {
        let mut svc = fixtures::svc("ns1", "svc1", 41);
        svc.endpoints = (1..=endpoints)
            .map(|i| fixtures::ep(&format!("10.180.0.{i}"), false))
            .collect();
        let text = ruleset(std::slice::from_ref(&svc), &ProxyConfig::default());
        // In kube-proxy's order: sorted as `ip:port` strings, so 10.180.0.10 comes first.
        let names: Vec<String> = svc
            .sorted_endpoints()
            .iter()
            .map(|ep| NftEndpointNames::for_endpoint(&svc, ep).chain)
            .collect();
        let rule = text
            .lines()
            .find(|l| l.contains("numgen"))
            .expect("numgen rule")
            .to_string();
        for (i, name) in names.iter().enumerate() {
            assert!(rule.contains(&format!("{i} : goto {name}")), "{rule}");
        }
        rule.split_once(" numgen")
            .unwrap()
            .1
            .split(" vmap")
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn endpoint_choice_is_one_numgen_vmap() {
        assert_eq!(numgen_rule(1), " random mod 1");
        assert_eq!(numgen_rule(3), " random mod 3");
        assert_eq!(numgen_rule(10), " random mod 10");
        let mut svc = fixtures::svc("ns1", "svc1", 41);
        svc.endpoints = vec![
            fixtures::ep("10.180.0.1", false),
            fixtures::ep("10.180.0.2", false),
        ];
        let text = ruleset(std::slice::from_ref(&svc), &ProxyConfig::default());
        assert!(text.contains(&format!(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 vmap {{ 0 : goto {} , 1 : goto {} }}\n",
            ep_chain(&svc, 0),
            ep_chain(&svc, 1)
        )));
    }

    #[test]
    fn nodeports_on_every_local_address_use_fib() {
        let mut svc = fixtures::svc("ns3", "svc3", 43);
        svc.node_port = Some(3003);
        svc.endpoints = vec![fixtures::ep("10.180.0.3", false)];
        let text = ruleset(&[svc], &ProxyConfig::default());
        assert!(text.contains(
            "add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }\n\
             delete set ip kube-proxy nodeport-ips\n"
        ));
        assert!(text.contains(
            "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n"
        ));
        assert!(text.contains(
            "add rule ip kube-proxy nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n"
        ));
        assert!(!text.contains("@nodeport-ips"));
        assert!(text.contains(
            "add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }\n"
        ));
    }

    #[test]
    fn external_local_with_a_local_endpoint_uses_the_local_chain() {
        let mut svc = fixtures::svc("ns2", "svc2", 42);
        svc.external_local = true;
        svc.lb_ips = vec![fixtures::ip("1.2.3.4")];
        svc.endpoints = vec![
            fixtures::ep("10.180.0.2", false),
            fixtures::ep("10.180.0.3", true),
        ];
        let text = ruleset(
            std::slice::from_ref(&svc),
            &fixtures::nftables_fake_proxier_config(),
        );
        let local = "local-42NFTM6N-ns2/svc2/tcp/p80";
        let external = "external-42NFTM6N-ns2/svc2/tcp/p80";
        assert!(text.contains(&format!("add rule ip kube-proxy {external} goto {local}\n")));
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {local} numgen random mod 1 vmap {{ 0 : goto {} }}\n",
            ep_chain(&svc, 1)
        )));
        assert!(
            !text.contains("add element ip kube-proxy no-endpoint-services"),
            "a local endpoint serves it"
        );
    }

    #[test]
    fn masquerade_all_and_no_detector() {
        let mut svc = fixtures::svc("ns1", "svc1", 41);
        svc.endpoints = vec![fixtures::ep("10.180.0.1", false)];
        let all = ProxyConfig {
            masquerade_all: true,
            ..ProxyConfig::default()
        };
        let text = ruleset(std::slice::from_ref(&svc), &all);
        assert!(text.contains(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 jump mark-for-masquerade\n"
        ));
        let none = ProxyConfig {
            cluster_cidr: None,
            ..ProxyConfig::default()
        };
        let text = ruleset(&[svc], &none);
        assert!(!text.contains("tcp dport 80"));
    }

    #[test]
    fn partial_sync_rewrites_only_the_changed_service() {
        let before = synthetic_services(3, 2);
        let mut after = before.clone();
        after[1].endpoints.pop();
        let text = partial_ruleset(&before, &after, &ProxyConfig::default());
        let svc = NftChains::for_service(&after[1]).cluster;
        let kept = ep_chain(&after[1], 0);
        let gone = ep_chain(&before[1], 1);
        let expected = format!(
            "add chain ip kube-proxy {kept}\n\
             flush chain ip kube-proxy {kept}\n\
             add chain ip kube-proxy {svc}\n\
             flush chain ip kube-proxy {svc}\n\
             add rule ip kube-proxy {svc} ip daddr 10.96.0.2 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n\
             add rule ip kube-proxy {svc} numgen random mod 1 vmap {{ 0 : goto {kept} }}\n\
             add rule ip kube-proxy {kept} ip saddr 10.244.0.3 jump mark-for-masquerade\n\
             add rule ip kube-proxy {kept} meta l4proto tcp dnat to 10.244.0.3:8080\n\
             flush chain ip kube-proxy {gone}\n"
        );
        assert_eq!(text, expected);
        assert_eq!(
            stale_chain_deletes(&before, &after, &ProxyConfig::default()),
            format!("delete chain ip kube-proxy {gone}\n")
        );
        assert_eq!(
            partial_ruleset(&before, &before, &ProxyConfig::default()),
            ""
        );
    }

    #[test]
    fn partial_sync_removes_a_deleted_services_elements() {
        let before = synthetic_services(2, 1);
        let after = before[..1].to_vec();
        let text = partial_ruleset(&before, &after, &ProxyConfig::default());
        let mut stale = [
            NftChains::for_service(&before[1]).cluster,
            ep_chain(&before[1], 0),
        ];
        stale.sort();
        assert_eq!(
            text,
            format!(
                "flush chain ip kube-proxy {}\n\
                 flush chain ip kube-proxy {}\n\
                 delete element ip kube-proxy cluster-ips {{ 10.96.0.2 }}\n\
                 delete element ip kube-proxy service-ips {{ 10.96.0.2 . tcp . 80 }}\n",
                stale[0], stale[1]
            )
        );
    }

    #[test]
    fn partial_sync_replaces_an_element_whose_verdict_changed() {
        let mut before = fixtures::svc("ns2", "svc2", 42);
        before.external_local = true;
        before.external_ips = vec![fixtures::ip("192.168.99.22")];
        let mut after = before.clone();
        after.endpoints = vec![fixtures::ep("10.180.0.2", false)];
        let text = partial_ruleset(&[before], &[after], &ProxyConfig::default());
        // No endpoints (reject) → only remote endpoints under ETP=Local (drop).
        assert!(text.contains(
            "delete element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 }\n\
             add element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 comment \"ns2/svc2:p80\" : drop }\n"
        ));
        // The ClusterIP moves from the reject map to the service map.
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }\n"
        ));
        assert!(text.ends_with(
            "delete element ip kube-proxy no-endpoint-services { 172.30.0.42 . tcp . 80 }\n"
        ));
    }

    #[test]
    fn partial_sync_deletes_affinity_sets_that_went_away() {
        let mut before = fixtures::svc("ns5", "svc5", 45);
        before.affinity_timeout_s = Some(10800);
        before.endpoints = vec![fixtures::ep("10.180.0.3", false)];
        let mut after = before.clone();
        after.affinity_timeout_s = None;
        let text = partial_ruleset(&[before], &[after], &ProxyConfig::default());
        assert!(text.contains(
            "delete set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80\n"
        ));
        assert!(!text.contains("@affinity"));
    }

    #[test]
    fn cleanup_deletes_the_table() {
        assert_eq!(cleanup(), "delete table ip kube-proxy\n");
    }
}
