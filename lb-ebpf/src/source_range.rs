//! loadBalancerSourceRanges: is the client among the prefixes the frontend accepts?

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::SourceRange;

use crate::maps::LB_SRC_RANGES;

#[inline(always)]
pub fn allowed(service_id: u32, client: u32) -> bool {
    let (len, data) = SourceRange::client(service_id, client);
    LB_SRC_RANGES.get(&Key::new(len, data)).is_some()
}
