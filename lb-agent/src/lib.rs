//! The lb agent and `lbctl`: Services and EndpointSlices in, datapath maps out.
//!
//! The agent reads like the data's path:
//! [`source`] (where Services, EndpointSlices and this [`node`] come from, as events) ->
//! [`store`] (what is known, in the model's small form) -> [`model`] (the desired datapath
//! state, a pure function) -> [`plan`] / [`programmed`] (the ordered writes that turn what
//! the maps hold into it: a full diff, or an incremental one) -> [`sync`] (applies them
//! through [`maps`]). [`pipeline`] drives that loop; [`metrics`], [`health`] and
//! [`report`] are what [`server`] serves. [`loader`] and [`attach`] put the eBPF programs
//! in place; [`ctl`] is what `lbctl` shows.

pub mod attach;
pub mod bpf_log;
pub mod bpffs;
pub mod conntrack;
pub mod conntrack_gc;
pub mod ctl;
pub mod datapath_config;
pub mod error_chain;
pub mod health;
pub mod health_check_ports;
pub mod heap;
pub mod ids;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod node;
pub mod pipeline;
pub mod plan;
pub mod privilege;
pub mod programmed;
pub mod report;
pub mod server;
pub mod sizing;
pub mod source;
pub mod store;
pub mod sync;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod testing;
