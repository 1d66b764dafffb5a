//! What the agent answers, beside the data's path: kube-proxy's HTTP endpoints ([`server`]:
//! `/metrics`, `/state`, `/healthz`, `/livez`) and the healthCheckNodePort servers
//! ([`health_check_ports`]), with what they serve: the proxy's [`health`], the Prometheus
//! [`metrics`] (the datapath's own counters read at scrape time, [`datapath_stats`]) and
//! the desired state as [`report`]ed for `lbctl diff`.

#[cfg(test)]
mod dashboard_tests;
pub mod datapath_stats;
pub mod health;
pub mod health_check_ports;
pub mod metrics;
pub mod report;
pub mod server;
