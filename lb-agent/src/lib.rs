//! The lb agent and `lbctl`: Services and EndpointSlices in, datapath maps out.
//!
//! The agent reads like the data's path:
//! [`source`] (where Services and EndpointSlices come from) -> [`model`] (the desired
//! datapath state, a pure function) -> [`plan`] (the ordered writes that turn what the maps
//! hold into it) -> [`sync`] (applies them through [`maps`]). [`loader`] and [`attach`] put
//! the eBPF programs in place; [`ctl`] is what `lbctl` shows.

pub mod attach;
pub mod bpf_log;
pub mod bpffs;
pub mod conntrack;
pub mod ctl;
pub mod error_chain;
pub mod ids;
pub mod loader;
pub mod maps;
pub mod model;
pub mod plan;
pub mod privilege;
pub mod source;
pub mod sync;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod testing;
