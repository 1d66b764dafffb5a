//! Support for `cargo xtask bench`'s per-packet cost: the real object at the agent's map
//! sizes plus the floor programs, and single BPF_PROG_TEST_RUN runs timed by the kernel.
//!
//! Every run is one packet (repeat = 1). The kernel's `repeat` reruns a program on the same
//! buffer, and our programs rewrite the packet in place (DNAT, reverse NAT), so the second
//! run would see the translated packet and take another path (a miss). One packet per run
//! keeps each run on the path being measured; the kernel's duration still excludes the
//! syscall, but includes the timer's own reading, which [`hot_loop_ns`] shows.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::{SchedClassifier, Xdp},
};
use lb_common::{maps, Frontend, FrontendKey};

use crate::{Datapath, Program, Run};

/// Loads the object with conntrack and every other map at the agent's size, `LB_FLOOR`
/// sized for `floor_keys` entries, and the floor programs loaded next to the real ones.
pub fn load(floor_keys: usize) -> Result<Datapath> {
    let floor_max = u32::try_from(floor_keys.max(1)).context("floor map size")?;
    let mut dp = Datapath::load_with(0, &[(maps::FLOOR, floor_max)])?;
    let ebpf = dp.ebpf_mut();
    let tc: &mut SchedClassifier = ebpf
        .program_mut(Program::FloorTc.name())
        .context("lb_floor_tc not in the object (rebuild it with `cargo xtask build`)")?
        .try_into()?;
    crate::verifier::load(|| tc.load()).context("verifier rejected lb_floor_tc")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(Program::FloorXdp.name())
        .context("lb_floor_xdp not in the object")?
        .try_into()?;
    crate::verifier::load(|| xdp.load()).context("verifier rejected lb_floor_xdp")?;
    Ok(dp)
}

/// Writes one key into the floor program's map.
pub fn add_floor_key(dp: &mut Datapath, key: FrontendKey, fe: Frontend) -> Result<()> {
    let mut map: HashMap<&mut MapData, FrontendKey, Frontend> =
        HashMap::try_from(dp.ebpf_mut().map_mut(maps::FLOOR).context("LB_FLOOR")?)?;
    map.insert(key, fe, 0).context("inserting a floor key")?;
    Ok(())
}

/// Runs `program` once per packet that `packet(i)` builds, `runs` times, and returns the
/// kernel's duration of each run. `check` sees the first run's result and must accept it
/// (so a mistake in the setup cannot be timed as the path it meant to measure); every later
/// run must end with the same verdict.
pub fn time_runs(
    dp: &mut Datapath,
    program: Program,
    ifindex: u32,
    runs: usize,
    mut packet: impl FnMut(usize) -> Vec<u8>,
    check: impl FnOnce(&Run) -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(runs);
    let mut verdict = None;
    let mut check = Some(check);
    for i in 0..runs {
        let run = dp.run_on(program, &packet(i), ifindex)?;
        if let Some(check) = check.take() {
            check(&run).with_context(|| format!("first run of {}", program.name()))?;
            verdict = Some(run.retval);
        }
        ensure!(
            Some(run.retval) == verdict,
            "run {i} of {} returned {} where the first returned {:?}",
            program.name(),
            run.retval,
            verdict
        );
        took.push(run.duration);
    }
    Ok(took)
}

/// The kernel's mean ns per run over `repeat` runs on one buffer, for a program that does
/// not rewrite the packet (the floor): the cost without the per-run timer reading.
pub fn hot_loop_ns(
    dp: &mut Datapath,
    program: Program,
    ifindex: u32,
    packet: &[u8],
    repeat: u32,
) -> Result<f64> {
    // The kernel reports whole nanoseconds per run; the mean of a few batches keeps the
    // rounding out of the figure.
    let batches = 10;
    let mut total = 0.0;
    for _ in 0..batches {
        let run = dp.run_repeated(program, packet, ifindex, repeat)?;
        ensure!(
            run.data == packet,
            "{} changed the packet: it cannot be timed in a loop",
            program.name()
        );
        total += run.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(batches))
}
