//! The real `lb-agent` binary, given what a node cannot give it (a pin directory off bpffs,
//! an `--uplink` that does not exist, a `--cgroup-path` that is not cgroup2, a missing
//! `--source file:` directory), says what is
//! wrong in one message and exits non-zero with nothing pinned; with the same flags made
//! good it starts; pinned maps deleted while it was down, or planted with another layout,
//! are created anew with one log line each. Each run is in a network namespace of its own (`unshare --net`, which
//! leaves /sys, and so bpffs, as it is), gone when the agent exits.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
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

/// Starts the agent with `args` in a fresh network namespace, waits (30 s at most) for its
/// ready file, stops it with SIGTERM: whether it got ready and exited 0, and its log.
fn start_and_stop(args: &[String], ready_file: &Path) -> (bool, String) {
    let log = ready_file.with_extension("log");
    let out = fs::File::create(&log).expect("log file");
    let mut child = Command::new("unshare")
        .args(["--net", "--", agent()])
        .args(args)
        .arg("--ready-file")
        .arg(ready_file)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start lb-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready_file.exists() && Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = ready_file.exists();
    // unshare execs the agent: this PID is the agent's.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("wait");
    let text = fs::read_to_string(&log).unwrap_or_default();
    (started && status.success(), text)
}

#[test]
fn the_same_flags_made_good_start_the_agent() {
    if !ready() {
        return;
    }
    let source = tempfile::tempdir().expect("temp dir");
    let pins = PinDir::new("good-input");
    let a = args(source.path(), pins.path(), &["--uplink", "lo"]);
    let (ok, log) = start_and_stop(&a, &source.path().join("ready"));
    assert!(ok, "the agent did not get ready and stop cleanly:\n{log}");
}

#[test]
fn deleted_or_incompatible_pinned_maps_are_recreated_with_one_line_each() {
    if !ready() {
        return;
    }
    let source = tempfile::tempdir().expect("temp dir");
    let pins = PinDir::new("pins-replaced");
    let p = pins.path();
    let a = args(source.path(), p, &[]);
    let ready_file = source.path().join("ready");
    let (ok, log) = start_and_stop(&a, &ready_file);
    assert!(ok, "first start:\n{log}");
    assert!(
        !log.contains("missing from"),
        "a first start has nothing missing:\n{log}"
    );

    // Deleted while no agent ran: the links stay, the maps go.
    for name in ["LB_FRONTENDS", "LB_CT4_TCP"] {
        fs::remove_file(p.join(name)).expect("unpin");
    }
    let (ok, log) = start_and_stop(&a, &ready_file);
    assert!(ok, "after deleting maps:\n{log}");
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("pinned maps missing"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("LB_FRONTENDS,LB_CT4_TCP"), "{}", lines[0]);
    assert!(p.join("LB_FRONTENDS").exists() && p.join("LB_CT4_TCP").exists());

    // Same name, another value size: a hash of backends where the config array belongs.
    fs::remove_file(p.join("LB_CONFIG")).expect("unpin");
    aya::maps::MapData::from_pin(p.join("LB_BACKENDS"))
        .expect("open")
        .pin(p.join("LB_CONFIG"))
        .expect("plant");
    let (ok, log) = start_and_stop(&a, &ready_file);
    assert!(ok, "after planting an incompatible map:\n{log}");
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("has another layout"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("LB_CONFIG"), "{}", lines[0]);
    let info = aya::maps::MapInfo::from_pin(p.join("LB_CONFIG")).expect("pinned");
    assert_eq!(info.map_type().expect("type"), aya::maps::MapType::Array);
    // And the next start finds everything as it should be: not a word.
    let (ok, log) = start_and_stop(&a, &ready_file);
    assert!(ok, "{log}");
    assert!(
        !log.contains("has another layout") && !log.contains("pinned maps missing"),
        "{log}"
    );
}

#[test]
fn lbctl_refuses_to_flush_conntrack_without_cap_bpf() {
    if !ready() {
        return;
    }
    let source = tempfile::tempdir().expect("temp dir");
    let pins = PinDir::new("lbctl-flush");
    let (ok, log) = start_and_stop(
        &args(source.path(), pins.path(), &[]),
        &source.path().join("ready"),
    );
    assert!(ok, "{log}");
    let lbctl = |setpriv: bool, cmd: &[&str]| {
        let mut c = Command::new(if setpriv {
            "setpriv"
        } else {
            env!("CARGO_BIN_EXE_lbctl")
        });
        if setpriv {
            c.args(lb_lab::daemonset::setpriv_args(&["NET_ADMIN".to_string()]))
                .arg(env!("CARGO_BIN_EXE_lbctl"));
        }
        c.arg("--pin-dir")
            .arg(pins.path())
            .args(cmd)
            .output()
            .expect("lbctl")
    };
    let out = lbctl(true, &["conntrack", "flush"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lbctl needs CAP_BPF"), "{stderr}");
    assert!(stderr.contains("conntrack flush"), "{stderr}");
    // With CAP_BPF the same command runs.
    let out = lbctl(false, &["conntrack", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
