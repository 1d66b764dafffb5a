//! The server's lifecycle: bind, load the state, accept connections, inject faults, shut down.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::journal::Journal;
use super::status::ApiError;
use super::store::Store;
use super::{api, http, seed};
use crate::plan::Plan;

/// How the server is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one (see [`ApiServer::addr`]).
    pub listen: SocketAddr,
    /// Where the store is persisted (plus `<state>.journal`); `None` keeps it in memory.
    pub state_file: Option<PathBuf>,
    /// Create the lab's Nodes and Pods (and the `kubernetes` Service) if missing.
    pub seed_lab: bool,
    /// How many change events watches can resume from; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// How often watches that asked for them get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Config {
    /// In memory on `listen`, no seed, 1000 events of history, a bookmark every 2 s.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            state_file: None,
            seed_lab: false,
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(2),
        }
    }
}

/// How a paused server treats API requests (the `/lab/` endpoints always answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseMode {
    /// Requests wait, and open watches go silent, until resumed: a network partition.
    Hang,
    /// Requests get 503 and open watches are cut: an overloaded or restarting server.
    Unavailable,
}

/// What watch streams and connections react to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// The store's next event sequence number: changes when there are new events.
    pub seq: u64,
    /// Bumped to cut every open watch.
    pub drops: u64,
    pub pause: Option<PauseMode>,
    pub shutdown: bool,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    store: Mutex<Store>,
    pub signal: watch::Sender<Signal>,
    pub bookmark_interval: Duration,
    /// Open watch streams.
    pub watches: AtomicUsize,
    /// The address clients should use, for discovery documents.
    pub address: SocketAddr,
}

impl Shared {
    /// Reads the store.
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.lock())
    }

    /// Changes the store, then persists and wakes the watches if there were events.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        let result = f(&mut store);
        store.snapshot(false);
        let seq = store.next_seq();
        drop(store);
        self.signal.send_if_modified(|s| {
            let changed = s.seq != seq;
            s.seq = seq;
            changed
        });
        result
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store consistent enough for a test server.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts every open watch; returns how many there were.
    pub fn drop_watches(&self) -> usize {
        let open = self.watches.load(Ordering::Relaxed);
        self.signal.send_modify(|s| s.drops += 1);
        open
    }

    pub fn pause(&self, mode: Option<PauseMode>) {
        self.signal.send_modify(|s| s.pause = mode);
    }

    /// Forgets the event history (see [`Store::compact`]); returns the new resourceVersion.
    pub fn compact(&self) -> u64 {
        // Not through `write`: compaction must not wake watches (a bookmark carrying the new
        // resourceVersion would spare their clients the 410 this is meant to cause).
        let mut store = self.lock();
        let rv = store.compact();
        store.snapshot(false);
        rv
    }
}

/// A running API server.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use lb_lab::apiserver::{ApiServer, Config};
/// let server = ApiServer::start(Config::new("127.0.0.1:0".parse()?)).await?;
/// println!("kube-rs can talk to {}", server.url());
/// server.handle().compact();
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ApiServer {
    handle: Handle,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

/// Fault injection and direct store access for a running server; cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl ApiServer {
    /// Loads the state (if any), seeds (if asked), binds and starts serving on the current
    /// tokio runtime.
    ///
    /// # Errors
    /// If the state cannot be loaded or the address cannot be bound.
    pub async fn start(config: Config) -> Result<Self> {
        let mut store = match &config.state_file {
            Some(path) => {
                let (journal, records) = Journal::open(path)?;
                Store::with_journal(config.history_limit, journal, records)
            }
            None => Store::new(config.history_limit),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("no local address")?;
        if config.seed_lab {
            let apiserver = match addr {
                SocketAddr::V4(v4) => Some(SocketAddrV4::new(*v4.ip(), v4.port())),
                SocketAddr::V6(_) => None,
            };
            seed::seed(&mut store, &Plan::kind(), apiserver, Timestamp::now())
                .map_err(|e| anyhow::anyhow!("seeding the lab's objects: {e}"))?;
        }
        let seq = store.next_seq();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            signal: watch::Sender::new(Signal {
                seq,
                ..Signal::default()
            }),
            bookmark_interval: config.bookmark_interval,
            watches: AtomicUsize::new(0),
            address: addr,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            handle: Handle { shared },
            addr,
            accept,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for a kubeconfig or `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops listening and closes every connection at once (clients see the connection drop,
    /// as when the process dies). What was acknowledged is already persisted.
    pub async fn shutdown(self) {
        self.handle.shared.signal.send_modify(|s| s.shutdown = true);
        self.accept.abort();
        let _ = self.accept.await;
    }
}

impl Handle {
    /// Cuts every open watch connection now; returns how many were open.
    pub fn drop_watches(&self) -> usize {
        self.shared.drop_watches()
    }

    /// Forgets the event history: resuming a watch from any earlier resourceVersion gets
    /// 410 Gone. Returns the new resourceVersion.
    pub fn compact(&self) -> u64 {
        self.shared.compact()
    }

    /// Pauses API requests (see [`PauseMode`]).
    pub fn pause(&self, mode: PauseMode) {
        self.shared.pause(Some(mode));
    }

    pub fn resume(&self) {
        self.shared.pause(None);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(Store::resource_version)
    }

    /// Open watch streams.
    pub fn open_watches(&self) -> usize {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Stores `object` (or each item of a List) without validation, as `PUT /lab/objects`.
    ///
    /// # Errors
    /// If an object has no served apiVersion/kind or no name.
    pub fn put_raw(&self, object: Value) -> Result<Vec<Value>, ApiError> {
        let stored = self
            .shared
            .write(|store| api::put_raw(store, object, Timestamp::now()))?;
        Ok(stored.into_iter().map(|o| (*o).clone()).collect())
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut signal = shared.signal.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = signal.wait_for(|s| s.shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                eprintln!("apiserver: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut signal = shared.signal.subscribe();
            let service = {
                let shared = Arc::clone(&shared);
                service_fn(move |req| http::handle(Arc::clone(&shared), req, peer))
            };
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        // Cut watches end this way on purpose; anything else is worth a line.
                        if !e.is_incomplete_message() && !e.is_canceled() && !e.is_user() {
                            eprintln!("apiserver: connection from {peer}: {e}");
                        }
                    }
                }
                // Dropping the connection closes the socket at once.
                _ = signal.wait_for(|s| s.shutdown) => {}
            }
        });
    }
}

/// Runs the server until SIGTERM or SIGINT (for `lb-lab apiserver`).
///
/// # Errors
/// If it cannot start.
pub fn run(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let server = ApiServer::start(config.clone()).await?;
        println!(
            "apiserver: listening on {} (resourceVersion {}, state {})",
            server.url(),
            server.handle().resource_version(),
            config
                .state_file
                .as_ref()
                .map_or("in memory".to_string(), |p| p.display().to_string())
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot catch SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!("apiserver: stopping");
        server.shutdown().await;
        Ok(())
    })
}
