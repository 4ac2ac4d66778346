//! meshgate's xDS server and admin API running in the test process on ports the OS picks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use meshgate::admin::{self, AdminState};
use meshgate::metrics::Metrics;
use meshgate::xds::stream::StreamRegistry;
use meshgate::xds::{Debounce, GroupKey, Role, Store, Update, XdsServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running meshgate: xDS and admin listeners on 127.0.0.1, on its own runtime thread so
/// that stopping it closes every socket at once, as a killed process would.
pub struct TestServer {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Store,
    pub streams: Arc<StreamRegistry>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What every in-process server needs once per test process: the crypto provider, and logs
/// (`RUST_LOG=meshgate=debug` shows the server's side of a failing test).
pub fn init_test_process() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// The runtime an in-process server runs on, on its own thread (2 workers, like the
/// machine's cores), so that dropping it closes every socket at once.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The group the conformance tests and the Envoy tests use: ingress gateways of dc1.
pub fn test_group() -> GroupKey {
    GroupKey::new(Role::Ingress, "dc1", None)
}

impl TestServer {
    /// Starts a server with no debounce (every publish is pushed at once).
    pub fn start() -> TestServer {
        Self::start_with(Debounce::NONE, None)
    }

    /// Starts a server; `xds_addr` pins the xDS port (to restart on the same one).
    pub fn start_with(debounce: Debounce, xds_addr: Option<SocketAddr>) -> TestServer {
        Self::start_seeded(debounce, xds_addr, Vec::new())
    }

    /// Starts a server whose store already holds `seed` (group, update) publishes.
    pub fn start_seeded(
        debounce: Debounce,
        xds_addr: Option<SocketAddr>,
        seed: Vec<(GroupKey, Update)>,
    ) -> TestServer {
        init_test_process();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = crate::harness::server_runtime();
            rt.block_on(async move {
                let metrics = Arc::new(Metrics::new());
                let store = Store::new(debounce, metrics.clone());
                // The secret the state-of-the-world probe asks for (see client::SotwClient).
                store
                    .publish(
                        &test_group(),
                        Update::new().upsert([crate::fixtures::secret("probe", "probe")]),
                    )
                    .expect("probe secret");
                for (group, update) in seed {
                    store.publish(&group, update).expect("seed publish");
                }
                let streams = Arc::new(StreamRegistry::default());
                let addr = xds_addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
                let xds = bind_retrying(addr).await;
                let admin_l = TcpListener::bind("127.0.0.1:0").await.expect("admin bind");
                let xds_addr = xds.local_addr().unwrap();
                let admin_addr = admin_l.local_addr().unwrap();
                let server = XdsServer::new(store.clone(), streams.clone(), "dc1");
                tokio::spawn(admin::serve(
                    admin_l,
                    AdminState {
                        metrics: metrics.clone(),
                        streams: streams.clone(),
                        store: store.clone(),
                        ready: Arc::new(AtomicBool::new(true)),
                        sources: Default::default(),
                    },
                    std::future::pending(),
                ));
                tokio::spawn(server.serve(xds, None, std::future::pending()));
                ready_tx
                    .send((xds_addr, admin_addr, store, streams, metrics))
                    .unwrap();
                let _ = stop_rx.await;
            });
            // Dropping the runtime here ends every task and closes every socket.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let (xds_addr, admin_addr, store, streams, metrics) =
            ready_rx.recv().expect("server thread started");
        TestServer {
            xds_addr,
            admin_addr,
            store,
            streams,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Publishes to the test group.
    pub fn publish(&self, update: Update) -> Option<u64> {
        self.store
            .publish(&test_group(), update)
            .expect("valid publish")
    }

    /// Stops the server abruptly: all connections close, like a killed process.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// GET on the admin API; returns the body.
    pub async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{}", self.admin_addr, path);
        reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// One sample of a metric from `/metrics` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.admin_get("/metrics").await;
        metric_value(&text, name_and_labels)
    }
}

/// Finds `name{labels} value` in an exposition text.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Binds `addr`, retrying for a few seconds: a restarted server (or double) re-binds the port
/// it had, and the old sockets may take a moment to go.
pub async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("cannot bind {addr}: {last:?}");
}
