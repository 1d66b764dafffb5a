//! Loading a program through the verifier, as libbpf does it: the kernel abandons a
//! verification with EAGAIN when a signal is pending for the loading thread (tests run in
//! threads of one process that also spawns and reaps helpers), so a load that fails that way
//! is simply tried again.

use aya::programs::ProgramError;

/// How often a load interrupted by a signal is tried again (libbpf's figure).
const ATTEMPTS: usize = 5;

/// Runs `load` (e.g. `|| prog.load()`) until it succeeds, fails for another reason than
/// EAGAIN, or has been interrupted [`ATTEMPTS`] times.
///
/// # Errors
/// The last load's error.
pub fn load(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}
