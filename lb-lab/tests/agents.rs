//! `up` with agents, using stand-in agents (shell scripts) so that the lab's side of the
//! contract is tested without the real datapath: arguments, namespace, pin directory, ready
//! file, and what happens when an agent dies.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lb_lab::{bpffs, lab_lock, netns, root_or_skip, Binaries, Lab, UpOptions};

/// Writes an executable stand-in agent and returns Binaries that use it.
fn with_fake_agent(name: &str, script: &str) -> (Binaries, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-lab-fake-agent-{}-{name}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("lb-agent");
    fs::write(&agent, script).unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    let bins = Binaries {
        agent,
        ..Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab")))
    };
    (bins, dir)
}

/// Checks its arguments, proves it sees the host's /sys/fs/bpf (no remount) and its node's
/// network, announces readiness with the node's address, then idles until stopped.
const GOOD_AGENT: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --node-name) node=$2; shift ;;
    --source) source=$2; shift ;;
    --pin-dir) pin=$2; shift ;;
    --ready-file) ready=$2; shift ;;
    --bpf-log) log=$2; shift ;;
  esac
  shift
done
echo "fake agent for $node: source=$source pin=$pin ready=$ready log=$log"
case "$source" in kube) ;; *) echo "bad --source $source" >&2; exit 1 ;; esac
[ "$pin" = "/sys/fs/bpf/lbk/$node" ] || { echo "bad --pin-dir $pin" >&2; exit 1; }
[ -d "$pin" ] || { echo "$pin not visible" >&2; exit 1; }
[ "$log" = debug ] || { echo "extra agent arguments missing" >&2; exit 1; }
ip -o -4 addr show dev eth0 | awk '{print $4}' > "$ready.tmp" && mv "$ready.tmp" "$ready"
exec sleep 600
"#;

const DYING_AGENT: &str =
    "#!/bin/sh\necho 'fake agent: cannot attach to veth0-echo-1' >&2\nexit 1\n";

#[test]
fn up_starts_an_agent_per_node_in_its_namespace_and_waits_for_its_ready_file() {
    if !root_or_skip("lab agents test") {
        return;
    }
    let _lock = lab_lock();
    let (bins, dir) = with_fake_agent("good", GOOD_AGENT);
    let opts = UpOptions {
        agent_args: vec!["--bpf-log".into(), "debug".into()],
        ..UpOptions::default()
    };
    let lab = Lab::up(&bins, opts).expect("lab comes up").down_on_drop();
    assert!(bpffs::is_mounted());
    for node in lab.nodes() {
        let ready =
            fs::read_to_string(bins.state_dir.join(format!("{}.ready", node.name))).unwrap();
        assert_eq!(
            ready.trim(),
            format!("{}/16", node.ip),
            "agent of {} ran elsewhere",
            node.name
        );
        assert!(lab.pin_dir(&node.name).is_dir());
    }
    let attached = Lab::attach(&bins).unwrap();
    assert!(attached.has_agents());

    let report = lab.down().unwrap();
    // 9 echo servers, 3 agents and the API server.
    assert_eq!(report.stopped.len(), 13, "{report}");
    assert!(
        report.pin_dirs.iter().any(|d| d.ends_with("lbk/worker")),
        "{report}"
    );
    assert!(!Path::new(bpffs::LAB_PIN_ROOT).exists());
    assert!(netns::list_lab().unwrap().is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn up_fails_with_the_agent_log_when_an_agent_dies_and_cleans_up() {
    if !root_or_skip("lab agents test") {
        return;
    }
    let _lock = lab_lock();
    let (bins, dir) = with_fake_agent("dying", DYING_AGENT);
    let err = Lab::up(&bins, UpOptions::default()).expect_err("a dead agent fails up");
    let text = format!("{err:#}");
    assert!(text.contains("exited before it was ready"), "{text}");
    assert!(text.contains("cannot attach to veth0-echo-1"), "{text}");
    assert!(
        netns::list_lab().unwrap().is_empty(),
        "half-built lab left behind"
    );
    assert!(fs::read_dir(bins.state_dir.join("pids"))
        .unwrap()
        .next()
        .is_none());
    fs::remove_dir_all(dir).unwrap();
}
