//! The healthCheckNodePort servers: for every externalTrafficPolicy=Local service with a
//! healthCheckNodePort, kube-proxy answers HTTP on that port of every node, so that the
//! cloud load balancer sends traffic only to nodes with a local endpoint. Any path:
//!
//! - 200 `{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}`
//!   when this node has ready local endpoints (terminating ones do not count) and the agent
//!   itself is healthy;
//! - 503 with the same body otherwise.
//!
//! Servers open and close as services come and go or change their port, and answer from
//! the latest endpoint counts, which the pipeline publishes after every sync
//! ([`crate::pipeline::HealthChecks`]). A port that cannot be bound (taken by something
//! else) is logged and retried.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
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
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::health::Health;
use crate::{model::ObjectId, pipeline::HealthChecks};

/// How often ports that could not be bound are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// What one port answers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    service: ObjectId,
    local_endpoints: usize,
}

/// kube-proxy's body, field names and order as it prints them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

struct Running {
    answer: watch::Sender<Answer>,
    task: JoinHandle<()>,
}

/// The set of health check servers, kept equal to the latest [`HealthChecks`].
pub struct HealthCheckServers {
    bind: IpAddr,
    health: Option<Arc<Health>>,
    running: BTreeMap<u16, Running>,
    /// Ports wanted but not bound (the error was logged once).
    failing: BTreeMap<u16, Answer>,
}

impl HealthCheckServers {
    /// Servers bound on `bind` (kube-proxy binds every address: 0.0.0.0). With `health`,
    /// an unhealthy agent answers 503 everywhere, as kube-proxy does.
    pub fn new(bind: IpAddr, health: Option<Arc<Health>>) -> Self {
        Self {
            bind,
            health,
            running: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Ports being served, sorted.
    pub fn ports(&self) -> Vec<u16> {
        self.running.keys().copied().collect()
    }

    /// Opens, updates and closes servers to match `checks`. Must run inside a Tokio runtime.
    pub fn update(&mut self, checks: &HealthChecks) {
        // One answer per port: two services cannot have one port (the API server refuses),
        // but if the view is briefly inconsistent, the first by namespace/name keeps it.
        let mut wanted: BTreeMap<u16, Answer> = BTreeMap::new();
        for check in checks.values() {
            wanted.entry(check.port).or_insert_with(|| Answer {
                service: check.service.clone(),
                local_endpoints: check.local_endpoints,
            });
        }
        let gone: Vec<u16> = self
            .running
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(r) = self.running.remove(&port) {
                r.task.abort();
                info!(port, "health check node port closed");
            }
        }
        self.failing.retain(|p, _| wanted.contains_key(p));
        for (port, answer) in wanted {
            match self.running.get(&port) {
                Some(r) => {
                    r.answer.send_if_modified(|a| {
                        let changed = *a != answer;
                        *a = answer.clone();
                        changed
                    });
                }
                None => self.open(port, answer),
            }
        }
    }

    /// Tries the ports that could not be bound again.
    pub fn retry(&mut self) {
        for (port, answer) in std::mem::take(&mut self.failing) {
            self.open(port, answer);
        }
    }

    fn open(&mut self, port: u16, answer: Answer) {
        let addr = SocketAddr::new(self.bind, port);
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        match listener {
            Ok(listener) => {
                info!(port, service = %answer.service, "serving health check node port");
                let (tx, rx) = watch::channel(answer);
                let task = tokio::spawn(serve(listener, rx, self.health.clone()));
                self.running.insert(port, Running { answer: tx, task });
            }
            Err(e) => {
                if self.failing.insert(port, answer.clone()).is_none() {
                    warn!(
                        "cannot serve the health check node port {addr} of Service {}: {e}; retrying every {RETRY_INTERVAL:?}",
                        answer.service
                    );
                }
            }
        }
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// Keeps a [`HealthCheckServers`] in step with `checks` until the task is aborted.
pub fn spawn(
    mut checks: watch::Receiver<HealthChecks>,
    bind: IpAddr,
    health: Option<Arc<Health>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut servers = HealthCheckServers::new(bind, health);
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let current = checks.borrow_and_update().clone();
            servers.update(&current);
            tokio::select! {
                changed = checks.changed() => if changed.is_err() { return },
                _ = retry.tick() => servers.retry(),
            }
        }
    })
}

/// The status and body for `answer`.
fn respond(answer: &Answer, proxy_healthy: bool) -> (StatusCode, String) {
    let body = Body {
        service: ServiceRef {
            namespace: &answer.service.namespace,
            name: &answer.service.name,
        },
        local_endpoints: answer.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let status = if answer.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        serde_json::to_string(&body).unwrap_or_else(|_| "{}".into()),
    )
}

async fn serve(
    listener: TcpListener,
    answer: watch::Receiver<Answer>,
    health: Option<Arc<Health>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let current = answer.borrow().clone();
                let healthy = health
                    .as_ref()
                    .is_none_or(|h| h.healthz(SystemTime::now()).healthy);
                async move {
                    // Read-only like the agent's other ports.
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return Ok::<_, Infallible>(super::server::method_not_allowed());
                    }
                    let (status, body) = respond(&current, healthy);
                    let mut r = Response::new(Full::new(if req.method() == Method::HEAD {
                        Bytes::new()
                    } else {
                        Bytes::from(body)
                    }));
                    *r.status_mut() = status;
                    let headers = r.headers_mut();
                    headers.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    headers.insert(
                        header::X_CONTENT_TYPE_OPTIONS,
                        header::HeaderValue::from_static("nosniff"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, "health check connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HealthCheck;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A port nothing listens on right now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port()
    }

    /// `GET path` on 127.0.0.1:`port`: the status code and the body.
    async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
        request(port, "GET", path).await
    }

    /// `method path` on 127.0.0.1:`port`: the status code and the body.
    async fn request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Ok((status, body))
    }

    fn checks(entries: &[(&str, u16, usize)]) -> HealthChecks {
        entries
            .iter()
            .map(|(name, port, n)| {
                let id = ObjectId::new("shop", name);
                (
                    id.clone(),
                    HealthCheck {
                        port: *port,
                        service: id,
                        local_endpoints: *n,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_body_is_kube_proxy_s() {
        let a = Answer {
            service: ObjectId::new("shop", "web"),
            local_endpoints: 2,
        };
        assert_eq!(
            respond(&a, true),
            (
                StatusCode::OK,
                r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#.into()
            )
        );
        let none = Answer {
            local_endpoints: 0,
            ..a.clone()
        };
        assert_eq!(respond(&none, true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&a, false).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn servers_open_follow_endpoints_and_close() {
        let (p1, p2) = (free_port(), free_port());
        let mut servers = HealthCheckServers::new(Ipv4Addr::LOCALHOST.into(), None);
        servers.update(&checks(&[("web", p1, 2), ("api", p2, 0)]));
        assert_eq!(servers.ports().len(), 2);

        let (status, body) = get(p1, "/").await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        // Any path answers.
        let (status, body) = get(p2, "/healthz").await.expect("get");
        assert_eq!(status, 503);
        assert!(body.contains(r#""localEndpoints":0"#), "{body}");

        // Endpoints change: the same server answers the new count.
        servers.update(&checks(&[("web", p1, 0), ("api", p2, 1)]));
        assert_eq!(get(p1, "/").await.expect("get").0, 503);
        assert_eq!(get(p2, "/").await.expect("get").0, 200);

        // web moves to another port, api goes away.
        let p3 = free_port();
        servers.update(&checks(&[("web", p3, 1)]));
        assert_eq!(servers.ports(), [p3]);
        assert_eq!(get(p3, "/").await.expect("get").0, 200);
        // The aborted servers stop accepting (the listener closes as its task ends).
        let mut closed = false;
        for _ in 0..50 {
            if get(p1, "/").await.is_err() && get(p2, "/").await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "old ports still answer");
        drop(servers);
    }

    #[tokio::test]
    async fn health_check_ports_answer_only_get_and_head() {
        let port = free_port();
        let mut servers = HealthCheckServers::new(Ipv4Addr::LOCALHOST.into(), None);
        servers.update(&checks(&[("web", port, 1)]));
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let (status, body) = request(port, method, "/").await.expect(method);
            assert_eq!(
                (status, body.as_str()),
                (405, "only GET and HEAD\n"),
                "{method}"
            );
        }
        assert_eq!(request(port, "HEAD", "/").await.expect("head").0, 200);
        assert_eq!(get(port, "/").await.expect("get").0, 200);
    }

    #[tokio::test]
    async fn a_port_in_use_is_retried_until_it_is_free() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let mut servers = HealthCheckServers::new(Ipv4Addr::LOCALHOST.into(), None);
        servers.update(&checks(&[("web", port, 1)]));
        assert!(servers.ports().is_empty());
        drop(taken);
        servers.retry();
        assert_eq!(servers.ports(), [port]);
        assert_eq!(get(port, "/").await.expect("get").0, 200);
    }
}
