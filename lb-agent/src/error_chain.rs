//! Errors rendered with their causes, for log lines.
//!
//! Error types here follow the usual Rust convention: a message says what failed, and its
//! cause is reachable through `source()` rather than repeated in the message. A log line
//! needs the whole chain.

use std::error::Error;

/// `error: cause: cause of the cause ...`, as anyhow's `{:#}` prints it.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading config")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_appended() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "reading config: disk on fire");
    }
}
