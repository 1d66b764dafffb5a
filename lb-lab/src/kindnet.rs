//! kindnet's masquerade, as kindnetd installs it on every Kind node (iptables, nat table):
//!
//! ```text
//! -A POSTROUTING -m addrtype ! --dst-type LOCAL -j KIND-MASQ-AGENT
//! -A KIND-MASQ-AGENT -d 10.244.0.0/16 -j RETURN
//! -A KIND-MASQ-AGENT -j MASQUERADE
//! ```
//!
//! Pods keep their addresses towards pods; whatever else they send off the node leaves with
//! the node's address. Beyond that, the rules put netfilter's conntrack and NAT hooks on the
//! path of every packet a node forwards or sends, as in Kind: a datapath that works only
//! where no NAT rule exists, or that trips over conntrack's view of its translated packets,
//! fails here as it would in a real cluster.

use std::process::Command;

use anyhow::{Context, Result};

use crate::netns;
use crate::plan::CLUSTER_CIDR;

/// kindnetd's chain in the nat table.
pub const CHAIN: &str = "KIND-MASQ-AGENT";

/// The `iptables` arguments (after `-w -t nat`) that build the masquerade, in kindnetd's
/// order: the chain and its rules first, the jump to it last, so no packet ever takes the
/// jump into a half-built chain. The comments are kindnetd's, so `iptables-save` on a lab
/// node reads like one on a Kind node.
pub fn rules() -> Vec<Vec<String>> {
    let rule = |args: &[&str]| args.iter().map(ToString::to_string).collect();
    let cluster = CLUSTER_CIDR.to_string();
    vec![
        rule(&["-N", CHAIN]),
        rule(&[
            "-A",
            CHAIN,
            "-d",
            &cluster,
            "-m",
            "comment",
            "--comment",
            "kind-masq-agent: local traffic is not subject to MASQUERADE",
            "-j",
            "RETURN",
        ]),
        rule(&[
            "-A",
            CHAIN,
            "-m",
            "comment",
            "--comment",
            "kind-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)",
            "-j",
            "MASQUERADE",
        ]),
        rule(&[
            "-A",
            "POSTROUTING",
            "-m",
            "addrtype",
            "!",
            "--dst-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            "kind-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom KIND-MASQ-AGENT chain",
            "-j",
            CHAIN,
        ]),
    ]
}

/// Installs the masquerade ([`rules`]) in node namespace `ns`, whose nat table must not
/// have it yet (a fresh namespace, or one whose nat table was cleared).
///
/// # Errors
/// If `ns` cannot be entered or iptables refuses a rule (with its stderr).
pub fn install(ns: &str) -> Result<()> {
    for args in rules() {
        iptables(ns, &args)?;
    }
    Ok(())
}

/// Runs `iptables -w -t nat <args>` inside namespace `ns` (entering only its network
/// namespace: netfilter's tables are per network namespace).
fn iptables(ns: &str, args: &[String]) -> Result<()> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "-t", "nat"]).args(args);
    netns::enter_on_spawn(&mut cmd, ns)?;
    crate::cmd::run(&mut cmd)
        .map(drop)
        .with_context(|| format!("in {ns} (iptables is needed for kindnet's masquerade)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_comes_after_the_chain_it_jumps_to() {
        let rules = rules();
        let joined: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(joined[0], "-N KIND-MASQ-AGENT");
        assert!(joined[1].starts_with("-A KIND-MASQ-AGENT -d 10.244.0.0/16 "));
        assert!(joined[1].ends_with("-j RETURN"));
        assert!(joined[2].ends_with("-j MASQUERADE"), "plain, no --random");
        assert!(joined[3].starts_with("-A POSTROUTING -m addrtype ! --dst-type LOCAL "));
        assert!(joined[3].ends_with("-j KIND-MASQ-AGENT"));
        assert_eq!(rules.len(), 4);
    }
}
