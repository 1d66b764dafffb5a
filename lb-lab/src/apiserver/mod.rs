//! A small but faithful Kubernetes API server for tests and the lab (test support, not
//! product): Services, EndpointSlices, Nodes and Pods over the real HTTP API, with list and
//! watch by resourceVersion, bookmarks, 410 Gone, label and field selectors, ClusterIP and
//! NodePort allocation, an EndpointSlice controller, persistence across restarts, and fault
//! injection (`/lab/...`). kube-rs talks to it as to a real one.
//!
//! - [`ApiServer`]: run it in-process (tests) or with [`run`] (`lb-lab apiserver`).
//! - [`Client`]: the lab's blocking client, usable from inside a lab namespace.
//!
//! HTTP endpoints besides the Kubernetes API:
//!
//! | request | effect |
//! |---|---|
//! | `POST /lab/drop-watches` | cut every open watch connection |
//! | `POST /lab/compact` | forget the event history: older resourceVersions get 410 |
//! | `POST /lab/pause?mode=hang\|unavailable`, `POST /lab/resume` | hold or refuse API requests |
//! | `PUT /lab/objects` | store an object (or a List) as given, without validation |
//! | `GET /lab/state` | resourceVersion, history, open watches |

pub mod alloc;
pub mod api;
pub mod client;
pub mod controller;
pub mod discovery;
pub mod http;
pub mod index;
pub mod journal;
pub mod kubeconfig;
pub mod resource;
pub mod route;
pub mod seed;
pub mod selector;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod watch;

#[cfg(test)]
mod scale_tests;

pub use ::http::Method;
pub use client::{Client, ClientError};
pub use resource::{ObjectKey, Resource};
pub use server::{run, ApiServer, Config, Handle, PauseMode};
pub use status::ApiError;
