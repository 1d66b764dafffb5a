//! Builders for the Kubernetes objects tests feed the model and the syncer.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort,
            ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::model::SERVICE_NAME_LABEL;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn add_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

/// A ClusterIP Service with no ports yet.
pub fn service(ns: &str, name: &str, cluster_ip: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub struct ServiceBuilder(Service);

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    /// A port whose targetPort is named like the port, as most charts write it.
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.into()),
                port,
                protocol: Some(protocol.into()),
                target_port: Some(IntOrString::String(name.into())),
                ..Default::default()
            });
        self
    }

    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|ip| ip.to_string());
        spec.cluster_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
        self
    }

    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }

    pub fn publish_not_ready(mut self) -> Self {
        self.spec().publish_not_ready_addresses = Some(true);
        self
    }

    /// Sets the nodePort of the last port added.
    pub fn node_port(mut self, node_port: i32) -> Self {
        if let Some(p) = self.spec().ports.as_mut().and_then(|p| p.last_mut()) {
            p.node_port = Some(node_port);
        }
        self
    }

    /// sessionAffinity ClientIP, with `timeout` in sessionAffinityConfig when given.
    pub fn client_ip_affinity(mut self, timeout: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub fn session_affinity(mut self, value: &str) -> Self {
        self.spec().session_affinity = Some(value.into());
        self
    }

    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.into());
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
        self
    }

    /// status.loadBalancer.ingress, one entry per address (`ip_mode` on all of them).
    pub fn load_balancer_ingress(mut self, ips: &[&str], ip_mode: Option<&str>) -> Self {
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: ip_mode.map(str::to_owned),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|r| r.to_string()).collect());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    pub fn build(self) -> Service {
        self.0
    }
}

/// An IPv4 EndpointSlice of `service`, with no ports or endpoints yet.
pub fn slice(ns: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(ns, name);
    add_label(&mut metadata, SERVICE_NAME_LABEL, service);
    SliceBuilder(EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        ports: None,
    })
}

pub struct SliceBuilder(EndpointSlice);

impl SliceBuilder {
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.into()),
                port: Some(port),
                protocol: Some(protocol.into()),
                ..Default::default()
            });
        self
    }

    /// An endpoint with explicit conditions (`None` leaves a condition unset).
    pub fn endpoint(
        mut self,
        addr: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        self.0.endpoints.push(Endpoint {
            addresses: vec![addr.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Default::default()
        });
        self
    }

    pub fn ready(self, addr: &str) -> Self {
        self.endpoint(addr, Some(true), Some(true), Some(false))
    }

    pub fn not_ready(self, addr: &str) -> Self {
        self.endpoint(addr, Some(false), Some(false), Some(false))
    }

    /// A terminating endpoint that still serves (as a pod in its grace period does).
    pub fn terminating(self, addr: &str) -> Self {
        self.endpoint(addr, Some(false), Some(true), Some(true))
    }

    /// Sets the zone hints of the last endpoint added.
    pub fn hints(mut self, zones: &[&str]) -> Self {
        if let Some(ep) = self.0.endpoints.last_mut() {
            ep.hints = Some(EndpointHints {
                for_zones: Some(
                    zones
                        .iter()
                        .map(|z| ForZone {
                            name: z.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            });
        }
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Sets the node of the last endpoint added.
    pub fn on_node(mut self, node: &str) -> Self {
        if let Some(ep) = self.0.endpoints.last_mut() {
            ep.node_name = Some(node.into());
        }
        self
    }

    pub fn address_type(mut self, t: &str) -> Self {
        self.0.address_type = t.into();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.0
    }
}
