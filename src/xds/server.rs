//! The gRPC side: ADS and the five per-type discovery services, delta and state-of-the-world,
//! all on the one state machine of [`super::stream`], with optional (mutual) TLS.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::stream::{self, Protocol, Service, StreamContext, StreamRegistry};
use super::types::ResourceType;
use super::wire::{
    DeltaRequest as DeltaDiscoveryRequest, RequestFrames, ResponseFrames,
    SotwRequest as DiscoveryRequest,
};
use crate::metrics::Metrics;
use crate::xds::store::Store;

/// TLS for the xDS listener, from PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files; errors name the file that could not be read.
    pub fn load(&self) -> anyhow::Result<ServerTlsConfig> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cannot read the xDS TLS {what} {}: {e}", p.display()))
        };
        let cert = read(&self.cert, "certificate")?;
        let key = read(&self.key, "key")?;
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            cfg = cfg
                .client_ca_root(Certificate::from_pem(read(ca, "client CA")?))
                .client_auth_optional(false);
        }
        Ok(cfg)
    }
}

/// The xDS server: cheap to clone, shares the store and the stream registry.
#[derive(Clone)]
pub struct XdsServer {
    ctx: Arc<StreamContext>,
}

impl XdsServer {
    pub fn new(store: Store, registry: Arc<StreamRegistry>, default_datacenter: &str) -> Self {
        let metrics = store.metrics().clone();
        XdsServer {
            ctx: Arc::new(StreamContext {
                store,
                metrics,
                registry,
                default_datacenter: Arc::from(default_datacenter),
            }),
        }
    }

    pub fn registry(&self) -> &Arc<StreamRegistry> {
        &self.ctx.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    fn svc<K: Kind>(&self) -> XdsGrpc<K> {
        XdsGrpc {
            ctx: self.ctx.clone(),
            _kind: PhantomData,
        }
    }

    /// Serves xDS on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .add_service(self.svc::<Ads>())
            .add_service(self.svc::<Cds>())
            .add_service(self.svc::<Eds>())
            .add_service(self.svc::<Lds>())
            .add_service(self.svc::<Rds>())
            .add_service(self.svc::<Sds>())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}

/// A gRPC service meshgate answers: its name and which types it carries.
pub trait Kind: Send + Sync + 'static {
    const NAME: &'static str;
    const SERVICE: Service;
}

macro_rules! kinds {
    ($($kind:ident = $name:literal, $service:expr;)*) => {
        $(
            pub struct $kind;
            impl Kind for $kind {
                const NAME: &'static str = $name;
                const SERVICE: Service = $service;
            }
        )*
    };
}

kinds! {
    Ads = "envoy.service.discovery.v3.AggregatedDiscoveryService", Service::Ads;
    Cds = "envoy.service.cluster.v3.ClusterDiscoveryService", Service::Single(ResourceType::Cluster);
    Eds = "envoy.service.endpoint.v3.EndpointDiscoveryService", Service::Single(ResourceType::Endpoint);
    Lds = "envoy.service.listener.v3.ListenerDiscoveryService", Service::Single(ResourceType::Listener);
    Rds = "envoy.service.route.v3.RouteDiscoveryService", Service::Single(ResourceType::Route);
    Sds = "envoy.service.secret.v3.SecretDiscoveryService", Service::Single(ResourceType::Secret);
}

/// One discovery service. Methods named `Delta*` are incremental, `Stream*` state of the
/// world; `Fetch*` (REST-style unary) is not served.
pub struct XdsGrpc<K> {
    ctx: Arc<StreamContext>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for XdsGrpc<K> {
    fn clone(&self) -> Self {
        XdsGrpc {
            ctx: self.ctx.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K: Kind> NamedService for XdsGrpc<K> {
    const NAME: &'static str = K::NAME;
}

impl<K, B> tower::Service<http::Request<B>> for XdsGrpc<K>
where
    K: Kind,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let protocol = if method.starts_with("Delta") {
            Protocol::Delta
        } else if method.starts_with("Stream") {
            Protocol::Sotw
        } else {
            return Box::pin(async move {
                Ok(Status::unimplemented("meshgate serves xDS over streams only").into_http())
            });
        };
        let peer = peer_addr(&req);
        let body = req.into_body();
        // Capacity 1: at most one response waits for the transport; everything else is
        // planned from the latest state when there is room (slow consumers get no backlog).
        let (tx, rx) = mpsc::channel(1);
        let ctx = self.ctx.clone();
        match protocol {
            Protocol::Delta => {
                let inbound = RequestFrames::<B, DeltaDiscoveryRequest>::new(body);
                tokio::spawn(stream::run(ctx, protocol, K::SERVICE, peer, inbound, tx));
            }
            Protocol::Sotw => {
                let inbound = RequestFrames::<B, DiscoveryRequest>::new(body);
                tokio::spawn(stream::run(ctx, protocol, K::SERVICE, peer, inbound, tx));
            }
        }
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::new(ResponseFrames::new(rx)))
            .expect("static headers are valid");
        Box::pin(async move { Ok(response) })
    }
}

/// The client's address, as tonic's transport records it (plain TCP or TLS).
fn peer_addr<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}
