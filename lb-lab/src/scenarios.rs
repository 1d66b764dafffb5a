//! A harness for lab test files: one lab for all of a file's scenarios (bringing it up takes
//! seconds), scenarios run one at a time as libtest-style trials, and the lab torn down at the
//! end. Without root every scenario is reported as ignored, or fails under CI=true.

use std::sync::Arc;

pub use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Trial};

use crate::{
    testing::{lab_lock, root_or_skip},
    Binaries, Lab, UpOptions,
};

/// One scenario: a named check against the running lab.
pub type Scenario = fn(&Lab) -> Result<(), Failed>;

/// Runs `scenarios` against a lab brought up with `opts` and prepared by `setup`, and exits
/// with libtest's status.
pub fn run(
    what: &str,
    bins: Binaries,
    opts: UpOptions,
    setup: impl FnOnce(&Lab),
    scenarios: &[(&'static str, Scenario)],
) -> ! {
    let mut args = Arguments::from_args();
    // One lab, one set of namespaces: scenarios run one at a time.
    args.test_threads = Some(1);
    if !root_or_skip(what) {
        let trials = scenarios
            .iter()
            .map(|(name, _)| Trial::test(*name, || Ok(())).with_ignored_flag(true))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let lab = if args.list {
        None
    } else {
        let lock = lab_lock();
        // Wrapped before `setup`, so that a panicking setup still tears the lab down.
        let lab = Lab::up(&bins, opts)
            .expect("bringing the lab up")
            .down_on_drop();
        setup(&lab);
        Some((Arc::new(lab), lock))
    };
    let trials = scenarios
        .iter()
        .map(|&(name, scenario)| {
            let lab = lab.as_ref().map(|(l, _)| Arc::clone(l));
            Trial::test(name, move || scenario(lab.as_ref().expect("lab is up")))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some((lab, lock)) = lab {
        match Arc::try_unwrap(lab) {
            Ok(lab) => match lab.down() {
                Ok(t) => print!("{t}"),
                Err(e) => eprintln!("tearing the lab down: {e:#}"),
            },
            Err(_) => eprintln!("lab still referenced; it is torn down on drop"),
        }
        drop(lock);
    }
    conclusion.exit()
}
