//! `meshgate-loadgen`: the load generator of `make bench` (`--short` in CI).
//!
//! It opens N Envoy-like ADS streams (see `integration::load`) against a bench server and
//! drives phases of changes through the server's control port (`POST /change`, see
//! `integration::bench`), measuring from the change to every stream's ACK. By default it
//! starts, one after the other, `meshgate-benchserver` (meshgate's store and xDS server) and
//! `meshgate-floor` (a minimal server broadcasting pre-encoded bytes) from its own directory,
//! for delta and state of the world; with `--xds` and `--control` it measures a server
//! already running (any control plane behind an adapter for the two control calls).
//!
//! Phases: connect storm; idle; endpoint changes at a steady rate; services added and
//! removed; cluster-only changes; a rolling change of 10% of the services inside one second;
//! a reconnect storm with nothing changed and one with 5% of the services removed while
//! disconnected; a NACK from one stream; disconnect (streams left on the server).
//!
//! The generator runs on one thread: it must not starve the server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use integration::bench::dir::DirWorkload;
use integration::bench::{Applied, Op, Ready, Stats, service_name};
use integration::load::{
    CDS, Cmd, EDS, EnvoyStream, Event, EventKind, Name, Protocol, Shared, Target, TlsSettings,
    Violations, type_index,
};
use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Parser, Debug, Clone)]
#[command(about = "meshgate's load generator: Envoy-like ADS streams, phases of changes, figures")]
struct Args {
    /// A short run for CI: a small workload; fails only on correctness counters.
    #[arg(long)]
    short: bool,
    /// Services of the workload (with `--xds`: the clusters a stream holds once synced).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Delta streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// State-of-the-world streams (0: no state-of-the-world run).
    #[arg(long, default_value_t = 1000)]
    sotw_streams: usize,
    /// Delta streams for the run of the real `meshgate serve` on a generated directory (0: no
    /// such run). Its ingress listener carries a filter chain per service.
    #[arg(long, default_value_t = 100)]
    serve_streams: usize,
    /// Also run 10,000 services × 100 delta streams.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    large: bool,
    /// Endpoint changes in the steady phase.
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Endpoint changes per second in the steady phase.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of the idle phase.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Skip the floor runs.
    #[arg(long)]
    no_floor: bool,
    /// Only the connect storm, idle and endpoint changes (what the floor serves).
    #[arg(long)]
    endpoint_only: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Translation figures to include (written by `meshgate-sourcebench --out`).
    #[arg(long, default_value = "target/bench/translation.json")]
    translation: PathBuf,

    // A server that is already running (any ADS server behind the control calls).
    /// xDS address of a running server; with it, only that server is measured.
    #[arg(long, requires = "control")]
    xds: Option<std::net::SocketAddr>,
    /// Control port of the running server (`POST /change`, `GET /stats`).
    #[arg(long)]
    control: Option<std::net::SocketAddr>,
    /// Protocol for a running server.
    #[arg(long, default_value = "delta", value_parser = ["delta", "sotw"])]
    protocol: String,
    /// Node id; `{i}` is the stream's number.
    #[arg(long, default_value = "bench-{i}")]
    node_id: String,
    #[arg(long, default_value = "bench")]
    node_cluster: String,
    /// Node metadata, KEY=VALUE, repeated (default: meshgate's ingress group of dc1).
    #[arg(long = "node-metadata", value_parser = parse_kv)]
    node_metadata: Vec<(String, String)>,
    /// CA bundle (PEM) to verify the server: connects with TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name to verify in the server's certificate.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, generator(args))
}

// ---------------------------------------------------------------------------------------------
// The server under measure

struct Server {
    child: Option<Child>,
    xds: std::net::SocketAddr,
    control: Control,
    pid: u32,
    http: reqwest::Client,
}

/// How changes reach the server.
enum Control {
    /// `POST /change` and `GET /stats` on a control port.
    Port(std::net::SocketAddr),
    /// File edits in the config directory of `meshgate serve`; streams counted on its admin
    /// port.
    Dir {
        workload: DirWorkload,
        admin: std::net::SocketAddr,
        _root: tempfile::TempDir,
    },
}

impl Server {
    /// Starts a bench server binary that lives beside this one.
    async fn spawn(binary: &str, args: &[String]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let path = exe.with_file_name(binary);
        anyhow::ensure!(
            path.exists(),
            "{} not found: build it with `cargo build --release --workspace --bins`",
            path.display()
        );
        let mut child = KillOnDrop(Some(
            Command::new(&path)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?,
        ));
        let stdout = child.get().stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        })
        .await??;
        let ready: Ready = serde_json::from_str(line.trim())
            .map_err(|e| anyhow::anyhow!("{binary} said {line:?}: {e}"))?;
        let mut server = Server::attach(ready).await?;
        server.child = child.0.take();
        Ok(server)
    }

    async fn attach(ready: Ready) -> anyhow::Result<Server> {
        let mut server = Server {
            child: None,
            xds: ready.xds,
            control: Control::Port(ready.control),
            pid: 0,
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        server.pid = server.stats().await?.pid;
        Ok(server)
    }

    /// Starts the real `meshgate serve` (beside this binary) on a generated config directory.
    async fn serve_dir(services: usize, endpoints: usize) -> anyhow::Result<Server> {
        let root = tempfile::tempdir()?;
        let config = root.path().join("config");
        let workload = DirWorkload::create(&config, services, endpoints)?;
        let path = std::env::current_exe()?.with_file_name("meshgate");
        anyhow::ensure!(
            path.exists(),
            "{} not found: build it with `cargo build --release --workspace --bins`",
            path.display()
        );
        let child = Command::new(&path)
            .arg("serve")
            .arg("--config-dir")
            .arg(&config)
            .arg("--state-dir")
            .arg(root.path().join("state"))
            .args([
                "--datacenter",
                "dc1",
                "--xds-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--debounce-quiet",
                "0",
                "--config-debounce",
                "10ms",
                "--log-format",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut child = KillOnDrop(Some(child));
        let log = child.get().stdout.take().expect("stdout");
        // The addresses come from the "meshgate serving" log line; the rest of the log is
        // passed through when it warns.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MESHGATE_LOADGEN_SERVE_LOG").is_some() {
                    eprintln!("  meshgate: {line}");
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let fields = &v["fields"];
                if fields["message"] == "meshgate serving"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((
                        fields["xds"].as_str().unwrap_or_default().to_owned(),
                        fields["admin"].as_str().unwrap_or_default().to_owned(),
                    ));
                } else if v["level"] != "INFO" && v["level"] != "DEBUG" {
                    eprintln!("  meshgate: {line}");
                }
            }
        });
        let (xds, admin) =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
                .await?
                .map_err(|_| anyhow::anyhow!("meshgate serve did not start within 60 s"))?;
        let mut server = Server {
            pid: child.get().id(),
            child: child.0.take(),
            xds: xds.parse()?,
            control: Control::Dir {
                workload,
                admin: admin.parse()?,
                _root: root,
            },
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        // Ready once the first snapshot is published.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Control::Dir { admin, .. } = &server.control else {
                unreachable!()
            };
            let ok = server
                .http
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "meshgate serve not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.pid = server.child.as_ref().map(|c| c.id()).unwrap_or(0);
        Ok(server)
    }

    async fn change(&mut self, op: Op) -> anyhow::Result<Applied> {
        let control = match &mut self.control {
            Control::Port(addr) => *addr,
            Control::Dir { workload, .. } => {
                let start = Instant::now();
                let mut applied = workload.apply(op).map_err(|e| anyhow::anyhow!("{e}"))?;
                applied.server_us = start.elapsed().as_micros() as u64;
                return Ok(applied);
            }
        };
        let r = self
            .http
            .post(format!("http://{control}/change"))
            .json(&op)
            .send()
            .await?;
        let status = r.status();
        anyhow::ensure!(status.is_success(), "{op:?}: {status}: {}", r.text().await?);
        Ok(r.json().await?)
    }

    async fn stats(&self) -> anyhow::Result<Stats> {
        match &self.control {
            Control::Port(addr) => Ok(self
                .http
                .get(format!("http://{addr}/stats"))
                .send()
                .await?
                .json()
                .await?),
            Control::Dir { admin, .. } => {
                let text = self
                    .http
                    .get(format!("http://{admin}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?;
                let streams = text
                    .lines()
                    .filter(|l| l.starts_with("meshgate_xds_connected_streams{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64;
                Ok(Stats {
                    pid: self.pid,
                    streams,
                    ..Default::default()
                })
            }
        }
    }

    /// `meshgate serve`: the generation of the snapshot it serves.
    async fn generation(&self) -> Option<u64> {
        let Control::Dir { admin, .. } = &self.control else {
            return None;
        };
        let text = self
            .http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("meshgate_snapshot_generation "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// After file edits: waits until `meshgate serve` has read them (its snapshot generation
    /// moved past `before` and stayed put for 200 ms). A control port applies a change before
    /// it answers; nothing to wait for there.
    async fn settled(&self, before: Option<u64>) {
        let Some(before) = before else { return };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = before;
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            let g = self.generation().await.unwrap_or(before);
            if g != last {
                last = g;
                stable_since = Instant::now();
            }
            if last > before && stable_since.elapsed() >= Duration::from_millis(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn proc_file(&self, f: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{f}", self.pid)).unwrap_or_default()
    }

    /// Resident memory of the server process, KiB.
    fn rss_kib(&self) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time (user + system) of the server process.
    fn cpu(&self) -> Duration {
        let stat = self.proc_file("stat");
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        // After the command name, utime and stime are the 12th and 13th fields.
        Duration::from_millis((field(11) + field(12)) * 10) // USER_HZ = 100
    }
}

/// A server process being started: killed if starting it fails.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child until it is handed over")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Serialize, Default, Clone, Copy)]
struct Dist {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        if v.is_empty() {
            return Dist {
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Dist {
            p50: at(0.5),
            p99: at(0.99),
            max: *v.last().unwrap(),
        }
    }
}

/// One phase of changes.
#[derive(Serialize, Default, Clone)]
struct Phase {
    name: String,
    changes: usize,
    /// From the change sent to the last stream's ACK, per change (ms).
    convergence_ms: Dist,
    /// Time the server spent before fan-out, as it reports it (ms).
    server_ms: Dist,
    /// Convergence minus server time (ms).
    fanout_ms: Dist,
    /// From the change to the first stream's ACK (ms).
    first_stream_ms: Dist,
    /// Every (stream, change) delivery (ms).
    per_stream_ms: Dist,
    /// TCP bytes received per stream per change (HTTP/2 and gRPC framing included).
    bytes_per_stream_per_change: f64,
    /// Responses each stream received per change (below 1: changes were coalesced).
    responses_per_stream_per_change: f64,
    server_cpu_ms_per_change: f64,
    allocations_per_change: f64,
    wall_ms: f64,
}

/// A storm of (re)connections until every stream is synced.
#[derive(Serialize, Default, Clone)]
struct Storm {
    name: String,
    wall_ms: f64,
    bytes_per_stream_mean: f64,
    bytes_per_stream_max: u64,
    server_cpu_ms: f64,
}

#[derive(Serialize, Default, Clone)]
struct RunResult {
    server: &'static str,
    protocol: &'static str,
    services: usize,
    endpoints: usize,
    streams: usize,
    storms: Vec<Storm>,
    server_rss_per_stream_kib: f64,
    server_idle_cpu_percent: f64,
    /// Encoded size of one changed ClusterLoadAssignment.
    changed_cla_encoded_bytes: usize,
    phases: Vec<Phase>,
    violations: Violations,
    /// State of the world: clusters a reconnect's first CDS response removed while an older
    /// route still named them (the protocol does not tell the server what the client holds).
    sotw_reconnect_dangling_routes: u64,
    /// Streams that failed (refused, reset, closed by the server) and were retried as
    /// Envoy retries them; the first error.
    stream_retries: u64,
    first_retry_error: Option<String>,
    /// State-of-the-world reconnects: types (over streams) the server sent nothing for, as
    /// it found the versions held current.
    sotw_types_resumed: u64,
}

impl RunResult {
    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
    fn storm(&self, name: &str) -> Option<&Storm> {
        self.storms.iter().find(|s| s.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// One run: a server, N streams, phases

struct Handle {
    cmd: mpsc::UnboundedSender<Cmd>,
    read: Arc<AtomicU64>,
}

/// A change on its way to every stream.
struct Pending {
    t0: Instant,
    server_us: u64,
    want: Vec<(usize, Name, bool)>,
    /// Per stream, a bit per `want` entry not yet seen.
    left: Vec<u32>,
    done: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    per_stream: Vec<f64>,
}

struct Run {
    server: Server,
    shared: Rc<Shared>,
    streams: Vec<Handle>,
    events: mpsc::UnboundedReceiver<Event>,
    services: usize,
    next_service: usize,
    responses: u64,
    errors_shown: usize,
    started: Instant,
}

impl Run {
    fn start(server: Server, target: Target, protocol: Protocol, n: usize, services: usize) -> Run {
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Shared::new(target, protocol, tx);
        let mut streams = Vec::with_capacity(n);
        for id in 0..n {
            let (cmd, rx) = mpsc::unbounded_channel();
            let read = Arc::new(AtomicU64::new(0));
            let s = EnvoyStream::new(id, shared.clone(), read.clone());
            tokio::task::spawn_local(s.run(rx, services));
            streams.push(Handle { cmd, read });
        }
        Run {
            server,
            shared,
            streams,
            events,
            services,
            next_service: services,
            responses: 0,
            errors_shown: 0,
            started: Instant::now(),
        }
    }

    fn bytes(&self) -> Vec<u64> {
        self.streams
            .iter()
            .map(|s| s.read.load(Ordering::Relaxed))
            .collect()
    }

    fn note_closed(&mut self, stream: usize, error: &str) {
        if self.errors_shown < 5 {
            eprintln!("  stream {stream}: {error}");
            self.errors_shown += 1;
        }
    }

    /// Waits until every stream reports `Synced` (after connecting or reconnecting).
    /// Waits until every stream reports `Synced`. After a reconnect with clusters removed
    /// meanwhile (`gone`), a stream that still holds one 30 s later counts as a violation
    /// instead of failing the run.
    async fn wait_synced(
        &mut self,
        name: &str,
        before: Vec<u64>,
        gone: bool,
    ) -> anyhow::Result<Storm> {
        self.progress(name);
        self.shared.track.set(false);
        let start = Instant::now();
        let cpu0 = self.server.cpu();
        let mut synced = vec![false; self.streams.len()];
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(if gone { 30 } else { 120 });
        while n < synced.len() {
            let ev = tokio::time::timeout_at(deadline.into(), self.events.recv()).await;
            match ev {
                Ok(Some(Event {
                    stream,
                    kind: EventKind::Synced,
                    ..
                })) => {
                    if !synced[stream] {
                        synced[stream] = true;
                        n += 1;
                    }
                }
                Ok(Some(Event {
                    stream,
                    kind: EventKind::Closed { error },
                    ..
                })) => self.note_closed(stream, &error),
                Ok(Some(_)) => {}
                _ if gone => {
                    let stale = (synced.len() - n) as u64;
                    let mut v = self.shared.violations.borrow_mut();
                    v.stale_after_reconnect += stale;
                    v.examples.push(format!(
                        "{name}: {stale} streams still hold a cluster removed while they were away"
                    ));
                    break;
                }
                _ => anyhow::bail!("{name}: only {n} of {} streams synced", synced.len()),
            }
        }
        let wall = start.elapsed();
        // What still arrives (a server resending what the streams hold) counts in the bytes.
        self.settle().await;
        let after = self.bytes();
        let per: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        Ok(Storm {
            name: name.into(),
            wall_ms: wall.as_secs_f64() * 1000.0,
            bytes_per_stream_mean: per.iter().sum::<u64>() as f64 / per.len() as f64,
            bytes_per_stream_max: per.iter().copied().max().unwrap_or(0),
            server_cpu_ms: (self.server.cpu() - cpu0).as_secs_f64() * 1000.0,
        })
    }

    /// Handles events until none has come for 200 ms (10 s at most).
    async fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = self.responses;
            let mut none: Vec<Pending> = Vec::new();
            self.pump(&mut none, Instant::now() + Duration::from_millis(200))
                .await;
            if self.responses == before || Instant::now() > deadline {
                return;
            }
        }
    }

    /// Handles events until `until`, matching them against pending changes; with changes
    /// pending, returns as soon as every one has reached every stream.
    async fn pump(&mut self, pending: &mut [Pending], until: Instant) {
        loop {
            let all_done = pending.iter().all(|p| p.done == p.left.len());
            if !pending.is_empty() && all_done {
                return;
            }
            let ev = match tokio::time::timeout_at(until.into(), self.events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => return,
            };
            match ev.kind {
                EventKind::Response {
                    ty,
                    updated,
                    removed,
                } => {
                    self.responses += 1;
                    for p in pending.iter_mut() {
                        let left = &mut p.left[ev.stream];
                        if *left == 0 || ev.at < p.t0 {
                            continue;
                        }
                        for (k, (wty, name, rm)) in p.want.iter().enumerate() {
                            let bit = 1 << k;
                            if *left & bit == 0 || *wty != ty {
                                continue;
                            }
                            let hit = if *rm {
                                matches(&removed, name)
                            } else {
                                matches(&updated, name)
                            };
                            if hit {
                                *left &= !bit;
                            }
                        }
                        if *left == 0 {
                            p.done += 1;
                            p.first.get_or_insert(ev.at);
                            p.last = Some(ev.at);
                            p.per_stream.push((ev.at - p.t0).as_secs_f64() * 1000.0);
                        }
                    }
                }
                EventKind::Closed { error } => self.note_closed(ev.stream, &error),
                EventKind::Synced => {}
            }
        }
    }

    async fn issue(&mut self, op: Op) -> anyhow::Result<Pending> {
        let t0 = Instant::now();
        let applied = self.server.change(op).await?;
        let mut want = Vec::new();
        for (list, rm) in [(&applied.updated, false), (&applied.removed, true)] {
            for t in list {
                if let Some(ty) = type_index(&t.type_url) {
                    want.push((ty, self.shared.intern(&t.name), rm));
                }
            }
        }
        anyhow::ensure!(want.len() <= 32, "a change touching more than 32 resources");
        let mask = if want.is_empty() {
            0
        } else {
            u32::MAX >> (32 - want.len())
        };
        let n = self.streams.len();
        Ok(Pending {
            t0,
            server_us: applied.server_us,
            want,
            left: vec![mask; n],
            done: if mask == 0 { n } else { 0 },
            first: None,
            last: None,
            per_stream: Vec::with_capacity(n),
        })
    }

    /// Sends `ops` at `interval` (zero: each after the previous converged) and measures.
    async fn phase(
        &mut self,
        name: &str,
        ops: Vec<Op>,
        interval: Duration,
    ) -> anyhow::Result<Phase> {
        let count = ops.len();
        self.progress(name);
        self.shared.track.set(true);
        let bytes0: u64 = self.bytes().iter().sum();
        let cpu0 = self.server.cpu();
        let alloc0 = self.server.stats().await?.allocations;
        let responses0 = self.responses;
        let start = Instant::now();
        let mut pending: Vec<Pending> = Vec::new();
        let mut finished: Vec<Pending> = Vec::new();
        for (k, op) in ops.into_iter().enumerate() {
            if interval.is_zero() {
                let mut p = vec![self.issue(op).await?];
                self.pump(&mut p, Instant::now() + Duration::from_secs(10))
                    .await;
                finished.extend(p);
            } else {
                let at = start + interval * k as u32;
                self.pump(&mut pending, at).await;
                tokio::time::sleep_until(at.into()).await;
                pending.push(self.issue(op).await?);
            }
        }
        if !pending.is_empty() {
            self.pump(&mut pending, Instant::now() + Duration::from_secs(10))
                .await;
        }
        finished.extend(pending);
        // Let anything unexpected arrive before the next phase.
        let mut none: Vec<Pending> = Vec::new();
        self.pump(&mut none, Instant::now() + Duration::from_millis(100))
            .await;
        let wall = start.elapsed();
        let (mut warming_left, mut unconverged) = (0, 0);
        let (mut conv, mut server, mut fanout, mut first, mut per) =
            (vec![], vec![], vec![], vec![], vec![]);
        for p in &finished {
            for (s, left) in p.left.iter().enumerate() {
                if *left == 0 {
                    continue;
                }
                // Only assignments missing after their cluster arrived: a cluster left warming.
                let warming = p
                    .want
                    .iter()
                    .enumerate()
                    .all(|(k, (ty, _, _))| *left & (1 << k) == 0 || *ty == EDS)
                    && p.want.iter().any(|(ty, _, _)| *ty == CDS);
                if warming {
                    warming_left += 1;
                } else {
                    unconverged += 1;
                }
                if self.errors_shown < 5 {
                    eprintln!("  {name}: stream {s} did not converge: {:?}", p.want);
                    self.errors_shown += 1;
                }
            }
            let server_ms = p.server_us as f64 / 1000.0;
            if let Some(last) = p.last {
                let c = (last - p.t0).as_secs_f64() * 1000.0;
                conv.push(c);
                fanout.push((c - server_ms).max(0.0));
            }
            if let Some(f) = p.first {
                first.push((f - p.t0).as_secs_f64() * 1000.0);
            }
            server.push(server_ms);
            per.extend_from_slice(&p.per_stream);
        }
        {
            let mut v = self.shared.violations.borrow_mut();
            v.eds_left_warming += warming_left;
            v.not_converged += unconverged;
        }
        let n = self.streams.len() as f64;
        let c = count.max(1) as f64;
        let bytes1: u64 = self.bytes().iter().sum();
        let alloc1 = self.server.stats().await?.allocations;
        Ok(Phase {
            name: name.into(),
            changes: count,
            convergence_ms: Dist::of(conv),
            server_ms: Dist::of(server),
            fanout_ms: Dist::of(fanout),
            first_stream_ms: Dist::of(first),
            per_stream_ms: Dist::of(per),
            bytes_per_stream_per_change: (bytes1 - bytes0) as f64 / n / c,
            responses_per_stream_per_change: (self.responses - responses0) as f64 / n / c,
            server_cpu_ms_per_change: (self.server.cpu() - cpu0).as_secs_f64() * 1000.0 / c,
            allocations_per_change: alloc1.saturating_sub(alloc0) as f64 / c,
            wall_ms: wall.as_secs_f64() * 1000.0,
        })
    }

    fn send_all(&self, mut cmd: impl FnMut() -> Cmd) {
        for s in &self.streams {
            let _ = s.cmd.send(cmd());
        }
    }

    /// Disconnects every stream and waits for the server to let them go.
    /// A line on stderr per step, with the time since the run began.
    fn progress(&self, what: &str) {
        eprintln!("  {:>7.2} s  {what}", self.started.elapsed().as_secs_f64());
    }

    async fn disconnect(&mut self) -> anyhow::Result<u64> {
        self.progress("disconnect");
        self.send_all(|| Cmd::Disconnect);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.server.stats().await?.streams;
            if left == 0 || Instant::now() > deadline {
                return Ok(left);
            }
            // Keep the event queue drained while streams close.
            let mut none: Vec<Pending> = Vec::new();
            self.pump(&mut none, Instant::now() + Duration::from_millis(50))
                .await;
        }
    }

    async fn reconnect(&mut self, name: &str, gone: Rc<[Name]>) -> anyhow::Result<Storm> {
        let before = self.bytes();
        let expect = self.services;
        self.send_all(|| Cmd::Connect {
            expect_clusters: expect,
            gone: gone.clone(),
        });
        let gone_any = !gone.is_empty();
        self.wait_synced(name, before, gone_any).await
    }

    fn endpoint_ops(&self, count: usize, salt: usize) -> Vec<Op> {
        (0..count)
            .map(|c| Op::Endpoint {
                service: (salt + c * 37) % self.services,
            })
            .collect()
    }
}

/// The real `meshgate serve` on a generated config directory.
const SERVE: &str = "meshgate serve";

/// Whether `list` holds `name`, or a name starting with it when it ends with `*`.
fn matches(list: &[Name], name: &str) -> bool {
    match name.strip_suffix('*') {
        Some(prefix) => list.iter().any(|n| n.starts_with(prefix)),
        None => list.iter().any(|n| &**n == name),
    }
}

/// Which phases a run goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phases {
    /// Connect storm, idle, endpoint changes: what the floor serves.
    EndpointOnly,
    /// And cluster-only changes and a reconnect storm with nothing changed.
    Light,
    /// Every phase.
    Full,
}

struct Plan {
    phases: Phases,
    server: &'static str,
    protocol: Protocol,
    services: usize,
    streams: usize,
}

async fn run(
    args: &Args,
    plan: &Plan,
    target: Option<(Target, Ready)>,
) -> anyhow::Result<RunResult> {
    let (server, target) = match target {
        Some((t, ready)) => (Server::attach(ready).await?, t),
        None if plan.server == SERVE => {
            let server = Server::serve_dir(plan.services, args.endpoints).await?;
            let target = target_of(args, server.xds)?;
            (server, target)
        }
        None => {
            let binary = match plan.server {
                "floor" => "meshgate-floor",
                _ => "meshgate-benchserver",
            };
            let server = Server::spawn(
                binary,
                &[
                    "--services".into(),
                    plan.services.to_string(),
                    "--endpoints".into(),
                    args.endpoints.to_string(),
                ],
            )
            .await?;
            let target = target_of(args, server.xds)?;
            (server, target)
        }
    };
    let phases = if plan.server == "floor" || args.endpoint_only {
        Phases::EndpointOnly
    } else {
        plan.phases
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = server.rss_kib();
    let mut r = RunResult {
        server: plan.server,
        protocol: plan.protocol.as_str(),
        services: plan.services,
        endpoints: args.endpoints,
        streams: plan.streams,
        changed_cla_encoded_bytes: {
            let w = integration::bench::Workload::new(plan.services, args.endpoints);
            prost::Message::encoded_len(&w.assignment(0))
        },
        ..Default::default()
    };
    let mut run = Run::start(server, target, plan.protocol, plan.streams, plan.services);
    let zero = vec![0; plan.streams];
    r.storms
        .push(run.wait_synced("connect", zero, false).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.server_rss_per_stream_kib =
        run.server.rss_kib().saturating_sub(rss0) as f64 / plan.streams as f64;

    // Idle: nothing changes, nothing may be sent.
    let responses0 = run.responses;
    let cpu0 = run.server.cpu();
    let mut none: Vec<Pending> = Vec::new();
    run.pump(
        &mut none,
        Instant::now() + Duration::from_secs_f64(args.idle),
    )
    .await;
    r.server_idle_cpu_percent = (run.server.cpu() - cpu0).as_secs_f64() / args.idle * 100.0;
    let idle_responses = run.responses - responses0;
    if idle_responses > 0 {
        let mut v = run.shared.violations.borrow_mut();
        v.response_with_nothing_new += idle_responses;
        v.examples.push(format!(
            "{idle_responses} responses while nothing changed (idle)"
        ));
    }

    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let ops = run.endpoint_ops(args.changes, 0);
    r.phases.push(run.phase("endpoint", ops, interval).await?);
    if phases == Phases::Light {
        let ops = (0..3)
            .map(|k| Op::Cluster {
                service: (k * 101) % run.services,
            })
            .collect();
        r.phases
            .push(run.phase("cluster only", ops, Duration::ZERO).await?);
        run.disconnect().await?;
        r.storms.push(
            run.reconnect("reconnect, nothing changed", Rc::from([]))
                .await?,
        );
    }
    if phases == Phases::Full {
        let added: Vec<usize> = (0..3).map(|k| run.next_service + k).collect();
        run.next_service += added.len();
        let ops = added.iter().map(|&s| Op::Add { service: s }).collect();
        r.phases
            .push(run.phase("add service", ops, Duration::ZERO).await?);
        run.services += added.len();
        let ops = added.iter().map(|&s| Op::Remove { service: s }).collect();
        r.phases
            .push(run.phase("remove service", ops, Duration::ZERO).await?);
        run.services -= added.len();
        let ops = (0..3)
            .map(|k| Op::Cluster {
                service: (k * 101) % run.services,
            })
            .collect();
        r.phases
            .push(run.phase("cluster only", ops, Duration::ZERO).await?);
        // 10% of the services inside one second.
        let tenth = (run.services / 10).max(1);
        let ops = run.endpoint_ops(tenth, 11);
        r.phases.push(
            run.phase(
                "rolling 10% in 1 s",
                ops,
                Duration::from_secs(1) / tenth as u32,
            )
            .await?,
        );
        // Reconnect storms.
        run.disconnect().await?;
        r.storms.push(
            run.reconnect("reconnect, nothing changed", Rc::from([]))
                .await?,
        );
        run.disconnect().await?;
        let gone: Vec<usize> = (0..(run.services / 20).max(1))
            .map(|k| (k * 19 + 3) % run.services)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let generation = run.server.generation().await;
        for &s in &gone {
            run.server.change(Op::Remove { service: s }).await?;
        }
        run.server.settled(generation).await;
        run.services -= gone.len();
        // Each stream checks, once synced, that it holds none of them (R18). `meshgate
        // serve` names clusters by SNI: `<service>.…`.
        let dir = matches!(run.server.control, Control::Dir { .. });
        let gone_names: Rc<[Name]> = gone
            .iter()
            .map(|&s| match dir {
                true => run.shared.intern(&format!("{}.*", service_name(s))),
                false => run.shared.intern(&service_name(s)),
            })
            .collect();
        r.storms.push(
            run.reconnect("reconnect, 5% removed meanwhile", gone_names)
                .await?,
        );
        // A NACK from one stream: the others converge, the rejected version is not resent.
        let _ = run.streams[0].cmd.send(Cmd::NackNext(CDS));
        let service = (0..run.next_service)
            .find(|s| !gone.contains(s))
            .expect("a service");
        let p = run
            .phase(
                "cluster change NACKed by one stream",
                vec![Op::Cluster { service }],
                Duration::ZERO,
            )
            .await?;
        r.phases.push(p);
        let mut none: Vec<Pending> = Vec::new();
        run.pump(&mut none, Instant::now() + Duration::from_millis(500))
            .await;
    }
    let leaked = run.disconnect().await?;
    run.shared.violations.borrow_mut().leaked_streams += leaked;
    r.violations = run.shared.violations.borrow().clone();
    r.sotw_reconnect_dangling_routes = run.shared.dangling_on_resync.get();
    r.stream_retries = run.shared.retries.get();
    r.sotw_types_resumed = run.shared.resumed.get();
    r.first_retry_error = run.shared.first_retry_error.borrow().clone();
    Ok(r)
}

fn target_of(args: &Args, xds: std::net::SocketAddr) -> anyhow::Result<Target> {
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => Some(TlsSettings {
            ca_pem: std::fs::read(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?,
            identity_pem: match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => Some((
                    std::fs::read(c).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?,
                    std::fs::read(k).map_err(|e| anyhow::anyhow!("{}: {e}", k.display()))?,
                )),
                _ => None,
            },
            server_name: args.tls_server_name.clone(),
        }),
    };
    let node_metadata = if args.node_metadata.is_empty() {
        vec![
            ("role".to_owned(), "ingress".to_owned()),
            ("datacenter".to_owned(), "dc1".to_owned()),
        ]
    } else {
        args.node_metadata.clone()
    };
    Ok(Target {
        xds,
        tls,
        node_id: args.node_id.clone(),
        node_cluster: args.node_cluster.clone(),
        node_metadata,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_run(r: &RunResult, floor: Option<&RunResult>) {
    println!(
        "\n== {} {}: {} services x {} endpoints, {} streams",
        r.server, r.protocol, r.services, r.endpoints, r.streams
    );
    for s in &r.storms {
        println!(
            "  {:<34} {:>9.0} ms   {:>10.0} B/stream (max {})   server cpu {:.0} ms",
            s.name, s.wall_ms, s.bytes_per_stream_mean, s.bytes_per_stream_max, s.server_cpu_ms
        );
    }
    println!(
        "  server RSS per stream {:.1} KiB; idle CPU {:.2}% of a core; one changed CLA encodes to {} B",
        r.server_rss_per_stream_kib, r.server_idle_cpu_percent, r.changed_cla_encoded_bytes
    );
    println!(
        "  {:<36} {:>4} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>6} {:>8} {:>8}",
        "phase (ms: to last stream's ACK)",
        "n",
        "p50",
        "p99",
        "max",
        "server",
        "fanout99",
        "first50",
        "B/str/chg",
        "resp",
        "cpu/chg",
        "allocs"
    );
    for p in &r.phases {
        println!(
            "  {:<36} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.2} {:>8.2} {:>9.0} {:>6.2} {:>8.2} {:>8.0}",
            p.name,
            p.changes,
            p.convergence_ms.p50,
            p.convergence_ms.p99,
            p.convergence_ms.max,
            p.server_ms.p50,
            p.fanout_ms.p99,
            p.first_stream_ms.p50,
            p.bytes_per_stream_per_change,
            p.responses_per_stream_per_change,
            p.server_cpu_ms_per_change,
            p.allocations_per_change,
        );
    }
    if let (Some(f), Some(m)) = (floor.and_then(|f| f.phase("endpoint")), r.phase("endpoint")) {
        println!(
            "  floor (same bytes, same streams): endpoint p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms -> meshgate / floor: p50 {:.2}x, p99 {:.2}x",
            f.convergence_ms.p50,
            f.convergence_ms.p99,
            f.convergence_ms.max,
            m.convergence_ms.p50 / f.convergence_ms.p50,
            m.convergence_ms.p99 / f.convergence_ms.p99,
        );
        if let (Some(fs), Some(ms)) = (floor.and_then(|f| f.storm("connect")), r.storm("connect")) {
            println!(
                "  floor connect storm {:.0} ms -> meshgate / floor {:.2}x",
                fs.wall_ms,
                ms.wall_ms / fs.wall_ms
            );
        }
    }
    let v = &r.violations;
    println!(
        "  violations (all must be 0): route to missing cluster {}, EDS left warming {}, duplicate names {}, nothing new {}, resent after NACK {}, not converged {}, stale after reconnect {}, leaked streams {}, stream errors {}",
        v.route_to_missing_cluster,
        v.eds_left_warming,
        v.duplicate_names,
        v.response_with_nothing_new,
        v.resent_after_nack,
        v.not_converged,
        v.stale_after_reconnect,
        v.leaked_streams,
        v.stream_errors
    );
    if r.stream_retries > 0 {
        println!(
            "  {} streams failed and were retried (first: {})",
            r.stream_retries,
            r.first_retry_error.as_deref().unwrap_or_default()
        );
    }
    if r.sotw_types_resumed > 0 {
        println!(
            "  state of the world: {} types over reconnected streams resumed at the versions held (nothing resent)",
            r.sotw_types_resumed
        );
    }
    if r.sotw_reconnect_dangling_routes > 0 {
        println!(
            "  state of the world: {} clusters removed under an older route by a reconnect's first CDS response (not a violation: the protocol does not say what the client holds)",
            r.sotw_reconnect_dangling_routes
        );
    }
    for e in &v.examples {
        println!("    {e}");
    }
}

async fn generator(mut args: Args) -> anyhow::Result<()> {
    let mut plans: Vec<Plan> = Vec::new();
    let protocol = |s: &str| {
        if s == "sotw" {
            Protocol::Sotw
        } else {
            Protocol::Delta
        }
    };
    if let Some(xds) = args.xds {
        let plan = Plan {
            phases: Phases::Full,
            server: "external",
            protocol: protocol(&args.protocol),
            services: args.services,
            streams: args.streams,
        };
        let ready = Ready {
            xds,
            control: args.control.expect("clap requires --control with --xds"),
        };
        let target = target_of(&args, xds)?;
        let r = run(&args, &plan, Some((target, ready))).await?;
        print_run(&r, None);
        return finish(&args, vec![r]);
    }
    if args.short {
        args.changes = 8;
        args.idle = 0.3;
        args.rate = 50.0;
        for (server, protocol, services, streams) in [
            ("meshgate", Protocol::Delta, 100, 50),
            ("floor", Protocol::Delta, 100, 50),
            ("meshgate", Protocol::Sotw, 100, 20),
            (SERVE, Protocol::Delta, 50, 10),
        ] {
            plans.push(Plan {
                phases: Phases::Full,
                server,
                protocol,
                services,
                streams,
            });
        }
    } else {
        let mut add = |protocol, services, streams, phases| {
            plans.push(Plan {
                phases,
                server: "meshgate",
                protocol,
                services,
                streams,
            });
            if !args.no_floor {
                plans.push(Plan {
                    phases: Phases::EndpointOnly,
                    server: "floor",
                    protocol,
                    services,
                    streams,
                });
            }
        };
        add(Protocol::Delta, args.services, args.streams, Phases::Full);
        if args.sotw_streams > 0 {
            add(
                Protocol::Sotw,
                args.services,
                args.sotw_streams,
                Phases::Full,
            );
        }
        if args.large {
            add(Protocol::Delta, 10_000, 100, Phases::Light);
        }
        if args.serve_streams > 0 {
            plans.push(Plan {
                phases: Phases::Full,
                server: SERVE,
                protocol: Protocol::Delta,
                services: args.services,
                streams: args.serve_streams,
            });
        }
    }
    let mut results: Vec<RunResult> = Vec::new();
    for plan in &plans {
        eprintln!(
            "running {} {}: {} services x {} endpoints, {} streams",
            plan.server,
            plan.protocol.as_str(),
            plan.services,
            args.endpoints,
            plan.streams
        );
        let r = run(&args, plan, None).await?;
        print_run(&r, None);
        results.push(r);
    }
    println!("\n==================== summary ====================");
    for r in results.iter().filter(|r| r.server != "floor") {
        let floor = results.iter().find(|f| {
            f.server == "floor"
                && f.protocol == r.protocol
                && f.services == r.services
                && f.streams == r.streams
        });
        print_run(r, floor);
    }
    finish(&args, results)
}

fn finish(args: &Args, results: Vec<RunResult>) -> anyhow::Result<()> {
    // From `meshgate-sourcebench` (run before by `make bench`): translation of one ingress
    // group, and the same per 1,000 services.
    let translation: Option<serde_json::Value> = std::fs::read_to_string(&args.translation)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .map(|mut t| {
            let per_1k = t["full_ms"].as_f64().unwrap_or(f64::NAN)
                / (t["services"].as_f64().unwrap_or(f64::NAN) / 1000.0);
            t["full_ms_per_1000_services"] = serde_json::json!(per_1k);
            println!(
                "\ntranslation (meshgate-sourcebench): {} services into one ingress group in {:.1} ms, {:.1} ms per 1,000 services; one endpoint change {:.2} ms",
                t["services"],
                t["full_ms"].as_f64().unwrap_or(f64::NAN),
                per_1k,
                t["one_change_ms"].as_f64().unwrap_or(f64::NAN)
            );
            t
        });
    let json = serde_json::json!({
        "commit": integration::git_commit(),
        "short": args.short,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "workload": {
            "endpoints_per_service": args.endpoints,
            "resources_per_service": "an EDS cluster, its ClusterLoadAssignment, a virtual host in one RouteConfiguration; one Listener",
        },
        "runs": results,
        "translation": translation,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to {}", args.out.display());
    // Floor runs count too: a broken floor is a broken measure.
    let failed = results.iter().filter(|r| r.violations.total() > 0).count();
    let passed = results.len() - failed;
    // The plain closing line, counted by CI.
    println!("loadgen: {passed} passed, {failed} failed");
    anyhow::ensure!(failed == 0, "{failed} runs with protocol violations");
    Ok(())
}
