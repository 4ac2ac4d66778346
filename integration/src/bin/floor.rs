//! `meshgate-floor`: the fastest this machine moves the bench's bytes, to measure against.
//!
//! A minimal ADS server (the same gRPC transport and framing as meshgate's, no store, no
//! per-stream state beyond "subscribed"): each stream's first request of a type is answered
//! with a response encoded once at start for every stream, and an endpoint change
//! (`POST /change` with `{"op":"endpoint",…}`) is encoded once and broadcast, the same bytes,
//! to every stream. ACKs are read and ignored. Other changes are refused (422): the floor is
//! only the reference for how fast one change can reach every stream.
//!
//! It prints the same ready line as `meshgate-benchserver` and answers `GET /stats`.

use std::alloc::System;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use integration::bench::{Applied, Control, Op, Ready, Stats, Workload, control_router};
use meshgate::xds::wire::{
    DeltaRequest, RequestFrames, ResponseFrames, SotwRequest, delta_response, name_str,
    sotw_response,
};
use meshgate::xds::{Entry, ResourceType};
use parking_lot::Mutex;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::sync::{broadcast, mpsc};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::NamedService;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Parser, Debug)]
#[command(about = "a minimal ADS server broadcasting pre-encoded responses: the bench's floor")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value = "127.0.0.1:0")]
    xds: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    #[arg(long)]
    workers: Option<usize>,
}

/// Responses for each type, delta and state of the world, encoded once.
struct Initial {
    delta: [Bytes; 4],
    sotw: [Bytes; 4],
}

const TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::Route,
];

fn index(ty: ResourceType) -> Option<usize> {
    TYPES.iter().position(|t| *t == ty)
}

struct Floor {
    workload: Mutex<Workload>,
    assignments: Mutex<BTreeMap<String, Arc<Entry>>>,
    initial: Initial,
    changes: broadcast::Sender<Arc<(Bytes, Bytes)>>,
    streams: AtomicU64,
    seq: AtomicU64,
}

impl Floor {
    fn new(workload: Workload) -> Floor {
        let clusters: Vec<Arc<Entry>> = workload
            .present()
            .map(|i| Entry::new(&workload.cluster(i)))
            .collect();
        let assignments: BTreeMap<String, Arc<Entry>> = workload
            .present()
            .map(|i| {
                let e = Entry::new(&workload.assignment(i));
                (e.name.to_string(), e)
            })
            .collect();
        let all: Vec<Arc<Entry>> = assignments.values().cloned().collect();
        let sets: [Vec<Arc<Entry>>; 4] = [
            clusters,
            all,
            vec![Entry::new(&workload.listener())],
            vec![Entry::new(&workload.routes())],
        ];
        let initial = Initial {
            delta: std::array::from_fn(|t| {
                delta_response(TYPES[t].type_url(), "", "i", &sets[t], &[])
            }),
            sotw: std::array::from_fn(|t| {
                sotw_response(TYPES[t].type_url(), "i", "i", sets[t].iter())
            }),
        };
        Floor {
            workload: Mutex::new(workload),
            assignments: Mutex::new(assignments),
            initial,
            changes: broadcast::channel(1024).0,
            streams: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }
    }

    /// The assignments named in a request that are not the whole set.
    fn named(&self, names: &[Bytes], delta: bool) -> Bytes {
        let all = self.assignments.lock();
        let picked: Vec<Arc<Entry>> = names
            .iter()
            .filter_map(|n| all.get(name_str(n)?).cloned())
            .collect();
        let url = ResourceType::Endpoint.type_url();
        if delta {
            delta_response(url, "", "n", &picked, &[])
        } else {
            sotw_response(url, "n", "n", picked.iter())
        }
    }
}

impl Control for Floor {
    fn apply(&self, op: Op) -> Result<Applied, String> {
        let Op::Endpoint { service } = op else {
            return Err("the floor serves endpoint changes only".into());
        };
        let start = Instant::now();
        let mut workload = self.workload.lock();
        let (_, mut applied) = workload.apply(op)?;
        let entry = Entry::new(&workload.assignment(service));
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let nonce = format!("b{n}");
        let url = ResourceType::Endpoint.type_url();
        let delta = delta_response(url, "", &nonce, std::slice::from_ref(&entry), &[]);
        let sotw = sotw_response(url, &nonce, &nonce, std::iter::once(&entry));
        self.assignments
            .lock()
            .insert(entry.name.to_string(), entry);
        let _ = self.changes.send(Arc::new((delta, sotw)));
        applied.server_us = start.elapsed().as_micros() as u64;
        Ok(applied)
    }

    fn stats(&self) -> Stats {
        let a = GLOBAL.stats();
        Stats {
            pid: std::process::id(),
            streams: self.streams.load(Ordering::Relaxed),
            allocations: (a.allocations + a.reallocations) as u64,
            allocated_bytes: (a.bytes_allocated + a.bytes_reallocated.max(0) as usize) as u64,
        }
    }
}

/// A request as the floor reads it: its type, whether it asks for something (first request
/// or subscription change) or only answers a response, and the names it subscribes.
struct Asked {
    ty: Option<usize>,
    asks: bool,
    names: Vec<Bytes>,
}

async fn run_stream<Req>(
    floor: Arc<Floor>,
    mut inbound: RequestFrames<impl http_body::Body<Error = impl Into<StdError>>, Req>,
    tx: mpsc::Sender<Result<Bytes, tonic::Status>>,
    delta: bool,
    read: impl Fn(Req) -> Asked,
) where
    Req: prost::Message + Default,
{
    floor.streams.fetch_add(1, Ordering::Relaxed);
    let mut changes = floor.changes.subscribe();
    let mut endpoints = false;
    loop {
        tokio::select! {
            req = inbound.next() => {
                let Some(Ok(req)) = req else { break };
                let asked = read(req);
                let Some(t) = asked.ty else { continue };
                if !asked.asks {
                    continue;
                }
                let bytes = if t == 1 {
                    endpoints = true;
                    if asked.names.len() == floor.assignments.lock().len() {
                        pick(&floor.initial, t, delta)
                    } else {
                        floor.named(&asked.names, delta)
                    }
                } else {
                    pick(&floor.initial, t, delta)
                };
                if tx.send(Ok(bytes)).await.is_err() {
                    break;
                }
            }
            change = changes.recv() => {
                match change {
                    Ok(c) if endpoints => {
                        let bytes = if delta { c.0.clone() } else { c.1.clone() };
                        if tx.send(Ok(bytes)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
    floor.streams.fetch_sub(1, Ordering::Relaxed);
}

fn pick(initial: &Initial, t: usize, delta: bool) -> Bytes {
    if delta {
        initial.delta[t].clone()
    } else {
        initial.sotw[t].clone()
    }
}

#[derive(Clone)]
struct Ads(Arc<Floor>);

impl NamedService for Ads {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tower::Service<http::Request<B>> for Ads
where
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
        let delta = req.uri().path().ends_with("/DeltaAggregatedResources");
        let body = req.into_body();
        let (tx, rx) = mpsc::channel(16);
        let floor = self.0.clone();
        if delta {
            let inbound = RequestFrames::<B, DeltaRequest>::new(body);
            tokio::spawn(run_stream(floor, inbound, tx, true, |r: DeltaRequest| {
                Asked {
                    ty: ResourceType::from_type_url(&r.type_url).and_then(index),
                    asks: r.response_nonce.is_empty() || !r.resource_names_subscribe.is_empty(),
                    names: r.resource_names_subscribe,
                }
            }));
        } else {
            let inbound = RequestFrames::<B, SotwRequest>::new(body);
            tokio::spawn(run_stream(floor, inbound, tx, false, |r: SotwRequest| {
                Asked {
                    ty: ResourceType::from_type_url(&r.type_url).and_then(index),
                    asks: r.response_nonce.is_empty(),
                    names: r.resource_names,
                }
            }));
        }
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::new(ResponseFrames::new(rx)))
            .expect("static headers are valid");
        Box::pin(async move { Ok(response) })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let floor = Arc::new(Floor::new(Workload::new(args.services, args.endpoints)));
    let xds = tokio::net::TcpListener::bind(args.xds).await?;
    let control = tokio::net::TcpListener::bind(args.control).await?;
    let ready = Ready {
        xds: xds.local_addr()?,
        control: control.local_addr()?,
    };
    let c = floor.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(control, control_router(c)).await {
            eprintln!("meshgate-floor: control port: {e}");
        }
    });
    println!("{}", serde_json::to_string(&ready)?);
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(Ads(floor))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds))
        .await?;
    Ok(())
}
