//! `portcullis-edge`: the edge service beside Envoy.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis_connector::config::EdgeConfigFile;
use portcullis_connector::{edge, Shutdown};

/// Edge service: connector CA, registration, tunnels, and Envoy's local upstream.
#[derive(Debug, Parser)]
#[command(name = "portcullis-edge", version)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the edge service (SIGHUP reloads the file, SIGTERM/Ctrl-C drains and stops).
    Run {
        /// Edge configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        /// Edge configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the SHA-256 fingerprint of the connector CA (created if missing).
    Fingerprint {
        /// Edge configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match real_main(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            EdgeConfigFile::load(&config)?.validate()?;
            println!("{}: ok", config.display());
        }
        Command::Fingerprint { config } => {
            let settings = EdgeConfigFile::load(&config)?.validate()?;
            let ca = portcullis_connector::pki::EdgeCa::load_or_create(&settings.state_dir)?;
            println!("{}", ca.fingerprint());
        }
        Command::Run { config } => {
            let settings = EdgeConfigFile::load(&config)
                .and_then(|f| f.validate())
                .with_context(|| format!("loading {}", config.display()))?;
            let (trigger, shutdown) = Shutdown::new();
            let handle = edge::start(settings, shutdown).await?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => {
                        match EdgeConfigFile::load(&config).map_err(anyhow::Error::from).and_then(|f| handle.reload(&f).map_err(Into::into)) {
                            Ok(()) => tracing::info!("reloaded {}", config.display()),
                            Err(e) => tracing::error!("reload refused, keeping the old configuration: {e}"),
                        }
                    }
                }
            }
            trigger.trigger();
            handle.wait().await;
        }
    }
    Ok(())
}
