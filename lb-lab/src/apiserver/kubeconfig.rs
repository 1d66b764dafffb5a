//! The kubeconfig that points clients (the agents, kubectl) at the lab's API server.

use std::path::Path;

use anyhow::{Context, Result};

use crate::state::write_atomic;

/// The context, cluster and user name.
pub const CONTEXT: &str = "lbk";

/// A kubeconfig for `server` (e.g. `http://172.18.0.2:6443`): no TLS, no credentials.
pub fn render(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {server}
users:
- name: {CONTEXT}
  user: {{}}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: default
current-context: {CONTEXT}
"
    )
}

/// Writes [`render`]`(server)` to `path`.
///
/// # Errors
/// If it cannot be written.
pub fn write(path: &Path, server: &str) -> Result<()> {
    write_atomic(path, render(server).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
