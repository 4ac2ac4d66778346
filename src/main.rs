use clap::Parser;
use meshgate::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The offline verbs run without logging (intention check starts its own runtime).
    match &cli.command {
        Command::Validate(args) => return meshgate::cli::validate(args),
        Command::Bootstrap(args) => return meshgate::cli::bootstrap(args),
        Command::Intention(args) => return meshgate::cli::intention(args),
        Command::Serve(_) => {}
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    // One crypto provider for every TLS user in the process.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("meshgate: a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => meshgate::cli::serve(*args).await,
            Command::Validate(_) | Command::Intention(_) | Command::Bootstrap(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
