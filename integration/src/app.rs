//! The whole `meshgate serve` (sources → snapshot → translation → store → streams) running
//! in the test process on ports the OS picks, with the flags a test gives, exactly as the
//! binary parses them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use meshgate::cli::{Cli, Command};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct App {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    _state: tempfile::TempDir,
}

impl App {
    /// Starts `meshgate serve <flags>` (`--xds-addr`/`--admin-addr` are chosen here). Panics
    /// with the server's error if it does not start.
    /// With `--config-dir`, it also waits until meshgate is ready (`/readyz`: the first
    /// snapshot is published), so a test's first request sees the configuration.
    pub fn start(flags: &[&str]) -> App {
        let app =
            Self::try_start(flags).unwrap_or_else(|e| panic!("meshgate serve {flags:?}: {e}"));
        if flags.contains(&"--config-dir") {
            app.wait_ready();
        }
        app
    }

    /// Polls `/readyz` until it answers 200 (30 s at most).
    pub fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin_addr);
        for _ in 0..300 {
            let ok = std::net::TcpStream::connect(self.admin_addr)
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
                    let mut out = String::new();
                    s.read_to_string(&mut out).ok()?;
                    Some(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{url} did not answer 200 within 30 s");
    }

    /// Like [`App::start`], but returns the error a refused start gives.
    pub fn try_start(flags: &[&str]) -> Result<App, String> {
        crate::harness::init_test_process();
        // Each server keeps its state (trust domain, CA) in a directory of its own.
        let state = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state_path = state.path().to_str().expect("UTF-8 temp path").to_owned();
        let mut argv = vec!["meshgate", "serve", "--debounce-quiet", "0"];
        if !flags.contains(&"--state-dir") {
            argv.extend(["--state-dir", state_path.as_str()]);
        }
        argv.extend_from_slice(flags);
        let Command::Serve(args) = Cli::try_parse_from(&argv)
            .map_err(|e| e.to_string())?
            .command
        else {
            unreachable!("serve parses as serve")
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = crate::harness::server_runtime();
            let result = rt.block_on(async move {
                let xds = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addrs = (xds.local_addr().unwrap(), admin.local_addr().unwrap());
                let ready = ready_tx.clone();
                let shutdown = async move {
                    let _ = ready.send(Ok(addrs));
                    let _ = stop_rx.await;
                };
                let result = meshgate::cli::run(*args, xds, admin, shutdown).await;
                if let Err(e) = &result {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
                result.map_err(|e| format!("{e:#}"))
            });
            rt.shutdown_timeout(Duration::from_millis(100));
            result
        });
        match ready_rx.recv() {
            Ok(Ok((xds_addr, admin_addr))) => Ok(App {
                xds_addr,
                admin_addr,
                stop: Some(stop_tx),
                thread: Some(thread),
                _state: state,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => "meshgate stopped before it was ready".into(),
                Err(_) => "meshgate panicked".into(),
            }),
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

    /// `/debug/sources` as JSON.
    pub async fn sources(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/debug/sources").await).expect("JSON")
    }

    /// One sample of a metric (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        crate::harness::metric_value(&self.admin_get("/metrics").await, name_and_labels)
    }

    /// Waits (polling the admin API) until `check` holds, up to `limit`.
    pub async fn wait_for<F>(&self, limit: Duration, what: &str, mut check: F)
    where
        F: AsyncFnMut(&App) -> bool,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while !check(self).await {
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
