//! Embeds the eBPF object into lb-agent when one has been built, so the agent is a single
//! file. The object comes from `LB_EBPF_OBJECT` if set, else from where `cargo xtask build`
//! puts it. Without one the agent still builds, and asks for `--bpf-object` at run time.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lb_embedded_object)");
    println!("cargo::rerun-if-env-changed=LB_EBPF_OBJECT");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../target/ebpf/bpfel-unknown-none/release/lb-ebpf"));
    // Watching a path that does not exist makes cargo rerun this script on every build;
    // watch the nearest existing ancestor instead, which changes when the object appears.
    let watched = object
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    println!("cargo::rerun-if-changed={}", watched.display());
    if !object.is_file() {
        if env::var_os("LB_EBPF_OBJECT").is_some() {
            panic!("LB_EBPF_OBJECT={} is not a file", object.display());
        }
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lb-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        panic!("cannot copy {} to {}: {e}", object.display(), out.display());
    }
    println!("cargo::rustc-cfg=lb_embedded_object");
}
