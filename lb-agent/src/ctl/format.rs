//! How addresses, flags, durations and sizes are written in `lbctl`'s tables.

use lb_common::{addr_from_be, backend, conntrack::seen, frontend, proto};

/// `address:port/PROTO` (or `address:port` without a protocol) from network-order fields.
pub fn endpoint(addr: u32, port: u16, protocol: Option<u8>) -> String {
    let base = format!("{}:{}", addr_from_be(addr), u16::from_be(port));
    match protocol {
        Some(p) => format!("{base}/{}", protocol_name(p)),
        None => base,
    }
}

/// The protocol as Kubernetes spells it, or its number if it is neither TCP nor UDP.
pub fn protocol_name(p: u8) -> String {
    match proto::name(p) {
        "?" => p.to_string(),
        name => name.to_owned(),
    }
}

/// The frontend's type flags, e.g. `["ClusterIP", "NodePort"]`.
pub fn frontend_flags(flags: u16) -> Vec<&'static str> {
    frontend::flags::names(flags).collect()
}

/// The backend's flags: `local` (on this node), `host` (at this node's own address) and
/// `terminating`.
pub fn backend_flags(flags: u8) -> Vec<&'static str> {
    [
        (backend::flags::LOCAL, "local"),
        (backend::flags::HOST, "host"),
        (backend::flags::TERMINATING, "terminating"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The backend flag bits for names as [`backend_flags`] writes them; `None` for a name it
/// does not know.
pub fn backend_flag_bit(name: &str) -> Option<u8> {
    match name {
        "local" => Some(backend::flags::LOCAL),
        "host" => Some(backend::flags::HOST),
        "terminating" => Some(backend::flags::TERMINATING),
        _ => None,
    }
}

/// What a conntrack flow has shown so far, e.g. `["syn", "reply"]`.
pub fn seen_flags(bits: u8) -> Vec<&'static str> {
    [
        (seen::SYN, "syn"),
        (seen::REPLY, "reply"),
        (seen::FIN_FORWARD, "fin_forward"),
        (seen::FIN_REPLY, "fin_reply"),
        (seen::RST, "rst"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// Names joined by commas, or `-` for none.
pub fn joined(names: &[&str]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The frontend scope's name ([`lb_common::frontend::scope`]).
pub fn scope_name(scope: u8) -> String {
    match scope {
        frontend::scope::EXTERNAL => "external".into(),
        frontend::scope::INTERNAL => "internal".into(),
        other => format!("scope{other}"),
    }
}

/// A compact duration: `42s`, `3m07s`, `5h02m`, `2d04h`.
pub fn human_duration(ns: u64) -> String {
    human_seconds(ns / 1_000_000_000)
}

/// [`human_duration`] for whole seconds.
pub fn human_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes in binary units with one decimal: `512B`, `1.5KiB`, `3.0GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Counts with a thousands separator, so large counters read at a glance: `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn endpoints_read_network_order_fields() {
        let addr = lb_common::addr_be([10, 96, 0, 10].into());
        assert_eq!(
            endpoint(addr, 80u16.to_be(), Some(proto::TCP)),
            "10.96.0.10:80/TCP"
        );
        assert_eq!(endpoint(addr, 80u16.to_be(), None), "10.96.0.10:80");
        assert_eq!(
            endpoint(addr, 80u16.to_be(), Some(132)),
            "10.96.0.10:80/132"
        );
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59 * S), "59s");
        assert_eq!(human_duration(61 * S), "1m01s");
        assert_eq!(human_duration(3_660 * S), "1h01m");
        assert_eq!(human_duration(90_000 * S), "1d01h");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0EiB");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn flags_are_named_and_joined() {
        assert_eq!(
            backend_flags(backend::flags::LOCAL | backend::flags::TERMINATING),
            ["local", "terminating"]
        );
        assert_eq!(joined(&backend_flags(0)), "-");
        assert_eq!(
            joined(&frontend_flags(frontend::flags::CLUSTER_IP)),
            "ClusterIP"
        );
        assert_eq!(seen_flags(seen::SYN | seen::REPLY), ["syn", "reply"]);
        assert_eq!(backend_flag_bit("local"), Some(backend::flags::LOCAL));
        assert_eq!(backend_flag_bit("ready"), None);
    }

    #[test]
    fn scopes_are_named() {
        assert_eq!(scope_name(0), "external");
        assert_eq!(scope_name(1), "internal");
        assert_eq!(scope_name(7), "scope7");
    }
}
