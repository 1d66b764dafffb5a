//! Loading a generated kube-proxy ruleset into a *named* network namespace and taking it out
//! again, timed. Everything runs through `ip netns exec <ns>`, and a namespace that turns out
//! to be the host's own is refused: the benchmarks must never touch the root namespace.

use std::{
    fmt,
    io::Write,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{iptables, nftables, BenchService, ProxyConfig};

/// The name of a network namespace under `/run/netns`, checked to be a plain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsName(String);

impl NetnsName {
    /// # Errors
    /// If `name` is empty, longer than 64 bytes, or has characters other than ASCII letters,
    /// digits, `.`, `_` and `-` (so it cannot name a path outside `/run/netns`).
    pub fn new(name: &str) -> Result<NetnsName> {
        ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name != "."
                && name != ".."
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "not a network namespace name: {name:?}"
        );
        Ok(NetnsName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NetnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which kernel interface `iptables-restore` programs: with iptables-nft the rules become
/// nftables rules (in tables `ip filter` / `ip nat`), with legacy iptables they are x_tables
/// blobs. A report comparing baselines must say which one it measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    Nft,
    Legacy,
}

/// The `iptables-restore` on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTool {
    /// Its version line, e.g. `iptables-restore v1.8.9 (nf_tables)`.
    pub version: String,
    pub backend: IptablesBackend,
}

impl fmt::Display for IptablesTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            IptablesBackend::Nft => "iptables-nft",
            IptablesBackend::Legacy => "iptables-legacy",
        };
        write!(f, "{backend} ({})", self.version)
    }
}

impl IptablesTool {
    /// Parses `iptables-restore --version` output: iptables 1.8+ names its backend in
    /// parentheses; older ones only had the legacy backend.
    fn from_version_line(line: &str) -> IptablesTool {
        let version = line.trim().to_string();
        let backend = if version.contains("(nf_tables)") {
            IptablesBackend::Nft
        } else {
            IptablesBackend::Legacy
        };
        IptablesTool { version, backend }
    }
}

/// Asks the `iptables-restore` on `PATH` which backend it is (no namespace needed).
///
/// # Errors
/// If it cannot be run.
pub fn iptables_tool() -> Result<IptablesTool> {
    let out = Command::new("iptables-restore")
        .arg("--version")
        .output()
        .context("running iptables-restore --version")?;
    ensure!(out.status.success(), "iptables-restore --version failed");
    Ok(IptablesTool::from_version_line(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

/// Loads kube-proxy's full sync into `ns`, as kube-proxy does on start: the jumps from the
/// built-in chains ([`iptables::jump_rules_input`]) and then [`iptables::restore_input`],
/// each with `iptables-restore -w 5 -W 100000 --noflush --counters`. The time is that of the
/// main restore only.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or a restore fails.
pub fn apply_iptables(
    ns: &NetnsName,
    services: &[BenchService],
    cfg: &ProxyConfig,
) -> Result<Duration> {
    iptables_restore(ns, &iptables::jump_rules_input())?;
    iptables_restore(ns, &iptables::restore_input(services, cfg))
}

/// Runs one `iptables-restore` input in `ns` the way kube-proxy does (keep other rules, keep
/// counters, wait for the xtables lock) and returns how long it took, process start
/// included, as kube-proxy pays it too. For partial syncs
/// ([`iptables::partial_restore_input`]).
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or the restore fails.
pub fn iptables_restore(ns: &NetnsName, input: &str) -> Result<Duration> {
    run_in(
        ns,
        &[
            "iptables-restore",
            "-w",
            "5",
            "-W",
            "100000",
            "--noflush",
            "--counters",
        ],
        Some(input),
    )
    .map(|(elapsed, _)| elapsed)
}

/// Takes out what [`apply_iptables`] put in ([`iptables::cleanup_input`]) and returns how
/// long it took.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or the restore fails (e.g. nothing was
/// applied).
pub fn remove_iptables(
    ns: &NetnsName,
    services: &[BenchService],
    cfg: &ProxyConfig,
) -> Result<Duration> {
    iptables_restore(ns, &iptables::cleanup_input(services, cfg))
}

/// Loads an nftables transaction ([`nftables::ruleset`], [`nftables::partial_ruleset`], …)
/// into `ns` with `nft -f -`, as knftables does, and returns how long it took.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or nft rejects the transaction.
pub fn apply_nftables(ns: &NetnsName, transaction: &str) -> Result<Duration> {
    run_in(ns, &["nft", "-f", "-"], Some(transaction)).map(|(elapsed, _)| elapsed)
}

/// Deletes table `ip kube-proxy` from `ns` and returns how long it took.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or there is no such table.
pub fn remove_nftables(ns: &NetnsName) -> Result<Duration> {
    apply_nftables(ns, &nftables::cleanup())
}

/// Takes every iptables rule and chain out of `ns` at once: a restore without `--noflush`
/// flushes every chain and deletes every user chain of the tables it names, and with
/// iptables-nft the emptied tables are then deleted too, since their built-in chains alone
/// keep netfilter's NAT and conntrack hooks in every packet's path. [`remove_iptables`]
/// takes minutes for a ruleset of 100 000s of chains; this takes a fraction of a second.
/// Only for namespaces in which nothing else uses iptables.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or a tool fails.
pub fn clear_iptables(ns: &NetnsName) -> Result<()> {
    run_in(
        ns,
        &["iptables-restore", "-w", "5"],
        Some("*filter\nCOMMIT\n*nat\nCOMMIT\n"),
    )?;
    if iptables_tool()?.backend == IptablesBackend::Nft {
        // `add` first: the delete must not fail where iptables-nft already dropped a table.
        apply_nftables(
            ns,
            "add table ip filter\ndelete table ip filter\nadd table ip nat\ndelete table ip nat\n",
        )?;
    }
    Ok(())
}

/// `iptables-save` in `ns`.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or iptables-save fails.
pub fn iptables_save(ns: &NetnsName) -> Result<String> {
    run_in(ns, &["iptables-save"], None).map(|(_, out)| out)
}

/// `iptables-save -t TABLE` in `ns` (a node's `iptables-save -t nat`).
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or iptables-save fails.
pub fn iptables_save_table(ns: &NetnsName, table: &str) -> Result<String> {
    run_in(ns, &["iptables-save", "-t", table], None).map(|(_, out)| out)
}

/// `nft list ruleset` in `ns`.
///
/// # Errors
/// If `ns` is missing or is the host's namespace, or nft fails.
pub fn nft_list_ruleset(ns: &NetnsName) -> Result<String> {
    run_in(ns, &["nft", "list", "ruleset"], None).map(|(_, out)| out)
}

/// A throwaway network namespace for loading and reading back rulesets, deleted when
/// dropped (also when a test panics).
pub struct ThrowawayNetns(pub NetnsName);

impl ThrowawayNetns {
    /// `lbk-<tag>-<pid>`: tests in one process run at once, each with its own tag.
    ///
    /// # Errors
    /// If the name is not valid or `ip netns add` fails.
    pub fn create(tag: &str) -> Result<ThrowawayNetns> {
        let name = NetnsName::new(&format!("lbk-{tag}-{}", std::process::id()))?;
        let status = Command::new("ip")
            .args(["netns", "add", name.as_str()])
            .status()?;
        ensure!(status.success(), "ip netns add {name} failed");
        Ok(ThrowawayNetns(name))
    }
}

impl Drop for ThrowawayNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", self.0.as_str()])
            .status();
    }
}

/// Refuses a namespace that is missing or that is the namespace of init or of this process
/// (e.g. created with `ip netns attach NAME 1`): applying there would change the host.
fn ensure_isolated(ns: &NetnsName) -> Result<()> {
    let path = Path::new("/run/netns").join(ns.as_str());
    let target = std::fs::metadata(&path)
        .with_context(|| format!("network namespace {ns} (no {})", path.display()))?;
    for host in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        // Unreadable (e.g. /proc/1 hidden) means we cannot compare, not that it is equal.
        if let Ok(host_ns) = std::fs::metadata(host) {
            if (host_ns.dev(), host_ns.ino()) == (target.dev(), target.ino()) {
                bail!("refusing to program network namespace {ns}: it is the host's ({host})");
            }
        }
    }
    Ok(())
}

/// Runs `argv` inside `ns` with `stdin` fed in, returning the wall time from spawn to exit
/// and stdout.
fn run_in(ns: &NetnsName, argv: &[&str], stdin: Option<&str>) -> Result<(Duration, String)> {
    ensure_isolated(ns)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.as_str()])
        .args(argv)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting ip netns exec {ns} {}", argv.join(" ")))?;
    if let Some(input) = stdin {
        // Written whole before waiting: the tools read all their input before exiting.
        let mut pipe = child.stdin.take().context("child stdin")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("feeding {} in {ns}", argv[0]))?;
    }
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} in {ns} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{fixtures, synthetic_services};

    #[test]
    fn netns_names_are_plain() {
        assert!(NetnsName::new("lbk-benchgen-42").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(NetnsName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn iptables_backend_from_version_line() {
        let nft = IptablesTool::from_version_line("iptables-restore v1.8.9 (nf_tables)\n");
        assert_eq!(nft.backend, IptablesBackend::Nft);
        assert_eq!(
            nft.to_string(),
            "iptables-nft (iptables-restore v1.8.9 (nf_tables))"
        );
        let legacy = IptablesTool::from_version_line("iptables-restore v1.8.7 (legacy)");
        assert_eq!(legacy.backend, IptablesBackend::Legacy);
        let old = IptablesTool::from_version_line("iptables-restore v1.6.1");
        assert_eq!(old.backend, IptablesBackend::Legacy);
    }

    #[test]
    fn a_missing_namespace_is_refused_before_running_anything() {
        let ns = NetnsName::new("lbk-benchgen-does-not-exist").unwrap();
        let err = iptables_save(&ns).unwrap_err().to_string();
        assert!(
            err.contains("no /run/netns/lbk-benchgen-does-not-exist"),
            "{err}"
        );
    }

    /// Whether to run, and why not: runs as root when `CI` or `LB_PRIVILEGED_TESTS` is set;
    /// in CI without root it fails rather than hiding the gap.
    fn privileged_test_enabled() -> Option<&'static str> {
        let ci = std::env::var_os("CI").is_some();
        let asked = std::env::var_os("LB_PRIVILEGED_TESTS").is_some();
        let root = nix::unistd::geteuid().is_root();
        match (ci || asked, root) {
            (false, _) => Some("set LB_PRIVILEGED_TESTS=1 (as root) to run it"),
            (true, true) => None,
            (true, false) if ci => panic!("CI is set but the test is not running as root"),
            (true, false) => Some("LB_PRIVILEGED_TESTS is set but not running as root"),
        }
    }

    /// KUBE-* chain declarations (`:KUBE-… - [0:0]`) in iptables-save or restore text.
    fn kube_chains(text: &str) -> Vec<String> {
        let mut chains: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(":KUBE-"))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        chains.sort();
        chains.dedup();
        chains
    }

    #[test]
    fn generated_rulesets_load_into_a_throwaway_namespace() {
        if let Some(why) = privileged_test_enabled() {
            println!("skipping generated_rulesets_load_into_a_throwaway_namespace: {why}");
            return;
        }
        let netns = ThrowawayNetns::create("benchgen").expect("create netns");
        let ns = &netns.0;
        let tool = iptables_tool().expect("iptables-restore --version");
        println!("iptables-restore here: {tool}");

        let mut services = synthetic_services(44, 3);
        services.extend(fixtures::overall_services());
        let cfg = ProxyConfig::default();

        // iptables: every chain the restore declares (plus the jump targets) is there.
        apply_iptables(ns, &services, &cfg).expect("iptables-restore");
        let saved = iptables_save(ns).expect("iptables-save");
        let mut want = kube_chains(&iptables::restore_input(&services, &cfg));
        want.extend(kube_chains(&iptables::jump_rules_input()));
        want.sort();
        want.dedup();
        // iptables-save prints a chain once per table; KUBE-SERVICES and KUBE-NODEPORTS
        // exist in both filter and nat.
        assert_eq!(kube_chains(&saved), want);
        assert!(
            saved.contains("--probability 0.33333333349"),
            "probability kept"
        );

        // A partial sync that drops one endpoint applies on top and deletes its chain.
        let mut changed = services.clone();
        let gone = changed[0].endpoints.pop().unwrap();
        let gone_chain =
            crate::kube_proxy::chain_names::iptables_endpoint_chain(&changed[0], &gone);
        iptables_restore(
            ns,
            &iptables::partial_restore_input(&services, &changed, &cfg),
        )
        .expect("partial iptables-restore");
        let saved = iptables_save(ns).expect("iptables-save");
        assert!(!saved.contains(&gone_chain));

        remove_iptables(ns, &changed, &cfg).expect("remove iptables rules");
        let saved = iptables_save(ns).expect("iptables-save");
        assert!(kube_chains(&saved).is_empty(), "{saved}");

        // nftables: every service gets its chains and its map elements.
        let transaction = nftables::ruleset(&services, &cfg);
        apply_nftables(ns, &transaction).expect("nft -f");
        let listed = nft_list_ruleset(ns).expect("nft list ruleset");
        let want_chains = transaction
            .lines()
            .filter_map(|l| l.strip_prefix("add chain ip kube-proxy "))
            .map(|l| l.split(' ').next().unwrap())
            .collect::<std::collections::BTreeSet<_>>();
        // Only table ip kube-proxy: iptables-nft left its (now empty) filter and nat tables.
        let table = listed
            .split("table ip kube-proxy {")
            .nth(1)
            .and_then(|t| t.split("\n}\n").next())
            .expect("table ip kube-proxy listed");
        let listed_chains = table
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain "))
            .map(|l| l.trim_end_matches(" {"))
            .collect::<std::collections::BTreeSet<_>>();
        // The "add chain; delete chain" re-creation of base chains leaves them present.
        assert_eq!(
            listed_chains
                .symmetric_difference(&want_chains)
                .collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "chains listed vs. created"
        );
        assert_eq!(listed_chains.len(), want_chains.len());
        assert!(listed.contains("numgen random mod 3 vmap"), "{listed}");

        let partial = nftables::partial_ruleset(&services, &changed, &cfg);
        apply_nftables(ns, &partial).expect("partial nft -f");
        apply_nftables(
            ns,
            &nftables::stale_chain_deletes(&services, &changed, &cfg),
        )
        .expect("deleting stale chains");
        let listed = nft_list_ruleset(ns).expect("nft list ruleset");
        let gone_chain =
            crate::kube_proxy::chain_names::NftEndpointNames::for_endpoint(&changed[0], &gone)
                .chain;
        assert!(!listed.contains(&gone_chain));

        remove_nftables(ns).expect("nft delete table");
        assert!(!nft_list_ruleset(ns).unwrap().contains("kube-proxy"));
    }

    /// Lines of `text` that hook a chain into netfilter (`type … hook …`).
    fn hooks(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.contains(" hook ")).collect()
    }

    #[test]
    fn a_cleared_ruleset_leaves_no_hook_behind() {
        if let Some(why) = privileged_test_enabled() {
            println!("skipping a_cleared_ruleset_leaves_no_hook_behind: {why}");
            return;
        }
        let netns = ThrowawayNetns::create("benchclear").expect("create netns");
        let ns = &netns.0;
        let services = synthetic_services(20, 2);
        let cfg = ProxyConfig::default();
        for round in 0..2 {
            apply_iptables(ns, &services, &cfg).expect("iptables-restore");
            assert!(!hooks(&nft_list_ruleset(ns).unwrap()).is_empty() || round > 0);
            clear_iptables(ns).expect("clear");
            assert!(kube_chains(&iptables_save(ns).unwrap()).is_empty());
            if iptables_tool().unwrap().backend == IptablesBackend::Nft {
                let listed = nft_list_ruleset(ns).unwrap();
                assert_eq!(
                    hooks(&listed),
                    Vec::<&str>::new(),
                    "round {round}: {listed}"
                );
            }
        }
    }
}
