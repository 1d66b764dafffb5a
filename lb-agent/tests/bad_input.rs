//! The real `lb-agent` binary, given what a node cannot give it (a pin directory off bpffs,
//! an `--uplink` that does not exist, a `--cgroup-path` that is not cgroup2, a missing
//! `--source file:` directory), says what is
//! wrong in one message and exits non-zero with nothing pinned; with the same flags made
//! good it starts. Each run is in a network namespace of its own (`unshare --net`, which
//! leaves /sys, and so bpffs, as it is), gone when the agent exits.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_lab::testing::{require, root_or_skip, PinDir};

fn agent() -> &'static str {
    env!("CARGO_BIN_EXE_lb-agent")
}

fn object() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/lb-ebpf")
}

fn ready() -> bool {
    root_or_skip("running lb-agent")
        && require(
            "running lb-agent",
            object().is_file(),
            "no eBPF object: run `cargo xtask build`",
        )
}

/// Flags that start an agent in an empty namespace, with `pin_dir` and `extra`.
fn args(source: &Path, pin_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--node-name",
        "bad-input",
        "--metrics-bind-address",
        "0.0.0.0:0",
        "--healthz-bind-address",
        "0.0.0.0:0",
        "--conntrack-tcp-max",
        "1024",
        "--conntrack-any-max",
        "1024",
        "--xdp-mode",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--socket-lb") {
        a.extend(["--socket-lb".into(), "false".into()]);
    }
    a.extend([
        "--source".into(),
        format!("file:{}", source.display()),
        "--pin-dir".into(),
        pin_dir.display().to_string(),
        "--bpf-object".into(),
        object().display().to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs the agent to its exit (at most 30 s) in a fresh network namespace: its status
/// and everything it printed.
fn run(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["30", "unshare", "--net", "--", agent()])
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run lb-agent");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_refused(args: &[String], message: &str, pins: &Path) {
    let (code, text) = run(args);
    assert!(
        code.is_some_and(|c| c != 0 && c != 124),
        "exit {code:?} (124: still running after 30 s):\n{text}"
    );
    assert!(text.contains(message), "no {message:?} in:\n{text}");
    let left: Vec<_> = fs::read_dir(pins)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pinned before refusing: {left:?}\n{text}");
}

#[test]
fn bad_flags_are_named_and_exit_non_zero_before_anything_is_pinned() {
    if !ready() {
        return;
    }
    let source = tempfile::tempdir().expect("temp dir");
    let pins = PinDir::new("bad-input");
    let p = pins.path();

    let off = tempfile::tempdir().expect("temp dir");
    let off_pins = off.path().join("pins");
    assert_refused(
        &args(source.path(), &off_pins, &[]),
        "is not on a BPF filesystem",
        &off_pins,
    );
    assert!(!off_pins.exists(), "a pin dir was created off bpffs");

    assert_refused(
        &args(source.path(), p, &["--uplink", "nosuch0"]),
        "--uplink nosuch0: no interface of that name in this network namespace",
        p,
    );
    assert_refused(
        &args(
            source.path(),
            p,
            &["--socket-lb", "true", "--cgroup-path", "/proc"],
        ),
        "--cgroup-path /proc: not on a cgroup2 file system",
        p,
    );
    assert_refused(
        &args(
            source.path(),
            p,
            &["--socket-lb", "true", "--cgroup-path", "/nonexistent/lb"],
        ),
        "--cgroup-path /nonexistent/lb",
        p,
    );
    assert_refused(&args(&source.path().join("missing"), p, &[]), "missing", p);
}

#[test]
fn the_same_flags_made_good_start_the_agent() {
    if !ready() {
        return;
    }
    let source = tempfile::tempdir().expect("temp dir");
    let pins = PinDir::new("good-input");
    let ready_file = source.path().join("ready");
    let mut a = args(source.path(), pins.path(), &["--uplink", "lo"]);
    a.extend(["--ready-file".into(), ready_file.display().to_string()]);
    let mut child = Command::new("unshare")
        .args(["--net", "--", agent()])
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lb-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exited = None;
    while !ready_file.exists() && Instant::now() < deadline && exited.is_none() {
        exited = child.try_wait().expect("wait");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = ready_file.exists();
    // unshare execs the agent: this PID is the agent's.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("wait");
    assert!(started, "the agent did not get ready (exit {exited:?})");
    assert!(status.success(), "the agent exited {status} on SIGTERM");
}
