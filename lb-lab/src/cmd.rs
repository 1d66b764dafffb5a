//! Running external commands (mostly `ip`) with errors that name the command and its stderr.

use std::fmt::Write as _;
use std::io;
use std::process::{Command, ExitStatus};

/// A command that could not be started or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `cmd` to completion and returns its stdout.
///
/// # Errors
/// [`CommandError::Spawn`] if it cannot be started, [`CommandError::Failed`] (with the trimmed
/// stderr) if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let output = cmd.output().map_err(|source| CommandError::Spawn {
        command: describe(cmd),
        source,
    })?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip <args>` (iproute2) and returns its stdout.
///
/// # Errors
/// As [`run`].
pub fn ip(args: &[&str]) -> Result<String, CommandError> {
    run(Command::new("ip").args(args))
}

/// Renders a command the way a person would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
        if plain {
            let _ = write!(line, " {arg}");
        } else {
            let _ = write!(line, " '{}'", arg.replace('\'', r"'\''"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_arguments_that_need_it() {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", "lbk-net", "link", "add", "it's here", ""]);
        assert_eq!(describe(&cmd), r"ip -n lbk-net link add 'it'\''s here' ''");
    }

    #[test]
    fn failed_command_reports_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }
}
