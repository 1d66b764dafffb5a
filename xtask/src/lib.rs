//! The parts of xtask that tests outside it use: kube-proxy's rulesets for a set of services
//! ([`kube_proxy`]), which the benchmarks load as baselines and `lbctl parity`'s tests read
//! back.

pub mod kube_proxy;
