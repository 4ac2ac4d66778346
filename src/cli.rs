//! The command line: `meshgate serve` (more verbs come with the sources and translation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::metrics::Metrics;
use crate::xds::stream::StreamRegistry;
use crate::xds::{Debounce, Store, TlsFiles, XdsServer};

#[derive(Debug, Parser)]
#[command(
    name = "meshgate",
    version,
    about = "An xDS control plane for Envoy gateways"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MESHGATE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve xDS (delta and state-of-the-world ADS, and the per-type services) to Envoy.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the xDS gRPC listener.
    #[arg(long, default_value = "127.0.0.1:18000", env = "MESHGATE_XDS_ADDR")]
    pub xds_addr: SocketAddr,
    /// Address of the admin listener (/metrics, /debug/streams, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:19100", env = "MESHGATE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// This server's datacenter; nodes whose metadata names none belong to it.
    #[arg(long, default_value = "dc1", env = "MESHGATE_DATACENTER")]
    pub datacenter: String,
    /// Push once publishes have been quiet this long ("0" pushes at once).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub debounce_quiet: Duration,
    /// Push at the latest this long after the first unpushed publish.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub debounce_max: Duration,
    /// PEM certificate for TLS on the xDS listener.
    #[arg(long, requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the xDS listener.
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, Envoys must present a client certificate it signed.
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_client_ca: Option<PathBuf>,
}

/// Parses "0", "250ms", "1s", "1.5s", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s or m (or is 0)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?}; use ms, s or m"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("duration {s:?}: {e}"))
}

/// Runs `meshgate serve` until ctrl-c or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.xds_tls_cert, &args.xds_tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.xds_tls_client_ca.clone(),
            }
            .load()?,
        ),
        _ => None,
    };
    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--xds-addr)", args.xds_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-addr)", args.admin_addr))?;

    let metrics = Arc::new(Metrics::new());
    let store = Store::new(
        Debounce {
            quiet: args.debounce_quiet,
            max: args.debounce_max,
        },
        metrics.clone(),
    );
    let streams = Arc::new(StreamRegistry::default());
    let ready = Arc::new(AtomicBool::new(false));
    let server = XdsServer::new(store.clone(), streams.clone(), &args.datacenter);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            metrics,
            streams,
            store,
            ready: ready.clone(),
        },
        stopped(),
    ));
    info!(xds = %args.xds_addr, admin = %args.admin_addr, tls = tls.is_some(),
        datacenter = %args.datacenter, "meshgate serving");
    let xds = tokio::spawn(server.serve(xds_listener, tls, stopped()));
    ready.store(true, Ordering::Release);

    shutdown_signal().await;
    info!("shutting down");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    // Streams are long-lived: do not wait for Envoys to hang up.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = xds.await;
        let _ = admin.await;
    })
    .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("100").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
