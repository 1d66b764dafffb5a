//! The `kube` source: kube-rs watchers on Services, EndpointSlices and this node's Node.
//!
//! Services and EndpointSlices are listed and watched with kube-proxy's server-side label
//! filter ([`PROXY_LABEL_SELECTOR`]; the model filters again, for servers that ignore it),
//! the Node by a `metadata.name` field selector. Each watcher buffers a (re)list from
//! `Init` to `InitDone` and sends it as one [`Change::Replace`], which the agent applies as
//! a full resync of that kind; single `Apply`/`Delete` events are sent as they come.
//!
//! Watch errors (API server down, 410 Gone, a dropped connection) are logged and counted,
//! and the watcher retries with kube-rs's default backoff (client-go's: 0.8 s doubling to
//! 30 s, with jitter). Nothing is sent meanwhile, so the datapath keeps serving the last
//! state; the relist after reconnecting brings the store up to date.

use std::{
    fmt::Debug,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    Api, Client, Config, Resource,
};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Change, EventSender, SourceEvent, Update};
use crate::{
    error_chain::error_chain,
    model::{node::NodeInfo, parse_service, parse_slice, ObjectId, Parsed, PROXY_LABEL_SELECTOR},
    serve::metrics::{Metrics, ResourceLabels},
};

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {0} does not exist")]
    MissingKubeconfig(PathBuf),
    #[error("cannot use kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes API configuration: not running in a cluster and no usable kubeconfig (KUBECONFIG or ~/.kube/config); pass --kubeconfig")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, or else from the environment (KUBECONFIG, ~/.kube/config,
/// or the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            if !path.exists() {
                return Err(KubeSourceError::MissingKubeconfig(path.to_owned()));
            }
            let error = |source| KubeSourceError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => Config::infer().await.map_err(KubeSourceError::Infer)?,
    };
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// Starts the three watchers; they run until `events` is closed.
pub fn spawn(
    client: Client,
    node_name: &str,
    events: EventSender,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let selected = || watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let services = Watch {
        resource: "services",
        events: events.clone(),
        metrics: metrics.clone(),
    };
    let slices = Watch {
        resource: "endpointslices",
        events: events.clone(),
        metrics: metrics.clone(),
    };
    let nodes = Watch {
        resource: "nodes",
        events,
        metrics,
    };
    let slice_node = node_name.to_owned();
    vec![
        tokio::spawn(services.run(
            Api::<Service>::all(client.clone()),
            selected(),
            parse_service,
            namespaced_id,
            Update::Services,
        )),
        tokio::spawn(slices.run(
            Api::<EndpointSlice>::all(client.clone()),
            selected(),
            move |s: &EndpointSlice| parse_slice(s, &slice_node),
            namespaced_id,
            Update::Slices,
        )),
        tokio::spawn(nodes.run(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            parse_node,
            node_id,
            Update::Node,
        )),
    ]
}

fn namespaced_id(meta: &ObjectMeta) -> Option<ObjectId> {
    ObjectId::of(meta).ok()
}

/// Nodes have no namespace.
fn node_id(meta: &ObjectMeta) -> Option<ObjectId> {
    meta.name.as_deref().map(|n| ObjectId::new("", n))
}

fn parse_node(node: &Node) -> Parsed<NodeInfo> {
    Parsed {
        id: node_id(&node.metadata),
        value: Some(NodeInfo::from_node(node)),
        skipped: Vec::new(),
    }
}

/// One watcher and where its events go.
struct Watch {
    resource: &'static str,
    events: EventSender,
    metrics: Arc<Metrics>,
}

impl Watch {
    async fn run<K, T>(
        self,
        api: Api<K>,
        config: watcher::Config,
        parse: impl Fn(&K) -> Parsed<T> + Send + 'static,
        id_of: fn(&ObjectMeta) -> Option<ObjectId>,
        wrap: fn(Change<T>) -> Update,
    ) where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K: Resource<DynamicType = ()>,
        T: Send,
    {
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: Option<Vec<Parsed<T>>> = None;
        let mut failing = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    self.metrics
                        .watch_errors
                        .get_or_create(&ResourceLabels {
                            resource: self.resource,
                        })
                        .inc();
                    warn!(
                        resource = self.resource,
                        "watch failed, retrying with backoff; the datapath keeps serving the last state: {}",
                        error_chain(&e)
                    );
                    failing = true;
                    continue;
                }
            };
            if std::mem::take(&mut failing) {
                info!(resource = self.resource, "watch recovered");
            }
            let change = match event {
                Event::Init => {
                    relist = Some(Vec::new());
                    continue;
                }
                Event::InitApply(obj) => {
                    relist.get_or_insert_with(Vec::new).push(parse(&obj));
                    continue;
                }
                Event::InitDone => {
                    let items = relist.take().unwrap_or_default();
                    info!(resource = self.resource, objects = items.len(), "listed");
                    Change::Replace(items)
                }
                Event::Apply(obj) => Change::Apply(parse(&obj)),
                Event::Delete(obj) => match id_of(obj.meta()) {
                    Some(id) => Change::Delete(id),
                    None => continue,
                },
            };
            if self
                .events
                .send(SourceEvent::now(wrap(change)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
