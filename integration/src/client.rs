//! A step-by-step xDS client on envoy-types' generated stubs, for the conformance suite and
//! the load generator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshgate::xds::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

/// How long a test waits for a response before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Which service to open the stream on.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    Ads,
    /// The per-type service (only CDS and EDS are wired here).
    Single(ResourceType),
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to meshgate at {addr}: {e}"))
}

const MAX_MSG: usize = 256 * 1024 * 1024;

/// The next message of a response stream, or why there is none (error, end, timeout).
async fn next_message<T>(rx: &mut Streaming<T>) -> Result<T, String> {
    match tokio::time::timeout(RECV_TIMEOUT, rx.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err("stream ended while a response was expected".into()),
        Ok(Err(s)) => Err(format!("stream failed while a response was expected: {s}")),
        Err(_) => Err(format!("no response within {RECV_TIMEOUT:?}")),
    }
}

/// The status a response stream ends with; fails the test if a response or a clean end comes.
async fn expect_error<T: std::fmt::Debug>(rx: &mut Streaming<T>) -> Status {
    match tokio::time::timeout(RECV_TIMEOUT, rx.message()).await {
        Ok(Err(s)) => s,
        Ok(Ok(Some(r))) => panic!("expected an error, got a response: {r:?}"),
        Ok(Ok(None)) => panic!("expected an error, the stream ended cleanly"),
        Err(_) => panic!("no error within {RECV_TIMEOUT:?}"),
    }
}

/// The `error_detail` of a NACK.
pub fn rejection(message: &str) -> RpcStatus {
    RpcStatus {
        code: 3, // INVALID_ARGUMENT, as Envoy sends
        message: message.into(),
        details: vec![],
    }
}

/// A state-of-the-world ACK of `r` that (re)names `names`.
pub fn sotw_ack(r: &DiscoveryResponse, names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: r.type_url.clone(),
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        resource_names: names,
        ..Default::default()
    }
}

/// A delta xDS stream.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    pub node: Node,
    first: bool,
    probes: u64,
}

impl DeltaClient {
    pub async fn connect(addr: SocketAddr, node: Node) -> DeltaClient {
        Self::connect_via(addr, node, Via::Ads).await
    }

    pub async fn connect_via(addr: SocketAddr, node: Node, via: Via) -> DeltaClient {
        Self::on_channel(channel(addr).await, node, via)
            .await
            .unwrap_or_else(|s| panic!("open delta stream: {s}"))
    }

    pub async fn on_channel(ch: Channel, node: Node, via: Via) -> Result<DeltaClient, Status> {
        let (tx, rx) = mpsc::channel(64);
        let out = ReceiverStream::new(rx);
        let resp = match via {
            Via::Ads => {
                AggregatedDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MSG)
                    .delta_aggregated_resources(out)
                    .await?
            }
            Via::Single(ResourceType::Cluster) => {
                ClusterDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MSG)
                    .delta_clusters(out)
                    .await?
            }
            Via::Single(ResourceType::Endpoint) => {
                EndpointDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MSG)
                    .delta_endpoints(out)
                    .await?
            }
            Via::Single(t) => panic!("per-type client for {t} not wired"),
        };
        Ok(DeltaClient {
            tx,
            rx: resp.into_inner(),
            node,
            first: true,
            probes: 0,
        })
    }

    /// Sends a request; the first one carries the node (R1).
    pub async fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if self.first {
            req.node = Some(self.node.clone());
            self.first = false;
        }
        self.tx.send(req).await.expect("stream open");
    }

    pub async fn subscribe(&mut self, ty: ResourceType, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn unsubscribe(&mut self, ty: ResourceType, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_unsubscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    /// The next response; fails the test after [`RECV_TIMEOUT`] or if the stream ends.
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        next_message(&mut self.rx)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next response, or why there is none (stream error, end, timeout).
    pub async fn try_recv(&mut self) -> Result<DeltaDiscoveryResponse, String> {
        next_message(&mut self.rx).await
    }

    /// Receives the next response and ACKs it.
    pub async fn recv_ack(&mut self) -> DeltaDiscoveryResponse {
        let r = self.recv().await;
        self.ack(&r).await;
        r
    }

    /// The status the stream ends with (fails if a response comes instead).
    pub async fn recv_error(&mut self) -> Status {
        expect_error(&mut self.rx).await
    }

    pub async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&mut self, r: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(rejection(message)),
            ..Default::default()
        })
        .await;
    }

    /// Proves the server has nothing queued for this stream: subscribes to a secret that does
    /// not exist, which the server must answer (R12), and returns every response that came
    /// before that answer. Requests are handled in order, so anything the server meant to send
    /// for earlier requests arrives first.
    pub async fn probe(&mut self) -> Vec<DeltaDiscoveryResponse> {
        self.probes += 1;
        let name = format!("probe-{}", self.probes);
        self.subscribe(ResourceType::Secret, &[&name]).await;
        let mut before = Vec::new();
        loop {
            let r = self.recv().await;
            if r.type_url == ResourceType::Secret.type_url()
                && r.removed_resources == [name.clone()]
            {
                self.ack(&r).await;
                self.unsubscribe(ResourceType::Secret, &[&name]).await;
                return before;
            }
            before.push(r);
        }
    }

    /// Asserts the server sends nothing more for what happened so far.
    pub async fn expect_quiet(&mut self) {
        let extra = self.probe().await;
        assert!(
            extra.is_empty(),
            "expected no response, got {:?}",
            summarize_delta(&extra)
        );
    }
}

/// `type: +names -names` lines, for assertion messages.
pub fn summarize_delta(rs: &[DeltaDiscoveryResponse]) -> Vec<String> {
    rs.iter()
        .map(|r| {
            format!(
                "{} +{:?} -{:?}",
                r.type_url.rsplit('.').next().unwrap_or_default(),
                names(r),
                r.removed_resources
            )
        })
        .collect()
}

/// Names of the resources in a delta response, in order.
pub fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

/// A state-of-the-world xDS stream.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    pub node: Node,
    first: bool,
    /// Per type: the names last requested, and the last (version, nonce) received.
    names: HashMap<String, Vec<String>>,
    last: HashMap<String, (String, String)>,
}

impl SotwClient {
    pub async fn connect(addr: SocketAddr, node: Node) -> SotwClient {
        Self::connect_via(addr, node, Via::Ads).await
    }

    pub async fn connect_via(addr: SocketAddr, node: Node, via: Via) -> SotwClient {
        let ch = channel(addr).await;
        let (tx, rx) = mpsc::channel(64);
        let out = ReceiverStream::new(rx);
        let resp = match via {
            Via::Ads => AggregatedDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(MAX_MSG)
                .stream_aggregated_resources(out)
                .await
                .expect("open sotw stream"),
            Via::Single(ResourceType::Cluster) => ClusterDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(MAX_MSG)
                .stream_clusters(out)
                .await
                .expect("open sotw stream"),
            Via::Single(ResourceType::Endpoint) => EndpointDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(MAX_MSG)
                .stream_endpoints(out)
                .await
                .expect("open sotw stream"),
            Via::Single(t) => panic!("per-type client for {t} not wired"),
        };
        SotwClient {
            tx,
            rx: resp.into_inner(),
            node,
            first: true,
            names: HashMap::new(),
            last: HashMap::new(),
        }
    }

    pub async fn send(&mut self, mut req: DiscoveryRequest) {
        if self.first {
            req.node = Some(self.node.clone());
            self.first = false;
        }
        self.names
            .insert(req.type_url.clone(), req.resource_names.clone());
        self.tx.send(req).await.expect("stream open");
    }

    /// Requests `names` of `ty` (empty = wildcard while nothing was named), ACKing the last
    /// response of that type if there was one.
    pub async fn request(&mut self, ty: ResourceType, names: &[&str]) {
        let url = ty.type_url().to_owned();
        let (version, nonce) = self.last.get(&url).cloned().unwrap_or_default();
        self.send(DiscoveryRequest {
            type_url: url,
            version_info: version,
            response_nonce: nonce,
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        let r = next_message(&mut self.rx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.last.insert(
            r.type_url.clone(),
            (r.version_info.clone(), r.nonce.clone()),
        );
        r
    }

    pub async fn recv_error(&mut self) -> Status {
        expect_error(&mut self.rx).await
    }

    /// ACKs a response: same names, its version and nonce.
    pub async fn ack(&mut self, r: &DiscoveryResponse) {
        let names = self.names.get(&r.type_url).cloned().unwrap_or_default();
        self.send(sotw_ack(r, names)).await;
    }

    pub async fn recv_ack(&mut self) -> DiscoveryResponse {
        let r = self.recv().await;
        self.ack(&r).await;
        r
    }

    /// NACKs a response: the previous good version, its nonce, an error.
    pub async fn nack(&mut self, r: &DiscoveryResponse, good_version: &str, message: &str) {
        let names = self.names.get(&r.type_url).cloned().unwrap_or_default();
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: good_version.into(),
            response_nonce: r.nonce.clone(),
            resource_names: names,
            error_detail: Some(rejection(message)),
            ..Default::default()
        })
        .await;
    }

    /// Like [`DeltaClient::probe`]: asks for the secret `probe` (which the test server
    /// publishes) and returns every response that came before it; then drops it again.
    pub async fn probe(&mut self) -> Vec<DiscoveryResponse> {
        self.request(ResourceType::Secret, &["probe"]).await;
        let mut before = Vec::new();
        loop {
            let r = self.recv().await;
            if r.type_url == ResourceType::Secret.type_url()
                && r.resources.len() == 1
                && self.names.get(&r.type_url).map(|n| n.len()) == Some(1)
            {
                // ACK it and unsubscribe in one request.
                self.request(ResourceType::Secret, &[]).await;
                return before;
            }
            before.push(r);
        }
    }

    pub async fn expect_quiet(&mut self) {
        let extra = self.probe().await;
        assert!(
            extra.is_empty(),
            "expected no response, got {:?}",
            extra
                .iter()
                .map(|r| (
                    r.type_url.clone(),
                    r.resources.len(),
                    r.version_info.clone()
                ))
                .collect::<Vec<_>>()
        );
    }
}

/// Names of the resources in a state-of-the-world response (decoded from the Any payloads).
pub fn sotw_names(r: &DiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use prost::Message;
    r.resources
        .iter()
        .map(|a| {
            let v = a.value.as_slice();
            match ResourceType::from_type_url(&a.type_url) {
                Some(ResourceType::Cluster) => Cluster::decode(v).unwrap().name,
                Some(ResourceType::Endpoint) => {
                    ClusterLoadAssignment::decode(v).unwrap().cluster_name
                }
                Some(ResourceType::Listener) => Listener::decode(v).unwrap().name,
                Some(ResourceType::Route) => RouteConfiguration::decode(v).unwrap().name,
                Some(ResourceType::Secret) => Secret::decode(v).unwrap().name,
                None => panic!("unexpected type {}", a.type_url),
            }
        })
        .collect()
}
