//! What the datapath needs of the kernel, probed at start: a kernel without one is named
//! with the feature and the Linux version that brought it, before anything is loaded,
//! rather than surfacing as a verifier log or an EINVAL from halfway through attaching.
//!
//! Probed ([`FEATURES`]): tcx (6.6), the links every tc program is attached with, and the
//! `bpf_loop` helper (5.17), which masquerade port selection runs under. What else the
//! agent uses is older than both and comes with them on any mainline kernel: BPF_MAP_*_BATCH
//! (5.6, the conntrack GC), BPF_LINK_UPDATE (5.7), cgroup sock_addr programs (4.17,
//! getpeername 5.8), BTF and `bpf_fib_lookup` (4.18), XDP (4.8).

use aya::{
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{is_helper_supported, BpfHelper},
};

/// One kernel feature the datapath cannot run without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    /// The Linux release that brought it.
    pub since: &'static str,
    /// What the agent uses it for.
    pub why: &'static str,
}

pub const TCX: Feature = Feature {
    name: "tcx (BPF links on the tc hooks)",
    since: "6.6",
    why: "to attach lb_from_pod, lb_to_pod, lb_from_net and lb_to_net",
};
pub const BPF_LOOP: Feature = Feature {
    name: "the bpf_loop helper",
    since: "5.17",
    why: "to pick masquerade ports",
};

/// Everything probed, the newest first.
pub const FEATURES: [Feature; 2] = [TCX, BPF_LOOP];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("this kernel ({release}) lacks {}: lb needs Linux {} or later", missing_list(.missing), .missing.first().map_or("6.6", |(f, _)| f.since))]
    Missing {
        release: String,
        missing: Vec<(Feature, String)>,
    },
}

fn missing_list(missing: &[(Feature, String)]) -> String {
    missing
        .iter()
        .map(|(f, detail)| format!("{} (Linux {}, {}; probe: {detail})", f.name, f.since, f.why))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Probes every feature on this kernel.
pub fn check() -> Result<(), KernelError> {
    check_with(&release(), probe)
}

/// Probes every feature with `probe` (Ok when present, else what the probe saw).
pub fn check_with(
    release: &str,
    probe: impl Fn(Feature) -> Result<(), String>,
) -> Result<(), KernelError> {
    let missing: Vec<_> = FEATURES
        .iter()
        .filter_map(|f| probe(*f).err().map(|detail| (*f, detail)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KernelError::Missing {
            release: release.to_owned(),
            missing,
        })
    }
}

/// The real probes: a tcx query on `lo` (which every network namespace has; kernels before
/// 6.6 refuse the attach type), and aya's helper probe, which loads a two-instruction
/// program calling the helper.
fn probe(feature: Feature) -> Result<(), String> {
    if feature == TCX {
        SchedClassifier::query_tcx("lo", TcAttachType::Ingress)
            .map(drop)
            .map_err(|e| crate::error_chain::error_chain(&e))
    } else if feature == BPF_LOOP {
        match is_helper_supported(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop) {
            Ok(true) => Ok(()),
            Ok(false) => Err("unknown helper".into()),
            Err(e) => Err(crate::error_chain::error_chain(&e)),
        }
    } else {
        Ok(())
    }
}

/// `uname -r`.
fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown release".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_named_with_the_kernel_that_brought_it() {
        let err = check_with("5.15.0-91-generic", |f| {
            if f == TCX {
                Err("Invalid argument (os error 22)".into())
            } else {
                Ok(())
            }
        })
        .expect_err("no tcx");
        assert_eq!(
            err.to_string(),
            "this kernel (5.15.0-91-generic) lacks tcx (BPF links on the tc hooks) (Linux 6.6, \
             to attach lb_from_pod, lb_to_pod, lb_from_net and lb_to_net; probe: Invalid \
             argument (os error 22)): lb needs Linux 6.6 or later"
        );
        let err = check_with("5.10.0", |_| Err("no".into())).expect_err("neither");
        let text = err.to_string();
        assert!(
            text.contains("lacks tcx") && text.contains("and the bpf_loop helper (Linux 5.17"),
            "{text}"
        );
        assert!(text.ends_with("lb needs Linux 6.6 or later"), "{text}");
        let err = check_with("6.5", |f| {
            if f == BPF_LOOP {
                Err("x".into())
            } else {
                Ok(())
            }
        })
        .expect_err("no bpf_loop");
        assert!(err.to_string().ends_with("Linux 5.17 or later"), "{err}");
        assert_eq!(check_with("6.6", |_| Ok(())), Ok(()));
    }

    #[test]
    fn this_kernel_has_everything_the_datapath_needs() {
        if !crate::testing::require_root("probing BPF features") {
            return;
        }
        check().expect("the test machine's kernel runs the datapath");
    }
}
