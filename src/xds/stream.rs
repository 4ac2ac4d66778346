//! One xDS stream: the per-stream state machine shared by delta and state-of-the-world, ADS
//! and the per-type services.
//!
//! Per resource type a stream keeps: the subscription (wildcard and/or explicit names), the
//! *basis* — a pointer to the shared [`TypeSet`] the client was last brought up to, which is
//! what the client has for every name it subscribes to — names to send regardless (`force`),
//! and the nonces in flight. It never copies resources: the basis and every planned response
//! hold `Arc`s into the store.
//!
//! A push is planned only when the outbound channel has room, from the latest group state, so
//! a slow consumer gets the newest state when it is ready instead of a backlog (memory per
//! stream is bounded by one planned push).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use futures_util::{Stream as FutStream, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use super::node::{self, GroupKey};
use super::resource::Entry;
use super::store::{GroupState, Store, TypeSet, empty_set};
use super::types::{ResourceType, TYPE_COUNT};
use super::wire::{
    self, DeltaRequest as DeltaDiscoveryRequest, SotwRequest as DiscoveryRequest, name_str,
};
use crate::metrics::Metrics;

/// Delta (incremental) or state-of-the-world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Delta,
    Sotw,
}

/// Which gRPC service a stream came in on: ADS carries every type (and must name it), a
/// per-type service only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Ads,
    Single(ResourceType),
}

impl Service {
    fn label(self) -> &'static str {
        match self {
            Service::Ads => "ads",
            Service::Single(t) => t.short(),
        }
    }
}

/// In-flight responses kept per type for ACK matching; older ones are forgotten (a client
/// that never ACKs cannot grow a stream's state).
const MAX_INFLIGHT: usize = 16;

/// What every stream of a server shares.
pub struct StreamContext {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<StreamRegistry>,
    pub default_datacenter: Arc<str>,
}

// ---------------------------------------------------------------------------------------------
// Debug registry (`/debug/streams`)

/// The live streams, for the admin API. Each stream's entry is removed when the stream ends.
#[derive(Default)]
pub struct StreamRegistry {
    next_id: AtomicU64,
    streams: DashMap<u64, Arc<StreamInfo>>,
}

impl StreamRegistry {
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn snapshot(&self) -> Vec<StreamView> {
        let mut v: Vec<StreamView> = self.streams.iter().map(|s| s.value().view()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn register(self: &Arc<Self>, info: StreamInfo) -> RegistryGuard {
        let info = Arc::new(info);
        self.streams.insert(info.id, info.clone());
        RegistryGuard {
            registry: self.clone(),
            info,
        }
    }
}

struct RegistryGuard {
    registry: Arc<StreamRegistry>,
    info: Arc<StreamInfo>,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.info.id);
    }
}

pub struct StreamInfo {
    id: u64,
    node_id: String,
    group: GroupKey,
    protocol: Protocol,
    service: Service,
    peer: Option<SocketAddr>,
    connected_at: u64,
    types: Mutex<[TypeView; TYPE_COUNT]>,
}

impl StreamInfo {
    fn view(&self) -> StreamView {
        let types = self.types.lock();
        StreamView {
            id: self.id,
            node_id: self.node_id.clone(),
            group: self.group.to_string(),
            protocol: self.protocol,
            service: self.service.label(),
            peer: self.peer.map(|p| p.to_string()),
            connected_at_unix: self.connected_at,
            types: ResourceType::ADD_ORDER
                .into_iter()
                .filter(|t| types[t.index()].subscribed.is_some())
                .map(|t| (t.short(), types[t.index()].clone()))
                .collect(),
        }
    }
}

/// One stream as `/debug/streams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub id: u64,
    pub node_id: String,
    pub group: String,
    pub protocol: Protocol,
    pub service: &'static str,
    pub peer: Option<String>,
    pub connected_at_unix: u64,
    pub types: HashMap<&'static str, TypeView>,
}

/// One type of one stream as `/debug/streams` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeView {
    /// `"*"`, `"* + N names"` or `"N names"`; absent until the client asks for the type.
    pub subscribed: Option<String>,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub acked_nonce: Option<String>,
    pub responses_sent: u64,
    pub last_nack: Option<NackView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NackView {
    pub nonce: String,
    pub version: String,
    pub message: String,
    pub at_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Requests, normalized

/// A request of either protocol.
pub enum Request {
    Delta(DeltaDiscoveryRequest),
    Sotw(DiscoveryRequest),
}

impl Request {
    fn node(&self) -> Option<&Node> {
        match self {
            Request::Delta(r) => r.node.as_ref(),
            Request::Sotw(r) => r.node.as_ref(),
        }
    }

    fn type_url(&self) -> &str {
        match self {
            Request::Delta(r) => &r.type_url,
            Request::Sotw(r) => &r.type_url,
        }
    }
}

pub trait IntoRequest: Send + 'static {
    fn into_request(self) -> Request;
}

impl IntoRequest for DeltaDiscoveryRequest {
    fn into_request(self) -> Request {
        Request::Delta(self)
    }
}

impl IntoRequest for DiscoveryRequest {
    fn into_request(self) -> Request {
        Request::Sotw(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-type state

/// Explicitly subscribed names: a sorted vector (half the memory of a hash set; Envoy
/// subscribes in batches, and lookups are per changed name).
#[derive(Default)]
struct NameSet(Vec<Arc<str>>);

impl NameSet {
    fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    fn insert(&mut self, name: Arc<str>) -> bool {
        match self.0.binary_search_by(|n| (**n).cmp(&name)) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, name);
                true
            }
        }
    }

    /// Adds a batch: one sort, and no spare capacity kept.
    fn extend(&mut self, names: Vec<Arc<str>>) {
        match names.len() {
            0 => {}
            1 => {
                self.insert(names.into_iter().next().expect("one name"));
            }
            _ => {
                self.0.extend(names);
                self.0.sort_unstable();
                self.0.dedup();
                self.0.shrink_to_fit();
            }
        }
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.0.binary_search_by(|n| (**n).cmp(name)) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }
}

struct Inflight {
    nonce: u64,
    bytes: usize,
    version: Arc<str>,
    /// Start of the convergence clock when the response carried published changes.
    publish: Option<Instant>,
}

struct TypeState {
    /// A request of this type arrived on the stream.
    active: bool,
    wildcard: bool,
    /// Legacy wildcard: only while no request of this type ever named resources (R11).
    named_before: bool,
    names: NameSet,
    /// What the client has: for every subscribed name, the basis' entry (R17, R29).
    basis: Arc<TypeSet>,
    /// The first response has been planned (before it, the basis is empty and `initial`
    /// holds what a reconnecting delta client says it has, R18).
    planned_once: bool,
    initial: HashMap<Arc<str>, Arc<str>>,
    /// Names to send (or report removed) in the next response whatever the versions say:
    /// new subscriptions, R13/R14 warming, R19.
    force: HashSet<Arc<str>>,
    /// Respond even with nothing to send (R21; state-of-the-world first and changed requests).
    respond: bool,
    /// The subscription changed in a way that needs a comparison (first request).
    dirty: bool,
    /// State of the world: hash of the last request's name list.
    names_digest: Option<u64>,
    last_nonce: Option<u64>,
    inflight: VecDeque<Inflight>,
}

impl TypeState {
    fn new(empty: Arc<TypeSet>) -> TypeState {
        TypeState {
            active: false,
            wildcard: false,
            named_before: false,
            names: NameSet::default(),
            basis: empty,
            planned_once: false,
            initial: HashMap::new(),
            force: HashSet::new(),
            respond: false,
            dirty: false,
            names_digest: None,
            last_nonce: None,
            inflight: VecDeque::new(),
        }
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn subscription_label(&self) -> String {
        match (self.wildcard, self.names.len()) {
            (true, 0) => "*".into(),
            (true, n) => format!("* + {n} names"),
            (false, n) => format!("{n} names"),
        }
    }

    /// Forces every resource of `set` the client does not name explicitly: what it dropped
    /// when it left the wildcard, sent again when it comes back to it.
    fn force_unnamed(&mut self, set: &TypeSet) {
        for k in set.resources.keys() {
            if !self.names.contains(k) {
                self.force.insert(k.clone());
            }
        }
    }

    /// The version the client has for `name`, as far as the server knows.
    fn client_version<'a>(&'a self, name: &str) -> Option<&'a str> {
        if !self.planned_once {
            return self.initial.get(name).map(|v| &**v);
        }
        self.basis.get(name).map(|e| &*e.version)
    }
}

/// Largest response the server builds when it may split (delta; state-of-the-world types
/// other than LDS and CDS). Every byte of a response is buffered once per stream on its way
/// out, and the transport keeps buffers as large as the largest message it sent: bounded
/// responses keep a stream's memory bounded whatever the size of the mesh, and keep Envoy's
/// main thread from stalling on one huge update.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Bytes a stream may have sent and not yet seen answered (ACK or NACK) before it sends more.
/// Envoy answers every response; without this bound the transport would queue a whole initial
/// push for a slow reader (hundreds of KiB per stream at 1,000 services). A single response
/// larger than the budget still goes out when nothing else is unanswered.
pub const SEND_BUDGET_BYTES: usize = 32 * 1024;

/// Splits `entries` into runs of at most [`MAX_RESPONSE_BYTES`] (at least one entry each);
/// always at least one run, possibly empty.
fn chunk(entries: Vec<Arc<Entry>>, size: impl Fn(&Entry) -> usize) -> Vec<Vec<Arc<Entry>>> {
    let total: usize = entries.iter().map(|e| size(e)).sum();
    if total <= MAX_RESPONSE_BYTES {
        return vec![entries];
    }
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut cur_size = 0;
    for e in entries {
        let n = size(&e);
        if !cur.is_empty() && cur_size + n > MAX_RESPONSE_BYTES {
            out.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur_size += n;
        cur.push(e);
    }
    out.push(cur);
    out
}

/// Hash of a request's name list, in order.
fn names_digest(names: &[Bytes]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for n in names {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
    }
    h.digest()
}

/// What differs between what a client has of one type and the latest state.
#[derive(Default)]
struct Diff {
    upserts: Vec<Arc<Entry>>,
    /// Names the client has that are gone.
    removals: Vec<Arc<str>>,
    /// Names the client asked for that do not exist and that it never had (R12).
    absent: Vec<Arc<str>>,
    /// Names of the warmed type to send again (R13, R14).
    warm: Option<(ResourceType, Vec<Arc<str>>)>,
}

/// One planned response, built from the latest state when the channel has room.
struct Planned {
    ty: ResourceType,
    upserts: Vec<Arc<Entry>>,
    removals: Vec<Arc<str>>,
    /// State-of-the-world only: the response is the complete subscribed set (LDS/CDS).
    full_state: bool,
    version: Arc<str>,
    publish: Option<Instant>,
    respond_even_if_empty: bool,
}

// ---------------------------------------------------------------------------------------------
// The stream

struct Stream {
    ctx: Arc<StreamContext>,
    protocol: Protocol,
    service: Service,
    current: Arc<GroupState>,
    /// `current` has not been planned against yet.
    state_changed: bool,
    /// When the work now pending was noticed (push duration).
    work_since: Option<Instant>,
    types: [TypeState; TYPE_COUNT],
    outbox: VecDeque<Planned>,
    next_nonce: u64,
    /// Bytes of responses in flight (sent, not yet answered).
    unanswered: usize,
    info: Arc<StreamInfo>,
    /// Until the stream's first ACK (and at most until this instant), planned removals wait in
    /// `held_removals` (see [`REMOVAL_HOLD`]); `None` once released.
    hold_removals_until: Option<tokio::time::Instant>,
    held_removals: Vec<Planned>,
}

/// How long removals may wait on a new stream for the client's first ACK. A reconnecting
/// client sends its requests for every type at once (CDS, EDS, LDS, RDS, each with the
/// versions it holds), and ACKs only what it receives afterwards: the first ACK on a stream
/// proves every one of those requests is in (a stream is ordered). Until then the server may
/// not know that the client holds routes naming a cluster that went away while it was
/// disconnected, and removing it first would leave those routes pointing nowhere until the new
/// ones arrive (R15, R16). Additions go at once; removals after the first ACK, or after this
/// long from a client that never ACKs.
pub const REMOVAL_HOLD: Duration = Duration::from_secs(5);

/// Serves one stream until the client closes it or a protocol error ends it. Responses go to
/// `tx`; a protocol error is sent as the stream's final status.
pub async fn run<Req, In>(
    ctx: Arc<StreamContext>,
    protocol: Protocol,
    service: Service,
    peer: Option<SocketAddr>,
    mut inbound: In,
    tx: mpsc::Sender<Result<Bytes, Status>>,
) where
    Req: IntoRequest,
    In: FutStream<Item = Result<Req, Status>> + Unpin + Send,
{
    // R1: the node comes with the first request; it places the stream in its group.
    let first = match inbound.next().await {
        Some(Ok(r)) => r.into_request(),
        Some(Err(status)) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
        None => return,
    };
    let group = match node::place(first.node(), &ctx.default_datacenter) {
        Ok(g) => g,
        Err(e) => {
            warn!(error = %e, peer = ?peer, "refusing xDS stream");
            ctx.metrics.stream_errors.inc();
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let node_id = first.node().map(|n| n.id.clone()).unwrap_or_default();
    let id = ctx.registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let span = info_span!("xds_stream", id, node = %node_id, group = %group,
        protocol = ?protocol, service = service.label());
    async move {
        let guard = ctx.registry.register(StreamInfo {
            id,
            node_id: node_id.clone(),
            group: group.clone(),
            protocol,
            service,
            peer,
            connected_at: unix_now(),
            types: Mutex::new(Default::default()),
        });
        let gauge = match protocol {
            Protocol::Delta => ctx.metrics.streams_delta.clone(),
            Protocol::Sotw => ctx.metrics.streams_sotw.clone(),
        };
        gauge.inc();
        info!("stream connected");
        let mut sub = ctx.store.subscribe(&group);
        let current = sub.receiver().borrow_and_update().clone();
        let mut stream = Stream {
            types: std::array::from_fn(|_| TypeState::new(empty_set())),
            ctx: ctx.clone(),
            protocol,
            service,
            current,
            state_changed: false,
            work_since: None,
            outbox: VecDeque::new(),
            next_nonce: 0,
            unanswered: 0,
            info: guard.info.clone(),
            hold_removals_until: Some(Instant::now() + REMOVAL_HOLD),
            held_removals: Vec::new(),
        };
        let outcome = stream.serve(first, &mut inbound, sub.receiver(), &tx).await;
        match outcome {
            Ok(()) => info!("stream closed"),
            Err(status) => {
                warn!(error = %status.message(), "stream ended by protocol error");
                ctx.metrics.stream_errors.inc();
                let _ = tx.send(Err(status)).await;
            }
        }
        gauge.dec();
        // Everything the stream held — subscriptions, basis pointers, planned responses, its
        // registry entry and group subscription — is dropped here (R23, R24).
        drop(stream);
        drop(sub);
        drop(guard);
    }
    .instrument(span)
    .await
}

impl Stream {
    async fn serve<Req: IntoRequest, In: FutStream<Item = Result<Req, Status>> + Unpin>(
        &mut self,
        first: Request,
        inbound: &mut In,
        state_rx: &mut tokio::sync::watch::Receiver<Arc<GroupState>>,
        tx: &mpsc::Sender<Result<Bytes, Status>>,
    ) -> Result<(), Status> {
        self.on_request(first)?;
        loop {
            let has_work = self.has_work();
            tokio::select! {
                biased;
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.on_request(req.into_request())?,
                    None => return Ok(()),
                    Some(Err(status)) => {
                        debug!(error = %status, "inbound stream error");
                        return Ok(());
                    }
                },
                changed = state_rx.changed() => {
                    if changed.is_err() {
                        // The group was removed from the store: keep serving the last state.
                        std::future::pending::<()>().await;
                    }
                    self.current = state_rx.borrow_and_update().clone();
                    self.state_changed = true;
                    self.work_since.get_or_insert_with(Instant::now);
                },
                _ = tokio::time::sleep_until(
                    self.hold_removals_until.unwrap_or_else(tokio::time::Instant::now)
                ), if !self.held_removals.is_empty() => {
                    self.release_removals();
                }
                permit = tx.reserve(), if has_work => {
                    let Ok(permit) = permit else { return Ok(()) };
                    if let Some(bytes) = self.next_response() {
                        permit.send(Ok(bytes));
                    }
                }
            }
        }
    }

    /// Ends the hold: removals planned during it go out after everything the requests so far
    /// ask for (planned now if it was not yet).
    fn release_removals(&mut self) {
        self.hold_removals_until = None;
        if self.held_removals.is_empty() {
            return;
        }
        if self.needs_plan() {
            self.plan();
        }
        self.outbox.extend(self.held_removals.drain(..));
    }

    fn has_work(&self) -> bool {
        if self.unanswered >= SEND_BUDGET_BYTES {
            return false;
        }
        !self.outbox.is_empty()
            || (self.state_changed && self.types.iter().any(|t| t.active))
            || self
                .types
                .iter()
                .any(|t| t.active && (t.respond || t.dirty || !t.force.is_empty()))
    }

    fn mark_work(&mut self) {
        self.work_since.get_or_insert_with(Instant::now);
    }

    // -- requests ------------------------------------------------------------------------------

    fn on_request(&mut self, req: Request) -> Result<(), Status> {
        let ty = match (self.service, req.type_url()) {
            (Service::Ads, "") => {
                // R2
                return Err(Status::invalid_argument(
                    "type_url is required on an aggregated (ADS) stream",
                ));
            }
            (Service::Ads, url) => match ResourceType::from_type_url(url) {
                Some(t) => t,
                None => {
                    debug!(type_url = url, "request for a type meshgate does not serve");
                    return Ok(());
                }
            },
            (Service::Single(t), "") => t,
            (Service::Single(t), url) if url == t.type_url() => t,
            (Service::Single(t), url) => {
                return Err(Status::invalid_argument(format!(
                    "type_url {url} on the {} service, which serves only {}",
                    t.short(),
                    t.type_url()
                )));
            }
        };
        let names_ok = match &req {
            Request::Delta(r) => r
                .resource_names_subscribe
                .iter()
                .chain(&r.resource_names_unsubscribe)
                .all(|n| name_str(n).is_some()),
            Request::Sotw(r) => r.resource_names.iter().all(|n| name_str(n).is_some()),
        };
        if !names_ok {
            return Err(Status::invalid_argument(format!(
                "a {} resource name in the request is not valid UTF-8",
                ty.short()
            )));
        }
        match req {
            Request::Delta(r) => self.on_delta(ty, r),
            Request::Sotw(r) => self.on_sotw(ty, r),
        }
        let t = &self.types[ty.index()];
        self.info.types.lock()[ty.index()].subscribed = Some(t.subscription_label());
        Ok(())
    }

    fn intern(&self, ty: ResourceType, name: &str) -> Arc<str> {
        match self.current.set(ty).resources.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        }
    }

    fn on_delta(&mut self, ty: ResourceType, r: DeltaDiscoveryRequest) {
        // ACK / NACK first (R7: the subscription changes below apply whatever the nonce).
        if !r.response_nonce.is_empty() {
            self.on_reply(ty, &r.response_nonce, r.error_detail.as_ref(), false);
        }
        let initial: Vec<(Arc<str>, Arc<str>)> = if self.types[ty.index()].active {
            Vec::new()
        } else {
            r.initial_resource_versions
                .iter()
                .map(|(n, v)| (self.intern(ty, n), Arc::from(v.as_str())))
                .collect()
        };
        let subscribe: Vec<Arc<str>> = r
            .resource_names_subscribe
            .iter()
            .filter_map(name_str)
            .filter(|n| *n != "*")
            .map(|n| self.intern(ty, n))
            .collect();
        let sub_wildcard = r.resource_names_subscribe.iter().any(|n| n == "*");
        let t = &mut self.types[ty.index()];
        let first = !t.active;
        if first {
            t.active = true;
            t.dirty = true;
            t.initial = initial.into_iter().collect();
            // R11: a first request that names nothing is a (legacy) wildcard subscription.
            if r.resource_names_subscribe.is_empty() && r.resource_names_unsubscribe.is_empty() {
                t.wildcard = true;
            }
        }
        if sub_wildcard && !t.wildcard {
            t.wildcard = true;
            if !first {
                // Names the client dropped when it left the wildcard are sent again.
                t.force_unnamed(self.current.set(ty));
            }
        }
        if !r.resource_names_subscribe.is_empty() {
            t.named_before = true;
        }
        // A subscribed name is always answered (the client may have forgotten it), except on a
        // reconnect that reports the version it has (R18): then only if it differs. Before the
        // first response the full comparison covers every name, so the first request's names
        // need no entry in `force`.
        if t.planned_once {
            t.force.extend(subscribe.iter().cloned());
        }
        t.names.extend(subscribe);
        for name in r.resource_names_unsubscribe.iter().filter_map(name_str) {
            if name == "*" {
                t.wildcard = false;
                continue;
            }
            // R20: unknown names are ignored.
            t.names.remove(name);
            t.force.remove(name);
            if t.wildcard {
                // R19: still covered by the wildcard: send it again, or say it is gone.
                let name = match self.current.set(ty).resources.get_key_value(name) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                t.force.insert(name);
            }
        }
        // R21: the first wildcard request is answered even when there is nothing to send.
        if first && t.wildcard {
            t.respond = true;
        }
        if t.respond || t.dirty || !t.force.is_empty() {
            self.mark_work();
        }
    }

    fn on_sotw(&mut self, ty: ResourceType, r: DiscoveryRequest) {
        let idx = ty.index();
        let first = !self.types[idx].active;
        if !r.response_nonce.is_empty() {
            let latest = self.types[idx].last_nonce.map(|n| format!("{n:x}"));
            if latest.as_deref() == Some(r.response_nonce.as_str()) {
                self.on_reply(ty, &r.response_nonce, r.error_detail.as_ref(), true);
            } else {
                // R6: a stale nonce is not an ACK or NACK of anything current, but it does
                // answer the responses up to it. Its subscription is still applied below (the
                // safer variant of envoy#10363): names it adds are sent, names it drops are
                // not pushed any more.
                self.ctx.metrics.expired_nonces.get(ty).inc();
                self.release(ty, &r.response_nonce);
                debug!(%ty, nonce = %r.response_nonce, "request with an expired nonce");
            }
        }

        // State-of-the-world clients repeat every name in every request (an ACK of EDS for
        // 1,000 clusters names all 1,000): when the list is the one of the last request, the
        // subscription is unchanged and costs one hash over its bytes, not 1,000 look-ups.
        let digest = names_digest(&r.resource_names);
        if !first && self.types[idx].names_digest == Some(digest) {
            return;
        }
        self.types[idx].names_digest = Some(digest);
        let mut wanted: Vec<Arc<str>> = r
            .resource_names
            .iter()
            .filter_map(name_str)
            .filter(|n| *n != "*")
            .map(|n| self.intern(ty, n))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted.shrink_to_fit();
        let explicit_star = r.resource_names.iter().any(|n| n == "*");
        let t = &mut self.types[idx];
        t.active = true;
        // R11: empty names are a wildcard only until the client has named something.
        let wildcard = explicit_star || (r.resource_names.is_empty() && !t.named_before);
        if !r.resource_names.is_empty() {
            t.named_before = true;
        }
        let newly_wildcard = wildcard && !t.wildcard;
        // A reconnecting client's first request carries the version it last accepted. Versions
        // are digests of the type's content, the same in every process (R28): if it is the
        // current one, the client holds the current resources of every name it asks for, and
        // nothing is sent until something changes — a state-of-the-world reconnect storm (a
        // restart of meshgate) costs a request per type, not a full resend.
        let resumed =
            first && !r.version_info.is_empty() && *self.current.set(ty).version == *r.version_info;
        if resumed {
            t.basis = self.current.set(ty).clone();
            t.planned_once = true;
            self.ctx.metrics.sotw_resumed.get(ty).inc();
            debug!(%ty, version = %r.version_info, "state-of-the-world stream resumed at the current version");
        } else if first {
            t.dirty = true;
        } else if newly_wildcard {
            t.force_unnamed(self.current.set(ty));
        }
        let added: Vec<Arc<str>> = wanted
            .iter()
            .filter(|n| !t.names.contains(n))
            .cloned()
            .collect();
        t.wildcard = wildcard;
        t.names = NameSet(wanted);
        // R10: newly requested names are sent even if unchanged since sent unasked (before the
        // first response, the full comparison sends every named resource anyway).
        if t.planned_once && !resumed {
            t.force.extend(added);
        }
        // The first request of a wildcard or full-state type is always answered: an empty
        // LDS/CDS means "none", and Envoy needs it to finish initializing.
        if (first || newly_wildcard) && !resumed && (t.wildcard || ty.sotw_full_state()) {
            t.respond = true;
        }
        if t.respond || t.dirty || !t.force.is_empty() {
            self.mark_work();
        }
    }

    /// Forgets the in-flight responses of `ty` up to `nonce` (answered, if late).
    fn release(&mut self, ty: ResourceType, nonce: &str) {
        let Ok(n) = u64::from_str_radix(nonce, 16) else {
            return;
        };
        let t = &mut self.types[ty.index()];
        while let Some(f) = t.inflight.front() {
            if f.nonce > n {
                break;
            }
            self.unanswered = self.unanswered.saturating_sub(f.bytes);
            t.inflight.pop_front();
        }
    }

    /// An ACK or NACK of `nonce` of type `ty`.
    fn on_reply(
        &mut self,
        ty: ResourceType,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
        sotw: bool,
    ) {
        if self.hold_removals_until.is_some() {
            self.release_removals();
        }
        let t = &mut self.types[ty.index()];
        let Ok(n) = u64::from_str_radix(nonce, 16) else {
            self.ctx.metrics.expired_nonces.get(ty).inc();
            return;
        };
        let Some(pos) = t.inflight.iter().position(|f| f.nonce == n) else {
            if !sotw {
                self.ctx.metrics.expired_nonces.get(ty).inc();
            }
            return;
        };
        // Responses before this one will not be answered any more.
        let mut flight = None;
        for f in t.inflight.drain(..=pos) {
            self.unanswered = self.unanswered.saturating_sub(f.bytes);
            flight = Some(f);
        }
        let flight = flight.expect("position is in range");
        let mut view = self.info.types.lock();
        let view = &mut view[ty.index()];
        match error {
            Some(err) => {
                // R5: record it; never answer a NACK by resending the same version.
                self.ctx.metrics.rejects.get(ty).inc();
                warn!(%ty, version = %flight.version, nonce, error = %err.message,
                    "Envoy rejected a response (NACK)");
                view.last_nack = Some(NackView {
                    nonce: nonce.to_owned(),
                    version: flight.version.to_string(),
                    message: err.message.clone(),
                    at_unix: unix_now(),
                });
            }
            None => {
                self.ctx.metrics.acks.get(ty).inc();
                if let Some(start) = flight.publish {
                    self.ctx
                        .metrics
                        .convergence
                        .observe(start.elapsed().as_secs_f64());
                }
                view.acked_version = Some(flight.version.to_string());
                view.acked_nonce = Some(nonce.to_owned());
            }
        }
    }

    // -- pushes --------------------------------------------------------------------------------

    /// Requests or a new state not planned yet.
    fn needs_plan(&self) -> bool {
        (self.state_changed && self.types.iter().any(|t| t.active))
            || self
                .types
                .iter()
                .any(|t| t.active && (t.respond || t.dirty || !t.force.is_empty()))
    }

    /// The next response to send, planning a push from the latest state when nothing is
    /// queued. `None` when there is nothing to send after all.
    fn next_response(&mut self) -> Option<Bytes> {
        loop {
            if let Some(p) = self.outbox.pop_front() {
                if let Some(bytes) = self.encode(p) {
                    return Some(bytes);
                }
                continue;
            }
            if !self.needs_plan() {
                self.work_since = None;
                return None;
            }
            self.plan();
        }
    }

    /// Plans one push: every active type compared with the latest state; additions and
    /// changes in CDS → EDS → LDS → RDS → SDS order, then removals in LDS → RDS → CDS → EDS →
    /// SDS order (R15, make before break).
    fn plan(&mut self) {
        let state = self.current.clone();
        let publish = if self.state_changed {
            state.first_publish
        } else {
            None
        };
        self.state_changed = false;
        let holding = self.hold_removals_until.is_some_and(|t| Instant::now() < t);
        let mut removals: Vec<Planned> = Vec::new();
        for ty in ResourceType::ADD_ORDER {
            let Diff {
                upserts: up,
                removals: rm,
                absent,
                warm,
            } = self.diff(&state, ty);
            let t = &mut self.types[ty.index()];
            if !t.active {
                continue;
            }
            let current = state.set(ty).clone();
            let version = current.version.clone();
            let respond = std::mem::take(&mut t.respond);
            t.dirty = false;
            let old_basis = std::mem::replace(&mut t.basis, current);
            t.planned_once = true;
            t.initial = HashMap::new();
            // R13/R14: what the sent clusters and listeners warm must come again.
            if let Some((wty, names)) = warm {
                let w = &mut self.types[wty.index()];
                if w.active {
                    w.force.extend(names);
                }
            }
            let plan = |upserts, removals, full_state, version, respond_even_if_empty| Planned {
                ty,
                upserts,
                removals,
                full_state,
                version,
                publish,
                respond_even_if_empty,
            };
            match self.protocol {
                Protocol::Delta => {
                    // Additions (and "does not exist" for names the client never had) now;
                    // removals of what the client has after every type's additions.
                    // A first response is due even when all it has are removals on hold (R21):
                    // the client's ACK of it releases them.
                    if !up.is_empty()
                        || !absent.is_empty()
                        || (respond && (rm.is_empty() || holding))
                    {
                        let chunks = chunk(up, |e| e.delta.len());
                        let last = chunks.len() - 1;
                        let mut absent = Some(absent);
                        for (i, part) in chunks.into_iter().enumerate() {
                            let notices = if i == last {
                                absent.take().unwrap_or_default()
                            } else {
                                Vec::new()
                            };
                            self.outbox.push_back(plan(
                                part,
                                notices,
                                false,
                                version.clone(),
                                respond && i == 0,
                            ));
                        }
                    }
                    if !rm.is_empty() {
                        removals.push(plan(Vec::new(), rm, false, version, false));
                    }
                }
                Protocol::Sotw if ty.sotw_full_state() => {
                    if up.is_empty() && rm.is_empty() && !respond {
                        continue;
                    }
                    let t = &self.types[ty.index()];
                    let mut all: Vec<Arc<Entry>> = if t.wildcard {
                        t.basis.resources.values().cloned().collect()
                    } else {
                        t.names
                            .iter()
                            .filter_map(|n| t.basis.get(n).cloned())
                            .collect()
                    };
                    all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                    if rm.is_empty() {
                        self.outbox
                            .push_back(plan(all, Vec::new(), true, version, true));
                        continue;
                    }
                    if !up.is_empty() {
                        // Make before break: first the new set plus what goes away, then (in
                        // the removal phase) the new set alone.
                        let mut with_old = all.clone();
                        with_old.extend(rm.iter().filter_map(|n| old_basis.get(n).cloned()));
                        with_old.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                        let interim = Arc::from(format!("{version}+"));
                        self.outbox
                            .push_back(plan(with_old, Vec::new(), true, interim, true));
                    }
                    removals.push(plan(all, Vec::new(), true, version, true));
                }
                Protocol::Sotw => {
                    // R10: only what changed or was newly asked for; no removal mechanism.
                    if !up.is_empty() || respond {
                        for (i, part) in chunk(up, |e| e.sotw.len()).into_iter().enumerate() {
                            self.outbox.push_back(plan(
                                part,
                                Vec::new(),
                                false,
                                version.clone(),
                                respond && i == 0,
                            ));
                        }
                    }
                }
            }
        }
        removals.sort_by_key(|p| {
            ResourceType::REMOVE_ORDER
                .iter()
                .position(|t| *t == p.ty)
                .unwrap_or(0)
        });
        if holding {
            self.held_removals.extend(removals);
        } else {
            self.release_removals();
            self.outbox.extend(removals);
        }
    }

    /// Compares what the client has of `ty` with `state`. Costs O(changed names) unless the basis predates the change log
    /// or this is the type's first response (then O(subscribed names)).
    fn diff(&mut self, state: &GroupState, ty: ResourceType) -> Diff {
        let t = &mut self.types[ty.index()];
        if !t.active {
            return Diff::default();
        }
        let current = state.set(ty);
        let force = std::mem::take(&mut t.force);
        let mut candidates: Vec<&Arc<str>> = Vec::new();
        let full = !t.planned_once
            || match state.changed_since(ty, t.basis.generation) {
                Some(changed) if !Arc::ptr_eq(&t.basis, current) => {
                    candidates.extend(changed);
                    false
                }
                Some(_) => false,
                None => true,
            };
        if full {
            if t.wildcard {
                candidates.extend(current.resources.keys());
                candidates.extend(t.basis.resources.keys());
            }
            candidates.extend(t.names.iter());
            candidates.extend(t.initial.keys());
        }
        candidates.extend(force.iter());
        // Sorted and deduplicated: no name twice in a response (R22), and responses in name
        // order.
        candidates.sort_unstable();
        candidates.dedup();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let mut absent = Vec::new();
        for name in candidates {
            if !t.subscribed(name) {
                continue;
            }
            let want = current.get(name);
            let have = t.client_version(name);
            // Before the first response, every explicitly named resource is answered.
            let forced = force.contains(&**name)
                || (!t.planned_once && t.names.contains(name) && !t.initial.contains_key(name));
            match (want, have) {
                (Some(w), Some(h)) if *w.version == *h && !forced => {}
                (Some(w), _) => upserts.push(w.clone()),
                (None, Some(_)) => removals.push(name.clone()),
                (None, None) if forced && self.protocol == Protocol::Delta => {
                    // R12: tell the client it does not exist, and keep the subscription.
                    absent.push(name.clone())
                }
                (None, None) => {}
            }
        }
        let warm = upserts.first().and_then(|e| e.warmed_type()).map(|wty| {
            let names: Vec<Arc<str>> = upserts
                .iter()
                .flat_map(|e| e.warms.iter().cloned())
                .collect();
            (wty, names)
        });
        Diff {
            upserts,
            removals,
            absent,
            warm,
        }
    }

    /// Encodes a planned response against the subscription as it is now (R26: nothing the
    /// client no longer subscribes to). `None` when nothing is left to send.
    fn encode(&mut self, p: Planned) -> Option<Bytes> {
        let t = &mut self.types[p.ty.index()];
        let upserts: Vec<Arc<Entry>> = if t.wildcard {
            p.upserts
        } else {
            p.upserts
                .into_iter()
                .filter(|e| t.names.contains(&e.name))
                .collect()
        };
        let removals: Vec<Arc<str>> = p.removals.into_iter().filter(|n| t.subscribed(n)).collect();
        if upserts.is_empty() && removals.is_empty() && !p.respond_even_if_empty && !p.full_state {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let nonce_text = format!("{nonce:x}");
        let url = p.ty.type_url();
        let bytes = match self.protocol {
            Protocol::Delta => {
                wire::delta_response(url, &p.version, &nonce_text, &upserts, &removals)
            }
            Protocol::Sotw => wire::sotw_response(url, &p.version, &nonce_text, upserts.iter()),
        };
        t.last_nonce = Some(nonce);
        if t.inflight.len() == MAX_INFLIGHT
            && let Some(old) = t.inflight.pop_front()
        {
            self.unanswered = self.unanswered.saturating_sub(old.bytes);
        }
        self.unanswered += bytes.len();
        t.inflight.push_back(Inflight {
            nonce,
            bytes: bytes.len(),
            version: p.version.clone(),
            publish: p.publish,
        });
        let m = &self.ctx.metrics;
        m.pushes.get(p.ty).inc();
        m.push_bytes.get(p.ty).observe(bytes.len() as f64);
        if let Some(since) = self.work_since {
            m.push_duration.observe(since.elapsed().as_secs_f64());
        }
        {
            let mut views = self.info.types.lock();
            let v = &mut views[p.ty.index()];
            v.sent_version = Some(p.version.to_string());
            v.sent_nonce = Some(nonce_text);
            v.responses_sent += 1;
        }
        debug!(ty = %p.ty, resources = upserts.len(), removed = removals.len(),
            bytes = bytes.len(), nonce, "response");
        Some(bytes)
    }
}
