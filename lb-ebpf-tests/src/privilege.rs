//! Where the eBPF object is, and the gate for tests that load it.

use std::path::{Path, PathBuf};

use lb_lab::testing::{require, root_or_skip};

/// The eBPF object the tests load: `LB_EBPF_OBJECT`, or what `cargo xtask build` produces.
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/lb-ebpf")
        })
}

/// Root and a built object; otherwise skips with a reason (fails under CI=true).
pub fn require_bpf(test: &str) -> bool {
    root_or_skip(test)
        && require(
            test,
            ebpf_object().exists(),
            &format!(
                "no eBPF object at {} (run `cargo xtask build`)",
                ebpf_object().display()
            ),
        )
}
