//! Gates for tests that need root or the embedded eBPF object (the shared test support lives
//! in lb-lab).

pub use lb_lab::testing::{root_or_skip as require_root, PinDir};

/// True when an eBPF object was embedded at build time; otherwise the test is skipped (or
/// fails under CI, where `cargo xtask build` runs first).
pub fn require_object() -> bool {
    lb_lab::testing::require(
        "a test of the embedded eBPF object",
        crate::datapath::loader::EMBEDDED.is_some(),
        "no eBPF object was embedded (run `cargo xtask build`)",
    )
}
