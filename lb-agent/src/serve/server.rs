//! The agent's HTTP endpoints, as kube-proxy lays them out:
//! - the metrics port (`--metrics-bind-address`, 10249): `/metrics`, `/state` (the
//!   desired state, [`report`](super::report)), and `/healthz` and `/livez` as on the
//!   health port;
//! - the health port (`--healthz-bind-address`, 10256): `/healthz` and `/livez`
//!   ([`health`](super::health)).
//!
//! Both are read-only: every method but GET and HEAD is answered 405 before the path is
//! looked at, so nothing an HTTP client sends reaches the pipeline or changes a map. Each
//! listens only on the address its flag gives.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::debug;

use super::{health::Health, metrics::Metrics};
use crate::pipeline::StateRequest;

/// How long `/state` waits for the pipeline (busy with a large full sync, at worst).
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({flag})")]
    Bind {
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
}

/// Binds `addr`; `flag` names the option that gave it, for the error message.
pub async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, flag, source })
}

/// What one port serves.
#[derive(Clone, Debug)]
pub enum Routes {
    /// The metrics port.
    Metrics {
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        state: mpsc::Sender<StateRequest>,
    },
    /// The health port.
    Health(Arc<Health>),
}

type Reply = Response<Full<Bytes>>;

impl Routes {
    /// The response to `method path`.
    pub async fn respond(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed();
        }
        let health = match self {
            Routes::Metrics { health, .. } | Routes::Health(health) => health,
        };
        match (self, path) {
            (_, "/healthz") => probe(health.healthz(SystemTime::now())),
            (_, "/livez") => probe(health.livez(SystemTime::now())),
            (Routes::Metrics { metrics, .. }, "/metrics") => match metrics.encode() {
                Ok(body) => with_type(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            (Routes::Metrics { state, .. }, "/state") => desired_state(state).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

async fn desired_state(requests: &mpsc::Sender<StateRequest>) -> Reply {
    let (tx, rx) = oneshot::channel();
    if requests.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n");
    }
    match tokio::time::timeout(STATE_TIMEOUT, rx).await {
        Ok(Ok(state)) => match serde_json::to_vec(&state) {
            Ok(body) => with_type(StatusCode::OK, "application/json", body),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        Ok(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n"),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is busy; retry\n",
        ),
    }
}

fn probe(p: super::health::Probe) -> Reply {
    let status = if p.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = with_type(status, "application/json", p.body);
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// 405 with the methods that are allowed, as RFC 9110 asks.
pub(crate) fn method_not_allowed() -> Reply {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves `routes` on `listener` until the task is dropped or aborted.
pub fn spawn(listener: TcpListener, routes: Routes) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let routes = routes.clone();
                    async move {
                        let mut reply = routes.respond(req.method(), req.uri().path()).await;
                        if req.method() == Method::HEAD {
                            *reply.body_mut() = Full::new(Bytes::new());
                        }
                        Ok::<_, Infallible>(reply)
                    }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, "connection ended: {e}");
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn body(r: Reply) -> String {
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn metrics_routes() -> (Routes, Arc<Health>, mpsc::Receiver<StateRequest>) {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let (tx, rx) = mpsc::channel(1);
        let routes = Routes::Metrics {
            metrics: Metrics::new(None),
            health: health.clone(),
            state: tx,
        };
        (routes, health, rx)
    }

    #[tokio::test]
    async fn healthz_is_503_until_synced_then_200() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let routes = Routes::Health(health.clone());
        let r = routes.respond(&Method::GET, "/healthz").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        health.updated(SystemTime::now());
        let r = routes.respond(&Method::GET, "/healthz").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let b = body(r).await;
        assert!(b.starts_with("{\"lastUpdated\":"), "{b}");
        assert_eq!(
            routes.respond(&Method::GET, "/metrics").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            routes.respond(&Method::POST, "/healthz").await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn the_metrics_port_serves_metrics_health_and_state() {
        let (routes, _health, mut requests) = metrics_routes();
        let r = routes.respond(&Method::GET, "/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = body(r).await;
        assert!(
            text.contains("# TYPE lb_sync_proxy_rules counter"),
            "{text}"
        );
        assert_eq!(
            routes.respond(&Method::GET, "/livez").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let answer = tokio::spawn(async move {
            let request = requests.recv().await.expect("a state request");
            let _ = request.send(crate::serve::report::State {
                version: crate::serve::report::STATE_VERSION,
                node: crate::serve::report::NodeReport::new(&crate::model::node::ThisNode::named(
                    "n",
                )),
                synced: true,
                services: 0,
                frontends: vec![],
                attachments: Default::default(),
                skipped: vec![],
            });
        });
        let r = routes.respond(&Method::GET, "/state").await;
        assert_eq!(r.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body(r).await).expect("json");
        assert_eq!(json["version"], 1);
        assert_eq!(json["node"]["name"], "n");
        answer.await.expect("answered");
    }

    #[tokio::test]
    async fn state_without_a_pipeline_is_503() {
        let (routes, _health, requests) = metrics_routes();
        drop(requests);
        assert_eq!(
            routes.respond(&Method::GET, "/state").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_real_socket_gets_an_http_answer() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "--test")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        health.updated(SystemTime::now());
        let server = spawn(listener, Routes::Health(health));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("\"nodeEligible\":true"), "{out}");
        server.abort();
    }

    /// Sends `request` on a new connection to `addr` and returns the whole answer.
    async fn raw(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    const PATHS: [&str; 7] = [
        "/",
        "/metrics",
        "/state",
        "/healthz",
        "/livez",
        "/nope",
        "/state?x=1",
    ];
    const WRITES: [&str; 6] = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];

    #[tokio::test]
    async fn no_method_but_get_and_head_is_served_on_any_path_of_either_port() {
        let (routes, health, mut requests) = metrics_routes();
        health.updated(SystemTime::now());
        let metrics = match &routes {
            Routes::Metrics { metrics, .. } => metrics.clone(),
            Routes::Health(_) => unreachable!(),
        };
        let servers = [routes, Routes::Health(health.clone())];
        for routes in servers {
            let listener = bind("127.0.0.1:0".parse().expect("addr"), "--test")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = spawn(listener, routes);
            // Health as it would be reported at one fixed moment, before and after.
            let at = SystemTime::now();
            let healthz_before = health.healthz(at).body;
            let metrics_before = metrics.encode().expect("encode");
            for method in WRITES {
                for path in PATHS {
                    let body = "{\"synced\":false}";
                    let out = raw(
                        addr,
                        &format!(
                            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                    )
                    .await;
                    assert!(
                        out.starts_with("HTTP/1.1 405 Method Not Allowed"),
                        "{method} {path}: {out}"
                    );
                    assert!(out.contains("allow: GET, HEAD"), "{method} {path}: {out}");
                }
            }
            // Nothing reached the pipeline, and what is served is as it was.
            assert!(requests.try_recv().is_err(), "a write reached the pipeline");
            assert_eq!(health.healthz(at).body, healthz_before);
            assert!(health.healthz(at).healthy);
            assert_eq!(metrics.encode().expect("encode"), metrics_before);
            server.abort();
        }
    }

    #[tokio::test]
    async fn a_loopback_bind_address_listens_there_only() {
        let listener = bind(
            "127.0.0.1:0".parse().expect("addr"),
            "--metrics-bind-address",
        )
        .await
        .expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let server = spawn(listener, Routes::Health(health));
        let out = raw(
            addr,
            "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 "), "{out}");
        // Every 127/8 address is this host's, so only the bind address keeps 127.0.0.2 out.
        let other = SocketAddr::new(std::net::Ipv4Addr::new(127, 0, 0, 2).into(), addr.port());
        let err = tokio::net::TcpStream::connect(other)
            .await
            .expect_err("127.0.0.2 must not be served");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        // Had it bound 0.0.0.0, the port would be taken on 127.0.0.2 too.
        drop(bind(other, "--test").await.expect("127.0.0.2 is not taken"));
        server.abort();
    }

    #[tokio::test]
    async fn binding_a_used_port_names_the_flag() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), "--a")
            .await
            .expect("bind");
        let addr = first.local_addr().expect("addr");
        let err = bind(addr, "--healthz-bind-address")
            .await
            .expect_err("in use");
        assert!(err.to_string().contains("--healthz-bind-address"), "{err}");
    }
}
