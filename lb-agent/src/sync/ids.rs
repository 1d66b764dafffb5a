//! Allocation of service and backend ids: the lowest free non-zero id.
//!
//! Lowest-free keeps ids small and dense (easy to read in `lbctl`), and 0 stays free to mean
//! "none" in the maps.

use std::collections::BTreeSet;

/// Hands out ids not in a given in-use set.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    used: BTreeSet<u32>,
    /// No id below this is free; saves rescanning from 1 on every allocation.
    floor: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {} ids are in use", u32::MAX)]
pub struct Exhausted;

impl IdAllocator {
    /// An allocator that never returns any of `used` (0 in it is ignored).
    pub fn new(used: impl IntoIterator<Item = u32>) -> Self {
        Self {
            used: used.into_iter().filter(|&id| id != 0).collect(),
            floor: 1,
        }
    }

    /// Marks `id` as taken, so it is never handed out.
    pub fn reserve(&mut self, id: u32) {
        if id != 0 {
            self.used.insert(id);
        }
    }

    /// Makes `id` free again; the next allocation may return it.
    pub fn release(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.floor = self.floor.min(id);
        }
    }

    /// The lowest id that is neither 0 nor in use, now marked as used.
    pub fn allocate(&mut self) -> Result<u32, Exhausted> {
        let mut candidate = self.floor;
        for &used in self.used.range(self.floor..) {
            if used != candidate {
                break;
            }
            candidate = candidate.checked_add(1).ok_or(Exhausted)?;
        }
        self.used.insert(candidate);
        self.floor = candidate.saturating_add(1);
        Ok(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one() {
        let mut ids = IdAllocator::new([]);
        assert_eq!(ids.allocate(), Ok(1));
        assert_eq!(ids.allocate(), Ok(2));
    }

    #[test]
    fn the_lowest_gap_is_filled_first() {
        let mut ids = IdAllocator::new([0, 1, 2, 4, 7]);
        assert_eq!(ids.allocate(), Ok(3));
        assert_eq!(ids.allocate(), Ok(5));
        assert_eq!(ids.allocate(), Ok(6));
        assert_eq!(ids.allocate(), Ok(8));
    }

    #[test]
    fn reserved_ids_are_skipped() {
        let mut ids = IdAllocator::new([1]);
        ids.reserve(2);
        ids.reserve(0);
        assert_eq!(ids.allocate(), Ok(3));
    }

    #[test]
    fn a_released_id_is_handed_out_again_first() {
        let mut ids = IdAllocator::new([1, 2, 3]);
        ids.release(2);
        ids.release(0);
        assert_eq!(ids.allocate(), Ok(2));
        assert_eq!(ids.allocate(), Ok(4));
    }

    #[test]
    fn running_out_is_an_error_not_a_wrap_to_zero() {
        let mut ids = IdAllocator::new([u32::MAX]);
        ids.floor = u32::MAX;
        assert_eq!(ids.allocate(), Err(Exhausted));
    }
}
