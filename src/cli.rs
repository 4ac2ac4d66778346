//! The command line: `meshgate serve`, `meshgate validate DIR`, `meshgate bootstrap`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::bootstrap;
use crate::ca::{CaConfig, CertManager};
use crate::metrics::Metrics;
use crate::model::Snapshot;
use crate::model::intentions::DefaultPolicy;
use crate::source::SourceHandle;
use crate::source::dir::DirSource;
use crate::source::from_consul::ConsulConfig;
use crate::translate::{Settings, Translator};
use crate::xds::stream::StreamRegistry;
use crate::xds::{Debounce, Role, Store, TlsFiles, XdsServer};

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
    Serve(Box<ServeArgs>),
    /// Check a directory of Consul-format files: every problem as `file:line: message`,
    /// exit 1 on errors (like `consul config validate`).
    Validate(ValidateArgs),
    /// Intentions (like `consul intention`).
    Intention(IntentionArgs),
    /// Print an Envoy bootstrap (YAML) that connects to meshgate by delta ADS (like
    /// `consul connect envoy -bootstrap`).
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IntentionArgs {
    #[command(subcommand)]
    pub command: IntentionCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IntentionCommand {
    /// Whether SOURCE may connect to DESTINATION: prints `Allowed` (exit 0) or `Denied`
    /// (exit 1), the deciding intention on stderr; exit 2 on errors. L7 intentions count as
    /// deny, as in `consul intention check`.
    Check(IntentionCheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IntentionCheckArgs {
    /// The calling service.
    pub source: String,
    /// The called service.
    pub destination: String,
    /// Read the intentions from this directory of Consul-format files (takes precedence over
    /// --consul-addr).
    #[arg(long, env = "MESHGATE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// The local datacenter (of agent service definitions; of the Consul agent).
    #[arg(long, default_value = "dc1", env = "MESHGATE_DATACENTER")]
    pub datacenter: String,
    /// What happens when no intention matches: allow or deny.
    #[arg(long, default_value = "deny", value_parser = parse_default_policy)]
    pub default_intention_policy: DefaultPolicy,
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// The Envoy's role.
    #[arg(long, value_parser = PossibleValuesParser::new(["ingress", "egress", "sidecar"])
        .map(|r| Role::parse(&r).expect("a possible value")))]
    pub role: Role,
    /// The Envoy's datacenter (node.metadata.datacenter).
    #[arg(long)]
    pub datacenter: String,
    /// The service a sidecar belongs to (required with --role sidecar).
    #[arg(long)]
    pub service: Option<String>,
    /// node.id: names the Envoy in meshgate's logs, metrics and /debug/streams.
    #[arg(long)]
    pub node_id: String,
    /// meshgate's xDS address, HOST:PORT (an IP, or a DNS name resolved by Envoy).
    #[arg(long)]
    pub xds_addr: String,
    /// Envoy's admin listener, IP:PORT.
    #[arg(long, default_value = bootstrap::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: String,
    /// Where the gateway listens (informational: recorded as node.metadata.listen_addr; the
    /// listener itself comes from meshgate over LDS).
    #[arg(long)]
    pub listen_addr: Option<String>,
    /// node.cluster (default: the service for sidecars, else `<role>-gateway`).
    #[arg(long)]
    pub cluster: Option<String>,
    /// PEM CA bundle that signed meshgate's xDS certificate: connect to meshgate over TLS.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub xds_tls_ca: Option<String>,
    /// PEM client certificate presented to meshgate (for --xds-tls-client-ca).
    #[arg(long, requires_all = ["xds_tls_key", "xds_tls_ca"], value_hint = clap::ValueHint::FilePath)]
    pub xds_tls_cert: Option<String>,
    /// PEM private key of --xds-tls-cert.
    #[arg(long, requires = "xds_tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub xds_tls_key: Option<String>,
}

impl BootstrapArgs {
    /// The flags as [`bootstrap::Options`].
    pub fn options(&self) -> bootstrap::Options {
        bootstrap::Options {
            role: self.role,
            datacenter: self.datacenter.clone(),
            service: self.service.clone(),
            node_id: self.node_id.clone(),
            xds_addr: self.xds_addr.clone(),
            admin_addr: Some(self.admin_addr.clone()),
            listen_addr: self.listen_addr.clone(),
            cluster: self.cluster.clone(),
            tls: self.xds_tls_ca.as_ref().map(|ca| bootstrap::XdsTls {
                ca: ca.clone(),
                client: match (&self.xds_tls_cert, &self.xds_tls_key) {
                    (Some(cert), Some(key)) => Some(bootstrap::ClientCert {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
            }),
        }
    }
}

/// Runs `meshgate bootstrap`: the YAML on stdout and exit 0, or the error and exit 2.
pub fn bootstrap(args: &BootstrapArgs) -> std::process::ExitCode {
    match bootstrap::render(&args.options()) {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate bootstrap: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// How to reach Consul: shared by `serve` and `intention check`.
#[derive(Debug, Clone, Args)]
pub struct ConsulArgs {
    /// Consul's HTTP API (http:// or https://).
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul_addr: Option<String>,
    /// ACL token sent to Consul as X-Consul-Token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// PEM CA bundle to verify Consul's HTTPS certificate.
    #[arg(long, env = "CONSUL_CACERT")]
    pub consul_ca_file: Option<PathBuf>,
}

impl ConsulArgs {
    /// The source's configuration, when an address is given.
    pub fn config(&self, datacenter: &str) -> Option<ConsulConfig> {
        let addr = self.consul_addr.as_ref()?;
        let mut config = ConsulConfig::new(addr.clone(), datacenter.to_owned());
        config.token = self.consul_token.clone();
        config.ca_file = self.consul_ca_file.clone();
        Some(config)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The directory (every .hcl, .json, .yaml and .yml file below it is read).
    pub dir: PathBuf,
    /// The datacenter agent service definitions belong to.
    #[arg(long, default_value = "dc1", env = "MESHGATE_DATACENTER")]
    pub datacenter: String,
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
    /// Read the mesh from this directory of Consul-format files (watched for changes). Takes
    /// precedence over --consul-addr (so an exported CONSUL_HTTP_ADDR does not get in the way).
    #[arg(long, env = "MESHGATE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Quiet time after a file event before the directory is read again.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub config_debounce: Duration,
    /// Read the directory again this often even without file events (a fallback for file
    /// systems that drop events).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub config_rescan: Duration,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Longest wait of one Consul blocking query.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub consul_wait: Duration,
    /// The SPIFFE trust domain (`<uuid>.consul`). Default: the one kept in --state-dir,
    /// created on first start; in Consul mode, the CA's.
    #[arg(long, env = "MESHGATE_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// What intentions decide when none matches a caller: allow or deny.
    #[arg(
        long,
        default_value = "deny",
        value_parser = parse_default_policy,
        env = "MESHGATE_DEFAULT_INTENTION_POLICY"
    )]
    pub default_intention_policy: DefaultPolicy,
    /// Where meshgate keeps what must survive restarts (the trust domain, the built-in CA).
    #[arg(long, default_value = ".meshgate", env = "MESHGATE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// PEM certificate of the CA that signs leaves (directory mode); with --ca-key. Default:
    /// a CA created on first start and kept in --state-dir.
    #[arg(long, requires = "ca_key", env = "MESHGATE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of --ca-cert.
    #[arg(long, requires = "ca_cert", env = "MESHGATE_CA_KEY")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of leaf certificates from the built-in CA; each is replaced at two thirds.
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    pub leaf_ttl: Duration,
}

fn parse_default_policy(s: &str) -> Result<DefaultPolicy, String> {
    s.parse()
}

/// Parses a duration as Go (and Consul) write them: "0", "250ms", "1.5s", "2m", "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::duration::parse_go_duration(s)
}

/// Runs `meshgate validate DIR`: prints every problem, then counts; returns the exit code.
pub fn validate(args: &ValidateArgs) -> std::process::ExitCode {
    if !args.dir.is_dir() {
        eprintln!("{}: not a directory", args.dir.display());
        return std::process::ExitCode::from(2);
    }
    let loaded = crate::source::dir::load(&args.dir, &args.datacenter, 1);
    for p in &loaded.problems {
        println!("{p}");
    }
    let errors = loaded.errors().count();
    let warnings = loaded.problems.len() - errors;
    if errors > 0 {
        eprintln!(
            "{errors} error{}, {warnings} warning{} in {} ({} files)",
            plural(errors),
            plural(warnings),
            args.dir.display(),
            loaded.files
        );
        return std::process::ExitCode::FAILURE;
    }
    let counts = loaded.snapshot.counts();
    println!(
        "valid: {} files, {} documents, {warnings} warning{}",
        loaded.files,
        loaded.documents,
        plural(warnings)
    );
    for (kind, n) in &counts.entries {
        println!("  {kind}: {n}");
    }
    println!(
        "  services: {} ({} instances in {} datacenter{})",
        counts.services,
        counts.instances,
        counts.datacenters,
        plural(counts.datacenters)
    );
    std::process::ExitCode::SUCCESS
}

/// How long `meshgate intention check --consul-addr` waits for Consul's first full answer.
const CONSUL_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `meshgate intention ...`; returns the exit code.
pub fn intention(args: &IntentionArgs) -> std::process::ExitCode {
    match &args.command {
        IntentionCommand::Check(check) => intention_check(check),
    }
}

fn intention_check(args: &IntentionCheckArgs) -> std::process::ExitCode {
    let entries = if let Some(dir) = &args.config_dir {
        if !dir.is_dir() {
            eprintln!("{}: not a directory", dir.display());
            return std::process::ExitCode::from(2);
        }
        let loaded = crate::source::dir::load(dir, &args.datacenter, 1);
        if loaded.has_errors() {
            for p in loaded.errors() {
                eprintln!("{p}");
            }
            eprintln!(
                "{} has errors (listed above); run `meshgate validate {}`",
                dir.display(),
                dir.display()
            );
            return std::process::ExitCode::from(2);
        }
        loaded.snapshot.entries
    } else if let Some(config) = args.consul.config(&args.datacenter) {
        match consul_snapshot(config) {
            Ok(snapshot) => snapshot.entries.clone(),
            Err(e) => {
                eprintln!("meshgate: {e:#}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        eprintln!("meshgate: give --config-dir DIR or --consul-addr URL (or set CONSUL_HTTP_ADDR)");
        return std::process::ExitCode::from(2);
    };
    let decision = crate::model::intentions::check(
        &entries,
        &args.source,
        &args.destination,
        args.default_intention_policy,
    );
    println!(
        "{}",
        if decision.allowed {
            "Allowed"
        } else {
            "Denied"
        }
    );
    eprintln!("{}", decision.reason);
    if decision.allowed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Starts the Consul source on a runtime of its own and waits for its first snapshot.
fn consul_snapshot(config: ConsulConfig) -> anyhow::Result<Arc<Snapshot>> {
    let addr = config.addr.clone();
    // The process-wide crypto provider, as `serve` installs it (already there is fine).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let result = runtime.block_on(async {
        let (source, mut rx) = crate::source::from_consul::start(
            config,
            Arc::new(Metrics::new()),
            std::future::pending(),
        )
        .context("cannot start the Consul source")?;
        let first = tokio::time::timeout(CONSUL_SYNC_TIMEOUT, rx.wait_for(|s| s.is_some())).await;
        drop(source);
        match first {
            Ok(Ok(snapshot)) => Ok(snapshot.clone().expect("waited for a snapshot")),
            Ok(Err(_)) => anyhow::bail!("the Consul source stopped before it had read Consul"),
            Err(_) => anyhow::bail!(
                "no complete state from Consul at {addr} within {}s: is it reachable, and may the token read the catalog and config entries?",
                CONSUL_SYNC_TIMEOUT.as_secs()
            ),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The trust domain: the flag's, else the one kept in the state directory, created once.
pub fn trust_domain(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(td) = &args.trust_domain {
        return Ok(td.clone());
    }
    let path = args.state_dir.join("trust-domain");
    match std::fs::read_to_string(&path) {
        Ok(td) if !td.trim().is_empty() => return Ok(td.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let td = format!("{}.consul", random_uuid());
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create --state-dir {}", args.state_dir.display()))?;
    std::fs::write(&path, format!("{td}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    info!(trust_domain = %td, file = %path.display(), "created the trust domain");
    Ok(td)
}

/// A random (version 4) UUID, as Consul names a cluster.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Runs `meshgate serve` until ctrl-c or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--xds-addr)", args.xds_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-addr)", args.admin_addr))?;
    run(args, xds_listener, admin_listener, shutdown_signal()).await
}

/// Runs the server on bound listeners until `shutdown` completes (the test harness runs it
/// with OS-picked ports).
pub async fn run(
    args: ServeArgs,
    xds_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
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
    let (xds_addr, admin_addr) = (xds_listener.local_addr()?, admin_listener.local_addr()?);
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

    let td = trust_domain(&args)?;
    let mut translator = Translator {
        store: store.clone(),
        settings: Settings {
            // In Consul mode the CA's trust domain replaces it once Consul's roots are read.
            trust_domain: td.clone(),
            default_policy: args.default_intention_policy,
        },
        datacenter: args.datacenter.clone(),
        certs: None,
        // Ready once the first snapshot is published: before that a new Envoy would only get
        // an empty configuration.
        published: Some(ready.clone()),
        caches: Default::default(),
    };
    let sources = if let Some(dir) = &args.config_dir {
        let (source, first) = match DirSource::open(dir, &args.datacenter, metrics.clone()) {
            Ok(opened) => opened,
            Err(problems) => {
                for p in problems.iter().filter(|p| p.is_error()) {
                    eprintln!("{p}");
                }
                anyhow::bail!(
                    "{} has errors (listed above); fix them or run `meshgate validate {}`",
                    dir.display(),
                    dir.display()
                );
            }
        };
        let mut ca = CaConfig::new(td.clone());
        ca.state_dir = args.state_dir.clone();
        ca.ca_cert = args.ca_cert.clone();
        ca.ca_key = args.ca_key.clone();
        ca.leaf_ttl = args.leaf_ttl;
        translator.certs = Some(CertManager::builtin(ca).context("cannot start the built-in CA")?);
        let (tx, rx) = tokio::sync::watch::channel(Some(first));
        tokio::spawn(
            source
                .clone()
                .watch(tx, args.config_debounce, args.config_rescan, stopped()),
        );
        tokio::spawn(translator.run(rx));
        SourceHandle::Dir(source)
    } else if let Some(mut config) = args.consul.config(&args.datacenter) {
        config.wait = args.consul_wait;
        let (source, rx) =
            crate::source::from_consul::start(config.clone(), metrics.clone(), stopped())
                .context("cannot start the Consul source")?;
        translator.certs = Some(
            CertManager::consul(&config, td.clone(), rx.clone())
                .context("cannot start fetching leaf certificates from Consul")?,
        );
        tokio::spawn(translator.run(rx));
        SourceHandle::Consul(source)
    } else {
        warn!("no --config-dir or --consul-addr: serving an empty mesh");
        SourceHandle::None
    };
    let serving_nothing = matches!(sources, SourceHandle::None);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            metrics,
            streams,
            store,
            ready: ready.clone(),
            sources,
        },
        stopped(),
    ));
    info!(xds = %xds_addr, admin = %admin_addr, tls = tls.is_some(),
        datacenter = %args.datacenter, "meshgate serving");
    let xds = tokio::spawn(server.serve(xds_listener, tls, stopped()));
    if serving_nothing {
        ready.store(true, Ordering::Release);
    }

    shutdown.await;
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
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("100").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn a_config_dir_is_accepted_beside_a_consul_address() {
        // An exported CONSUL_HTTP_ADDR must not make --config-dir unusable: both parse, and
        // `run` reads the directory first.
        let cli = Cli::try_parse_from([
            "meshgate",
            "serve",
            "--config-dir",
            "mesh",
            "--consul-addr",
            "http://127.0.0.1:8500",
        ])
        .expect("both flags parse");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            args.config_dir.as_deref(),
            Some(std::path::Path::new("mesh"))
        );
        let config = args.consul.config("dc1").expect("a Consul config");
        assert_eq!(config.addr, "http://127.0.0.1:8500");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
