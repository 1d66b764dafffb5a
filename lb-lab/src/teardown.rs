//! Removing the lab: stop its processes by pid, delete its namespaces and pin directories.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::bpffs;
use crate::netns;
use crate::plan::Plan;
use crate::process::{self, PidRecord, Stopped};
use crate::state::{remove_file_if_exists, StateDir};
use crate::topology;
use crate::Binaries;

/// How long processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What [`teardown`] removed.
#[derive(Clone, Debug, Default)]
pub struct Teardown {
    /// Processes from pid files: (pid file stem, pid, how it ended).
    pub stopped: Vec<(String, i32, Stopped)>,
    pub namespaces: Vec<String>,
    pub pin_dirs: Vec<PathBuf>,
    /// The nodes' and pods' cgroups, children before parents.
    pub cgroups: Vec<PathBuf>,
    /// Processes still inside lab namespaces that the lab did not start (left alone).
    pub strangers: Vec<(String, i32)>,
}

impl fmt::Display for Teardown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stopped.is_empty()
            && self.namespaces.is_empty()
            && self.pin_dirs.is_empty()
            && self.cgroups.is_empty()
        {
            return writeln!(f, "lab: nothing to remove");
        }
        let count = |how| self.stopped.iter().filter(|s| s.2 == how).count();
        writeln!(
            f,
            "lab: stopped {} processes ({} on SIGTERM, {} needed SIGKILL, {} already gone)",
            self.stopped.len() - count(Stopped::AlreadyGone),
            count(Stopped::Terminated),
            count(Stopped::Killed),
            count(Stopped::AlreadyGone)
        )?;
        for (what, pid, _) in self.stopped.iter().filter(|s| s.2 == Stopped::Survived) {
            writeln!(f, "lab: WARNING: {what} (pid {pid}) survived SIGKILL")?;
        }
        writeln!(
            f,
            "lab: deleted {} namespaces{}{}",
            self.namespaces.len(),
            if self.namespaces.is_empty() { "" } else { ": " },
            self.namespaces.join(" ")
        )?;
        for dir in self.pin_dirs.iter().chain(&self.cgroups) {
            writeln!(f, "lab: removed {}", dir.display())?;
        }
        for (ns, pid) in &self.strangers {
            writeln!(
                f,
                "lab: WARNING: pid {pid} was running in {ns} but not started by the lab; left alone"
            )?;
        }
        Ok(())
    }
}

/// Removes the lab, whatever state it is in: stops the processes in `<state_dir>/pids`
/// (SIGTERM, SIGKILL after a grace period), deletes every `lbk-*` namespace, removes the
/// agents' pin directories, the nodes' and pods' cgroups, and the pid, ready and offloads
/// files. Logs and manifests stay for inspection.
///
/// # Errors
/// If something could not be removed (everything else is still attempted).
pub fn teardown(bins: &Binaries) -> Result<Teardown> {
    let state = StateDir::new(&bins.state_dir);
    let plan = Plan::kind();
    let mut report = Teardown::default();
    let mut errors = Vec::new();

    match process::read_pid_dir(&state.pids()) {
        Ok(records) => {
            let pids: Vec<PidRecord> = records.iter().map(|(_, r)| *r).collect();
            let outcome = process::stop(&pids, STOP_GRACE);
            for ((path, record), how) in records.iter().zip(outcome) {
                let what = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                report.stopped.push((what, record.pid, how));
                if let Err(e) = remove_file_if_exists(path) {
                    errors.push(format!("cannot remove {}: {e}", path.display()));
                }
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }

    // Anything still inside is not ours: say so rather than kill it.
    for ns in netns::list_lab().unwrap_or_default() {
        for pid in netns::pids(&ns).unwrap_or_default() {
            report.strangers.push((ns.clone(), pid));
        }
    }

    match topology::destroy() {
        Ok(removed) => report.namespaces = removed,
        Err(e) => errors.push(format!("{e:#}")),
    }
    match bpffs::remove_pin_dirs(plan.nodes.iter().map(|n| n.name.as_str())) {
        Ok(removed) => report.pin_dirs = removed,
        Err(e) => errors.push(format!("{e:#}")),
    }
    // After the pin directories: with the agents gone and their pinned links unpinned, the
    // socket programs are released with the cgroups; only processes could keep them busy, and
    // every one the lab started (the echo servers in the pod cgroups too) has been stopped
    // above. Each node's pod cgroups go before its `kubepods` and its own.
    match crate::cgroup::remove(plan.nodes.iter().map(|n| n.name.as_str())) {
        Ok(removed) => report.cgroups = removed,
        Err(e) => errors.push(format!("{e:#}")),
    }
    for node in &plan.nodes {
        if let Err(e) = remove_file_if_exists(&state.ready_file(&node.name)) {
            errors.push(format!("cannot remove ready file of {}: {e}", node.name));
        }
    }
    if let Err(e) = remove_file_if_exists(&state.offloads()) {
        errors.push(format!("cannot remove {}: {e}", state.offloads().display()));
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        bail!("teardown incomplete: {}\n{report}", errors.join("; "))
    }
}
