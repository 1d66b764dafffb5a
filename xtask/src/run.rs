//! Running commands and saying what is being done.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Prints a step in the xtask's voice.
pub fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs `cmd` with inherited output; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// True when `cmd` runs and succeeds (output discarded).
pub fn cmd_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
