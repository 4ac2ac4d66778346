//! Envoy-like ADS streams for the load generator (`meshgate-loadgen`), checking the protocol
//! as they go.
//!
//! A stream behaves as Envoy's xDS client does on an ADS stream, not as a reader:
//! - CDS by wildcard (legacy empty or explicit `*`, chosen per stream); for every EDS cluster
//!   received it subscribes to the cluster's assignment (the EDS service name, else the
//!   cluster name) and unsubscribes when the cluster goes; an added or changed EDS cluster
//!   warms until an assignment for it arrives (R13);
//! - once every cluster is warm, LDS by wildcard; for every listener received it subscribes
//!   to the route configurations its HTTP connection managers name;
//! - every response is ACKed (delta: type and nonce; state of the world: version, nonce and
//!   the full name list of the type), or NACKed when told to;
//! - on reconnect it sends what it holds: delta `initial_resource_versions`, state of the
//!   world the last accepted version and its names.
//!
//! Protocol violations it counts ([`Violations`]): a route naming a cluster the stream does
//! not have (R16, also when a cluster is removed under a route), duplicate names in one
//! response (R22), a response with nothing new after an ACK (R4, R17), a NACKed version sent
//! again (R5); the orchestrator adds clusters left warming, changes that never converged,
//! stale resources after a reconnect and streams the server kept after disconnect.
//!
//! Streams run on one thread (a `LocalSet`): the generator must not starve the server.

use std::cell::RefCell;
use std::collections::BTreeSet;

use bytes::Bytes;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use hyper_util::rt::TokioIo;
use prost::Message;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

pub type Name = Rc<str>;

/// Responses as the generator reads them: names, versions and resources are slices of the
/// received message (no copy, no allocation per string); fields it does not use are skipped.
mod light {
    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(bytes = "bytes", tag = "1")]
        pub type_url: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub value: Bytes,
    }

    /// `envoy.service.discovery.v3.Resource`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(bytes = "bytes", tag = "1")]
        pub version: Bytes,
        #[prost(message, optional, tag = "2")]
        pub resource: Option<Any>,
        #[prost(bytes = "bytes", tag = "3")]
        pub name: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeltaDiscoveryResponse {
        #[prost(string, tag = "1")]
        pub system_version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<Resource>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
        #[prost(bytes = "bytes", repeated, tag = "6")]
        pub removed_resources: Vec<Bytes>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DiscoveryResponse {
        #[prost(string, tag = "1")]
        pub version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<Any>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
    }
}

use light::{DeltaDiscoveryResponse, DiscoveryResponse};

/// A name or version from a response (empty when it is not UTF-8).
fn s(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

/// Opens an ADS stream, decoding responses into the generator's own types. The caller keeps
/// the channel for as long as the stream lives: when the last handle of a channel goes, its
/// connection closes under the stream.
async fn ads<Req, Resp>(
    ch: &tonic::transport::Channel,
    method: &'static str,
    requests: mpsc::UnboundedReceiver<Req>,
) -> Result<tonic::Streaming<Resp>, tonic::Status>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(1 << 30);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let r = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(requests)),
            http::uri::PathAndQuery::from_static(method),
            codec,
        )
        .await?;
    Ok(r.into_inner())
}

const DELTA_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

pub const CDS: usize = 0;
pub const EDS: usize = 1;
pub const LDS: usize = 2;
pub const RDS: usize = 3;
pub const TYPE_URLS: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];
pub const TYPE_NAMES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];

pub fn type_index(url: &str) -> Option<usize> {
    TYPE_URLS.iter().position(|u| *u == url)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Delta,
    Sotw,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Delta => "delta",
            Protocol::Sotw => "sotw",
        }
    }
}

/// Where streams connect and who they say they are.
#[derive(Clone, Debug)]
pub struct Target {
    pub xds: SocketAddr,
    pub tls: Option<TlsSettings>,
    /// Node id; `{i}` is replaced by the stream's number.
    pub node_id: String,
    pub node_cluster: String,
    pub node_metadata: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub ca_pem: Vec<u8>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub server_name: String,
}

impl Target {
    fn node(&self, i: usize) -> Node {
        Node {
            id: self.node_id.replace("{i}", &i.to_string()),
            cluster: self.node_cluster.clone(),
            metadata: Some(Struct {
                fields: self
                    .node_metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Value {
                                kind: Some(Kind::StringValue(v.clone())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    /// A new connection whose received bytes (TLS records, HTTP/2 and gRPC framing
    /// included) are added to `read`.
    pub async fn connect(&self, read: Arc<AtomicU64>) -> Result<tonic::transport::Channel, String> {
        let addr = self.xds;
        let endpoint = match &self.tls {
            None => Endpoint::from_static("http://xds"),
            Some(tls) => {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .domain_name(tls.server_name.clone());
                if let Some((cert, key)) = &tls.identity_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                Endpoint::from_shared(format!("https://{}", tls.server_name))
                    .map_err(|e| e.to_string())?
                    .tls_config(config)
                    .map_err(|e| e.to_string())?
            }
        };
        endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let read = read.clone();
                async move {
                    let inner = TcpStream::connect(addr).await?;
                    inner.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(TokioIo::new(Counted { inner, read }))
                }
            }))
            .await
            .map_err(|e| format!("connect {addr}: {e:?}"))
    }
}

/// A TCP stream that counts the bytes it reads.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Protocol violations; every one must be zero.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Violations {
    /// A route configuration named a cluster the stream did not have, or a cluster was
    /// removed while a route still named it (R16).
    pub route_to_missing_cluster: u64,
    /// An added or changed EDS cluster never received its assignment (R13).
    pub eds_left_warming: u64,
    /// A name twice in one response (R22).
    pub duplicate_names: u64,
    /// A response carrying nothing the stream did not already have, unasked (R4, R17).
    pub response_with_nothing_new: u64,
    /// A version the stream NACKed sent to it again (R5).
    pub resent_after_nack: u64,
    /// A (stream, change) pair that never converged.
    pub not_converged: u64,
    /// After a reconnect, a stream still held a resource removed while it was away (R18).
    pub stale_after_reconnect: u64,
    /// Streams the server still counted after every client left (R23).
    pub leaked_streams: u64,
    /// Streams closed by the server or failing to connect.
    pub stream_errors: u64,
    /// The first violations, explained.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 12;

/// Retries of a failed stream before it counts as a stream error.
const MAX_RETRIES: u32 = 4;

impl Violations {
    pub fn total(&self) -> u64 {
        self.route_to_missing_cluster
            + self.eds_left_warming
            + self.duplicate_names
            + self.response_with_nothing_new
            + self.resent_after_nack
            + self.not_converged
            + self.stale_after_reconnect
            + self.leaked_streams
            + self.stream_errors
    }

    pub fn add(&mut self, o: &Violations) {
        self.route_to_missing_cluster += o.route_to_missing_cluster;
        self.eds_left_warming += o.eds_left_warming;
        self.duplicate_names += o.duplicate_names;
        self.response_with_nothing_new += o.response_with_nothing_new;
        self.resent_after_nack += o.resent_after_nack;
        self.not_converged += o.not_converged;
        self.stale_after_reconnect += o.stale_after_reconnect;
        self.leaked_streams += o.leaked_streams;
        self.stream_errors += o.stream_errors;
        self.examples.extend(o.examples.iter().cloned());
        self.examples.truncate(MAX_EXAMPLES);
    }
}

/// What one resource says, decoded once per distinct encoding for all streams.
#[derive(Debug)]
pub enum Decoded {
    Cluster { name: Name, eds: Option<Name> },
    Assignment { name: Name },
    Listener { name: Name, routes: Vec<Name> },
    Routes { name: Name, clusters: Vec<Name> },
    Undecodable { name: Name },
}

impl Decoded {
    fn name(&self) -> &Name {
        match self {
            Decoded::Cluster { name, .. }
            | Decoded::Assignment { name }
            | Decoded::Listener { name, .. }
            | Decoded::Routes { name, .. }
            | Decoded::Undecodable { name } => name,
        }
    }
}

/// What every stream shares: the decode cache, interned names, counters, the event channel.
pub struct Shared {
    pub target: Target,
    pub protocol: Protocol,
    decoded: RefCell<HashMap<(usize, u64), Rc<Decoded>>>,
    names: RefCell<HashSet<Name>>,
    pub violations: RefCell<Violations>,
    /// Whether responses report the names they carry (while changes are measured; not
    /// during connect storms, where only `Synced` matters).
    pub track: std::cell::Cell<bool>,
    /// Streams that failed and were retried (connection refused or reset, stream closed).
    pub retries: std::cell::Cell<u64>,
    /// State-of-the-world types, over reconnected streams, the server sent nothing for
    /// (resumed at the versions held).
    pub resumed: std::cell::Cell<u64>,
    pub first_retry_error: RefCell<Option<String>>,
    /// Clusters a state-of-the-world reconnect removed under a held route (see `remove`).
    pub dangling_on_resync: std::cell::Cell<u64>,
    events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    pub fn new(
        target: Target,
        protocol: Protocol,
        events: mpsc::UnboundedSender<Event>,
    ) -> Rc<Shared> {
        Rc::new(Shared {
            target,
            protocol,
            decoded: RefCell::default(),
            names: RefCell::default(),
            violations: RefCell::default(),
            dangling_on_resync: Default::default(),
            retries: Default::default(),
            resumed: Default::default(),
            track: Default::default(),
            first_retry_error: Default::default(),
            events,
        })
    }

    pub fn intern(&self, s: &str) -> Name {
        let mut names = self.names.borrow_mut();
        if let Some(n) = names.get(s) {
            return n.clone();
        }
        let n: Name = Rc::from(s);
        names.insert(n.clone());
        n
    }

    fn decode(&self, ty: usize, bytes: &[u8], hash: u64, fallback: &str) -> Rc<Decoded> {
        if let Some(d) = self.decoded.borrow().get(&(ty, hash)) {
            return d.clone();
        }
        let d = Rc::new(self.decode_uncached(ty, bytes, fallback));
        self.decoded.borrow_mut().insert((ty, hash), d.clone());
        d
    }

    fn decode_uncached(&self, ty: usize, bytes: &[u8], fallback: &str) -> Decoded {
        let undecodable = || Decoded::Undecodable {
            name: self.intern(fallback),
        };
        match ty {
            CDS => match Cluster::decode(bytes) {
                Ok(c) => {
                    let is_eds = matches!(c.cluster_discovery_type,
                        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
                    let eds = is_eds.then(|| {
                        let service = c
                            .eds_cluster_config
                            .as_ref()
                            .map(|e| e.service_name.as_str())
                            .unwrap_or_default();
                        self.intern(if service.is_empty() { &c.name } else { service })
                    });
                    Decoded::Cluster {
                        name: self.intern(&c.name),
                        eds,
                    }
                }
                Err(_) => undecodable(),
            },
            EDS => match ClusterLoadAssignment::decode(bytes) {
                Ok(a) => Decoded::Assignment {
                    name: self.intern(&a.cluster_name),
                },
                Err(_) => undecodable(),
            },
            LDS => match Listener::decode(bytes) {
                Ok(l) => {
                    let mut routes = BTreeSet::new();
                    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                        routes_of_chain(chain, &mut routes);
                    }
                    Decoded::Listener {
                        name: self.intern(&l.name),
                        routes: routes.iter().map(|r| self.intern(r)).collect(),
                    }
                }
                Err(_) => undecodable(),
            },
            RDS => match RouteConfiguration::decode(bytes) {
                Ok(rc) => {
                    let mut clusters = BTreeSet::new();
                    for vh in &rc.virtual_hosts {
                        for r in &vh.routes {
                            if let Some(Action::Route(a)) = &r.action {
                                match &a.cluster_specifier {
                                    Some(ClusterSpecifier::Cluster(c)) => {
                                        clusters.insert(c.clone());
                                    }
                                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                                        clusters.extend(w.clusters.iter().map(|c| c.name.clone()));
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    Decoded::Routes {
                        name: self.intern(&rc.name),
                        clusters: clusters.iter().map(|c| self.intern(c)).collect(),
                    }
                }
                Err(_) => undecodable(),
            },
            _ => undecodable(),
        }
    }

    fn violation(
        &self,
        stream: usize,
        f: impl FnOnce(&mut Violations),
        what: impl FnOnce() -> String,
    ) {
        let mut v = self.violations.borrow_mut();
        f(&mut v);
        if v.examples.len() < MAX_EXAMPLES {
            let what = what();
            v.examples.push(format!("stream {stream}: {what}"));
        }
    }
}

fn routes_of_chain(chain: &FilterChain, out: &mut BTreeSet<String>) {
    for f in &chain.filters {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if !any.type_url.ends_with("HttpConnectionManager") {
            continue;
        }
        if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
            && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
        {
            out.insert(rds.route_config_name);
        }
    }
}

/// What a stream tells the orchestrator.
pub struct Event {
    pub stream: usize,
    pub at: Instant,
    pub kind: EventKind,
}

pub enum EventKind {
    /// A response, handled and answered: the names it brought (new, changed or sent again)
    /// and the names it took away.
    Response {
        ty: usize,
        updated: Vec<Name>,
        removed: Vec<Name>,
    },
    /// The stream holds every cluster it was told to expect, every cluster is warm, and it
    /// has its listeners and their routes.
    Synced,
    /// The stream ended without being told to (server closed it, or connecting failed).
    Closed { error: String },
}

/// What the orchestrator tells a stream.
pub enum Cmd {
    /// Close the stream and its connection.
    Disconnect,
    /// Connect again and report `Synced` once it holds `expect_clusters` clusters; by
    /// then it must hold none of the clusters `gone` (removed while it was away).
    Connect {
        expect_clusters: usize,
        gone: Rc<[Name]>,
    },
    /// NACK the next response of this type.
    NackNext(usize),
}

struct Held {
    /// Delta: the server's version; state of the world: the hash of the encoding.
    version: Rc<str>,
    hash: u64,
    /// The connection it was last received on.
    conn: u32,
    decoded: Rc<Decoded>,
}

/// One Envoy-like ADS stream.
pub struct EnvoyStream {
    id: usize,
    shared: Rc<Shared>,
    pub read: Arc<AtomicU64>,
    explicit_wildcard: bool,
    held: [HashMap<Name, Held>; 4],
    /// EDS / RDS names subscribed.
    subscribed: [BTreeSet<Name>; 4],
    /// EDS names whose cluster was added or changed and whose assignment has not arrived.
    warming: HashSet<Name>,
    /// Names subscribed since the last response of their type: they may come again unchanged.
    fresh: [HashSet<Name>; 4],
    /// Names unsubscribed: the server may report them removed once more.
    dropped: [HashSet<Name>; 4],
    /// Connections so far; what came on an earlier one may come again on a new one.
    conn: u32,
    /// The first CDS response after a state-of-the-world reconnect is in progress.
    sotw_resync: bool,
    /// The first response of a type on a connection is always expected.
    first: [bool; 4],
    /// Types requested on this stream.
    requested: [bool; 4],
    /// State of the world: the last accepted version and nonce per type.
    sotw_version: [String; 4],
    last_nonce: [String; 4],
    nack_next: [bool; 4],
    nacked_delta: HashSet<(usize, Name, Rc<str>)>,
    nacked_sotw: HashSet<(usize, String)>,
    expect_clusters: usize,
    gone: Rc<[Name]>,
    synced_reported: bool,
    node_sent: bool,
    /// `MESHGATE_LOADGEN_TRACE=<stream>` prints what that stream receives.
    trace: bool,
}

type Outbox<R> = mpsc::UnboundedSender<R>;

impl EnvoyStream {
    pub fn new(id: usize, shared: Rc<Shared>, read: Arc<AtomicU64>) -> EnvoyStream {
        EnvoyStream {
            id,
            shared,
            read,
            // Half the streams use the legacy wildcard (no names), half an explicit `*`.
            explicit_wildcard: id % 2 == 1,
            held: Default::default(),
            subscribed: Default::default(),
            warming: HashSet::default(),
            fresh: Default::default(),
            dropped: Default::default(),
            conn: 0,
            sotw_resync: false,
            first: [false; 4],
            requested: [false; 4],
            sotw_version: Default::default(),
            last_nonce: Default::default(),
            nack_next: [false; 4],
            nacked_delta: HashSet::default(),
            nacked_sotw: HashSet::default(),
            expect_clusters: 0,
            gone: Rc::from([]),
            synced_reported: false,
            node_sent: false,
            trace: std::env::var("MESHGATE_LOADGEN_TRACE").ok() == Some(id.to_string()),
        }
    }

    /// Names of a type the stream holds (for checks after a reconnect).
    pub fn holds(&self, ty: usize, name: &str) -> bool {
        self.held[ty].contains_key(name)
    }

    fn emit(&self, kind: EventKind) {
        let _ = self.shared.events.send(Event {
            stream: self.id,
            at: Instant::now(),
            kind,
        });
    }

    fn synced(&self) -> bool {
        let holds_all = self.held[CDS].len() >= self.expect_clusters
            && self.warming.is_empty()
            && self.requested[LDS]
            && self.subscribed[RDS]
                .iter()
                .all(|r| self.held[RDS].contains_key(r));
        // Every wildcard request is answered (R21): a delta stream is synced once CDS and
        // LDS have said what changed (or that nothing did). A state-of-the-world server may
        // answer a reconnect with nothing (the versions held are current). Either way, not
        // while the stream holds a cluster removed while it was away (R18): a stream that
        // keeps one never syncs, and the orchestrator counts it.
        let answered = match self.shared.protocol {
            Protocol::Sotw if self.conn > 1 => true,
            _ => !self.first[CDS] && !self.first[LDS],
        };
        holds_all && answered && !self.holds_gone()
    }

    /// Whether the stream holds a cluster removed while it was disconnected (`name.*`
    /// stands for every name starting with `name.`).
    fn holds_gone(&self) -> bool {
        self.gone.iter().any(|n| match n.strip_suffix('*') {
            Some(prefix) => self.held[CDS].keys().any(|k| k.starts_with(prefix)),
            None => self.held[CDS].contains_key(n),
        })
    }

    /// Runs the stream until the command channel closes.
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, expect_clusters: usize) {
        self.expect_clusters = expect_clusters;
        let mut failures = 0u32;
        loop {
            let closed = match self.shared.protocol {
                Protocol::Delta => self.session_delta(&mut cmds).await,
                Protocol::Sotw => self.session_sotw(&mut cmds).await,
            };
            if let Some(error) = closed {
                failures += 1;
                self.shared.retries.set(self.shared.retries.get() + 1);
                self.shared
                    .first_retry_error
                    .borrow_mut()
                    .get_or_insert_with(|| error.clone());
                if failures <= MAX_RETRIES {
                    // As Envoy does: retry the stream after a jittered, growing backoff,
                    // with what it holds.
                    let backoff = 100 * (1u64 << failures) + (self.id as u64 * 7919) % 100;
                    tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
                    continue;
                }
                self.shared
                    .violation(self.id, |v| v.stream_errors += 1, || error.clone());
                self.emit(EventKind::Closed { error });
            }
            failures = 0;
            // Disconnected: wait to be told to connect again.
            loop {
                match cmds.recv().await {
                    None => return,
                    Some(Cmd::Connect {
                        expect_clusters,
                        gone,
                    }) => {
                        self.expect_clusters = expect_clusters;
                        self.gone = gone;
                        self.synced_reported = false;
                        break;
                    }
                    Some(Cmd::NackNext(ty)) => self.nack_next[ty] = true,
                    Some(Cmd::Disconnect) => {}
                }
            }
        }
    }

    fn node(&mut self) -> Option<Node> {
        if self.node_sent {
            return None;
        }
        self.node_sent = true;
        Some(self.shared.target.node(self.id))
    }

    fn wildcard_names(&self) -> Vec<String> {
        if self.explicit_wildcard {
            vec!["*".into()]
        } else {
            Vec::new()
        }
    }

    fn report_sync(&mut self) {
        if !self.synced_reported && self.synced() {
            self.synced_reported = true;
            self.emit(EventKind::Synced);
        }
    }

    /// Whether, with every cluster warm and enough of them, it is time to ask for listeners
    /// (Envoy initializes CDS, then LDS).
    fn ready_for_lds(&self) -> bool {
        !self.requested[LDS]
            && !self.first[CDS]
            && self.held[CDS].len() >= self.expect_clusters
            && self.warming.is_empty()
    }

    // -----------------------------------------------------------------------------------
    // Applying resources (both protocols)

    /// Applies one received resource. Returns whether it is something the stream did not
    /// have (or was waiting for).
    fn apply(
        &mut self,
        ty: usize,
        version: Rc<str>,
        hash: u64,
        decoded: Rc<Decoded>,
        subscribe: &mut [Vec<Name>; 4],
    ) -> bool {
        let name = decoded.name().clone();
        let old = self.held[ty].get(&name);
        let same = old.is_some_and(|h| h.version == version && h.hash == hash);
        let seen_here = same && old.is_some_and(|h| h.conn == self.conn);
        let waited = self.fresh[ty].contains(&name) || (ty == EDS && self.warming.contains(&name));
        match &*decoded {
            Decoded::Cluster { eds, .. } => {
                let old_eds = old.and_then(|h| match &*h.decoded {
                    Decoded::Cluster { eds, .. } => eds.clone(),
                    _ => None,
                });
                if let Some(e) = eds
                    && !same
                {
                    self.warming.insert(e.clone());
                    if !self.subscribed[EDS].contains(e) {
                        subscribe[EDS].push(e.clone());
                    }
                }
                if let Some(o) = old_eds
                    && Some(&o) != eds.as_ref()
                {
                    self.warming.remove(&o);
                }
            }
            Decoded::Assignment { .. } => {
                self.warming.remove(&name);
            }
            Decoded::Listener { routes, .. } => {
                for r in routes {
                    if !self.subscribed[RDS].contains(r) {
                        subscribe[RDS].push(r.clone());
                    }
                }
            }
            Decoded::Routes { clusters, .. } => {
                let missing = clusters
                    .iter()
                    .filter(|c| !self.held[CDS].contains_key(*c))
                    .count();
                if missing > 0 {
                    self.shared.violation(
                        self.id,
                        |v| v.route_to_missing_cluster += missing as u64,
                        || {
                            format!(
                                "routes {name} name {missing} clusters the stream does not have"
                            )
                        },
                    );
                }
            }
            Decoded::Undecodable { .. } => {}
        }
        self.fresh[ty].remove(&name);
        self.held[ty].insert(
            name,
            Held {
                version,
                hash,
                conn: self.conn,
                decoded,
            },
        );
        !seen_here || waited
    }

    /// Removes a resource; returns whether the stream had it.
    fn remove(&mut self, ty: usize, name: &Name, unsubscribe: &mut [Vec<Name>; 4]) -> bool {
        let Some(old) = self.held[ty].remove(name) else {
            return false;
        };
        if ty == CDS {
            // A route still naming the cluster now points nowhere (break before make).
            let named = self.held[RDS].values().any(|h| match &*h.decoded {
                Decoded::Routes { clusters, .. } => clusters.contains(name),
                _ => false,
            });
            if named && self.sotw_resync {
                // A state-of-the-world server cannot know which routes a reconnecting
                // client holds: its first CDS response may drop a cluster an old route names
                // until the new routes arrive. Reported, not a violation.
                self.shared
                    .dangling_on_resync
                    .set(self.shared.dangling_on_resync.get() + 1);
            } else if named {
                self.shared.violation(
                    self.id,
                    |v| v.route_to_missing_cluster += 1,
                    || format!("cluster {name} removed while a route names it"),
                );
            }
            if let Decoded::Cluster { eds: Some(e), .. } = &*old.decoded {
                self.warming.remove(e);
                let still_used = self.held[CDS].values().any(
                    |h| matches!(&*h.decoded, Decoded::Cluster { eds: Some(x), .. } if x == e),
                );
                if !still_used && self.subscribed[EDS].contains(e) {
                    unsubscribe[EDS].push(e.clone());
                }
            }
        }
        if ty == LDS
            && let Decoded::Listener { routes, .. } = &*old.decoded
        {
            for r in routes {
                let still_used = self.held[LDS].values().any(|h| {
                    matches!(&*h.decoded, Decoded::Listener { routes, .. } if routes.contains(r))
                });
                if !still_used && self.subscribed[RDS].contains(r) {
                    unsubscribe[RDS].push(r.clone());
                }
            }
        }
        true
    }

    /// Applies subscription changes of `t` a response caused; whether there were any. A
    /// type's first request makes its first response expected whatever it holds.
    fn change_subscription(&mut self, t: usize, subscribe: &[Name], unsubscribe: &[Name]) -> bool {
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return false;
        }
        for n in subscribe {
            self.subscribed[t].insert(n.clone());
            self.fresh[t].insert(n.clone());
        }
        for n in unsubscribe {
            self.subscribed[t].remove(n);
            self.fresh[t].remove(n);
            self.held[t].remove(n);
            self.dropped[t].insert(n.clone());
        }
        if !self.requested[t] {
            self.requested[t] = true;
            self.first[t] = true;
        }
        true
    }

    /// A rejected cluster: the server, not knowing yet, may send its assignment again to
    /// warm it (R13); that assignment is not "nothing new".
    fn expect_warming_of(&mut self, d: &Decoded) {
        if let Decoded::Cluster { eds: Some(e), .. } = d
            && self.subscribed[EDS].contains(e)
        {
            self.fresh[EDS].insert(e.clone());
        }
    }

    // -----------------------------------------------------------------------------------
    // Delta

    fn delta_initial(&mut self, ty: usize) -> DeltaDiscoveryRequest {
        let subscribe = if ty == CDS || ty == LDS {
            self.wildcard_names()
        } else {
            self.subscribed[ty].iter().map(|n| n.to_string()).collect()
        };
        self.requested[ty] = true;
        self.first[ty] = true;
        DeltaDiscoveryRequest {
            node: self.node(),
            type_url: TYPE_URLS[ty].into(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: self.held[ty]
                .iter()
                .map(|(n, h)| (n.to_string(), h.version.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// One delta session; `Some(error)` when it ended without being told to.
    async fn session_delta(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> Option<String> {
        let ch = match self.shared.target.connect(self.read.clone()).await {
            Ok(ch) => ch,
            Err(e) => return Some(e),
        };
        self.node_sent = false;
        self.conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(self.delta_initial(CDS));
        for ty in [EDS, LDS, RDS] {
            if self.requested[ty] && (ty == LDS || !self.subscribed[ty].is_empty()) {
                let _ = tx.send(self.delta_initial(ty));
            }
        }
        let mut inbound = match ads::<_, DeltaDiscoveryResponse>(&ch, DELTA_METHOD, rx).await {
            Ok(r) => r,
            Err(e) => return Some(format!("stream {}: {e}", self.id)),
        };
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None | Some(Cmd::Disconnect) => return None,
                    Some(Cmd::NackNext(ty)) => self.nack_next[ty] = true,
                    Some(Cmd::Connect { .. }) => {}
                },
                msg = inbound.message() => match msg {
                    Ok(Some(r)) => self.on_delta(r, &tx),
                    Ok(None) => return Some(format!("stream {}: closed by the server", self.id)),
                    Err(e) => return Some(format!("stream {}: {e}", self.id)),
                },
            }
        }
    }

    fn on_delta(&mut self, r: DeltaDiscoveryResponse, tx: &Outbox<DeltaDiscoveryRequest>) {
        let Some(ty) = type_index(&r.type_url) else {
            return;
        };
        if self.trace {
            eprintln!(
                "trace stream {}: {} response nonce {}: {} resources {:?}, removed {:?}",
                self.id,
                TYPE_NAMES[ty],
                r.nonce,
                r.resources.len(),
                r.resources
                    .iter()
                    .map(|x| s(&x.name))
                    .take(5)
                    .collect::<Vec<_>>(),
                r.removed_resources
            );
        }
        let mut seen = HashSet::default();
        let duplicates = r
            .resources
            .iter()
            .map(|x| s(&x.name))
            .chain(r.removed_resources.iter().map(s))
            .filter(|n| !seen.insert(*n))
            .count();
        if duplicates > 0 {
            self.shared.violation(
                self.id,
                |v| v.duplicate_names += duplicates as u64,
                || {
                    format!(
                        "{duplicates} names twice in one {} response",
                        TYPE_NAMES[ty]
                    )
                },
            );
        }
        let mut resent = 0;
        for x in r.resources.iter().filter(|_| !self.nacked_delta.is_empty()) {
            let name = self.shared.intern(s(&x.name));
            if self
                .nacked_delta
                .contains(&(ty, name, self.shared.intern(s(&x.version))))
            {
                resent += 1;
            }
        }
        if resent > 0 {
            self.shared.violation(
                self.id,
                |v| v.resent_after_nack += resent,
                || {
                    format!(
                        "{} resources sent again at a NACKed version",
                        TYPE_NAMES[ty]
                    )
                },
            );
        }
        let nack = std::mem::take(&mut self.nack_next[ty]);
        if nack {
            for x in &r.resources {
                if let Some(any) = &x.resource {
                    let hash = xxhash_rust::xxh3::xxh3_64(&any.value);
                    let d = self.shared.decode(ty, &any.value, hash, s(&x.name));
                    self.expect_warming_of(&d);
                }
                let name = self.shared.intern(s(&x.name));
                self.nacked_delta
                    .insert((ty, name, self.shared.intern(s(&x.version))));
            }
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(rejection()),
                ..Default::default()
            });
            self.emit(EventKind::Response {
                ty,
                updated: r
                    .resources
                    .iter()
                    .map(|x| self.shared.intern(s(&x.name)))
                    .collect(),
                removed: Vec::new(),
            });
            return;
        }
        let mut subscribe: [Vec<Name>; 4] = Default::default();
        let mut unsubscribe: [Vec<Name>; 4] = Default::default();
        let track = self.shared.track.get();
        let mut updated = Vec::new();
        let mut news = 0;
        for x in &r.resources {
            let Some(any) = &x.resource else { continue };
            let hash = xxhash_rust::xxh3::xxh3_64(&any.value);
            let decoded = self.shared.decode(ty, &any.value, hash, s(&x.name));
            let version = self.shared.intern(s(&x.version));
            let name = decoded.name().clone();
            if self.apply(ty, version, hash, decoded, &mut subscribe) {
                news += 1;
            }
            if track {
                updated.push(name);
            }
        }
        let mut removed = Vec::new();
        for n in &r.removed_resources {
            let name = self.shared.intern(s(n));
            let was_fresh = self.fresh[ty].remove(&name);
            let was_dropped = self.dropped[ty].remove(&name);
            if self.remove(ty, &name, &mut unsubscribe) || was_fresh || was_dropped {
                news += 1;
            }
            removed.push(name);
        }
        if news == 0 && !std::mem::take(&mut self.first[ty]) {
            let names: Vec<&str> = r.resources.iter().map(|x| s(&x.name)).take(3).collect();
            self.shared.violation(
                self.id,
                |v| v.response_with_nothing_new += 1,
                || {
                    format!(
                        "{} response with nothing new: {} resources ({names:?}…), {} removed",
                        TYPE_NAMES[ty],
                        r.resources.len(),
                        r.removed_resources.len()
                    )
                },
            );
        }
        self.first[ty] = false;
        // ACK, then the subscription changes the response caused (Envoy pauses them while
        // it applies the response).
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
        for t in [EDS, RDS] {
            if !self.change_subscription(t, &subscribe[t], &unsubscribe[t]) {
                continue;
            }
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: TYPE_URLS[t].into(),
                resource_names_subscribe: subscribe[t].iter().map(|n| n.to_string()).collect(),
                resource_names_unsubscribe: unsubscribe[t].iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            });
        }
        if self.ready_for_lds() {
            let _ = tx.send(self.delta_initial(LDS));
        }
        self.emit(EventKind::Response {
            ty,
            updated,
            removed,
        });
        self.report_sync();
    }

    // -----------------------------------------------------------------------------------
    // State of the world

    fn sotw_names(&self, ty: usize) -> Vec<String> {
        if ty == CDS || ty == LDS {
            self.wildcard_names()
        } else {
            self.subscribed[ty].iter().map(|n| n.to_string()).collect()
        }
    }

    fn sotw_initial(&mut self, ty: usize) -> DiscoveryRequest {
        self.requested[ty] = true;
        self.first[ty] = true;
        DiscoveryRequest {
            version_info: self.sotw_version[ty].clone(),
            node: self.node(),
            resource_names: self.sotw_names(ty),
            type_url: TYPE_URLS[ty].into(),
            ..Default::default()
        }
    }

    async fn session_sotw(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> Option<String> {
        let ch = match self.shared.target.connect(self.read.clone()).await {
            Ok(ch) => ch,
            Err(e) => return Some(e),
        };
        self.node_sent = false;
        self.conn += 1;
        self.sotw_resync = self.conn > 1;
        self.last_nonce = Default::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(self.sotw_initial(CDS));
        for ty in [EDS, LDS, RDS] {
            if self.requested[ty] && (ty == LDS || !self.subscribed[ty].is_empty()) {
                let _ = tx.send(self.sotw_initial(ty));
            }
        }
        let mut inbound = match ads::<_, DiscoveryResponse>(&ch, SOTW_METHOD, rx).await {
            Ok(r) => r,
            Err(e) => return Some(format!("stream {}: {e}", self.id)),
        };
        // A reconnect sent the versions the stream holds: a server may find them current and
        // send nothing (Envoy needs nothing then), so the stream may be synced at once.
        self.report_sync();
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None | Some(Cmd::Disconnect) => {
                        // Types of a reconnect the server sent nothing for: resumed.
                        if self.conn > 1 {
                            let resumed = (0..4)
                                .filter(|&ty| self.first[ty] && !self.sotw_version[ty].is_empty())
                                .count() as u64;
                            self.shared.resumed.set(self.shared.resumed.get() + resumed);
                        }
                        return None;
                    }
                    Some(Cmd::NackNext(ty)) => self.nack_next[ty] = true,
                    Some(Cmd::Connect { .. }) => {}
                },
                msg = inbound.message() => match msg {
                    Ok(Some(r)) => self.on_sotw(r, &tx),
                    Ok(None) => return Some(format!("stream {}: closed by the server", self.id)),
                    Err(e) => return Some(format!("stream {}: {e}", self.id)),
                },
            }
        }
    }

    fn on_sotw(&mut self, r: DiscoveryResponse, tx: &Outbox<DiscoveryRequest>) {
        let Some(ty) = type_index(&r.type_url) else {
            return;
        };
        if self.trace {
            eprintln!(
                "trace stream {}: {} response version {} nonce {}: {} resources",
                self.id,
                TYPE_NAMES[ty],
                r.version_info,
                r.nonce,
                r.resources.len(),
            );
        }
        if self.nacked_sotw.contains(&(ty, r.version_info.clone())) {
            self.shared.violation(
                self.id,
                |v| v.resent_after_nack += 1,
                || {
                    format!(
                        "{} version {} sent again after its NACK",
                        TYPE_NAMES[ty], r.version_info
                    )
                },
            );
        }
        let decoded: Vec<(u64, Rc<Decoded>)> = r
            .resources
            .iter()
            .map(|any| {
                let hash = xxhash_rust::xxh3::xxh3_64(&any.value);
                (hash, self.shared.decode(ty, &any.value, hash, ""))
            })
            .collect();
        let mut seen = HashSet::default();
        let duplicates = decoded
            .iter()
            .filter(|(_, d)| !seen.insert(d.name().clone()))
            .count();
        if duplicates > 0 {
            self.shared.violation(
                self.id,
                |v| v.duplicate_names += duplicates as u64,
                || {
                    format!(
                        "{duplicates} names twice in one {} response",
                        TYPE_NAMES[ty]
                    )
                },
            );
        }
        self.last_nonce[ty] = r.nonce.clone();
        if std::mem::take(&mut self.nack_next[ty]) {
            self.nacked_sotw.insert((ty, r.version_info.clone()));
            for (_, d) in &decoded {
                self.expect_warming_of(d);
            }
            let _ = tx.send(DiscoveryRequest {
                version_info: self.sotw_version[ty].clone(),
                resource_names: self.sotw_names(ty),
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(rejection()),
                ..Default::default()
            });
            self.emit(EventKind::Response {
                ty,
                updated: decoded.iter().map(|(_, d)| d.name().clone()).collect(),
                removed: Vec::new(),
            });
            return;
        }
        let mut subscribe: [Vec<Name>; 4] = Default::default();
        let mut unsubscribe: [Vec<Name>; 4] = Default::default();
        let track = self.shared.track.get();
        let mut updated = Vec::new();
        let mut removed = Vec::new();
        let mut news = 0;
        let full_state = ty == CDS || ty == LDS;
        if full_state {
            // Removal is omission (R9). Routes first: removing clusters checks them.
            let keep: HashSet<&Name> = decoded.iter().map(|(_, d)| d.name()).collect();
            let gone: Vec<Name> = self.held[ty]
                .keys()
                .filter(|n| !keep.contains(n))
                .cloned()
                .collect();
            drop(keep);
            for n in gone {
                self.remove(ty, &n, &mut unsubscribe);
                news += 1;
                removed.push(n);
            }
        }
        for (hash, d) in decoded {
            let name = d.name().clone();
            let version: Rc<str> = Rc::from(format!("{hash:016x}").as_str());
            let new = self.apply(ty, version, hash, d, &mut subscribe);
            if new {
                news += 1;
            }
            if track && (new || !full_state) {
                updated.push(name);
            }
        }
        if ty == CDS {
            self.sotw_resync = false;
        }
        if news == 0 && !std::mem::take(&mut self.first[ty]) {
            self.shared.violation(
                self.id,
                |v| v.response_with_nothing_new += 1,
                || {
                    format!(
                        "{} response with nothing new: version {}, {} resources",
                        TYPE_NAMES[ty],
                        r.version_info,
                        r.resources.len()
                    )
                },
            );
        }
        self.first[ty] = false;
        self.sotw_version[ty] = r.version_info.clone();
        let _ = tx.send(DiscoveryRequest {
            version_info: r.version_info.clone(),
            resource_names: self.sotw_names(ty),
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
        for t in [EDS, RDS] {
            if !self.change_subscription(t, &subscribe[t], &unsubscribe[t]) {
                continue;
            }
            // The new full name list of the type, with the last accepted version and nonce.
            let _ = tx.send(DiscoveryRequest {
                version_info: self.sotw_version[t].clone(),
                resource_names: self.sotw_names(t),
                type_url: TYPE_URLS[t].into(),
                response_nonce: self.last_nonce[t].clone(),
                ..Default::default()
            });
        }
        if self.ready_for_lds() {
            let _ = tx.send(self.sotw_initial(LDS));
        }
        self.emit(EventKind::Response {
            ty,
            updated,
            removed,
        });
        self.report_sync();
    }
}

fn rejection() -> RpcStatus {
    RpcStatus {
        code: 3,
        message: "load generator: rejected on purpose".into(),
        details: Vec::new(),
    }
}
