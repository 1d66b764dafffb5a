//! Service admission as the API server does it: defaulting, validation, and allocation of
//! cluster IPs and node ports, including what an update keeps from the old object.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
    SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::alloc::{service_range, Allocated, NODE_PORT_RANGE};
use super::status::FieldError;

const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10800;

/// Defaults, validates and allocates a new Service. `allocated` holds what every other
/// Service has; it gains this one's allocations.
///
/// # Errors
/// Every invalid field.
pub fn admit_create(svc: &mut Service, allocated: &mut Allocated) -> Result<(), Vec<FieldError>> {
    set_defaults(svc);
    let mut errors = validate(svc);
    if errors.is_empty() {
        errors.extend(allocate(svc, allocated));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Like [`admit_create`] for a replacement of `old`: what the new object leaves unset of the
/// old one's cluster IPs and node ports is kept (the API server's `patchAllocatedValues`, which
/// is why `kubectl apply` of a manifest without a clusterIP keeps the address), and a cluster
/// IP may not change once set.
///
/// # Errors
/// Every invalid field.
pub fn admit_update(
    svc: &mut Service,
    old: &Service,
    allocated: &mut Allocated,
) -> Result<(), Vec<FieldError>> {
    set_defaults(svc);
    keep_allocated(svc, old);
    let mut errors = validate(svc);
    let old_ip = cluster_ip(old);
    let new_ip = cluster_ip(svc);
    if needs_cluster_ip(old) && needs_cluster_ip(svc) && !old_ip.is_empty() && new_ip != old_ip {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            format!("[]string{{\"{new_ip}\"}}"),
            "may not change once set",
        ));
    }
    if errors.is_empty() {
        errors.extend(allocate(svc, allocated));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn spec_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn cluster_ip(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or_default()
}

fn needs_cluster_ip(svc: &Service) -> bool {
    spec_type(svc) != "ExternalName"
}

fn needs_node_ports(svc: &Service) -> bool {
    match spec_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc
            .spec
            .as_ref()
            .and_then(|s| s.allocate_load_balancer_node_ports)
            .unwrap_or(true),
        _ => false,
    }
}

fn needs_health_check_port(svc: &Service) -> bool {
    spec_type(svc) == "LoadBalancer"
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local")
}

fn set_defaults(svc: &mut Service) {
    let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    let affinity = spec
        .session_affinity
        .get_or_insert_with(|| "None".into())
        .clone();
    if affinity == "ClientIP" {
        let config = spec
            .session_affinity_config
            .get_or_insert_with(SessionAffinityConfig::default)
            .client_ip
            .get_or_insert_with(ClientIPConfig::default);
        config
            .timeout_seconds
            .get_or_insert(DEFAULT_AFFINITY_TIMEOUT);
    }
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        let unset = match &port.target_port {
            None | Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(s)) => s.is_empty(),
            Some(IntOrString::Int(_)) => false,
        };
        if unset {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    if type_ != "ExternalName" {
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    if matches!(type_.as_str(), "NodePort" | "LoadBalancer") {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    if type_ == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    svc.status.get_or_insert_with(|| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..ServiceStatus::default()
    });
}

/// Copies what `old` had allocated into `svc` where `svc` leaves it unset.
fn keep_allocated(svc: &mut Service, old: &Service) {
    let keep_ip = needs_cluster_ip(old) && needs_cluster_ip(svc) && cluster_ip(svc).is_empty();
    let keep_ports = needs_node_ports(old) && needs_node_ports(svc);
    let keep_health = needs_health_check_port(old) && needs_health_check_port(svc);
    let (Some(spec), Some(old_spec)) = (svc.spec.as_mut(), old.spec.as_ref()) else {
        return;
    };
    if keep_ip {
        spec.cluster_ip.clone_from(&old_spec.cluster_ip);
        spec.cluster_ips.clone_from(&old_spec.cluster_ips);
    }
    if keep_ports {
        let old_ports = old_spec.ports.as_deref().unwrap_or_default();
        for port in spec.ports.iter_mut().flatten() {
            if port.node_port.unwrap_or(0) != 0 {
                continue;
            }
            port.node_port = old_ports
                .iter()
                .find(|o| o.port == port.port && o.protocol == port.protocol)
                .and_then(|o| o.node_port);
        }
    }
    if keep_health && spec.health_check_node_port.unwrap_or(0) == 0 {
        spec.health_check_node_port = old_spec.health_check_node_port;
    }
}

fn validate(svc: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match svc.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::required("metadata.name", "name or generateName is required")),
        Some(name) if !is_dns1035_label(name) => errors.push(FieldError::invalid(
            "metadata.name",
            format!("\"{name}\""),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        )),
        Some(_) => {}
    }
    let Some(spec) = &svc.spec else {
        return errors;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !TYPES.contains(&type_) {
        errors.push(FieldError::not_supported("spec.type", type_, &TYPES));
        return errors;
    }
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if type_ == "ExternalName" {
        if spec.external_name.as_deref().unwrap_or_default().is_empty() {
            errors.push(FieldError::required("spec.externalName", ""));
        }
        if !ip.is_empty() {
            errors.push(FieldError::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
    } else if !ip.is_empty() && ip != "None" {
        match ip.parse::<Ipv4Addr>() {
            Err(_) => errors.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                format!("\"{ip}\""),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Ok(addr) if !service_range().contains(addr) => errors.push(FieldError::invalid(
                "spec.clusterIPs",
                format!("[]string{{\"{ip}\"}}"),
                &format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                    service_range()
                ),
            )),
            Ok(_) => {}
        }
    }
    if let Some(ips) = &spec.cluster_ips {
        if ips
            .first()
            .map(String::as_str)
            .is_some_and(|first| !ip.is_empty() && first != ip)
        {
            errors.push(FieldError::invalid(
                "spec.clusterIPs",
                format!("{ips:?}"),
                "element [0] must match clusterIP",
            ));
        }
    }
    for (i, ext) in spec.external_ips.iter().flatten().enumerate() {
        if ext.parse::<Ipv4Addr>().is_err() {
            errors.push(FieldError::invalid(
                format!("spec.externalIPs[{i}]"),
                format!("\"{ext}\""),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && type_ != "ExternalName" && ip != "None" {
        errors.push(FieldError::required("spec.ports", ""));
    }
    errors.extend(validate_ports(ports, type_));
    if let Some(affinity) = spec.session_affinity.as_deref() {
        if !matches!(affinity, "None" | "ClientIP") {
            errors.push(FieldError::not_supported(
                "spec.sessionAffinity",
                affinity,
                &["ClientIP", "None"],
            ));
        }
    }
    for (field, value) in [
        ("spec.externalTrafficPolicy", &spec.external_traffic_policy),
        ("spec.internalTrafficPolicy", &spec.internal_traffic_policy),
    ] {
        if let Some(policy) = value.as_deref() {
            if !matches!(policy, "Cluster" | "Local") {
                errors.push(FieldError::not_supported(
                    field,
                    policy,
                    &["Cluster", "Local"],
                ));
            }
        }
    }
    if spec.external_traffic_policy.is_some() && !matches!(type_, "NodePort" | "LoadBalancer") {
        errors.push(FieldError::invalid(
            "spec.externalTrafficPolicy",
            format!(
                "\"{}\"",
                spec.external_traffic_policy.as_deref().unwrap_or_default()
            ),
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ));
    }
    errors
}

fn validate_ports(ports: &[ServicePort], type_: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        match port.name.as_deref().unwrap_or_default() {
            "" if ports.len() > 1 => errors.push(FieldError::required(at("name"), "")),
            "" => {}
            name if !is_dns1123_label(name) => errors.push(FieldError::invalid(
                at("name"),
                format!("\"{name}\""),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            )),
            name => {
                if !names.insert(name.to_string()) {
                    errors.push(FieldError::duplicate(at("name"), format!("\"{name}\"")));
                }
            }
        }
        if !(1..=65535).contains(&port.port) {
            errors.push(FieldError::invalid(
                at("port"),
                port.port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            errors.push(FieldError::not_supported(
                at("protocol"),
                protocol,
                &PROTOCOLS,
            ));
        }
        if !keys.insert((port.port, protocol.to_string())) {
            errors.push(FieldError::duplicate(
                format!("spec.ports[{i}]"),
                format!(
                    "core.ServicePort{{Port:{}, Protocol:\"{protocol}\"}}",
                    port.port
                ),
            ));
        }
        match &port.target_port {
            Some(IntOrString::Int(p)) if !(1..=65535).contains(p) => errors.push(FieldError::invalid(
                at("targetPort"),
                p,
                "must be between 1 and 65535, inclusive",
            )),
            Some(IntOrString::String(name)) if !is_iana_svc_name(name) => {
                errors.push(FieldError::invalid(
                    at("targetPort"),
                    format!("\"{name}\""),
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at least one letter, and at most 15 characters",
                ))
            }
            _ => {}
        }
        if let Some(node_port) = port.node_port.filter(|p| *p != 0) {
            if type_ == "ClusterIP" || type_ == "ExternalName" {
                errors.push(FieldError::forbidden(
                    at("nodePort"),
                    &format!("may not be used when `type` is '{type_}'"),
                ));
            } else if !NODE_PORT_RANGE.contains(&node_port) {
                errors.push(FieldError::invalid(
                    at("nodePort"),
                    node_port,
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORT_RANGE.start(),
                        NODE_PORT_RANGE.end()
                    ),
                ));
            }
        }
    }
    errors
}

/// Assigns a cluster IP and node ports where needed, checking requested ones are free.
fn allocate(svc: &mut Service, allocated: &mut Allocated) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let needs_ip = needs_cluster_ip(svc);
    let needs_ports = needs_node_ports(svc);
    let needs_health = needs_health_check_port(svc);
    let Some(spec) = svc.spec.as_mut() else {
        return errors;
    };
    if needs_ip {
        let requested = spec.cluster_ip.clone().unwrap_or_default();
        let ip = if requested == "None" {
            Some("None".to_string())
        } else if requested.is_empty() {
            match allocated.cluster_ip(service_range()) {
                Some(ip) => Some(ip.to_string()),
                None => {
                    errors.push(FieldError::invalid(
                        "spec.clusterIPs",
                        "[]",
                        "failed to allocate a serviceIP: range is full",
                    ));
                    None
                }
            }
        } else {
            match requested.parse::<Ipv4Addr>() {
                Ok(addr) if !allocated.take_ip(addr) => {
                    errors.push(FieldError::invalid(
                        "spec.clusterIPs",
                        format!("[]string{{\"{requested}\"}}"),
                        &format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    ));
                    None
                }
                _ => Some(requested),
            }
        };
        if let Some(ip) = ip {
            spec.cluster_ips = Some(vec![ip.clone()]);
            spec.cluster_ip = Some(ip);
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
        }
    }
    if needs_ports {
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            match port.node_port.filter(|p| *p != 0) {
                Some(p) if !allocated.take_port(p) => errors.push(FieldError::invalid(
                    format!("spec.ports[{i}].nodePort"),
                    p,
                    "provided port is already allocated",
                )),
                Some(_) => {}
                None => match allocated.node_port() {
                    Some(p) => port.node_port = Some(p),
                    None => errors.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        0,
                        "failed to allocate a nodePort: range is full",
                    )),
                },
            }
        }
    }
    match (
        needs_health,
        spec.health_check_node_port.filter(|p| *p != 0),
    ) {
        (true, Some(p)) if !NODE_PORT_RANGE.contains(&p) || !allocated.take_port(p) => {
            errors.push(FieldError::invalid(
                "spec.healthCheckNodePort",
                p,
                "provided port is already allocated or out of range",
            ));
        }
        (true, Some(_)) => {}
        (true, None) => match allocated.node_port() {
            Some(p) => spec.health_check_node_port = Some(p),
            None => errors.push(FieldError::invalid(
                "spec.healthCheckNodePort",
                0,
                "failed to allocate a nodePort: range is full",
            )),
        },
        (false, Some(p)) => errors.push(FieldError::invalid(
            "spec.healthCheckNodePort",
            p,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        )),
        (false, None) => {}
    }
    errors
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1035_label(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && is_dns1123_label(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An IANA service name: at most 15 characters of `[a-z0-9-]`, at least one letter, no
/// leading, trailing or doubled hyphen.
fn is_iana_svc_name(s: &str) -> bool {
    s.len() <= 15
        && is_dns1123_label(s)
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_norway::from_str(yaml).unwrap()
    }

    fn spec(svc: &Service) -> &ServiceSpec {
        svc.spec.as_ref().unwrap()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_new_service_is_defaulted_and_gets_a_cluster_ip() {
        let mut s =
            svc("{metadata: {name: web}, spec: {selector: {app: web}, ports: [{port: 80}]}}");
        let mut allocated = Allocated::default();
        admit_create(&mut s, &mut allocated).unwrap();
        let spec = spec(&s);
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.255.254"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.96.255.254".to_string()]));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert!(port.node_port.is_none());
    }

    #[test]
    fn requested_cluster_ips_must_be_valid_in_range_and_free() {
        let mut allocated = Allocated::default();
        let mut a = svc("{metadata: {name: a}, spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}}");
        admit_create(&mut a, &mut allocated).unwrap();
        let mut b = svc("{metadata: {name: b}, spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}}");
        let errors = admit_create(&mut b, &mut allocated).unwrap_err();
        assert!(
            errors[0]
                .message
                .contains("provided IP is already allocated"),
            "{errors:?}"
        );
        let mut c = svc("{metadata: {name: c}, spec: {clusterIP: 10.97.0.1, ports: [{port: 80}]}}");
        let errors = admit_create(&mut c, &mut allocated).unwrap_err();
        assert!(
            errors[0].message.contains("not in the valid range"),
            "{errors:?}"
        );
        let mut d =
            svc("{metadata: {name: d}, spec: {clusterIP: 10.96.300.1, ports: [{port: 80}]}}");
        let errors = admit_create(&mut d, &mut allocated).unwrap_err();
        assert!(
            errors[0].message.contains("must be a valid IP address"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_ports_are_reported_field_by_field() {
        let mut s = svc(
            "{metadata: {name: web}, spec: {ports: [{name: a, port: 70000}, {port: 80, targetPort: 0x10000}, {name: a, port: 81, protocol: ICMP, nodePort: 30001}]}}",
        );
        let errors = admit_create(&mut s, &mut Allocated::default()).unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "spec.ports[0].port",
                // Defaulted from the port, as the real API server does before validating.
                "spec.ports[0].targetPort",
                "spec.ports[1].name",
                "spec.ports[1].targetPort",
                "spec.ports[2].name",
                "spec.ports[2].protocol",
                "spec.ports[2].nodePort"
            ]
        );
        let mut none = svc("{metadata: {name: web}, spec: {selector: {a: b}}}");
        let errors = admit_create(&mut none, &mut Allocated::default()).unwrap_err();
        assert_eq!(fields(&errors), ["spec.ports"]);
    }

    #[test]
    fn node_ports_and_health_check_ports_are_allocated_for_load_balancers() {
        let mut s = svc(
            "{metadata: {name: lb}, spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30080}]}}",
        );
        let mut allocated = Allocated::default();
        admit_create(&mut s, &mut allocated).unwrap();
        let spec = spec(&s);
        let ports: Vec<_> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port)
            .collect();
        assert_eq!(ports, [Some(32767), Some(30080)]);
        assert_eq!(spec.health_check_node_port, Some(32766));
        let mut clash = svc(
            "{metadata: {name: np}, spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}}",
        );
        let errors = admit_create(&mut clash, &mut allocated).unwrap_err();
        assert!(errors[0].message.contains("already allocated"));
    }

    #[test]
    fn external_name_services_get_no_cluster_ip_and_may_not_ask_for_one() {
        let mut s =
            svc("{metadata: {name: x}, spec: {type: ExternalName, externalName: a.example}}");
        admit_create(&mut s, &mut Allocated::default()).unwrap();
        assert!(spec(&s).cluster_ip.is_none());
        let mut bad = svc("{metadata: {name: x}, spec: {type: ExternalName, externalName: a.example, clusterIP: 10.96.0.5}}");
        assert!(admit_create(&mut bad, &mut Allocated::default()).is_err());
    }

    #[test]
    fn headless_services_keep_none() {
        let mut s = svc("{metadata: {name: h}, spec: {clusterIP: None, selector: {a: b}}}");
        admit_create(&mut s, &mut Allocated::default()).unwrap();
        assert_eq!(spec(&s).cluster_ip.as_deref(), Some("None"));
    }

    #[test]
    fn an_update_keeps_allocations_it_leaves_unset_and_may_not_move_the_ip() {
        let mut allocated = Allocated::default();
        let mut old = svc("{metadata: {name: np}, spec: {type: NodePort, ports: [{port: 80}]}}");
        admit_create(&mut old, &mut allocated).unwrap();
        let mut new = svc("{metadata: {name: np}, spec: {type: NodePort, ports: [{port: 80}, {name: b, port: 81}]}}");
        new.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("a".into());
        // The others' allocations only: the old object's own are free to keep.
        admit_update(&mut new, &old, &mut Allocated::default()).unwrap();
        assert_eq!(spec(&new).cluster_ip, spec(&old).cluster_ip);
        let old_port = spec(&old).ports.as_ref().unwrap()[0].node_port;
        assert_eq!(spec(&new).ports.as_ref().unwrap()[0].node_port, old_port);
        assert!(spec(&new).ports.as_ref().unwrap()[1].node_port.is_some());

        let mut moved = svc("{metadata: {name: np}, spec: {type: NodePort, clusterIP: 10.96.0.99, ports: [{port: 80}]}}");
        let errors = admit_update(&mut moved, &old, &mut Allocated::default()).unwrap_err();
        assert!(
            errors[0].message.contains("may not change once set"),
            "{errors:?}"
        );
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(is_dns1035_label("web-1"));
        assert!(!is_dns1035_label("1web"));
        assert!(!is_dns1035_label("Web"));
        assert!(!is_dns1035_label("web-"));
        assert!(is_iana_svc_name("http"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a-very-long-port-name"));
    }
}
