//! The lb agent and `lbctl`: Services and EndpointSlices in, datapath maps out.
//!
//! The agent reads like the data's path:
//! [`source`] (where Services, EndpointSlices and this node's Node come from, as events) ->
//! [`store`] (what is known, in the model's small form) -> [`model`] (the desired datapath
//! state, a pure function of them and [`model::node`]) -> [`sync`] (the ordered writes that
//! turn what the maps hold into it, [`sync::plan`] for a full diff and
//! [`sync::programmed`] for an incremental one, with the conntrack cleanup and GC) ->
//! [`datapath`] (the eBPF object loaded and attached, and its [`datapath::maps`] written).
//! [`pipeline`] drives that loop; [`serve`] is what the agent answers over HTTP (health,
//! metrics, the desired state); [`ctl`] is what `lbctl` shows.

pub mod ctl;
pub mod datapath;
pub mod error_chain;
pub mod model;
pub mod pipeline;
pub mod serve;
pub mod source;
pub mod store;
pub mod sync;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod testing;
