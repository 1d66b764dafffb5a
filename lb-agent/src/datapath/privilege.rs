//! Whether this process may use BPF, checked up front so the user reads "run as root"
//! instead of a bare EPERM from deep inside a load.

use std::fs;

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error("{0} needs root (or CAP_BPF and CAP_NET_ADMIN) to load and attach eBPF programs: run as root")]
    Agent(&'static str),
    #[error("{0} needs root (or CAP_BPF) to read pinned maps")]
    Reader(&'static str),
}

/// What the agent needs: loading programs and maps, and attaching them to interfaces.
pub fn check_agent(program: &'static str) -> Result<(), PrivilegeError> {
    match effective_capabilities() {
        Some(caps) if can_use_bpf(caps) && has(caps, CAP_NET_ADMIN) => Ok(()),
        Some(_) => Err(PrivilegeError::Agent(program)),
        None if is_root() => Ok(()),
        None => Err(PrivilegeError::Agent(program)),
    }
}

/// What `lbctl` needs: opening pinned maps.
pub fn check_reader(program: &'static str) -> Result<(), PrivilegeError> {
    match effective_capabilities() {
        Some(caps) if can_use_bpf(caps) => Ok(()),
        None if is_root() => Ok(()),
        _ => Err(PrivilegeError::Reader(program)),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// CAP_SYS_ADMIN covers BPF on kernels older than CAP_BPF (5.8).
fn can_use_bpf(caps: u64) -> bool {
    has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
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

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).expect("parsed");
        assert!(can_use_bpf(caps) && has(caps, CAP_NET_ADMIN));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn bpf_needs_cap_bpf_or_sys_admin() {
        assert!(can_use_bpf(1 << CAP_BPF));
        assert!(can_use_bpf(1 << CAP_SYS_ADMIN));
        assert!(!can_use_bpf(1 << CAP_NET_ADMIN));
    }

    #[test]
    fn errors_say_run_as_root() {
        assert!(PrivilegeError::Agent("lb-agent")
            .to_string()
            .contains("run as root"));
        assert_eq!(
            PrivilegeError::Reader("lbctl").to_string(),
            "lbctl needs root (or CAP_BPF) to read pinned maps"
        );
    }
}
