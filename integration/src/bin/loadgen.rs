//! meshgate's load generator (`make bench`; `--short` in CI).
//!
//! It starts meshgate's xDS server as a separate process (this binary's `server` mode: the
//! meshgate library's store and server with a synthetic mesh of N services × M endpoints,
//! changed on command over stdin), opens S delta streams that behave like Envoy's (wildcard
//! CDS, then EDS for every cluster, ACKing each response), and measures:
//! connect storm, convergence of one endpoint change to every stream, bytes on the wire per
//! stream per change (TCP bytes, so HTTP/2 and gRPC framing are included), server RSS per
//! stream, server CPU per change and idle, and correctness counters (duplicate names,
//! unexpected responses, resends after a NACK, streams left behind after disconnect).
//!
//! The generator runs on one thread so that it does not starve the server.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper_util::rt::TokioIo;
use integration::fixtures::{cla, cluster, invalid_cluster, node};
use meshgate::xds::{Debounce, GroupKey, ResourceType, Role, Update};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};

#[derive(Parser, Debug, Clone)]
#[command(about = "meshgate load generator")]
struct Args {
    /// A short run for CI: small workload, checks the correctness counters only.
    #[arg(long)]
    short: bool,
    /// Internal: run the synthetic meshgate server (spawned by the generator).
    #[arg(long, hide = true)]
    server: bool,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Endpoint changes to measure.
    #[arg(long, default_value_t = 30)]
    changes: usize,
    /// State-of-the-world streams for the comparison run (0 to skip).
    #[arg(long, default_value_t = 1000)]
    sotw_streams: usize,
    /// Also run 10,000 services × 100 streams.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    large: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.server {
        return server_main(&args);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(generator(args))
}

// ---------------------------------------------------------------------------------------------
// Server mode

fn group() -> GroupKey {
    GroupKey::new(Role::Ingress, "dc1", None)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn endpoints_of(i: usize, endpoints: usize, salt: u64) -> Vec<u16> {
    (0..endpoints)
        .map(|e| (10000 + (i * 7 + e * 13 + salt as usize) % 50000) as u16)
        .collect()
}

fn server_main(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let metrics = Arc::new(meshgate::metrics::Metrics::new());
        let store = meshgate::xds::Store::new(Debounce::NONE, metrics.clone());
        let names: Vec<String> = (0..args.services).map(service_name).collect();
        store.publish(
            &group(),
            Update::new()
                .replace(names.iter().map(|n| cluster(n)))
                .replace(
                    (0..args.services).map(|i| cla(&names[i], &endpoints_of(i, args.endpoints, 0))),
                ),
        )?;
        let streams = Arc::new(meshgate::xds::stream::StreamRegistry::default());
        let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (xds_addr, admin_addr) = (xds.local_addr()?, admin.local_addr()?);
        let server = meshgate::xds::XdsServer::new(store.clone(), streams.clone(), "dc1");
        tokio::spawn(meshgate::admin::serve(
            admin,
            meshgate::admin::AdminState {
                metrics,
                streams,
                store: store.clone(),
                ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                sources: Default::default(),
            },
            std::future::pending(),
        ));
        tokio::spawn(server.serve(xds, None, std::future::pending()));
        println!("ready {xds_addr} {admin_addr}");
        std::io::stdout().flush()?;
        // Commands on stdin: "change <i> <salt>", "break", "fix", "quit".
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let reply = match parts.as_slice() {
                ["change", i, salt] => {
                    let i: usize = i.parse()?;
                    let salt: u64 = salt.parse()?;
                    let g = store.publish(
                        &group(),
                        Update::new().upsert([cla(
                            &service_name(i),
                            &endpoints_of(i, args.endpoints, salt),
                        )]),
                    )?;
                    format!("ok {}", g.unwrap_or(0))
                }
                ["break"] => {
                    store.publish(&group(), Update::new().upsert([invalid_cluster("broken")]))?;
                    "ok".into()
                }
                ["fix"] => {
                    store.publish(
                        &group(),
                        Update::new().remove(ResourceType::Cluster, ["broken"]),
                    )?;
                    "ok".into()
                }
                ["quit"] | [] => break,
                _ => format!("error unknown command {line:?}"),
            };
            println!("{reply}");
            std::io::stdout().flush()?;
        }
        anyhow::Ok(())
    })
}

struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    xds: SocketAddr,
    admin: SocketAddr,
}

impl ServerProcess {
    fn start(args: &Args, services: usize) -> anyhow::Result<ServerProcess> {
        // MESHGATE_LOADGEN_WRAPPER runs the server under a profiler, e.g.
        // "valgrind --tool=massif".
        let wrapper = std::env::var("MESHGATE_LOADGEN_WRAPPER").unwrap_or_default();
        let mut words: Vec<String> = wrapper.split_whitespace().map(String::from).collect();
        words.push(std::env::current_exe()?.display().to_string());
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .args([
                "--server",
                "--services",
                &services.to_string(),
                "--endpoints",
                &args.endpoints.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(parts.first() == Some(&"ready"), "server said {line:?}");
        Ok(ServerProcess {
            xds: parts[1].parse()?,
            admin: parts[2].parse()?,
            child,
            stdin,
            stdout,
        })
    }

    fn command(&mut self, cmd: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        anyhow::ensure!(line.starts_with("ok"), "server: {line}");
        Ok(line.trim().to_owned())
    }

    /// Resident memory (KiB) and CPU time (user+system) of the server process.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name: utime is 14th, stime 15th of the whole line.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        // After the name: state is field 3 (index 0); utime 14 and stime 15.
        let ticks = field(11) + field(12);
        Duration::from_millis(ticks * 10) // USER_HZ = 100
    }

    async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{}", self.admin, path);
        match reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Counting TCP bytes

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

async fn counted_channel(addr: SocketAddr, read: Arc<AtomicU64>) -> tonic::transport::Channel {
    Endpoint::from_static("http://meshgate")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let read = read.clone();
            async move {
                let inner = TcpStream::connect(addr).await?;
                inner.set_nodelay(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(Counted { inner, read }))
            }
        }))
        .await
        .expect("connect")
}

// ---------------------------------------------------------------------------------------------
// Streams

#[derive(Default)]
struct Violations {
    duplicate_names: u64,
    unexpected_responses: u64,
    resent_after_nack: u64,
    not_converged: u64,
    leaked_streams: u64,
}

/// What a stream reports to the generator.
enum Event {
    Synced,
    Got {
        stream: usize,
        type_url: String,
        names: Vec<(String, String)>,
        removed: usize,
        at: Instant,
        duplicate: bool,
    },
}

/// One Envoy-like delta stream: wildcard CDS, EDS for every cluster, ACK everything.
/// The stream `nack` NACKs the first CDS response after sync.
async fn delta_stream(
    id: usize,
    ch: tonic::transport::Channel,
    services: usize,
    nack_next_cds: bool,
    events: mpsc::UnboundedSender<Event>,
) {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut client = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(1 << 30);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(&format!("load-{id}"))),
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let Ok(resp) = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut inbound = resp.into_inner();
    // Sync is complete when every cluster and every assignment has arrived (large initial
    // responses come in several chunks).
    let (mut cds_seen, mut eds_seen) = (0usize, 0usize);
    let mut subscribed = false;
    let mut nack_pending = nack_next_cds;
    while let Ok(Some(r)) = inbound.message().await {
        let at = Instant::now();
        let is_cds = r.type_url == ResourceType::Cluster.type_url();
        if cds_seen < services || eds_seen < services {
            if is_cds {
                cds_seen += r.resources.len();
            } else {
                eds_seen += r.resources.len();
            }
            if !subscribed && is_cds {
                subscribed = true;
                let names = (0..services).map(service_name).collect();
                let _ = tx
                    .send(DeltaDiscoveryRequest {
                        type_url: ResourceType::Endpoint.type_url().into(),
                        resource_names_subscribe: names,
                        ..Default::default()
                    })
                    .await;
            }
            ack(&tx, &r, None).await;
            if cds_seen >= services && eds_seen >= services {
                let _ = events.send(Event::Synced);
            }
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        let duplicate = !r.resources.iter().all(|x| seen.insert(x.name.clone()));
        let error = (is_cds && nack_pending).then(|| {
            nack_pending = false;
            "load generator: rejecting on purpose".to_owned()
        });
        ack(&tx, &r, error).await;
        let _ = events.send(Event::Got {
            stream: id,
            type_url: r.type_url.clone(),
            names: r
                .resources
                .iter()
                .map(|x| (x.name.clone(), x.version.clone()))
                .collect(),
            removed: r.removed_resources.len(),
            at,
            duplicate,
        });
    }
}

async fn ack(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    r: &DeltaDiscoveryResponse,
    error: Option<String>,
) {
    let _ = tx
        .send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.as_deref().map(integration::client::rejection),
            ..Default::default()
        })
        .await;
}

/// A state-of-the-world stream: wildcard CDS, EDS for every cluster, ACK everything.
async fn sotw_stream(
    id: usize,
    ch: tonic::transport::Channel,
    services: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut client = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(1 << 30);
    tx.send(DiscoveryRequest {
        node: Some(node(&format!("sotw-{id}"))),
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let Ok(resp) = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut inbound = resp.into_inner();
    let eds_names: Vec<String> = (0..services).map(service_name).collect();
    let (mut cds_seen, mut eds_seen) = (0usize, 0usize);
    let mut subscribed = false;
    while let Ok(Some(r)) = inbound.message().await {
        let at = Instant::now();
        let is_cds = r.type_url == ResourceType::Cluster.type_url();
        let names = if is_cds || !subscribed {
            Vec::new()
        } else {
            eds_names.clone()
        };
        if cds_seen < services || eds_seen < services {
            if is_cds {
                cds_seen = r.resources.len(); // full state
            } else {
                eds_seen += r.resources.len();
            }
            if !subscribed && is_cds {
                subscribed = true;
                // The EDS request; it also names what the stream wants from now on.
                let _ = tx
                    .send(DiscoveryRequest {
                        type_url: ResourceType::Endpoint.type_url().into(),
                        resource_names: eds_names.clone(),
                        ..Default::default()
                    })
                    .await;
            }
            sotw_ack(
                &tx,
                &r,
                if is_cds {
                    Vec::new()
                } else {
                    eds_names.clone()
                },
            )
            .await;
            if cds_seen >= services && eds_seen >= services {
                let _ = events.send(Event::Synced);
            }
            continue;
        }
        sotw_ack(&tx, &r, names).await;
        let _ = events.send(Event::Got {
            stream: id,
            type_url: r.type_url.clone(),
            names: vec![(String::new(), r.version_info.clone()); r.resources.len()],
            removed: 0,
            at,
            duplicate: false,
        });
    }
}

async fn sotw_ack(tx: &mpsc::Sender<DiscoveryRequest>, r: &DiscoveryResponse, names: Vec<String>) {
    let _ = tx.send(integration::client::sotw_ack(r, names)).await;
}

// ---------------------------------------------------------------------------------------------
// Runs and figures

#[derive(Serialize, Default, Clone)]
struct RunResult {
    protocol: &'static str,
    services: usize,
    endpoints: usize,
    streams: usize,
    changes: usize,
    connect_storm_ms: f64,
    convergence_ms_p50: f64,
    convergence_ms_p99: f64,
    convergence_ms_max: f64,
    bytes_per_stream_per_change: f64,
    changed_cla_encoded_bytes: usize,
    server_rss_per_stream_kib: f64,
    server_cpu_ms_per_change: f64,
    server_idle_cpu_percent: f64,
    duplicate_names: u64,
    unexpected_responses: u64,
    resent_after_nack: u64,
    not_converged: u64,
    leaked_streams: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(
    args: &Args,
    protocol: &'static str,
    services: usize,
    streams: usize,
) -> anyhow::Result<RunResult> {
    let mut server = ServerProcess::start(args, services)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss_kib();
    let read = Arc::new(AtomicU64::new(0));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let nack_stream = 0;
    for id in 0..streams {
        let ch = counted_channel(server.xds, read.clone()).await;
        let tx = ev_tx.clone();
        tasks.push(match protocol {
            "delta" => tokio::spawn(delta_stream(id, ch, services, id == nack_stream, tx)),
            _ => tokio::spawn(sotw_stream(id, ch, services, tx)),
        });
    }
    let mut v = Violations::default();
    let mut synced = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while synced < streams {
        match tokio::time::timeout_at(deadline.into(), ev_rx.recv()).await {
            Ok(Some(Event::Synced)) => synced += 1,
            Ok(Some(Event::Got { .. })) => v.unexpected_responses += 1,
            _ => anyhow::bail!("only {synced} of {streams} streams synced"),
        }
    }
    let storm = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.rss_kib();

    // Idle CPU over 2 s.
    let cpu0 = server.cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.cpu() - cpu0;

    // Endpoint changes, one at a time; each must reach every stream.
    let mut samples: Vec<f64> = Vec::new();
    let mut bytes = 0u64;
    let cpu_start = server.cpu();
    let mut cla_size = 0;
    for c in 0..args.changes {
        let svc = (c * 37) % services;
        let name = service_name(svc);
        let want = cla(&name, &endpoints_of(svc, args.endpoints, c as u64 + 1));
        cla_size = prost::Message::encoded_len(&want);
        let b0 = read.load(Ordering::Relaxed);
        let t0 = Instant::now();
        server.command(&format!("change {svc} {}", c + 1))?;
        let mut got = vec![false; streams];
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while n < streams {
            match tokio::time::timeout_at(deadline.into(), ev_rx.recv()).await {
                Ok(Some(Event::Got {
                    stream,
                    type_url,
                    names,
                    duplicate,
                    at,
                    removed,
                })) => {
                    v.duplicate_names += duplicate as u64;
                    let ok = type_url == ResourceType::Endpoint.type_url()
                        && names.len() == 1
                        && (protocol == "sotw" || names[0].0 == name)
                        && removed == 0;
                    if !ok || got[stream] {
                        v.unexpected_responses += 1;
                        continue;
                    }
                    got[stream] = true;
                    n += 1;
                    samples.push((at - t0).as_secs_f64() * 1000.0);
                }
                _ => {
                    v.not_converged += (streams - n) as u64;
                    break;
                }
            }
        }
        // Let stragglers (anything unexpected) arrive before the next change.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(ev) = ev_rx.try_recv() {
            if let Event::Got { .. } = ev {
                v.unexpected_responses += 1;
            }
        }
        bytes += read.load(Ordering::Relaxed) - b0;
    }
    let cpu_changes = server.cpu() - cpu_start;

    // A NACK from one stream: the bad version must reach every stream once and never again.
    if protocol == "delta" {
        server.command("break")?;
        let mut cds = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cds < streams {
            match tokio::time::timeout_at(deadline.into(), ev_rx.recv()).await {
                Ok(Some(Event::Got { type_url, .. }))
                    if type_url == ResourceType::Cluster.type_url() =>
                {
                    cds += 1
                }
                Ok(Some(_)) => v.unexpected_responses += 1,
                _ => {
                    v.not_converged += (streams - cds) as u64;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(ev) = ev_rx.try_recv() {
            if let Event::Got { type_url, .. } = ev {
                if type_url == ResourceType::Cluster.type_url() {
                    v.resent_after_nack += 1;
                } else {
                    v.unexpected_responses += 1;
                }
            }
        }
        server.command("fix")?;
    }

    // Disconnect everything: the server must free every stream.
    for t in &tasks {
        t.abort();
    }
    drop(tasks);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let streams_left: Vec<serde_json::Value> =
            serde_json::from_str(&server.admin_get("/debug/streams").await).unwrap_or_default();
        if streams_left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            v.leaked_streams = streams_left.len() as u64;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = server.admin_get("/metrics").await;
    let gauge = integration::harness::metric_value(
        &metrics,
        &format!("meshgate_xds_connected_streams{{protocol=\"{protocol}\"}}"),
    );
    v.leaked_streams = v.leaked_streams.max(gauge as u64);

    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(RunResult {
        protocol,
        services,
        endpoints: args.endpoints,
        streams,
        changes: args.changes,
        connect_storm_ms: storm.as_secs_f64() * 1000.0,
        convergence_ms_p50: percentile(&samples, 0.50),
        convergence_ms_p99: percentile(&samples, 0.99),
        convergence_ms_max: samples.last().copied().unwrap_or(f64::NAN),
        bytes_per_stream_per_change: bytes as f64 / (streams * args.changes.max(1)) as f64,
        changed_cla_encoded_bytes: cla_size,
        server_rss_per_stream_kib: (rss_after.saturating_sub(rss_before)) as f64 / streams as f64,
        server_cpu_ms_per_change: cpu_changes.as_secs_f64() * 1000.0 / args.changes.max(1) as f64,
        server_idle_cpu_percent: idle.as_secs_f64() / 2.0 * 100.0,
        duplicate_names: v.duplicate_names,
        unexpected_responses: v.unexpected_responses,
        resent_after_nack: v.resent_after_nack,
        not_converged: v.not_converged,
        leaked_streams: v.leaked_streams,
    })
}

fn print_table(results: &[RunResult]) {
    println!(
        "\n{:<6} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10} {:>9} {:>6}",
        "proto",
        "services",
        "streams",
        "storm ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "B/str/chg",
        "CLA B",
        "KiB/strm",
        "cpu ms/c",
        "idle%"
    );
    for r in results {
        println!(
            "{:<6} {:>8} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>8} {:>10.1} {:>9.2} {:>6.2}",
            r.protocol,
            r.services,
            r.streams,
            r.connect_storm_ms,
            r.convergence_ms_p50,
            r.convergence_ms_p99,
            r.convergence_ms_max,
            r.bytes_per_stream_per_change,
            r.changed_cla_encoded_bytes,
            r.server_rss_per_stream_kib,
            r.server_cpu_ms_per_change,
            r.server_idle_cpu_percent,
        );
    }
    println!("\ncorrectness counters (must all be 0):");
    for r in results {
        println!(
            "  {} {}x{}: duplicate names {}, unexpected responses {}, resent after NACK {}, not converged {}, leaked streams {}",
            r.protocol,
            r.services,
            r.streams,
            r.duplicate_names,
            r.unexpected_responses,
            r.resent_after_nack,
            r.not_converged,
            r.leaked_streams
        );
    }
}

async fn generator(args: Args) -> anyhow::Result<()> {
    let mut plan: Vec<(&'static str, usize, usize)> = Vec::new();
    let mut args = args;
    if args.short {
        args.changes = 5;
        plan.push(("delta", 100, 50));
        plan.push(("sotw", 100, 20));
    } else {
        plan.push(("delta", args.services, args.streams));
        if args.sotw_streams > 0 {
            plan.push(("sotw", args.services, args.sotw_streams));
        }
        if args.large {
            plan.push(("delta", 10_000, 100));
        }
    }
    let mut results = Vec::new();
    for (protocol, services, streams) in plan {
        eprintln!(
            "running {protocol}: {services} services x {} endpoints, {streams} streams",
            args.endpoints
        );
        results.push(run(&args, protocol, services, streams).await?);
    }
    print_table(&results);
    let commit = integration::git_commit();
    let json = serde_json::json!({
        "commit": commit,
        "short": args.short,
        "runs": results,
    });
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to {}", args.out);
    let bad: u64 = results
        .iter()
        .map(|r| {
            r.duplicate_names
                + r.unexpected_responses
                + r.resent_after_nack
                + r.not_converged
                + r.leaked_streams
        })
        .sum();
    // The plain closing line, counted by CI.
    let runs = results.len();
    if bad == 0 {
        println!("loadgen: {runs} passed, 0 failed");
        Ok(())
    } else {
        println!("loadgen: 0 passed, {runs} failed");
        anyhow::bail!("{bad} correctness violations")
    }
}
