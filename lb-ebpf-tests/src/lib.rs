//! Test harness for the lb datapath: loads the real eBPF object, programs its maps the way
//! the agent does, runs packets through BPF_PROG_TEST_RUN and checks the bytes that come out.

pub mod bench;
pub mod cgroup;
pub mod datapath;
pub mod fuzz;
pub mod packet;
pub mod privilege;
pub mod testnet;
pub mod verifier;

pub use datapath::{Datapath, Program, Run};
pub use packet::{Checked, PacketSpec};
