//! The agent as deploy/lb-agent.yaml runs it. The lab starts its agents with the
//! DaemonSet's capabilities (through setpriv), so a capability the manifest lacks fails the
//! lab's tests as it would fail a cluster, and the two cannot drift apart.

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use serde::Deserialize;

/// The manifest, as built into the lab.
const MANIFEST: &str = include_str!("../../deploy/lb-agent.yaml");

/// How the lab starts its agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentPrivileges {
    /// As the DaemonSet does: uid 0 with only the capabilities of its securityContext.
    #[default]
    Daemonset,
    /// As root with every capability, for comparison.
    Root,
}

impl AgentPrivileges {
    /// The name `--agent-privileges` takes and the state directory records.
    pub fn name(self) -> &'static str {
        match self {
            AgentPrivileges::Daemonset => "daemonset",
            AgentPrivileges::Root => "root",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [AgentPrivileges::Daemonset, AgentPrivileges::Root]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// The capabilities the DaemonSet's agent container adds (`BPF`, `NET_ADMIN`, ...), after
/// dropping `ALL`.
///
/// # Errors
/// If the manifest holds no DaemonSet, or its container does not drop `ALL` (what it keeps
/// would then depend on the container runtime's defaults).
pub fn agent_capabilities() -> Result<Vec<String>> {
    let daemonset = serde_norway::Deserializer::from_str(MANIFEST)
        .map(serde_norway::Value::deserialize)
        .collect::<Result<Vec<_>, _>>()
        .context("deploy/lb-agent.yaml is not valid YAML")?
        .into_iter()
        .find(|doc| doc["kind"] == "DaemonSet")
        .context("deploy/lb-agent.yaml holds no DaemonSet")?;
    let daemonset: DaemonSet =
        serde_norway::from_value(daemonset).context("deploy/lb-agent.yaml's DaemonSet")?;
    let pod = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .context("the DaemonSet has no pod spec")?;
    let Some(agent) = pod.containers.iter().find(|c| c.name == "lb-agent") else {
        bail!("the DaemonSet has no lb-agent container");
    };
    let security = agent.security_context.clone().unwrap_or_default();
    ensure!(
        security.privileged != Some(true),
        "the DaemonSet's agent is privileged: it must list its capabilities"
    );
    let capabilities = security.capabilities.unwrap_or_default();
    ensure!(
        capabilities.drop.unwrap_or_default() == ["ALL"],
        "the DaemonSet's agent must drop ALL capabilities before adding its own"
    );
    Ok(capabilities.add.unwrap_or_default())
}

/// setpriv's arguments that leave uid 0 with only `capabilities` (Kubernetes spelling):
/// root's permitted set after exec is its inheritable set together with the bounding set,
/// so both are cut down, which is what a container runtime does.
pub fn setpriv_args(capabilities: &[String]) -> Vec<String> {
    let list: String = std::iter::once("-all".to_string())
        .chain(
            capabilities
                .iter()
                .map(|c| format!("+{}", c.to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    vec![
        format!("--inh-caps={list}"),
        format!("--bounding-set={list}"),
        "--".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_grants_bpf_net_admin_and_perfmon_only() {
        assert_eq!(
            agent_capabilities().unwrap(),
            ["BPF", "NET_ADMIN", "PERFMON"]
        );
    }

    #[test]
    fn setpriv_cuts_the_inheritable_and_bounding_sets() {
        assert_eq!(
            setpriv_args(&["BPF".into(), "NET_ADMIN".into()]),
            [
                "--inh-caps=-all,+bpf,+net_admin",
                "--bounding-set=-all,+bpf,+net_admin",
                "--"
            ]
        );
    }
}
