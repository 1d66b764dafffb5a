//! The capabilities the agent and `lbctl` need, checked up front: a missing one is named in
//! one line, before anything is loaded or attached, instead of surfacing as a bare EPERM or
//! a page of verifier log from halfway through a load (with some programs attached and
//! others not).
//!
//! The agent needs exactly [`AGENT_CAPABILITIES`], found by starting it with each one
//! dropped (the lab's least-privilege test does this on every run):
//! - without CAP_BPF, `bpf(BPF_MAP_CREATE)` and `BPF_PROG_LOAD` fail;
//! - without CAP_NET_ADMIN, loading tc, XDP and cgroup socket programs (net-admin program
//!   types) and attaching them fail;
//! - without CAP_PERFMON, the verifier treats the programs as unprivileged and refuses the
//!   pointer arithmetic of the packet parser ("pointer arithmetic with it prohibited for
//!   !root").
//!
//! It does not need CAP_SYS_RESOURCE (since Linux 5.11 BPF memory is charged to the cgroup,
//! not to RLIMIT_MEMLOCK), CAP_SYS_ADMIN, or any file capability: it runs as uid 0, which
//! owns bpffs and the cgroup directory. On kernels before 5.8 (no CAP_BPF or CAP_PERFMON),
//! CAP_SYS_ADMIN stands for both. deploy/lb-agent.yaml grants exactly this set, and the lab
//! starts its agents with it.

use std::fs;

/// A Linux capability (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// As Kubernetes spells it in `securityContext.capabilities` (and setpriv, lowercased).
    pub name: &'static str,
    pub number: u32,
    /// Why the agent needs it, for the error that names it missing.
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "NET_ADMIN",
    number: 12,
    why: "to load tc, XDP and socket programs and attach them to interfaces and the cgroup",
};
/// Stands for CAP_BPF and CAP_PERFMON on kernels older than 5.8.
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "SYS_ADMIN",
    number: 21,
    why: "",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "PERFMON",
    number: 38,
    why: "for the verifier to accept the packet parser's pointer arithmetic",
};
pub const CAP_BPF: Capability = Capability {
    name: "BPF",
    number: 39,
    why: "to create maps and load programs",
};

/// Everything the agent needs, and no more (see the module's comment for how it was found).
pub const AGENT_CAPABILITIES: &[Capability] = &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error("{program} lacks {}: grant {} (a DaemonSet's securityContext.capabilities.add: [{}]) or run as root", missing_list(.missing), names_with_cap(AGENT_CAPABILITIES), names(AGENT_CAPABILITIES))]
    Agent {
        program: &'static str,
        missing: Vec<Capability>,
    },
    #[error("{0} needs CAP_BPF (or root) to open pinned maps, to read them or (conntrack flush) delete entries")]
    Reader(&'static str),
}

fn missing_list(missing: &[Capability]) -> String {
    missing
        .iter()
        .map(|c| format!("CAP_{} ({})", c.name, c.why))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn names_with_cap(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| format!("CAP_{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(caps: &[Capability]) -> String {
    caps.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// What the agent needs: [`AGENT_CAPABILITIES`].
pub fn check_agent(program: &'static str) -> Result<(), PrivilegeError> {
    match effective_capabilities() {
        Some(caps) => {
            let missing = missing_for_agent(caps);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(PrivilegeError::Agent { program, missing })
            }
        }
        // /proc cannot tell: let the kernel decide, as root would be allowed.
        None if is_root() => Ok(()),
        None => Err(PrivilegeError::Agent {
            program,
            missing: AGENT_CAPABILITIES.to_vec(),
        }),
    }
}

fn missing_for_agent(caps: u64) -> Vec<Capability> {
    AGENT_CAPABILITIES
        .iter()
        .filter(|c| !has(caps, **c))
        .copied()
        .collect()
}

/// What `lbctl` needs: opening pinned maps.
pub fn check_reader(program: &'static str) -> Result<(), PrivilegeError> {
    match effective_capabilities() {
        Some(caps) if has(caps, CAP_BPF) => Ok(()),
        None if is_root() => Ok(()),
        _ => Err(PrivilegeError::Reader(program)),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON, as on kernels that predate them (5.8).
fn has(caps: u64, cap: Capability) -> bool {
    let set = |c: Capability| caps & (1 << c.number) != 0;
    set(cap) || ((cap == CAP_BPF || cap == CAP_PERFMON) && set(CAP_SYS_ADMIN))
}

/// The effective capability set, or `None` when /proc cannot tell.
fn effective_capabilities() -> Option<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |s, c| s | 1 << c.number)
    }

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).expect("parsed");
        assert!(missing_for_agent(caps).is_empty());
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn the_agent_needs_bpf_net_admin_and_perfmon_or_sys_admin_for_two_of_them() {
        assert!(missing_for_agent(set(AGENT_CAPABILITIES)).is_empty());
        assert!(missing_for_agent(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])).is_empty());
        assert_eq!(
            missing_for_agent(set(&[CAP_BPF, CAP_NET_ADMIN])),
            [CAP_PERFMON]
        );
        assert_eq!(missing_for_agent(set(&[CAP_SYS_ADMIN])), [CAP_NET_ADMIN]);
        assert_eq!(missing_for_agent(0), AGENT_CAPABILITIES);
    }

    #[test]
    fn errors_name_what_is_missing_and_why_and_what_to_grant() {
        let e = PrivilegeError::Agent {
            program: "lb-agent",
            missing: vec![CAP_PERFMON],
        }
        .to_string();
        assert_eq!(
            e,
            "lb-agent lacks CAP_PERFMON (for the verifier to accept the packet parser's \
             pointer arithmetic): grant CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (a DaemonSet's \
             securityContext.capabilities.add: [BPF, NET_ADMIN, PERFMON]) or run as root"
        );
        assert_eq!(
            PrivilegeError::Reader("lbctl").to_string(),
            "lbctl needs CAP_BPF (or root) to open pinned maps, to read them or (conntrack flush) delete entries"
        );
    }
}
