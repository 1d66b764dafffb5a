//! Daemons the lab starts inside namespaces: spawning, pid files, liveness and stopping by pid.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::netns;
use crate::state::write_atomic;

/// A process the lab started, identified by pid *and* start time so that a recycled pid is
/// never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    /// `starttime` from `/proc/<pid>/stat`, in clock ticks since boot.
    pub start_time: u64,
}

/// What to start and where.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// Network namespace to run in (the mount namespace stays the host's).
    pub ns: String,
    /// cgroup2 directory to run in (a pod's, for its echo server); `None` leaves the process
    /// in ours.
    pub cgroup: Option<PathBuf>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Receives stdout and stderr (truncated first).
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// Starts `spec` in its namespace (and cgroup), detached from our session, and writes its pid file.
///
/// The new process gets its own session so that a Ctrl-C aimed at `cargo xtask lab up` does
/// not reach it; it outlives us and is stopped only by [`stop`].
///
/// # Errors
/// If the namespace cannot be opened, the log or pid file cannot be written, or the program
/// cannot be started.
pub fn spawn(spec: &DaemonSpec) -> Result<PidRecord> {
    let log = File::create(&spec.log)
        .with_context(|| format!("cannot create log file {}", spec.log.display()))?;
    let log_err = log
        .try_clone()
        .context("cannot duplicate log file handle")?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    netns::enter_on_spawn(&mut cmd, &spec.ns)?;
    if let Some(dir) = &spec.cgroup {
        crate::cgroup::enter_on_spawn(&mut cmd, dir)?;
    }
    // SAFETY: setsid is a single async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} in {}", crate::cmd::describe(&cmd), spec.ns))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // Dropping `child` neither kills nor waits; [`stop`] and [`is_alive`] reap it later if it
    // is still our child.
    drop(child);
    let start_time = stat(pid).map(|s| s.start_time).with_context(|| {
        format!(
            "{} (pid {pid}) vanished right after starting",
            spec.program.display()
        )
    })?;
    let record = PidRecord { pid, start_time };
    write_pid_file(&spec.pid_file, record)?;
    Ok(record)
}

/// Writes `record` as `<pid>\n<start_time>\n`.
///
/// # Errors
/// If the file cannot be written.
pub fn write_pid_file(path: &Path, record: PidRecord) -> Result<()> {
    let text = format!("{}\n{}\n", record.pid, record.start_time);
    write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a pid file written by [`write_pid_file`]; `None` if it does not exist.
///
/// # Errors
/// If it cannot be read or does not hold a pid.
pub fn read_pid_file(path: &Path) -> Result<Option<PidRecord>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = text.lines().map(str::trim);
    let pid = lines
        .next()
        .and_then(|l| l.parse().ok())
        .filter(|pid: &i32| *pid > 0)
        .with_context(|| format!("{} holds no pid", path.display()))?;
    // Without a start time (hand-written file) we cannot tell a recycled pid apart; 0 means
    // "trust the pid".
    let start_time = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    Ok(Some(PidRecord { pid, start_time }))
}

/// Every `*.pid` file in `dir` with its record, sorted by file name.
///
/// # Errors
/// If the directory exists but cannot be read, or a pid file is unreadable.
pub fn read_pid_dir(dir: &Path) -> Result<Vec<(PathBuf, PidRecord)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pid") {
            if let Some(record) = read_pid_file(&path)? {
                records.push((path, record));
            }
        }
    }
    records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(records)
}

struct Stat {
    state: char,
    start_time: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
    // are plain: state is field 3, starttime field 22.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether any thread of `pid` has not exited yet.
fn threads_running(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    })
}

/// Reaps `pid` if it is our exited child; a no-op for anything else.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Whether the process in `record` is still running (not exited, not a zombie, pid not reused).
pub fn is_alive(record: PidRecord) -> bool {
    match stat(record.pid) {
        Some(s) if record.start_time != 0 && s.start_time != record.start_time => false,
        // A killed multithreaded process shows its leader as a zombie while other threads
        // are still exiting, holding its files (a listening socket, say): alive until the
        // last thread is gone.
        Some(s) if (s.state == 'Z' || s.state == 'X') && !threads_running(record.pid) => {
            reap(record.pid);
            false
        }
        Some(_) => true,
        None => false,
    }
}

/// Sends `signal` to the process in `record` if it is still running.
///
/// # Errors
/// If it is not running (or its pid was reused), or the signal cannot be sent.
pub fn signal(record: PidRecord, signal: Signal) -> Result<()> {
    anyhow::ensure!(is_alive(record), "pid {} is not running", record.pid);
    kill(Pid::from_raw(record.pid), signal)
        .with_context(|| format!("cannot send {signal} to pid {}", record.pid))
}

/// Waits until every thread of `record` is stopped (state `T` after SIGSTOP); whether it
/// happened within `limit`.
pub fn wait_stopped(record: PidRecord, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let all_stopped = || -> Option<bool> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", record.pid)).ok()?;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The state follows the parenthesised command name, which may hold spaces.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            if state != "T" {
                return Some(false);
            }
        }
        Some(true)
    };
    while std::time::Instant::now() < deadline {
        if all_stopped() == Some(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Waits up to `limit` for the process in `record` to exit; whether it did.
pub fn wait_dead(record: PidRecord, limit: Duration) -> bool {
    wait_all_dead(&[record], limit)
}

/// How [`stop`] ended a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It had already exited.
    AlreadyGone,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It survived SIGKILL (should not happen; reported rather than hidden).
    Survived,
}

/// Stops every process in `records`: SIGTERM, then SIGKILL for those still alive after
/// `grace`. Only these pids are ever signalled.
pub fn stop(records: &[PidRecord], grace: Duration) -> Vec<Stopped> {
    let mut outcome: Vec<Stopped> = records
        .iter()
        .map(|r| {
            if is_alive(*r) && kill(Pid::from_raw(r.pid), Signal::SIGTERM).is_ok() {
                // A stopped process (the lab SIGSTOPs its API server for outage tests) only
                // acts on SIGTERM once continued.
                let _ = kill(Pid::from_raw(r.pid), Signal::SIGCONT);
                Stopped::Terminated
            } else {
                Stopped::AlreadyGone
            }
        })
        .collect();
    if !wait_all_dead(records, grace) {
        for (record, how) in records.iter().zip(outcome.iter_mut()) {
            if is_alive(*record) {
                let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
                *how = Stopped::Killed;
            }
        }
        wait_all_dead(records, Duration::from_secs(2));
        for (record, how) in records.iter().zip(outcome.iter_mut()) {
            if is_alive(*record) {
                *how = Stopped::Survived;
            }
        }
    }
    outcome
}

fn wait_all_dead(records: &[PidRecord], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if records.iter().all(|r| !is_alive(*r)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of the file at `path` (at most its last 64 KiB), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.trim().is_empty() {
                format!("({} is empty)", path.display())
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let me = stat(pid).unwrap();
        assert!(is_alive(PidRecord {
            pid,
            start_time: me.start_time
        }));
        assert!(!is_alive(PidRecord {
            pid,
            start_time: me.start_time + 1
        }));
    }

    #[test]
    fn pid_files_round_trip_and_tolerate_a_missing_start_time() {
        let dir = std::env::temp_dir().join(format!("lb-lab-pids-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.pid");
        let record = PidRecord {
            pid: 42,
            start_time: 7,
        };
        write_pid_file(&path, record).unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), Some(record));
        fs::write(dir.join("b.pid"), "43\n").unwrap();
        let all = read_pid_dir(&dir).unwrap();
        assert_eq!(
            all[1].1,
            PidRecord {
                pid: 43,
                start_time: 0
            }
        );
        fs::write(&path, "nonsense").unwrap();
        assert!(read_pid_file(&path).is_err());
        assert_eq!(read_pid_file(&dir.join("missing.pid")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stop_terminates_a_child_and_reaps_it() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let record = PidRecord {
            pid,
            start_time: stat(pid).unwrap().start_time,
        };
        drop(child);
        assert_eq!(
            stop(&[record], Duration::from_secs(5)),
            [Stopped::Terminated]
        );
        assert!(!is_alive(record));
        assert_eq!(
            stop(&[record], Duration::from_secs(1)),
            [Stopped::AlreadyGone]
        );
    }
}
