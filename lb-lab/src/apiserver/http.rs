//! HTTP requests to API operations and back: routing, bodies, content types, the `/lab/`
//! endpoints, and a log line per request.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use jiff::Timestamp;
use serde_json::{json, Value};

use super::resource::{ObjectKey, Resource};
use super::route::{self, Query, Route};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{PauseMode, Shared};
use super::status::ApiError;
use super::watch::{self, Filter, Start, WatchRequest};
use super::{api, discovery};

/// Response bodies: whole JSON documents or watch streams.
pub type Body = BoxBody<Bytes, io::Error>;

/// Request bodies larger than this are refused (the real limit is 3 MiB per object; lists
/// sent to `/lab/objects` may be bigger).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Handles one request. Never fails: errors become `Status` responses.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), ToString::to_string);
    let (response, watching) = match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => (json_response(e.code(), &e.to_status()), false),
    };
    let what = if watching { " (watch stream)" } else { "" };
    println!(
        "{} {peer} {method} {target} -> {}{what} in {:.1?}",
        Timestamp::now(),
        response.status().as_u16(),
        started.elapsed()
    );
    Ok(response)
}

/// The response, and whether it is a watch stream.
async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<(Response<Body>, bool), ApiError> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let route = route::parse(&path).ok_or(ApiError::NoRoute)?;
    if let Route::Admin(what) = &route {
        return admin(shared, req, what, &query).await.map(|r| (r, false));
    }
    wait_unpaused(shared).await?;
    let ok = |v: Value| Ok((json_response(200, &v), false));
    match route {
        Route::Version => ok(discovery::version()),
        Route::Health => Ok((text_response(200, "ok"), false)),
        Route::CoreVersions => ok(discovery::core_versions(&shared.address.to_string())),
        Route::Groups => ok(discovery::groups()),
        Route::Group => ok(discovery::discovery_group()),
        Route::Resources(gv) => ok(discovery::resources(gv)),
        Route::Collection {
            resource,
            namespace,
        } => collection(shared, req, resource, namespace, &query).await,
        Route::Object {
            resource,
            namespace,
            name,
            status,
        } => {
            let key = ObjectKey::new(resource, namespace.as_deref().unwrap_or_default(), &name);
            object(shared, req, &key, status, &query)
                .await
                .map(|r| (r, false))
        }
        Route::Admin(_) => Err(ApiError::NoRoute),
    }
}

/// Holds API requests while the server is paused with [`PauseMode::Hang`].
async fn wait_unpaused(shared: &Shared) -> Result<(), ApiError> {
    let mut signal = shared.signal.subscribe();
    loop {
        let now = *signal.borrow_and_update();
        match now.pause {
            None => return Ok(()),
            Some(PauseMode::Unavailable) => return Err(ApiError::Unavailable),
            Some(PauseMode::Hang) => {
                if signal.changed().await.is_err() {
                    return Err(ApiError::Unavailable);
                }
            }
        }
    }
}

async fn collection(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    resource: Resource,
    namespace: Option<String>,
    query: &Query,
) -> Result<(Response<Body>, bool), ApiError> {
    match *req.method() {
        Method::GET => {
            let filter = Filter {
                resource,
                namespace,
                labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
                fields: FieldSelector::parse(
                    query.get("fieldSelector").unwrap_or_default(),
                    resource,
                )?,
            };
            if query.flag("watch")? {
                let watch = watch_request(filter, query)?;
                let body = watch::start(Arc::clone(shared), watch);
                let response = Response::builder()
                    .status(StatusCode::OK)
                    .header(CONTENT_TYPE, "application/json")
                    .body(BodyExt::boxed(body))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok((response, true))
            } else {
                Ok((json_response(200, &list(shared, &filter, query)?), false))
            }
        }
        Method::POST => {
            let body = read_body(req).await?;
            let created = shared.write(|store| {
                api::create(
                    store,
                    resource,
                    namespace.as_deref(),
                    body,
                    Timestamp::now(),
                )
            })?;
            Ok((json_response(201, &created), false))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn watch_request(filter: Filter, query: &Query) -> Result<WatchRequest, ApiError> {
    let start = match query.get("resourceVersion").unwrap_or_default() {
        "" | "0" => Start::WithState,
        rv => Start::After(parse_rv(rv)?),
    };
    let send_initial_events = query.flag("sendInitialEvents")?;
    if send_initial_events && query.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::Invalid {
            kind: "ListOptions",
            name: String::new(),
            causes: vec![super::status::FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        });
    }
    Ok(WatchRequest {
        filter,
        // With sendInitialEvents the state comes first whatever the resourceVersion.
        start: if send_initial_events {
            Start::WithState
        } else {
            start
        },
        timeout: query.number("timeoutSeconds")?.map(Duration::from_secs),
        bookmarks: query.flag("allowWatchBookmarks")?,
        send_initial_events,
    })
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))
}

/// A list. `limit` is ignored (everything comes in one page, as the API server's watch cache
/// serves `resourceVersion=0` lists), so there is never a `continue` token.
fn list(shared: &Shared, filter: &Filter, query: &Query) -> Result<Value, ApiError> {
    let exact = query.get("resourceVersionMatch") == Some("Exact");
    let requested = match query.get("resourceVersion").unwrap_or_default() {
        "" | "0" => None,
        rv => Some(parse_rv(rv)?),
    };
    // Only the shared pointers are taken under the store's lock: copying 10 000 objects
    // there would hold up every write (and so every watch) for as long.
    let (objects, rv) = shared.read(|store| {
        let objects: Vec<_> = store
            .list(filter.resource, filter.namespace.as_deref())
            .into_iter()
            .filter(|o| filter.matches(o))
            .collect();
        (objects, store.resource_version())
    });
    let items: Vec<Value> = objects
        .iter()
        .map(|o| {
            // List items carry no apiVersion and kind of their own, as from the real server.
            let mut item = (**o).clone();
            if let Some(obj) = item.as_object_mut() {
                obj.remove("apiVersion");
                obj.remove("kind");
            }
            item
        })
        .collect();
    // The store keeps no old versions: an exact read of anything but now is a read of
    // compacted history.
    if let (true, Some(requested)) = (exact, requested) {
        if requested != rv {
            return Err(ApiError::Expired {
                requested,
                oldest: rv,
            });
        }
    }
    Ok(json!({
        "kind": filter.resource.list_kind(),
        "apiVersion": filter.resource.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}

async fn object(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    key: &ObjectKey,
    status: bool,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let now = Timestamp::now();
    let method = req.method().clone();
    let stored = match method {
        Method::GET => shared
            .read(|store| store.get(key).cloned())
            .ok_or_else(|| ApiError::NotFound {
                resource: key.resource,
                name: key.name.clone(),
            })?,
        Method::PUT => {
            let body = read_body(req).await?;
            shared.write(|store| api::replace(store, key, body, status, now))?
        }
        Method::PATCH => {
            let content_type = header(&req, CONTENT_TYPE);
            if !content_type.contains("merge-patch") {
                return Err(ApiError::UnsupportedMediaType(
                    "application/merge-patch+json, application/strategic-merge-patch+json (applied as a merge patch)".into(),
                ));
            }
            let patch = read_body(req).await?;
            shared.write(|store| api::patch(store, key, &patch, status, now))?
        }
        Method::DELETE if !status => {
            let mut grace = query.signed("gracePeriodSeconds")?;
            let body = read_body_or_empty(req).await?;
            if let Some(g) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
                grace = Some(g);
            }
            shared.write(|store| api::delete(store, key, grace, now))?
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(json_response(200, &stored))
}

/// `/lab/...`: fault injection and test access. Answers even while paused.
async fn admin(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    what: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let body = match (method, what) {
        (Method::POST, "drop-watches") => json!({"dropped": shared.drop_watches()}),
        (Method::POST, "compact") => json!({"resourceVersion": shared.compact().to_string()}),
        (Method::POST, "pause") => {
            let mode = match query.get("mode").unwrap_or("hang") {
                "hang" => PauseMode::Hang,
                "unavailable" => PauseMode::Unavailable,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown pause mode {other:?} (hang, unavailable)"
                    )))
                }
            };
            shared.pause(Some(mode));
            json!({"paused": format!("{mode:?}")})
        }
        (Method::POST, "resume") => {
            shared.pause(None);
            json!({"paused": null})
        }
        (Method::POST | Method::PUT, "objects") => {
            let body = read_body(req).await?;
            let stored = shared.write(|store| api::put_raw(store, body, Timestamp::now()))?;
            let items: Vec<Value> = stored.iter().map(|o| (**o).clone()).collect();
            json!({"kind": "List", "apiVersion": "v1", "items": items})
        }
        (Method::GET, "state") => {
            let (rv, oldest, history, objects) = shared.read(|s| {
                (
                    s.resource_version(),
                    s.oldest_resource_version(),
                    s.history_len(),
                    s.len(),
                )
            });
            let signal = *shared.signal.borrow();
            json!({
                "resourceVersion": rv.to_string(),
                "oldestResourceVersion": oldest.to_string(),
                "history": history,
                "objects": objects,
                "watches": shared.watches.load(std::sync::atomic::Ordering::Relaxed),
                "paused": signal.pause.map(|m| format!("{m:?}")),
            })
        }
        _ => return Err(ApiError::NoRoute),
    };
    Ok(json_response(200, &body))
}

fn header(req: &Request<Incoming>, name: http::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The request body as JSON (or YAML, by content type).
async fn read_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let value = read_body_or_empty(req).await?;
    if value.is_null() {
        return Err(ApiError::BadRequest("the request has no body".into()));
    }
    Ok(value)
}

/// Like [`read_body`], but an empty body is `null`.
async fn read_body_or_empty(req: Request<Incoming>) -> Result<Value, ApiError> {
    let yaml = header(&req, CONTENT_TYPE).contains("yaml");
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge(MAX_BODY)
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    if yaml {
        serde_norway::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
    }
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(code: u16, text: &str) -> Response<Body> {
    let mut response = Response::new(full(text.as_bytes().to_vec()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}
