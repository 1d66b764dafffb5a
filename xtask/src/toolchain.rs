//! Finding (and on Debian/Ubuntu, installing) a toolchain that can build the eBPF object.
//!
//! Two recipes work (see ../shared/toolchain.md):
//! - rustup nightly with the `rust-src` component (the usual aya path);
//! - Debian's `rustc-web` + `rust-web-src` (rustc 1.96 on the system LLVM 22) run with
//!   `RUSTC_BOOTSTRAP=1`, linked into rustup as the `debian-bpf` toolchain.
//!
//! Either needs `bpf-linker`, built against the same LLVM major as rustc (22 here).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run::{cmd_ok, run, say};

/// How to invoke cargo for the bpfel-unknown-none build.
pub struct EbpfToolchain {
    pub description: String,
    /// Program and leading arguments, e.g. `rustup run nightly cargo`.
    pub cargo: Vec<String>,
    /// Extra environment (RUSTC_BOOTSTRAP, RUSTC).
    pub env: Vec<(String, String)>,
}

const DEBIAN_RUST: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];
const LLVM_FOR_LINKER: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What the lab, its tests and the benchmarks run: namespaces and links (iproute2), offloads
/// (ethtool: GRO for XDP_TX on veths, `--offloads off`), kindnet's masquerade on every node
/// and the kube-proxy baselines (iptables, nftables), and the throughput client (iperf3).
const LAB_TOOLS: [&str; 5] = ["iproute2", "ethtool", "iptables", "nftables", "iperf3"];
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";
const DEBIAN_LINK: &str = "debian-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Finds a working eBPF toolchain, installing missing pieces where it can.
pub fn ensure() -> Result<EbpfToolchain> {
    let toolchain = match nightly_with_rust_src() {
        Some(t) => t,
        None => debian_toolchain()?,
    };
    ensure_bpf_linker()?;
    Ok(toolchain)
}

fn has_rustup() -> bool {
    cmd_ok(Command::new("rustup").arg("--version"))
}

fn nightly_with_rust_src() -> Option<EbpfToolchain> {
    if !has_rustup() {
        return None;
    }
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .ok()?;
    let installed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !installed.lines().any(|l| l.starts_with("rust-src")) {
        return None;
    }
    Some(EbpfToolchain {
        description: "rustup nightly with rust-src".into(),
        cargo: ["rustup", "run", "nightly", "cargo"]
            .map(String::from)
            .to_vec(),
        env: vec![],
    })
}

fn debian_toolchain() -> Result<EbpfToolchain> {
    if !Path::new("/usr/bin/rustc").exists() || !Path::new(DEBIAN_RUST_SRC).exists() {
        say("no rustup nightly with rust-src; using Debian's rustc-web with rust-web-src");
        apt_install(
            &DEBIAN_RUST,
            "Debian's Rust compiler and its library source (for -Z build-std=core)",
        )?;
    }
    let env = vec![("RUSTC_BOOTSTRAP".to_string(), "1".to_string())];
    if has_rustup() {
        let linked = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with(DEBIAN_LINK))
            })
            .unwrap_or(false);
        if !linked {
            say(&format!(
                "linking Debian's toolchain into rustup as `{DEBIAN_LINK}`"
            ));
            run(Command::new("rustup").args(["toolchain", "link", DEBIAN_LINK, "/usr"]))?;
        }
        return Ok(EbpfToolchain {
            description: format!("Debian rustc-web via rustup toolchain `{DEBIAN_LINK}`"),
            cargo: ["rustup", "run", DEBIAN_LINK, "cargo"]
                .map(String::from)
                .to_vec(),
            env,
        });
    }
    let mut env = env;
    env.push(("RUSTC".into(), "/usr/bin/rustc".into()));
    Ok(EbpfToolchain {
        description: "Debian rustc-web (/usr/bin/cargo)".into(),
        cargo: vec!["/usr/bin/cargo".into()],
        env,
    })
}

/// Installs the lab's command-line tools that are missing ([`LAB_TOOLS`]).
///
/// Without root nothing can be installed, and nothing that uses the tools can run (the lab
/// needs root too), so that case only says what is missing.
///
/// # Errors
/// If a tool is missing and cannot be installed as root.
pub fn ensure_lab_tools() -> Result<()> {
    let why = "the lab's tools: ip, ethtool, iptables (kindnet's masquerade), nft, iperf3";
    if !is_root() {
        let missing: Vec<&str> = LAB_TOOLS
            .into_iter()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if !missing.is_empty() {
            say(&format!(
                "not root: lab tests will skip; as root, `apt-get install {}` ({why})",
                missing.join(" ")
            ));
        }
        return Ok(());
    }
    apt_install(&LAB_TOOLS, why)
}

/// Where `cargo install` puts binaries.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `bpf-linker` on PATH or in cargo's bin directory.
pub fn bpf_linker() -> Option<PathBuf> {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    in_path.or_else(|| Some(cargo_bin_dir().join("bpf-linker")).filter(|p| p.is_file()))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker().is_some() {
        return Ok(());
    }
    say("bpf-linker is missing; building it against LLVM 22 (about a minute)");
    apt_install(&LLVM_FOR_LINKER, "LLVM 22 libraries for bpf-linker")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
    .context("cargo install bpf-linker")?;
    Ok(())
}

fn is_debian_like() -> bool {
    Path::new("/etc/debian_version").exists() && cmd_ok(Command::new("apt-get").arg("--version"))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages in `pkgs` that are missing, saying why.
pub fn apt_install(pkgs: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_debian_like() {
        bail!(
            "missing: {why}. This is not a Debian/Ubuntu system; install the equivalent of: {}\n\
             or use the usual aya path: `rustup toolchain install nightly --component rust-src` \
             and `cargo install bpf-linker`",
            missing.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "missing {why}; run as root or install them first: apt-get install {}",
            missing.join(" ")
        );
    }
    say(&format!("installing {} ({why})", missing.join(" ")));
    apt_update_once()?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn apt_update_once() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.swap(true, Ordering::SeqCst) {
        say("apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
