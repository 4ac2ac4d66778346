//! The Consul source: blocking-query watches on Consul's HTTP API, gathered into one
//! immutable raw view ([`ConsulView`]) published through a `tokio::sync::watch`.
//!
//! What is watched:
//! - `/v1/catalog/datacenters`, and for every remote datacenter its mesh gateways
//!   (`/v1/catalog/services?dc=X&filter=ServiceKind == "mesh-gateway"`), each with
//!   `/v1/health/service/:name?dc=X`;
//! - `/v1/catalog/services` of the local datacenter, each service with
//!   `/v1/health/service/:name`;
//! - `/v1/health/service/:name?dc=X` for every service of a remote datacenter that an
//!   upstream of a local sidecar can reach: its destination, through its resolver's
//!   redirects and failovers (see [`reach`]), so that failover follows remote health;
//! - `/v1/config/:kind` for the kinds in [`CONFIG_KINDS`], and `/v1/connect/ca/roots`.
//!
//! Every watch is its own task looping on blocking queries (see [`watch`] and [`pacing`]
//! for Consul's rules: index reset, rate limit, backoff). A coordinator task owns the data:
//! it starts and stops health watches as the catalog answers, the gateway lists, the local
//! sidecars' upstreams and the resolvers change, and builds a new view after each batch of
//! changes. A service's health answer is kept as its own `Arc`, so an unchanged service is
//! the same pointer in the next view.
//!
//! The view is published once every watch started so far has answered (synced), then on
//! every change. Errors keep the last good data; the source is `stale` meanwhile.

pub(crate) mod api;
pub mod metrics;
pub(crate) mod pacing;
mod reach;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::watch as tokio_watch;
use tokio::task::{AbortHandle, JoinSet};

pub use api::FetchError;
pub use metrics::{ConsulMetrics, EndpointKind};
pub use pacing::request_timeout;

use api::{Api, Target};
use watch::{Event, WatchKey};

/// The config entry kinds watched, each with `/v1/config/:kind`.
pub const CONFIG_KINDS: [&str; 6] = [
    "service-defaults",
    "proxy-defaults",
    "service-resolver",
    "service-intentions",
    "exported-services",
    "mesh",
];

/// Consul's default `wait` for blocking queries.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The longest pause between two reads of an endpoint that does not block.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Where and how to reach Consul.
#[derive(Clone)]
pub struct ConsulConfig {
    /// `http://127.0.0.1:8500`, `https://consul:8501`, or `host:port` (plain HTTP).
    pub addr: String,
    /// Sent as `X-Consul-Token` on every request when set.
    pub token: Option<String>,
    /// PEM file of the CA(s) that signed Consul's HTTPS certificate; when set, only these
    /// roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// The local datacenter's name: the one the agent at `addr` belongs to. Its queries
    /// carry no `?dc=` (the agent answers for its own), every other datacenter's do.
    pub datacenter: String,
    /// `wait` of the blocking queries (Consul caps it at 10 min).
    pub wait: Duration,
}

impl ConsulConfig {
    pub fn new(addr: impl Into<String>, datacenter: impl Into<String>) -> ConsulConfig {
        ConsulConfig {
            addr: addr.into(),
            token: None,
            ca_file: None,
            datacenter: datacenter.into(),
            wait: DEFAULT_WAIT,
        }
    }
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("datacenter", &self.datacenter)
            .field("wait", &self.wait)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("invalid Consul address {0}")]
    Address(String),
    #[error("cannot read the Consul CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid Consul CA certificate: {0}")]
    Certificate(String),
    #[error("cannot build the HTTP client for Consul: {0}")]
    Client(String),
    #[error("the Consul source needs a datacenter name")]
    NoDatacenter,
    #[error("the Consul source must be started inside a Tokio runtime")]
    NoRuntime,
}

/// The receiving end of the source's views: `None` until synced.
pub type ViewReceiver = tokio_watch::Receiver<Option<Arc<ConsulView>>>;

/// Everything read from Consul, raw. Immutable; a new one is published on every change.
#[derive(Debug, Clone, Default)]
pub struct ConsulView {
    /// The local datacenter.
    pub datacenter: String,
    /// `/v1/catalog/datacenters`, as Consul orders it.
    pub datacenters: Vec<String>,
    /// (datacenter, service) → its `/v1/health/service/:name` answer (a JSON array of
    /// ServiceEntry). Local datacenter: every service of the catalog; remote ones: their
    /// mesh gateways, and the services the local sidecars' upstreams can reach there. An
    /// unchanged service keeps the same `Arc` from view to view.
    pub services: BTreeMap<(String, String), Arc<Value>>,
    /// Config entry kind → its `/v1/config/:kind` answer (a JSON array of entries).
    pub config: BTreeMap<&'static str, Arc<Value>>,
    /// `/v1/connect/ca/roots`.
    pub ca_roots: Option<Arc<Value>>,
    /// Rises on every change.
    pub generation: u64,
}

/// The source's state for the admin page (`/debug/sources`).
#[derive(Debug, Clone, Serialize)]
pub struct ConsulStatus {
    pub datacenter: String,
    /// True while the last attempt of any watch failed (the last good view is served).
    pub stale: bool,
    /// Every watch started so far has answered at least once (a remote datacenter's watch
    /// that failed counts as answered: one unreachable datacenter does not hold the rest).
    pub synced: bool,
    /// The generation of the last published view (0: none yet).
    pub generation: u64,
    pub watches: Vec<WatchStatus>,
}

/// One watch's line of [`ConsulStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub endpoint: String,
    pub kind: EndpointKind,
    /// The index the next blocking query sends.
    pub index: u64,
    pub answered: bool,
    /// The last attempt failed.
    pub failing: bool,
    pub consecutive_failures: u32,
    pub last_success_unix_ms: Option<u64>,
    /// The last error, kept after a recovery (with `failing` false).
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
}

/// What the watches share: the client, the metrics, the timing and the status board.
pub(crate) struct Shared {
    api: Api,
    metrics: ConsulMetrics,
    local_dc: String,
    wait_param: String,
    timeout: Duration,
    poll_interval: Duration,
    board: Mutex<Board>,
}

impl Shared {
    fn target(&self, key: &WatchKey) -> Target {
        fn seg(parts: &[&str]) -> Vec<String> {
            parts.iter().map(|s| s.to_string()).collect()
        }
        match key {
            WatchKey::Datacenters => Target {
                segments: seg(&["v1", "catalog", "datacenters"]),
                query: vec![],
                display: "/v1/catalog/datacenters".into(),
            },
            WatchKey::Services => Target {
                segments: seg(&["v1", "catalog", "services"]),
                query: vec![],
                display: "/v1/catalog/services".into(),
            },
            WatchKey::Gateways(dc) => Target {
                segments: seg(&["v1", "catalog", "services"]),
                query: vec![
                    ("dc", dc.clone()),
                    ("filter", r#"ServiceKind == "mesh-gateway""#.to_string()),
                ],
                display: format!("/v1/catalog/services?dc={dc} (mesh gateways)"),
            },
            WatchKey::Health { dc, service } => {
                let mut segments = seg(&["v1", "health", "service"]);
                segments.push(service.clone());
                let mut display = format!("/v1/health/service/{service}");
                let mut query = vec![];
                if *dc != self.local_dc {
                    display.push_str(&format!("?dc={dc}"));
                    query.push(("dc", dc.clone()));
                }
                Target {
                    segments,
                    query,
                    display,
                }
            }
            WatchKey::Config(kind) => Target {
                segments: seg(&["v1", "config", kind]),
                query: vec![],
                display: format!("/v1/config/{kind}"),
            },
            WatchKey::CaRoots => Target {
                segments: seg(&["v1", "connect", "ca", "roots"]),
                query: vec![],
                display: "/v1/connect/ca/roots".into(),
            },
        }
    }

    fn is_remote(&self, key: &WatchKey) -> bool {
        match key {
            WatchKey::Gateways(_) => true,
            WatchKey::Health { dc, .. } => *dc != self.local_dc,
            _ => false,
        }
    }
}

impl WatchKey {
    fn kind(&self) -> EndpointKind {
        match self {
            WatchKey::Datacenters => EndpointKind::catalog_datacenters,
            WatchKey::Services | WatchKey::Gateways(_) => EndpointKind::catalog_services,
            WatchKey::Health { .. } => EndpointKind::health,
            WatchKey::Config(_) => EndpointKind::config,
            WatchKey::CaRoots => EndpointKind::ca_roots,
        }
    }
}

/// Per-watch status lines, keyed by watch id, and the count of failing watches (which
/// drives `stale`). A watch writes only its own line, and only while the line exists: a
/// stopped watch cannot bring its line back.
pub(crate) struct Board {
    lines: BTreeMap<u64, WatchStatus>,
    failing: usize,
    synced: bool,
    metrics: ConsulMetrics,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Board {
    fn new(metrics: ConsulMetrics) -> Board {
        Board {
            lines: BTreeMap::new(),
            failing: 0,
            synced: false,
            metrics,
        }
    }

    fn add(&mut self, id: u64, endpoint: String, kind: EndpointKind) {
        self.lines.insert(
            id,
            WatchStatus {
                endpoint,
                kind,
                index: 0,
                answered: false,
                failing: false,
                consecutive_failures: 0,
                last_success_unix_ms: None,
                last_error: None,
                last_error_unix_ms: None,
            },
        );
    }

    fn remove(&mut self, id: u64) {
        if let Some(line) = self.lines.remove(&id)
            && line.failing
        {
            self.failing -= 1;
            self.update_stale();
        }
    }

    fn success(&mut self, id: u64, index: u64, now: SystemTime) {
        let Some(line) = self.lines.get_mut(&id) else {
            return;
        };
        line.index = index;
        line.answered = true;
        line.consecutive_failures = 0;
        line.last_success_unix_ms = Some(unix_ms(now));
        if line.failing {
            line.failing = false;
            self.failing -= 1;
            self.update_stale();
        }
    }

    fn failure(&mut self, id: u64, error: String, now: SystemTime) {
        let Some(line) = self.lines.get_mut(&id) else {
            return;
        };
        line.consecutive_failures = line.consecutive_failures.saturating_add(1);
        line.last_error = Some(error);
        line.last_error_unix_ms = Some(unix_ms(now));
        if !line.failing {
            line.failing = true;
            self.failing += 1;
            self.update_stale();
        }
    }

    fn update_stale(&self) {
        self.metrics.stale.set(i64::from(self.failing > 0));
    }
}

/// A running Consul source. Cheap to clone; its tasks end when the shutdown future given to
/// [`ConsulSource::start`] completes.
#[derive(Clone)]
pub struct ConsulSource {
    shared: Arc<Shared>,
    view: ViewReceiver,
}

impl ConsulSource {
    /// Starts the watches on the current Tokio runtime. The receiver holds `None` until the
    /// source is synced, then every new view.
    pub fn start<F>(
        config: ConsulConfig,
        metrics: ConsulMetrics,
        shutdown: F,
    ) -> Result<(ConsulSource, ViewReceiver), ConsulError>
    where
        F: Future + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConsulError::NoRuntime)?;
        if config.datacenter.trim().is_empty() {
            return Err(ConsulError::NoDatacenter);
        }
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConsulError::CaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let api = Api::new(&config.addr, config.token.clone(), ca_pem.as_deref())?;
        let wait = config.wait.min(pacing::MAX_WAIT);
        let shared = Arc::new(Shared {
            api,
            metrics: metrics.clone(),
            local_dc: config.datacenter.clone(),
            wait_param: pacing::wait_param(wait),
            timeout: request_timeout(wait),
            poll_interval: wait.clamp(Duration::from_secs(1), MAX_POLL_INTERVAL),
            board: Mutex::new(Board::new(metrics)),
        });
        let (view_tx, view_rx) = tokio_watch::channel(None);
        let (tx, rx) = mpsc::unbounded_channel();
        let coordinator = Coordinator {
            shared: shared.clone(),
            tx,
            tasks: JoinSet::new(),
            active: BTreeMap::new(),
            next_id: 0,
            datacenters: Vec::new(),
            remote_dcs: BTreeSet::new(),
            gateways: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            resolvers: BTreeMap::new(),
            remote_changed: false,
            services: BTreeMap::new(),
            config: BTreeMap::new(),
            ca_roots: None,
            generation: 0,
            published: false,
            view_tx,
        };
        runtime.spawn(coordinator.run(rx, shutdown));
        let source = ConsulSource {
            shared,
            view: view_rx.clone(),
        };
        Ok((source, view_rx))
    }

    pub fn status(&self) -> ConsulStatus {
        let generation = self.view.borrow().as_ref().map_or(0, |v| v.generation);
        let board = self.shared.board.lock();
        let mut watches: Vec<WatchStatus> = board.lines.values().cloned().collect();
        watches.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        ConsulStatus {
            datacenter: self.shared.local_dc.clone(),
            stale: board.failing > 0,
            synced: board.synced,
            generation,
            watches,
        }
    }

    /// The last published view (`None` until synced).
    pub fn view(&self) -> Option<Arc<ConsulView>> {
        self.view.borrow().clone()
    }
}

struct Running {
    id: u64,
    abort: AbortHandle,
    answered: bool,
    failed: bool,
}

/// Owns the data and the watch tasks.
struct Coordinator {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Event>,
    tasks: JoinSet<()>,
    active: BTreeMap<WatchKey, Running>,
    next_id: u64,
    datacenters: Vec<String>,
    /// The datacenters of `datacenters` other than the local one: only these are asked.
    remote_dcs: BTreeSet<String>,
    /// Remote datacenter → its mesh gateway services (the last answer of its gateway watch).
    gateways: BTreeMap<String, BTreeSet<String>>,
    /// Local service → the upstream destinations of its `connect-proxy` instances (only
    /// services that have some).
    upstreams: BTreeMap<String, BTreeSet<reach::Destination>>,
    /// The `service-resolver` entries, by name, as far as [`reach`] reads them.
    resolvers: BTreeMap<String, reach::Resolver>,
    /// `remote_dcs`, `gateways`, `upstreams` or `resolvers` changed in this batch: the
    /// remote health watches are reconciled before the view is built.
    remote_changed: bool,
    services: BTreeMap<(String, String), Arc<Value>>,
    config: BTreeMap<&'static str, Arc<Value>>,
    ca_roots: Option<Arc<Value>>,
    generation: u64,
    published: bool,
    view_tx: tokio_watch::Sender<Option<Arc<ConsulView>>>,
}

impl Coordinator {
    async fn run<F: Future>(mut self, mut rx: mpsc::UnboundedReceiver<Event>, shutdown: F) {
        self.start_watch(WatchKey::Datacenters);
        self.start_watch(WatchKey::Services);
        for kind in CONFIG_KINDS {
            self.start_watch(WatchKey::Config(kind));
        }
        self.start_watch(WatchKey::CaRoots);
        self.shared.metrics.watches.set(self.active.len() as i64);

        let mut shutdown = std::pin::pin!(shutdown);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                n = rx.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        break;
                    }
                    let mut dirty = false;
                    for event in batch.drain(..) {
                        dirty |= self.handle(event);
                    }
                    if std::mem::take(&mut self.remote_changed) {
                        dirty |= self.reconcile_remote_health();
                    }
                    self.after_batch(dirty);
                }
                Some(joined) = self.tasks.join_next() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        tracing::error!("a Consul watch task panicked: {e}");
                    }
                }
            }
        }
        self.tasks.shutdown().await;
        self.active.clear();
        self.shared.metrics.watches.set(0);
        tracing::debug!("Consul source stopped");
    }

    /// Applies one event; true when the data changed.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Failed { id, key } => {
                if let Some(r) = self.active.get_mut(&key)
                    && r.id == id
                {
                    r.failed = true;
                }
                false
            }
            Event::Data { id, key, value } => {
                match self.active.get_mut(&key) {
                    Some(r) if r.id == id => r.answered = true,
                    // A stopped watch's last words.
                    _ => return false,
                }
                self.apply(key, value)
            }
        }
    }

    fn apply(&mut self, key: WatchKey, value: Arc<Value>) -> bool {
        let local = self.shared.local_dc.clone();
        match key {
            WatchKey::Datacenters => {
                let Some(list) = string_array(&value) else {
                    tracing::warn!("/v1/catalog/datacenters: not a list of names; ignored");
                    return false;
                };
                if !list.contains(&local) {
                    tracing::warn!(
                        datacenter = %local,
                        "the local datacenter is not in Consul's datacenter list"
                    );
                }
                let remote: BTreeSet<String> =
                    list.iter().filter(|dc| **dc != local).cloned().collect();
                let mut dirty = false;
                if remote != self.remote_dcs {
                    // A datacenter that left: its gateway watch stops, and its health
                    // watches with the next reconciliation.
                    let previous = std::mem::replace(&mut self.remote_dcs, remote);
                    let gone: Vec<String> =
                        previous.difference(&self.remote_dcs).cloned().collect();
                    for dc in gone {
                        self.stop_watch(&WatchKey::Gateways(dc.clone()));
                        self.gateways.remove(&dc);
                    }
                    let added: Vec<String> =
                        self.remote_dcs.difference(&previous).cloned().collect();
                    for dc in added {
                        self.start_watch(WatchKey::Gateways(dc));
                    }
                    self.remote_changed = true;
                }
                if list != self.datacenters {
                    self.datacenters = list;
                    dirty = true;
                }
                dirty
            }
            WatchKey::Services => match object_keys(&value) {
                Some(names) => self.reconcile_local_health(&names),
                None => {
                    tracing::warn!("/v1/catalog/services: not an object; ignored");
                    false
                }
            },
            WatchKey::Gateways(dc) => {
                if !self.active.contains_key(&WatchKey::Gateways(dc.clone())) {
                    return false;
                }
                match object_keys(&value) {
                    Some(names) => {
                        if self.gateways.get(&dc) != Some(&names) {
                            self.gateways.insert(dc, names);
                            self.remote_changed = true;
                        }
                    }
                    None => {
                        tracing::warn!(datacenter = %dc, "mesh gateway list: not an object; ignored");
                    }
                }
                false
            }
            WatchKey::Health { dc, service } => {
                // One light pass over the changed answer (only `Service.Kind` and
                // `Proxy.Upstreams` are read); a change of the upstream set is rare.
                if dc == local {
                    let destinations = reach::upstream_destinations(&value);
                    self.set_upstreams(&service, destinations);
                }
                self.services.insert((dc, service), value);
                true
            }
            WatchKey::Config(kind) => {
                if kind == "service-resolver" {
                    let resolvers = reach::resolvers(&value);
                    if resolvers != self.resolvers {
                        self.resolvers = resolvers;
                        self.remote_changed = true;
                    }
                }
                self.config.insert(kind, value);
                true
            }
            WatchKey::CaRoots => {
                self.ca_roots = Some(value);
                true
            }
        }
    }

    /// Makes the health watches of the local datacenter exactly `names`; true when an
    /// entry was dropped.
    fn reconcile_local_health(&mut self, names: &BTreeSet<String>) -> bool {
        let local = self.shared.local_dc.clone();
        let running: Vec<WatchKey> = self
            .active
            .keys()
            .filter(|k| matches!(k, WatchKey::Health { dc, service } if *dc == local && !names.contains(service)))
            .cloned()
            .collect();
        let mut dirty = false;
        for key in running {
            dirty |= self.stop_watch(&key);
        }
        for service in names {
            self.start_watch(WatchKey::Health {
                dc: local.clone(),
                service: service.clone(),
            });
        }
        dirty
    }

    /// Records the upstream destinations of a local service's sidecars.
    fn set_upstreams(&mut self, service: &str, destinations: BTreeSet<reach::Destination>) {
        let changed = if destinations.is_empty() {
            self.upstreams.remove(service).is_some()
        } else if self.upstreams.get(service) != Some(&destinations) {
            self.upstreams.insert(service.to_owned(), destinations);
            true
        } else {
            false
        };
        self.remote_changed |= changed;
    }

    /// Makes the health watches of remote datacenters exactly: each listed remote
    /// datacenter's mesh gateways, and every remote target of the local sidecars' upstreams
    /// ([`reach::remote_targets`]) in a listed datacenter (another one has no path to it).
    /// True when an entry was dropped. Work: the upstreams and resolvers (a few hops each)
    /// plus the running watches, once per batch that changed one of them.
    fn reconcile_remote_health(&mut self) -> bool {
        let local = self.shared.local_dc.clone();
        let mut wanted: BTreeSet<(String, String)> = self
            .gateways
            .iter()
            .filter(|(dc, _)| self.remote_dcs.contains(*dc))
            .flat_map(|(dc, names)| names.iter().map(|n| (dc.clone(), n.clone())))
            .collect();
        let targets =
            reach::remote_targets(self.upstreams.values().flatten(), &self.resolvers, &local);
        wanted.extend(
            targets
                .into_iter()
                .filter(|(dc, _)| self.remote_dcs.contains(dc)),
        );
        let unwanted: Vec<WatchKey> = self
            .active
            .keys()
            .filter(|k| match k {
                WatchKey::Health { dc, service } => {
                    *dc != local && !wanted.contains(&(dc.clone(), service.clone()))
                }
                _ => false,
            })
            .cloned()
            .collect();
        let mut dirty = false;
        for key in unwanted {
            dirty |= self.stop_watch(&key);
        }
        for (dc, service) in wanted {
            self.start_watch(WatchKey::Health { dc, service });
        }
        dirty
    }

    fn start_watch(&mut self, key: WatchKey) {
        if self.active.contains_key(&key) {
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        let target = self.shared.target(&key);
        self.shared
            .board
            .lock()
            .add(id, target.display.clone(), key.kind());
        tracing::debug!(endpoint = %target.display, "watch started");
        let abort = self.tasks.spawn(watch::run(
            self.shared.clone(),
            key.clone(),
            id,
            self.tx.clone(),
        ));
        self.active.insert(
            key,
            Running {
                id,
                abort,
                answered: false,
                failed: false,
            },
        );
    }

    /// Stops a watch and drops its data; true when the view lost an entry.
    fn stop_watch(&mut self, key: &WatchKey) -> bool {
        let Some(running) = self.active.remove(key) else {
            return false;
        };
        running.abort.abort();
        self.shared.board.lock().remove(running.id);
        tracing::debug!(endpoint = %self.shared.target(key).display, "watch stopped");
        match key {
            WatchKey::Health { dc, service } => {
                if *dc == self.shared.local_dc {
                    self.set_upstreams(service, BTreeSet::new());
                }
                self.services
                    .remove(&(dc.clone(), service.clone()))
                    .is_some()
            }
            _ => false,
        }
    }

    fn synced(&self) -> bool {
        self.active
            .iter()
            .all(|(key, r)| r.answered || (r.failed && self.shared.is_remote(key)))
    }

    fn after_batch(&mut self, dirty: bool) {
        self.shared.metrics.watches.set(self.active.len() as i64);
        let synced = self.synced();
        self.shared.board.lock().synced = synced;
        if dirty {
            self.generation += 1;
        }
        if synced && (dirty || !self.published) {
            self.published = true;
            let view = ConsulView {
                datacenter: self.shared.local_dc.clone(),
                datacenters: self.datacenters.clone(),
                services: self.services.clone(),
                config: self.config.clone(),
                ca_roots: self.ca_roots.clone(),
                generation: self.generation,
            };
            self.view_tx.send_replace(Some(Arc::new(view)));
        }
    }
}

fn string_array(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn object_keys(v: &Value) -> Option<BTreeSet<String>> {
    Some(v.as_object()?.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            string_array(&serde_json::json!(["dc1", "dc2"])).unwrap(),
            vec!["dc1", "dc2"]
        );
        assert!(string_array(&serde_json::json!(["dc1", 2])).is_none());
        let keys = object_keys(&serde_json::json!({"web": ["v1"], "api": []})).unwrap();
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), vec!["api", "web"]);
    }

    #[test]
    fn board_counts_failing_watches_for_stale() {
        let m = ConsulMetrics::default();
        let mut b = Board::new(m.clone());
        b.add(1, "/a".into(), EndpointKind::health);
        b.add(2, "/b".into(), EndpointKind::config);
        let now = SystemTime::now();
        b.failure(1, "x".into(), now);
        b.failure(1, "x".into(), now);
        b.failure(2, "y".into(), now);
        assert_eq!((b.failing, m.stale.get()), (2, 1));
        assert_eq!(b.lines[&1].consecutive_failures, 2);
        b.success(1, 7, now);
        assert_eq!((b.failing, m.stale.get()), (1, 1));
        assert_eq!(b.lines[&1].last_error.as_deref(), Some("x"));
        b.remove(2);
        assert_eq!((b.failing, m.stale.get()), (0, 0));
        // A stopped watch cannot write its line back.
        b.failure(2, "late".into(), now);
        assert!(!b.lines.contains_key(&2));
        assert_eq!(b.failing, 0);
    }

    #[test]
    fn config_debug_hides_the_token() {
        let mut c = ConsulConfig::new("http://127.0.0.1:8500", "dc1");
        c.token = Some("s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn start_refuses_a_bad_address_and_an_empty_datacenter() {
        let m = ConsulMetrics::default();
        let bad = ConsulConfig::new("ftp://x", "dc1");
        assert!(matches!(
            ConsulSource::start(bad, m.clone(), std::future::pending::<()>()),
            Err(ConsulError::Address(_))
        ));
        let no_dc = ConsulConfig::new("http://127.0.0.1:8500", " ");
        assert!(matches!(
            ConsulSource::start(no_dc, m, std::future::pending::<()>()),
            Err(ConsulError::NoDatacenter)
        ));
    }
}
