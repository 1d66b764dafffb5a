//! The lab in kube mode: its API server on the control-plane node, agents pointed at it with a
//! kubeconfig, objects and pod states written through it, and the outage helpers. Stand-in
//! agents (shell scripts) check the agents' side of the contract; the datapath is not needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_lab::apiserver::Client;
use lb_lab::{lab_lock, netns, root_or_skip, AgentSource, Binaries, Lab, UpOptions};
use serde_json::Value;

/// Checks it was given the kube source and a kubeconfig naming the lab's API server, then
/// announces readiness and idles.
const KUBE_AGENT: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift ;;
    --kubeconfig) kubeconfig=$2; shift ;;
    --ready-file) ready=$2; shift ;;
  esac
  shift
done
[ "$source" = kube ] || { echo "bad --source $source" >&2; exit 1; }
grep -q 'server: http://172.18.0.2:6443' "$kubeconfig" || { echo "bad kubeconfig $kubeconfig" >&2; exit 1; }
echo ok > "$ready"
exec sleep 600
"#;

fn with_fake_agent() -> (Binaries, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-lab-kube-agent-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("lb-agent");
    fs::write(&agent, KUBE_AGENT).unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    let bins = Binaries {
        agent,
        ..Binaries::beside(Path::new(env!("CARGO_BIN_EXE_lb-lab")))
    };
    (bins, dir)
}

const ECHO: &str = "
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 80, protocol: UDP, targetPort: udp}]
";

fn ready_endpoints(client: &Client, service: &str) -> usize {
    let list = client
        .get(&format!(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name%3D{service}"
        ))
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .filter(|e| e["conditions"]["ready"] == true)
        .count()
}

#[test]
fn kube_mode_runs_the_api_server_and_writes_through_it() {
    if !root_or_skip("kube-mode lab test") {
        return;
    }
    let _lock = lab_lock();
    let (bins, dir) = with_fake_agent();
    let opts = UpOptions {
        agent_source: AgentSource::Kube,
        ..UpOptions::default()
    };
    let lab = Lab::up(&bins, opts).expect("lab comes up").down_on_drop();
    assert_eq!(lab.agent_source(), AgentSource::Kube);
    assert_eq!(
        Lab::attach(&bins).unwrap().agent_source(),
        AgentSource::Kube
    );
    let kubeconfig = fs::read_to_string(lab.kubeconfig()).unwrap();
    assert!(kubeconfig.contains("current-context: lbk"), "{kubeconfig}");

    // Reachable from every node, as the agents need it; seeded with the lab's cluster.
    let cp = lab.control_plane();
    for node in lab.nodes() {
        let from_node = Client::new(Some(&node.ns), cp.addr());
        let nodes = from_node.get("/api/v1/nodes").unwrap();
        assert_eq!(nodes["items"].as_array().unwrap().len(), 3);
    }
    let client = lab.apiserver_client();
    let pods = client.get("/api/v1/namespaces/default/pods").unwrap();
    assert_eq!(pods["items"].as_array().unwrap().len(), 9);

    // Objects and pod states go through the API; slices follow.
    let rendered = lab.apply_yaml("echo", ECHO).unwrap();
    assert_eq!(rendered.derived[0].2, 6, "{rendered:?}");
    let svc = client
        .get("/api/v1/namespaces/default/services/echo")
        .unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");
    // Applying again keeps the allocated address.
    lab.apply_yaml("echo", ECHO).unwrap();
    let again = client
        .get("/api/v1/namespaces/default/services/echo")
        .unwrap();
    assert_eq!(again["spec"]["clusterIP"], Value::from(cluster_ip.as_str()));

    lab.set_pod_ready("worker-echo-1", false).unwrap();
    assert!(!lab.pod_state("worker-echo-1").unwrap().ready);
    assert_eq!(ready_endpoints(&client, "echo"), 5);
    lab.set_pod_terminating("worker2-echo-2", true).unwrap();
    assert!(lab.pod_state("worker2-echo-2").unwrap().terminating);
    assert_eq!(ready_endpoints(&client, "echo"), 4);
    lab.set_pod_terminating("worker2-echo-2", false).unwrap();
    lab.set_pod_ready("worker-echo-1", true).unwrap();
    assert_eq!(ready_endpoints(&client, "echo"), 6);

    // Outages: a stopped server does not answer; a restarted one keeps its objects.
    lab.apiserver_stop().unwrap();
    let mut impatient = lab.apiserver_client();
    impatient.timeout = Duration::from_millis(500);
    let err = impatient.get("/version").unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
    lab.apiserver_cont().unwrap();
    impatient.get("/version").unwrap();
    assert_eq!(lab.apiserver_drop_watches().unwrap(), 0);
    let compacted: u64 = lab.apiserver_compact().unwrap().parse().unwrap();
    lab.apiserver_restart().unwrap();
    let state = client.get("/lab/state").unwrap();
    assert_eq!(state["resourceVersion"], Value::from(compacted.to_string()));
    let kept = client
        .get("/api/v1/namespaces/default/services/echo")
        .unwrap();
    assert_eq!(kept["spec"]["clusterIP"], Value::from(cluster_ip.as_str()));

    assert!(lab.delete_yaml("echo").unwrap());
    assert!(client
        .get("/api/v1/namespaces/default/services/echo")
        .unwrap_err()
        .is_not_found());
    assert_eq!(ready_endpoints(&client, "echo"), 0);
    assert!(!lab.delete_yaml("echo").unwrap());

    let report = lab.down().unwrap();
    assert!(
        report
            .stopped
            .iter()
            .any(|(what, _, _)| what == "apiserver"),
        "{report}"
    );
    assert!(netns::list_lab().unwrap().is_empty());
    fs::remove_dir_all(dir).unwrap();
}
