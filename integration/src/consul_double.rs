//! A Consul test double: the parts of Consul's HTTP API a gateway control plane reads
//! (catalog, health, config entries, Connect CA), with Consul's JSON shapes and its
//! blocking-query semantics, plus faults (ACL tokens, errors, delays, an agent that goes
//! away and comes back on the same port).
//!
//! Like [`crate::harness::TestServer`], the HTTP server runs on its own runtime thread, so
//! tests may be sync or async, and stopping it closes every socket at once. The state lives
//! outside that runtime and survives [`ConsulDouble::stop`] / [`ConsulDouble::restart`].
//!
//! Index model: one Raft-like index for the whole double; every mutation raises it by one.
//! Each endpoint result has its own index (a "key"): the index of the last mutation that
//! changed what that endpoint returns. Keys: the datacenter list, each datacenter's service
//! list, each (datacenter, service) health result, each config entry kind, each config entry,
//! the CA roots, and each service's leaf certificate. A blocked query waits on its key only,
//! so a mutation wakes exactly the queries whose result it changed.
//!
//! Choices where Consul's behaviour is not pinned down by its documentation:
//! - `/v1/connect/ca/roots` before [`ConsulDouble::set_ca_roots`]: 200 with
//!   `{"ActiveRootID":"","TrustDomain":"","Roots":[]}` (blocking works, so a watch wakes when
//!   roots are set). `/v1/agent/connect/ca/leaf/:service` before [`ConsulDouble::set_leaf`]:
//!   404 with a plain-text body (real Consul signs one on demand); blocking works here too.
//! - ACL: a request without a token is the anonymous token, which gets 403 `Permission
//!   denied: ...` (Consul's `acl.ErrPermissionDenied` text); a wrong token gets 403 `ACL not
//!   found` (`acl.ErrNotFound`). Real Consul may instead filter list results for the anonymous
//!   token; the double always refuses.
//! - Unknown config entry kind: 400 `invalid config entry kind: <kind>` (Consul's text; a real
//!   server may answer it with 500, as it does for untyped RPC errors).
//! - Config entries are one set shared by every datacenter (`?dc=` is validated only).
//! - A datacenter made unreachable ([`ConsulDouble::set_unreachable`]) stays in
//!   `/v1/catalog/datacenters` (as a WAN member whose servers all failed stays listed until
//!   it is reaped) and every query with its `?dc=` answers 500 `No path to datacenter` (the
//!   text of Consul's `structs.ErrNoDCPath`, which its RPC router returns when no server of
//!   that datacenter is healthy).
//! - Error responses (400/403/404 routes/405/500) are `text/plain` without `X-Consul-Index`,
//!   as Consul's are; every endpoint answer (200, and the 404s of a missing config entry or
//!   leaf) carries `X-Consul-Index` (at least 1), `X-Consul-KnownLeader: true`,
//!   `X-Consul-LastContact: 0`.
//! - [`ConsulDouble::reset_index`] sets the index back to 1 and every key to 1, clamps every
//!   stored CreateIndex/ModifyIndex to 1, and releases every blocked query. Real Consul keeps
//!   a query whose index is above the current one blocked until its wait elapses; the double
//!   releases it at once so a client sees the lower index without waiting.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

/// Consul's default blocking wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Consul's longest blocking wait.
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// The anonymous token's AccessorID.
const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
const CHECK_STATUSES: [&str; 4] = ["passing", "warning", "critical", "maintenance"];
/// Config entry kinds Consul CE knows.
const CONFIG_KINDS: [&str; 18] = [
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "sameness-group",
    "api-gateway",
    "bound-api-gateway",
    "inline-certificate",
    "file-system-certificate",
    "http-route",
    "tcp-route",
    "jwt-provider",
];

/// One request the double saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The path as sent (not percent-decoded).
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The query's decoded pairs, in order (`?passing` gives `("passing", "")`).
    pub params: Vec<(String, String)>,
    /// The ACL token presented: `?token=`, else `X-Consul-Token`, else `Authorization: Bearer`.
    pub token: Option<String>,
    pub at: Instant,
}

impl Recorded {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A Consul agent + servers for tests. See the module documentation.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Datacenters,
    CatalogServices(String),
    Health(String, String),
    ConfigKind(String),
    ConfigEntry(String, String),
    CaRoots,
    Leaf(String),
}

struct Shared {
    state: Mutex<StateData>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<Recorded>>,
}

#[derive(Default)]
struct Faults {
    token: Option<String>,
    fail_status: u16,
    fail_count: usize,
    delay: Duration,
    /// Datacenters whose `?dc=` queries fail (see [`ConsulDouble::set_unreachable`]).
    unreachable: BTreeSet<String>,
}

struct StateData {
    local_dc: String,
    index: u64,
    /// (datacenter, node name) → node.
    nodes: BTreeMap<(String, String), NodeRec>,
    /// (kind, name) → entry with its indexes.
    config: BTreeMap<(String, String), Value>,
    ca_roots: Option<Value>,
    leaves: BTreeMap<String, Value>,
    keys: HashMap<Key, watch::Sender<u64>>,
}

#[derive(Clone, PartialEq)]
struct NodeFields {
    id: String,
    address: String,
    tagged: Value,
    meta: Value,
}

struct NodeRec {
    fields: NodeFields,
    create: u64,
    modify: u64,
    services: BTreeMap<String, SvcRec>,
    checks: BTreeMap<String, CheckRec>,
}

struct SvcRec {
    name: String,
    kind: String,
    tags: Vec<String>,
    /// The rendered `Service` object without its indexes.
    body: Map<String, Value>,
    create: u64,
    modify: u64,
}

struct CheckRec {
    name: String,
    status: String,
    notes: String,
    output: String,
    service_id: String,
    kind: String,
    create: u64,
    modify: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConsulDouble {
    /// Starts on 127.0.0.1:<OS-picked port>; `datacenter` is the local datacenter.
    pub fn start(datacenter: &str) -> ConsulDouble {
        let shared = Arc::new(Shared {
            state: Mutex::new(StateData {
                local_dc: datacenter.to_string(),
                index: 1,
                nodes: BTreeMap::new(),
                config: BTreeMap::new(),
                ca_roots: None,
                leaves: BTreeMap::new(),
                keys: HashMap::new(),
            }),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
        });
        let (running, addr) = spawn_server(shared.clone(), "127.0.0.1:0".parse().unwrap());
        ConsulDouble {
            addr,
            shared,
            running: Mutex::new(Some(running)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current Raft-like index.
    pub fn index(&self) -> u64 {
        lock(&self.shared.state).index
    }

    /// Applies a `/v1/catalog/register` body. Panics on a body Consul would refuse
    /// (no Node, no Address, no Service.Service, a check naming a service not on the node).
    pub fn register(&self, body: Value) {
        lock(&self.shared.state).register(&body);
    }

    /// `/v1/catalog/deregister`: removes a service instance and its checks; an empty
    /// `service_id` removes the whole node.
    pub fn deregister(&self, datacenter: &str, node: &str, service_id: &str) {
        lock(&self.shared.state).deregister(datacenter, node, service_id);
    }

    /// Sets a check's status (`passing|warning|critical|maintenance`). Panics on an unknown
    /// check or status.
    pub fn set_check(&self, datacenter: &str, node: &str, check_id: &str, status: &str) {
        lock(&self.shared.state).set_check(datacenter, node, check_id, status);
    }

    /// Writes a config entry (needs `Kind` and `Name`; `mesh` defaults its Name to `mesh`).
    /// The double adds CreateIndex (kept on update) and ModifyIndex.
    pub fn put_config_entry(&self, entry: Value) {
        lock(&self.shared.state).put_config_entry(entry);
    }

    pub fn delete_config_entry(&self, kind: &str, name: &str) {
        lock(&self.shared.state).delete_config_entry(kind, name);
    }

    /// Sets the whole `/v1/connect/ca/roots` body; the double fills in each root's indexes.
    pub fn set_ca_roots(&self, roots: Value) {
        lock(&self.shared.state).set_ca_roots(roots);
    }

    /// Sets the `/v1/agent/connect/ca/leaf/:service` body; the double fills in its indexes.
    pub fn set_leaf(&self, service: &str, leaf: Value) {
        lock(&self.shared.state).set_leaf(service, leaf);
    }

    /// The index goes backwards (snapshot restore, leader change): the index and every
    /// endpoint's index become 1, and every blocked query is released.
    pub fn reset_index(&self) {
        lock(&self.shared.state).reset_index();
    }

    /// `Some(t)`: every request must present `t`; `None`: ACLs off.
    pub fn require_token(&self, token: Option<&str>) {
        lock(&self.shared.faults).token = token.map(str::to_string);
    }

    /// The next `count` requests answer `status` with a Consul-like body.
    pub fn fail_next(&self, status: u16, count: usize) {
        let mut f = lock(&self.shared.faults);
        f.fail_status = status;
        f.fail_count = count;
    }

    /// Makes `datacenter` unreachable (`true`) or reachable again: while unreachable it is
    /// still listed, and every query naming it with `?dc=` answers 500 `No path to
    /// datacenter`. Queries already blocked answer as usual when they return.
    pub fn set_unreachable(&self, datacenter: &str, unreachable: bool) {
        let mut f = lock(&self.shared.faults);
        if unreachable {
            f.unreachable.insert(datacenter.to_string());
        } else {
            f.unreachable.remove(datacenter);
        }
    }

    /// Delays every response by `delay` (before any blocking wait).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Closes the listener and every open connection (blocked queries included).
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }

    /// Listens again on the same port with the same state (stops first if running).
    pub fn restart(&self) {
        self.stop();
        let (running, _) = spawn_server(self.shared.clone(), self.addr);
        *lock(&self.running) = Some(running);
    }

    /// Every request seen since the start or the last [`ConsulDouble::clear_requests`].
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_server(shared: Arc<Shared>, addr: SocketAddr) -> (Running, SocketAddr) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = crate::harness::server_runtime();
        rt.block_on(async move {
            let listener = crate::harness::bind_retrying(addr).await;
            let _ = ready_tx.send(listener.local_addr().expect("local addr"));
            let app = Router::new().fallback(handle).with_state(shared);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let _ = stop_rx.await;
        });
        // Dropping the runtime ends every task and closes every socket.
        rt.shutdown_timeout(Duration::from_millis(100));
    });
    let addr = ready_rx.recv().expect("consul double thread started");
    (
        Running {
            stop: stop_tx,
            thread,
        },
        addr,
    )
}

// ---- state mutations ----------------------------------------------------------------------

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

fn obj_or_empty(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `{"lan": {"address": "x", "port": 1}}` or capitalized → Consul's capitalized form.
fn service_tagged_addresses(v: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(m) = v.as_object() {
        for (k, a) in m {
            let address = a
                .get("Address")
                .or_else(|| a.get("address"))
                .cloned()
                .unwrap_or(json!(""));
            let port = a
                .get("Port")
                .or_else(|| a.get("port"))
                .cloned()
                .unwrap_or(json!(0));
            out.insert(k.clone(), json!({"Address": address, "Port": port}));
        }
    }
    out
}

fn make_service(s: &Value) -> (String, SvcRec) {
    let name = str_field(s, "Service").to_string();
    assert!(
        !name.is_empty(),
        "catalog register: Must provide service name"
    );
    let id = match str_field(s, "ID") {
        "" => name.clone(),
        id => id.to_string(),
    };
    let kind = str_field(s, "Kind").to_string();
    let tags = string_list(s.get("Tags"));
    let mut body = Map::new();
    if !kind.is_empty() {
        body.insert("Kind".into(), json!(kind));
    }
    body.insert("ID".into(), json!(id));
    body.insert("Service".into(), json!(name));
    body.insert("Tags".into(), json!(tags));
    body.insert("Address".into(), json!(str_field(s, "Address")));
    let tagged = service_tagged_addresses(s.get("TaggedAddresses").unwrap_or(&Value::Null));
    if !tagged.is_empty() {
        body.insert("TaggedAddresses".into(), Value::Object(tagged));
    }
    body.insert("Meta".into(), obj_or_empty(s.get("Meta")));
    body.insert(
        "Port".into(),
        s.get("Port")
            .cloned()
            .filter(Value::is_u64)
            .unwrap_or(json!(0)),
    );
    let mut weights = json!({"Passing": 1, "Warning": 1});
    if let Some(Value::Object(w)) = s.get("Weights") {
        for (k, v) in w {
            weights[k] = v.clone();
        }
    }
    body.insert("Weights".into(), weights);
    body.insert(
        "EnableTagOverride".into(),
        json!(
            s.get("EnableTagOverride")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        ),
    );
    let mut proxy = json!({"Mode": "", "MeshGateway": {}, "Expose": {}});
    if let Some(Value::Object(p)) = s.get("Proxy") {
        for (k, v) in p {
            proxy[k] = v.clone();
        }
    }
    body.insert("Proxy".into(), proxy);
    body.insert("Connect".into(), obj_or_empty(s.get("Connect")));
    body.insert("PeerName".into(), json!(""));
    (
        id,
        SvcRec {
            name,
            kind,
            tags,
            body,
            create: 0,
            modify: 0,
        },
    )
}

impl StateData {
    fn key_sender(&mut self, key: Key) -> &watch::Sender<u64> {
        self.keys.entry(key).or_insert_with(|| watch::channel(1).0)
    }

    fn key_index(&mut self, key: &Key) -> u64 {
        *self.key_sender(key.clone()).borrow()
    }

    /// One mutation: raises the index and moves `keys` to it, waking their queries.
    fn commit(&mut self, keys: BTreeSet<Key>) -> u64 {
        self.index += 1;
        let index = self.index;
        for k in keys {
            self.key_sender(k).send_replace(index);
        }
        index
    }

    fn dc_exists(&self, dc: &str) -> bool {
        dc == self.local_dc || self.nodes.keys().any(|(d, _)| d == dc)
    }

    fn datacenters(&self) -> Vec<String> {
        let mut dcs: BTreeSet<String> = self.nodes.keys().map(|(d, _)| d.clone()).collect();
        dcs.insert(self.local_dc.clone());
        dcs.into_iter().collect()
    }

    fn register(&mut self, body: &Value) {
        let dc = match str_field(body, "Datacenter") {
            "" => self.local_dc.clone(),
            dc => dc.to_string(),
        };
        let node_name = str_field(body, "Node").to_string();
        assert!(!node_name.is_empty(), "catalog register: Must provide node");
        let address = str_field(body, "Address").to_string();
        assert!(
            !address.is_empty(),
            "catalog register: Must provide address"
        );
        let tagged = match body.get("TaggedAddresses") {
            Some(Value::Object(m)) => Value::Object(m.clone()),
            _ => json!({"lan": address, "wan": address}),
        };
        let fields = NodeFields {
            id: str_field(body, "ID").to_string(),
            address,
            tagged,
            meta: obj_or_empty(body.get("NodeMeta")),
        };
        let service = body
            .get("Service")
            .filter(|s| s.is_object())
            .map(make_service);
        let mut checks: Vec<&Value> = check_list(body.get("Checks"));
        if let Some(c) = body.get("Check").filter(|c| c.is_object()) {
            checks.push(c);
        }

        let mut keys = BTreeSet::new();
        if !self.nodes.keys().any(|(d, _)| *d == dc) && dc != self.local_dc {
            keys.insert(Key::Datacenters);
        }
        let next = self.index + 1;
        let node = self
            .nodes
            .entry((dc.clone(), node_name.clone()))
            .or_insert_with(|| NodeRec {
                fields: fields.clone(),
                create: next,
                modify: next,
                services: BTreeMap::new(),
                checks: BTreeMap::new(),
            });
        if node.fields != fields {
            node.fields = fields;
            node.modify = next;
            for s in node.services.values() {
                keys.insert(Key::Health(dc.clone(), s.name.clone()));
            }
        }
        if let Some((id, mut svc)) = service {
            svc.modify = next;
            svc.create = node.services.get(&id).map_or(next, |old| old.create);
            if let Some(old) = node.services.get(&id) {
                keys.insert(Key::Health(dc.clone(), old.name.clone()));
            }
            keys.insert(Key::Health(dc.clone(), svc.name.clone()));
            keys.insert(Key::CatalogServices(dc.clone()));
            node.services.insert(id, svc);
        }
        for c in checks {
            let check_id = str_field(c, "CheckID").to_string();
            let check_id = if check_id.is_empty() {
                str_field(c, "Name").to_string()
            } else {
                check_id
            };
            assert!(
                !check_id.is_empty(),
                "catalog register: check without CheckID"
            );
            let service_id = str_field(c, "ServiceID").to_string();
            let status = match str_field(c, "Status") {
                "" => "critical".to_string(),
                s => {
                    assert!(CHECK_STATUSES.contains(&s), "invalid check status {s:?}");
                    s.to_string()
                }
            };
            if service_id.is_empty() {
                for s in node.services.values() {
                    keys.insert(Key::Health(dc.clone(), s.name.clone()));
                }
            } else {
                let s = node.services.get(&service_id).unwrap_or_else(|| {
                    panic!("catalog register: Missing service registration {service_id:?}")
                });
                keys.insert(Key::Health(dc.clone(), s.name.clone()));
            }
            let create = node.checks.get(&check_id).map_or(next, |old| old.create);
            node.checks.insert(
                check_id,
                CheckRec {
                    name: str_field(c, "Name").to_string(),
                    status,
                    notes: str_field(c, "Notes").to_string(),
                    output: str_field(c, "Output").to_string(),
                    service_id,
                    kind: str_field(c, "Type").to_string(),
                    create,
                    modify: next,
                },
            );
        }
        self.commit(keys);
    }

    fn deregister(&mut self, dc: &str, node_name: &str, service_id: &str) {
        let mut keys = BTreeSet::new();
        let k = (dc.to_string(), node_name.to_string());
        if service_id.is_empty() {
            if let Some(node) = self.nodes.remove(&k) {
                for s in node.services.values() {
                    keys.insert(Key::Health(dc.to_string(), s.name.clone()));
                    keys.insert(Key::CatalogServices(dc.to_string()));
                }
                if dc != self.local_dc && !self.nodes.keys().any(|(d, _)| d == dc) {
                    keys.insert(Key::Datacenters);
                }
            }
        } else if let Some(node) = self.nodes.get_mut(&k)
            && let Some(svc) = node.services.remove(service_id)
        {
            node.checks.retain(|_, c| c.service_id != service_id);
            keys.insert(Key::Health(dc.to_string(), svc.name));
            keys.insert(Key::CatalogServices(dc.to_string()));
        }
        self.commit(keys);
    }

    fn set_check(&mut self, dc: &str, node_name: &str, check_id: &str, status: &str) {
        assert!(
            CHECK_STATUSES.contains(&status),
            "invalid check status {status:?}"
        );
        let next = self.index + 1;
        let node = self
            .nodes
            .get_mut(&(dc.to_string(), node_name.to_string()))
            .unwrap_or_else(|| panic!("set_check: no node {node_name:?} in {dc:?}"));
        let check = node
            .checks
            .get_mut(check_id)
            .unwrap_or_else(|| panic!("set_check: no check {check_id:?} on {node_name:?}"));
        check.status = status.to_string();
        check.modify = next;
        let mut keys = BTreeSet::new();
        for (id, s) in &node.services {
            if check.service_id.is_empty() || check.service_id == *id {
                keys.insert(Key::Health(dc.to_string(), s.name.clone()));
            }
        }
        self.commit(keys);
    }

    fn put_config_entry(&mut self, mut entry: Value) {
        let kind = str_field(&entry, "Kind").to_string();
        assert!(
            CONFIG_KINDS.contains(&kind.as_str()),
            "invalid config entry kind: {kind}"
        );
        if kind == "mesh" && str_field(&entry, "Name").is_empty() {
            entry["Name"] = json!("mesh");
        }
        let name = str_field(&entry, "Name").to_string();
        assert!(!name.is_empty(), "config entry without Name");
        let next = self.index + 1;
        let k = (kind.clone(), name.clone());
        let create = self
            .config
            .get(&k)
            .and_then(|old| old.get("CreateIndex"))
            .and_then(Value::as_u64)
            .unwrap_or(next);
        entry["CreateIndex"] = json!(create);
        entry["ModifyIndex"] = json!(next);
        self.config.insert(k, entry);
        self.commit([Key::ConfigKind(kind.clone()), Key::ConfigEntry(kind, name)].into());
    }

    fn delete_config_entry(&mut self, kind: &str, name: &str) {
        let mut keys = BTreeSet::new();
        if self
            .config
            .remove(&(kind.to_string(), name.to_string()))
            .is_some()
        {
            keys.insert(Key::ConfigKind(kind.to_string()));
            keys.insert(Key::ConfigEntry(kind.to_string(), name.to_string()));
        }
        self.commit(keys);
    }

    fn set_ca_roots(&mut self, mut roots: Value) {
        let next = self.index + 1;
        let old: HashMap<String, u64> = self
            .ca_roots
            .as_ref()
            .and_then(|r| r.get("Roots"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let create = r.get("CreateIndex").and_then(Value::as_u64).unwrap_or(0);
                        (str_field(r, "ID").to_string(), create)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for field in ["ActiveRootID", "TrustDomain"] {
            if roots.get(field).is_none() {
                roots[field] = json!("");
            }
        }
        match roots.get_mut("Roots") {
            Some(Value::Array(list)) => {
                for r in list {
                    let create = old.get(str_field(r, "ID")).copied().unwrap_or(next);
                    r["CreateIndex"] = json!(create);
                    r["ModifyIndex"] = json!(next);
                }
            }
            _ => roots["Roots"] = json!([]),
        }
        self.ca_roots = Some(roots);
        self.commit([Key::CaRoots].into());
    }

    fn set_leaf(&mut self, service: &str, mut leaf: Value) {
        let next = self.index + 1;
        leaf["CreateIndex"] = json!(next);
        leaf["ModifyIndex"] = json!(next);
        self.leaves.insert(service.to_string(), leaf);
        self.commit([Key::Leaf(service.to_string())].into());
    }

    fn reset_index(&mut self) {
        self.index = 1;
        for node in self.nodes.values_mut() {
            node.create = 1;
            node.modify = 1;
            for s in node.services.values_mut() {
                s.create = 1;
                s.modify = 1;
            }
            for c in node.checks.values_mut() {
                c.create = 1;
                c.modify = 1;
            }
        }
        let clamp = |v: &mut Value| {
            v["CreateIndex"] = json!(1);
            v["ModifyIndex"] = json!(1);
        };
        self.config.values_mut().for_each(clamp);
        self.leaves.values_mut().for_each(clamp);
        if let Some(Value::Array(list)) = self.ca_roots.as_mut().and_then(|r| r.get_mut("Roots")) {
            list.iter_mut().for_each(clamp);
        }
        for tx in self.keys.values() {
            tx.send_replace(1);
        }
    }

    // ---- renderings ---------------------------------------------------------------------

    fn catalog_services(&self, dc: &str, filter: &Option<Filter>) -> Value {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for ((d, _), node) in &self.nodes {
            if d != dc {
                continue;
            }
            for s in node.services.values() {
                if filter.as_ref().is_some_and(|f| !f.matches(s)) {
                    continue;
                }
                out.entry(s.name.clone())
                    .or_default()
                    .extend(s.tags.iter().cloned());
            }
        }
        json!(out)
    }

    fn health_service(&self, dc: &str, service: &str, passing: bool, tags: &[String]) -> Value {
        let mut out = Vec::new();
        for ((d, node_name), node) in &self.nodes {
            if d != dc {
                continue;
            }
            for (id, s) in &node.services {
                if s.name != service || !tags.iter().all(|t| s.tags.contains(t)) {
                    continue;
                }
                let checks: Vec<(&String, &CheckRec)> = node
                    .checks
                    .iter()
                    .filter(|(_, c)| c.service_id.is_empty())
                    .chain(node.checks.iter().filter(|(_, c)| c.service_id == *id))
                    .collect();
                if passing && checks.iter().any(|(_, c)| c.status != "passing") {
                    continue;
                }
                let mut svc = s.body.clone();
                svc.insert("CreateIndex".into(), json!(s.create));
                svc.insert("ModifyIndex".into(), json!(s.modify));
                let checks: Vec<Value> = checks
                    .into_iter()
                    .map(|(check_id, c)| {
                        let (svc_name, svc_tags) = match node.services.get(&c.service_id) {
                            Some(cs) => (cs.name.clone(), cs.tags.clone()),
                            None => (String::new(), Vec::new()),
                        };
                        json!({
                            "Node": node_name,
                            "CheckID": check_id,
                            "Name": c.name,
                            "Status": c.status,
                            "Notes": c.notes,
                            "Output": c.output,
                            "ServiceID": c.service_id,
                            "ServiceName": svc_name,
                            "ServiceTags": svc_tags,
                            "Type": c.kind,
                            "Interval": "",
                            "Timeout": "",
                            "ExposedPort": 0,
                            "Definition": {},
                            "CreateIndex": c.create,
                            "ModifyIndex": c.modify,
                        })
                    })
                    .collect();
                out.push(json!({
                    "Node": {
                        "ID": node.fields.id,
                        "Node": node_name,
                        "Address": node.fields.address,
                        "Datacenter": d,
                        "TaggedAddresses": node.fields.tagged,
                        "Meta": node.fields.meta,
                        "CreateIndex": node.create,
                        "ModifyIndex": node.modify,
                    },
                    "Service": Value::Object(svc),
                    "Checks": checks,
                }));
            }
        }
        Value::Array(out)
    }
}

fn check_list(v: Option<&Value>) -> Vec<&Value> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter(|c| c.is_object()).collect())
        .unwrap_or_default()
}

// ---- filters --------------------------------------------------------------------------------

/// The subset of Consul's filter language the double understands on `/v1/catalog/services`:
/// `ServiceKind == <v>`, `ServiceKind != <v>`, `ServiceName == <v>`, `ServiceName != <v>`,
/// with `<v>` quoted ("..." or `...`) or a bare word.
struct Filter {
    field: FilterField,
    equal: bool,
    value: String,
}

enum FilterField {
    Kind,
    Name,
}

impl Filter {
    fn parse(text: &str) -> Option<Filter> {
        let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else {
            let (l, r) = text.split_once("!=")?;
            (l, r, false)
        };
        let field = match lhs.trim() {
            "ServiceKind" => FilterField::Kind,
            "ServiceName" => FilterField::Name,
            _ => return None,
        };
        let rhs = rhs.trim();
        let value = if let Some(v) = rhs
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| rhs.strip_prefix('`').and_then(|r| r.strip_suffix('`')))
        {
            if v.contains(['"', '`', '\\']) {
                return None;
            }
            v.to_string()
        } else if !rhs.is_empty()
            && rhs
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            rhs.to_string()
        } else {
            return None;
        };
        Some(Filter {
            field,
            equal,
            value,
        })
    }

    fn matches(&self, s: &SvcRec) -> bool {
        let v = match self.field {
            FilterField::Kind => &s.kind,
            FilterField::Name => &s.name,
        };
        (*v == self.value) == self.equal
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

enum Route {
    Datacenters,
    Services,
    Health(String),
    ConfigList(String),
    ConfigGet(String, String),
    CaRoots,
    Leaf(String),
}

fn text(status: u16, body: impl Into<String>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.into(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An endpoint answer: Consul's metadata headers and a JSON or text body.
fn answer(index: u64, status: u16, body: Result<Value, String>) -> Response {
    let mut r = match body {
        Ok(v) => {
            let mut r = text(status, serde_json::to_string(&v).expect("json"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(t) => text(status, t),
    };
    let h = r.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(path: &str) -> Result<Route, (u16, String)> {
    let not_found = || {
        (
            404,
            format!("Invalid URL path: not a recognized HTTP API endpoint: {path}"),
        )
    };
    let rest = path.strip_prefix("/v1/").ok_or_else(not_found)?;
    let segs: Vec<String> = rest.split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    Ok(match segs.as_slice() {
        ["catalog", "datacenters"] => Route::Datacenters,
        ["catalog", "services"] => Route::Services,
        ["health", "service", svc] if !svc.is_empty() => Route::Health(svc.to_string()),
        ["config"] | ["config", ""] => {
            return Err((
                400,
                "Must provide either a kind or both kind and name".to_string(),
            ));
        }
        ["config", kind] => Route::ConfigList(kind.to_string()),
        ["config", kind, name] if !name.is_empty() => {
            Route::ConfigGet(kind.to_string(), name.to_string())
        }
        ["connect", "ca", "roots"] => Route::CaRoots,
        ["agent", "connect", "ca", "leaf", svc] if !svc.is_empty() => Route::Leaf(svc.to_string()),
        _ => return Err(not_found()),
    })
}

/// The token a request presents, in Consul's order: `?token=`, `X-Consul-Token`, then
/// `Authorization: Bearer`.
fn token_of(headers: &HeaderMap, params: &[(String, String)]) -> Option<String> {
    if let Some((_, t)) = params.iter().find(|(k, v)| k == "token" && !v.is_empty()) {
        return Some(t.clone());
    }
    if let Some(t) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Go's `time.ParseDuration`, as Consul reads `wait`: a negative wait is a valid duration and
/// means the default (returned as zero).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    use meshgate::model::duration::parse_go_duration as parse;
    match s.strip_prefix('-') {
        Some(rest) => parse(rest).ok().map(|_| Duration::ZERO),
        None => parse(s).ok(),
    }
}

fn random_below(max: Duration) -> Duration {
    let n = max.as_nanos() as u64;
    if n == 0 {
        return Duration::ZERO;
    }
    let r = RandomState::new().hash_one(Instant::now());
    Duration::from_nanos(r % n)
}

struct QueryOpts {
    dc: Option<String>,
    min_index: u64,
    wait: Duration,
    passing: bool,
    filter: Option<String>,
    tags: Vec<String>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl QueryOpts {
    fn parse(params: &[(String, String)]) -> Result<QueryOpts, (u16, String)> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if get("stale").is_some() && get("consistent").is_some() {
            return Err((
                400,
                "Cannot specify ?stale with ?consistent, conflicting semantics.".to_string(),
            ));
        }
        let mut wait = DEFAULT_WAIT;
        if let Some(w) = get("wait").filter(|w| !w.is_empty()) {
            let d = parse_go_duration(w).ok_or_else(|| (400, "Invalid wait time".to_string()))?;
            if !d.is_zero() {
                wait = d.min(MAX_WAIT);
            }
        }
        // Consul adds up to wait/16 of jitter to spread wake-ups.
        wait += random_below(wait / 16);
        let min_index = match get("index").filter(|i| !i.is_empty()) {
            Some(i) => i.parse().map_err(|_| (400, "Invalid index".to_string()))?,
            None => 0,
        };
        let passing = match get("passing") {
            Some(v) => {
                parse_bool(v).ok_or_else(|| (400, "Invalid value for ?passing".to_string()))?
            }
            None => false,
        };
        Ok(QueryOpts {
            dc: get("dc").filter(|d| !d.is_empty()).map(str::to_string),
            min_index,
            wait,
            passing,
            filter: get("filter").filter(|f| !f.is_empty()).map(str::to_string),
            tags: params
                .iter()
                .filter(|(k, v)| k == "tag" && !v.is_empty())
                .map(|(_, v)| v.clone())
                .collect(),
        })
    }
}

impl Shared {
    fn failure(&self) -> Option<u16> {
        let mut f = lock(&self.faults);
        if f.fail_count == 0 {
            return None;
        }
        f.fail_count -= 1;
        Some(f.fail_status)
    }
}

fn failure_body(status: u16) -> &'static str {
    match status {
        403 => "ACL not found",
        429 => "rate limit exceeded, try again later or against a different server",
        500..=599 => "rpc error making call: No cluster leader",
        _ => "injected failure (consul test double)",
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let params: Vec<(String, String)> = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let token = token_of(&headers, &params);
    lock(&shared.requests).push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        params: params.clone(),
        token: token.clone(),
        at: Instant::now(),
    });
    let (delay, required) = {
        let f = lock(&shared.faults);
        (f.delay, f.token.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = shared.failure() {
        return text(status, failure_body(status));
    }
    let route = match route(uri.path()) {
        Ok(r) => r,
        Err((status, body)) => return text(status, body),
    };
    if let Some(required) = required {
        match token {
            None => {
                return text(
                    403,
                    format!(
                        "Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' lacks permission '{}'",
                        permission_of(&route)
                    ),
                );
            }
            Some(t) if t != required => return text(403, "ACL not found"),
            Some(_) => {}
        }
    }
    if method != Method::GET {
        return text(405, format!("method {method} not allowed"));
    }
    let opts = match QueryOpts::parse(&params) {
        Ok(o) => o,
        Err((status, body)) => return text(status, body),
    };
    if let Some(dc) = &opts.dc
        && lock(&shared.faults).unreachable.contains(dc)
    {
        return text(500, "No path to datacenter");
    }
    serve(&shared, route, opts).await
}

fn permission_of(route: &Route) -> &'static str {
    match route {
        Route::Datacenters | Route::CaRoots => "operator:read",
        Route::Services | Route::Health(_) | Route::ConfigGet(..) | Route::ConfigList(_) => {
            "service:read"
        }
        Route::Leaf(_) => "service:write",
    }
}

async fn serve(shared: &Shared, route: Route, opts: QueryOpts) -> Response {
    // Validate and pick the key under the same lock that subscribes to it, so that no
    // mutation can slip between the index check and the wait.
    let (key, mut rx) = {
        let mut st = lock(&shared.state);
        let dc = opts.dc.clone().unwrap_or_else(|| st.local_dc.clone());
        if !st.dc_exists(&dc) {
            return text(500, "No path to datacenter");
        }
        if opts.filter.is_some() && !matches!(route, Route::Services) {
            return text(
                400,
                "filter is not supported on this endpoint by the consul test double",
            );
        }
        let key = match &route {
            Route::Datacenters => Key::Datacenters,
            Route::Services => {
                if let Some(f) = &opts.filter
                    && Filter::parse(f).is_none()
                {
                    return text(
                        400,
                        format!(
                            "Failed to create boolean expression evaluator: the consul test double supports only `ServiceKind == \"<kind>\"`, `ServiceName == \"<name>\"` (or !=), not: {f}"
                        ),
                    );
                }
                Key::CatalogServices(dc)
            }
            Route::Health(s) => Key::Health(dc, s.clone()),
            Route::ConfigList(kind) | Route::ConfigGet(kind, _)
                if !CONFIG_KINDS.contains(&kind.as_str()) =>
            {
                return text(400, format!("invalid config entry kind: {kind}"));
            }
            Route::ConfigList(kind) => Key::ConfigKind(kind.clone()),
            Route::ConfigGet(kind, name) => Key::ConfigEntry(kind.clone(), name.clone()),
            Route::CaRoots => Key::CaRoots,
            Route::Leaf(s) => Key::Leaf(s.clone()),
        };
        let rx = st.key_sender(key.clone()).subscribe();
        (key, rx)
    };
    let current = *rx.borrow_and_update();
    if opts.min_index > 0 && current <= opts.min_index {
        // Any send on this key (a mutation that changed its result, or an index reset)
        // ends the wait; the answer is whatever the state is then.
        let _ = tokio::time::timeout(opts.wait, rx.changed()).await;
    }
    let mut st = lock(&shared.state);
    let index = st.key_index(&key);
    let dc = opts.dc.clone().unwrap_or_else(|| st.local_dc.clone());
    match &route {
        Route::Datacenters => answer(index, 200, Ok(json!(st.datacenters()))),
        Route::Services => {
            let filter = opts.filter.as_deref().and_then(Filter::parse);
            answer(index, 200, Ok(st.catalog_services(&dc, &filter)))
        }
        Route::Health(s) => answer(
            index,
            200,
            Ok(st.health_service(&dc, s, opts.passing, &opts.tags)),
        ),
        Route::ConfigList(kind) => {
            let list: Vec<Value> = st
                .config
                .iter()
                .filter(|((k, _), _)| k == kind)
                .map(|(_, v)| v.clone())
                .collect();
            answer(index, 200, Ok(Value::Array(list)))
        }
        Route::ConfigGet(kind, name) => match st.config.get(&(kind.clone(), name.clone())) {
            Some(v) => answer(index, 200, Ok(v.clone())),
            None => answer(
                index,
                404,
                Err(format!("Config entry not found for {kind:?} / {name:?}")),
            ),
        },
        Route::CaRoots => {
            let roots = st
                .ca_roots
                .clone()
                .unwrap_or_else(|| json!({"ActiveRootID": "", "TrustDomain": "", "Roots": []}));
            answer(index, 200, Ok(roots))
        }
        Route::Leaf(s) => match st.leaves.get(s) {
            Some(v) => answer(index, 200, Ok(v.clone())),
            None => answer(
                index,
                404,
                Err(format!(
                    "no leaf certificate for service {s:?} (consul test double: call set_leaf)"
                )),
            ),
        },
    }
}
