//! Fetches the agent's desired state from its local `/state` endpoint, for `lbctl diff`.
//! The schema is [`crate::serve::report::State`]; fields this lbctl does not know are
//! ignored.

use std::time::Duration;

use super::http::{self, HttpError};
use crate::serve::report::State;

/// Where `lbctl diff` asks by default: the agent's metrics port on this node.
pub const DEFAULT_URL: &str = "http://127.0.0.1:10249/state";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot get the agent's desired state from {url} (is lb-agent running on this node?)")]
    Unreachable { url: String, source: HttpError },
    #[error("the agent at {url} answered, but not with its desired state")]
    Refused { url: String, source: HttpError },
    #[error("the agent's state from {url} is not the JSON this lbctl expects")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
}

/// Fetches and decodes the agent's desired state.
pub fn fetch(url: &str, timeout: Duration) -> Result<State, FetchError> {
    let body = http::get(url, timeout).map_err(|source| match source {
        HttpError::Status { .. } | HttpError::BadResponse { .. } => FetchError::Refused {
            url: url.to_owned(),
            source,
        },
        _ => FetchError::Unreachable {
            url: url.to_owned(),
            source,
        },
    })?;
    serde_json::from_slice(&body).map_err(|source| FetchError::Decode {
        url: url.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{
        diff::state_of,
        fixtures::sample,
        http::tests::{ok_json, serve},
    };

    #[test]
    fn fetch_reads_a_local_endpoint_and_names_what_went_wrong() {
        let state = state_of(&sample());
        let url = serve(ok_json(&serde_json::to_string(&state).expect("json")));
        let fetched = fetch(&format!("{url}/state"), Duration::from_secs(5)).expect("fetch");
        assert_eq!(fetched, state);

        let url = serve(ok_json("<html>"));
        let e = fetch(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, FetchError::Decode { .. }), "{e}");

        let url = serve(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 24\r\n\r\nthe agent is busy; retry"
                .to_vec(),
        );
        let e = fetch(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, FetchError::Refused { .. }), "{e}");
        assert!(
            crate::error_chain::error_chain(&e).ends_with("answered 503: the agent is busy; retry"),
            "{e}"
        );
    }
}
