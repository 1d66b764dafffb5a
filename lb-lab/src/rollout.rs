//! A rolling update that never ends, as an EndpointSlice written by hand: at step `k` a
//! window of pods is ready, the pod before it is terminating (still serving), the rest are
//! gone. The churn test and `cargo xtask soak` drive it once a second.

use std::collections::BTreeSet;

use crate::Lab;

/// The echo pods taking turns, in rollout order: every node, both echo pods.
pub const PODS: [&str; 6] = [
    "worker-echo-1",
    "control-plane-echo-1",
    "worker2-echo-1",
    "worker-echo-2",
    "control-plane-echo-2",
    "worker2-echo-2",
];

/// Ready backends at any step (a new one joins as an old one starts terminating).
pub const READY: usize = 3;

/// Step `k`'s EndpointSlice `<service>-rollout` for Service `service` in `default`, with
/// ports `http` and `udp` on 8080: pods `k..k+READY` (of [`PODS`], cyclically) ready, pod
/// `k-1` terminating. Returns its YAML and the pods serving at this step.
///
/// # Panics
/// If the lab has no pod of [`PODS`].
pub fn slice(lab: &Lab, service: &str, k: usize) -> (String, BTreeSet<&'static str>) {
    let n = PODS.len();
    let mut endpoints = String::new();
    let mut serving = BTreeSet::new();
    let mut add = |name: &'static str, ready: bool| {
        let pod = lab.pod(name).expect("a pod of the lab's plan");
        endpoints.push_str(&format!(
            "- addresses: [{}]\n  nodeName: {}\n  targetRef: {{kind: Pod, name: {name}, namespace: default}}\n  conditions: {{ready: {ready}, serving: true, terminating: {}}}\n",
            pod.ip,
            pod.node,
            !ready
        ));
        serving.insert(name);
    };
    for i in 0..READY {
        add(PODS[(k + i) % n], true);
    }
    if k > 0 {
        add(PODS[(k + n - 1) % n], false);
    }
    let yaml = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-rollout
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: udp, port: 8080, protocol: UDP}}
endpoints:
{endpoints}"
    );
    (yaml, serving)
}

/// The Service the rollout's slices belong to: a LoadBalancer (ingress `lb_ip`) with TCP
/// port 80 on `node_port` and UDP port 81 on `node_port + 1`, no selector.
pub fn service(name: &str, cluster_ip: &str, lb_ip: &str, node_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {node_port}}}
  - {{name: udp, port: 81, protocol: UDP, targetPort: 8080, nodePort: {}}}
status:
  loadBalancer:
    ingress:
    - ip: {lb_ip}
",
        node_port + 1
    )
}
