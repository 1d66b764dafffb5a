//! The eBPF side, where the data's path ends: the object loaded and its maps pinned
//! ([`loader`], on [`bpffs`]), the programs attached to pod interfaces, the uplink and the
//! cgroup ([`attach`]), and the maps read and written ([`maps`]), which is all the rest of
//! the agent knows of the kernel.
//!
//! Beside them, what the datapath is given or needs before it runs: its settings in
//! LB_CONFIG ([`config`]), the size of its conntrack tables ([`sizing`]), its log
//! ([`bpf_log`]), the privileges loading it takes ([`privilege`]) and the kernel features it
//! needs ([`kernel`]).

pub mod attach;
pub mod bpf_log;
pub mod bpffs;
pub mod config;
pub mod kernel;
pub mod loader;
pub mod maps;
pub mod privilege;
pub mod sizing;
