//! Datapath-wide settings, one entry in an array map written by the agent.

use crate::user_pod;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Seed for [`crate::hash::flow_hash`]; chosen at random when the maps are first created
    /// and kept across agent restarts.
    pub hash_seed: u32,
    pub _reserved: u32,
}

user_pod!(Config);

#[cfg(test)]
mod tests {
    #[test]
    fn config_is_eight_bytes() {
        assert_eq!(core::mem::size_of::<super::Config>(), 8);
    }
}
