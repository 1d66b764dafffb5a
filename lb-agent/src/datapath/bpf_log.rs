//! Forwards the datapath's aya-log records into the agent's log (they arrive through the
//! `log` crate, which tracing-subscriber bridges).

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{unix::AsyncFd, Interest},
    task::JoinHandle,
};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum BpfLogError {
    #[error("cannot read the datapath's log")]
    Init(#[from] aya_log::Error),
    #[error("cannot poll the datapath's log")]
    Poll(#[from] std::io::Error),
}

/// Starts forwarding; records are read whenever the log ring buffer has some. Must be
/// called from within a tokio runtime.
pub fn spawn(ebpf: &mut Ebpf) -> Result<JoinHandle<()>, BpfLogError> {
    let logger = EbpfLogger::init(ebpf)?;
    // SAFETY: the logger owns the ring buffer's fd, which stays open, and is the one its
    // as_raw_fd returns, for as long as the logger lives; the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("stopped reading the datapath's log: {e}");
                    return;
                }
            }
        }
    }))
}
