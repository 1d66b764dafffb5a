//! `cargo xtask build`: the eBPF object, then the userspace binaries that embed it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    run::{run, say},
    toolchain,
};

#[derive(clap::Args, Clone, Default)]
pub struct BuildArgs {
    /// Build userspace in release mode (the eBPF object is always optimised).
    #[arg(long)]
    pub release: bool,
}

/// What a build produced.
pub struct Artifacts {
    pub workspace: PathBuf,
    pub ebpf_object: PathBuf,
    pub bin_dir: PathBuf,
}

impl Artifacts {
    /// Where a build puts its outputs, without building.
    pub fn existing(release: bool) -> Self {
        let workspace = workspace_root();
        Self {
            ebpf_object: ebpf_object_path(&workspace),
            bin_dir: workspace.join("target").join(profile(release)),
            workspace,
        }
    }

    pub fn lab_binaries(&self) -> lb_lab::Binaries {
        lb_lab::Binaries {
            agent: self.bin_dir.join("lb-agent"),
            lbctl: self.bin_dir.join("lbctl"),
            lab: self.bin_dir.join("lb-lab"),
            bpf_object: self.ebpf_object.clone(),
            state_dir: self.workspace.join("target/lab"),
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Variables a parent cargo or rustup may have set that would steer the child build to the
/// wrong compiler or flags.
const INHERITED: [&str; 9] = [
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "RUSTFLAGS",
];

/// The flags the eBPF object is built with. The CPU stays LLVM's generic one: `-Ctarget-cpu=v3`
/// (which rustc hands on to bpf-linker) makes LLVM 22 emit spills of unset registers that
/// the verifier refuses. The compare-and-exchange in lb-ebpf/src/atomic.rs assembles there
/// too, and kernels since 5.12 run it.
pub const EBPF_RUSTFLAGS: &str = "-Cdebuginfo=2 -Clink-arg=--btf";

pub fn ebpf_object_path(workspace: &Path) -> PathBuf {
    workspace.join("target/ebpf/bpfel-unknown-none/release/lb-ebpf")
}

pub fn run_build(args: &BuildArgs) -> Result<Artifacts> {
    let workspace = workspace_root();
    let tc = toolchain::ensure()?;

    say(&format!("building the eBPF object with {}", tc.description));
    let mut cmd = Command::new(&tc.cargo[0]);
    cmd.args(&tc.cargo[1..])
        .args([
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(workspace.join("target/ebpf"))
        .current_dir(workspace.join("lb-ebpf"));
    for var in INHERITED {
        cmd.env_remove(var);
    }
    // BTF in the object lets the kernel check map types and lets bpftool show them.
    cmd.env("RUSTFLAGS", EBPF_RUSTFLAGS);
    cmd.envs(tc.env.iter().map(|(k, v)| (k, v)));
    if let Some(linker) = toolchain::bpf_linker() {
        let dir = linker.parent().expect("file has a parent").to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(dir).chain(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths)?);
    }
    run(&mut cmd).context("building the eBPF object")?;
    let ebpf_object = ebpf_object_path(&workspace);

    say("building lb-agent, lbctl and lb-lab");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "lb-agent", "-p", "lb-lab", "--bins"])
        .current_dir(&workspace)
        .env("LB_EBPF_OBJECT", &ebpf_object);
    if args.release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building userspace")?;
    Ok(Artifacts::existing(args.release))
}

fn profile(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}
