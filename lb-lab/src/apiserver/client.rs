//! A small blocking client for the API server, for the lab's own use: it can run inside a lab
//! network namespace (the root namespace has no route into the lab), one request at a time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::netns::{self, NetnsError};

/// A request that did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error `Status`.
    #[error("{method} {path}: {code} {reason}: {message}")]
    Status {
        method: Method,
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error(
        "{method} {path}: no answer from {addr} within {timeout:?} (is the API server stopped?)"
    )]
    TimedOut {
        method: Method,
        path: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("{method} {path}: {detail}")]
    Transport {
        method: Method,
        path: String,
        detail: String,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl ClientError {
    /// The HTTP status of a `Status` answer.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
}

/// Talks to the API server at `addr`, from network namespace `ns` if given.
#[derive(Clone, Debug)]
pub struct Client {
    pub ns: Option<String>,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Client {
    /// A client for `addr` from namespace `ns`, with a 10 s timeout per request.
    pub fn new(ns: Option<&str>, addr: SocketAddr) -> Self {
        Self {
            ns: ns.map(str::to_string),
            addr,
            timeout: Duration::from_secs(10),
        }
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None)
    }

    /// Sends `method path` with `body` as JSON and returns the answer's JSON.
    ///
    /// # Errors
    /// [`ClientError::Status`] for an answer that is not 2xx, others when there is no answer.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            method: method.clone(),
            path: path.to_string(),
            detail,
        };
        let body = match body {
            Some(v) => serde_json::to_vec(v).map_err(|e| transport(e.to_string()))?,
            None => Vec::new(),
        };
        let exchange = || self.exchange(&method, path, body.clone());
        let answer = match &self.ns {
            Some(ns) => netns::run_in(ns, exchange)?,
            // A thread of its own: the caller may itself be inside a tokio runtime.
            None => std::thread::scope(|s| s.spawn(exchange).join())
                .map_err(|_| transport("the request thread panicked".into()))?,
        };
        let (status, bytes) = match answer {
            Ok(answer) => answer,
            Err(Failure::TimedOut) => {
                return Err(ClientError::TimedOut {
                    method,
                    path: path.to_string(),
                    addr: self.addr,
                    timeout: self.timeout,
                })
            }
            Err(Failure::Other(detail)) => return Err(transport(detail)),
        };
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| transport(format!("answer is not JSON: {e}")))?
        };
        if status.is_success() {
            return Ok(value);
        }
        let text = |f: &str| {
            value
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Err(ClientError::Status {
            method,
            path: path.to_string(),
            code: status.as_u16(),
            reason: text("reason"),
            message: text("message"),
        })
    }

    /// One request on a fresh connection, on a single-threaded runtime on this thread (so the
    /// socket lives in this thread's network namespace).
    fn exchange(
        &self,
        method: &Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Other(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async {
            let work = async {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| Failure::Other(format!("cannot connect to {}: {e}", self.addr)))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| Failure::Other(e.to_string()))?;
                tokio::spawn(conn);
                let request = Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header(http::header::HOST, self.addr.to_string())
                    .header(http::header::ACCEPT, "application/json")
                    .header(
                        http::header::CONTENT_TYPE,
                        if *method == Method::PATCH {
                            "application/merge-patch+json"
                        } else {
                            "application/json"
                        },
                    )
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?
                    .to_bytes();
                Ok((status, bytes))
            };
            tokio::time::timeout(self.timeout, work)
                .await
                .unwrap_or(Err(Failure::TimedOut))
        })
    }
}

enum Failure {
    TimedOut,
    Other(String),
}
