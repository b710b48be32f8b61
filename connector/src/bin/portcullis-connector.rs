//! `portcullis-connector`: the outbound-only agent inside the private network.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis_connector::config::ConnectorConfigFile;
use portcullis_connector::connector::{self, files, EdgeTrust, RegisterOptions};
use portcullis_connector::Shutdown;

/// Connector: dials the edge, serves published apps through outbound tunnels.
#[derive(Debug, Parser)]
#[command(name = "portcullis-connector", version)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register with the edge using an admin token; stores key and certificate (0600).
    Register {
        /// Edge registration URL, e.g. https://127.0.0.1:8441.
        #[arg(long)]
        edge: String,
        /// Admin token (JWT). Prefer --token-file or PORTCULLIS_ADMIN_TOKEN.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// File holding the admin token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// State directory for key, certificate, edge CA, cache and connector.json.
        #[arg(long, default_value = "/var/lib/portcullis-connector")]
        state_dir: PathBuf,
        /// Connector group to join (default: the edge's first group).
        #[arg(long)]
        group: Option<String>,
        /// PEM file with the edge's connector CA certificate.
        #[arg(
            long,
            conflicts_with = "edge_fingerprint",
            required_unless_present = "edge_fingerprint"
        )]
        edge_ca: Option<PathBuf>,
        /// SHA-256 fingerprint (hex) of the edge's CA certificate (`portcullis-edge fingerprint`).
        #[arg(long)]
        edge_fingerprint: Option<String>,
    },
    /// Run the connector (SIGTERM/Ctrl-C drains open streams and stops).
    Run {
        /// Connector configuration file (default: <state-dir>/connector.json).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// State directory (used when --config is not given).
        #[arg(long, default_value = "/var/lib/portcullis-connector")]
        state_dir: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        /// Connector configuration file (JSON).
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
        Command::Register {
            edge,
            token,
            token_file,
            state_dir,
            group,
            edge_ca,
            edge_fingerprint,
        } => {
            let token = match (
                token.or_else(|| std::env::var("PORTCULLIS_ADMIN_TOKEN").ok()),
                token_file,
            ) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
                (None, None) => anyhow::bail!(
                    "give the admin token with --token, --token-file or PORTCULLIS_ADMIN_TOKEN"
                ),
            };
            let trust = match (edge_ca, edge_fingerprint) {
                (Some(p), _) => EdgeTrust::CaFile(p),
                (None, Some(f)) => EdgeTrust::Fingerprint(f),
                (None, None) => anyhow::bail!("give --edge-ca or --edge-fingerprint"),
            };
            let resp = connector::register(&RegisterOptions {
                edge_url: edge,
                token,
                state_dir: state_dir.clone(),
                group,
                trust,
            })
            .await?;
            println!(
                "registered connector {} in group {}; state in {}",
                resp.connector_id,
                resp.group,
                state_dir.display()
            );
        }
        Command::Check { config } => {
            ConnectorConfigFile::load(&config)?.validate()?;
            println!("{}: ok", config.display());
        }
        Command::Run { config, state_dir } => {
            let path = config.unwrap_or_else(|| state_dir.join(files::CONFIG));
            let settings = ConnectorConfigFile::load(&path)
                .and_then(|f| f.validate())
                .with_context(|| format!("loading {}", path.display()))?;
            let (trigger, shutdown) = Shutdown::new();
            let handle = connector::start(settings, shutdown).await?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut waiting = tokio::spawn(handle.wait());
            let stopped = tokio::select! {
                _ = tokio::signal::ctrl_c() => None,
                _ = term.recv() => None,
                s = &mut waiting => Some(s),
            };
            let stopped = match stopped {
                Some(s) => s?,
                None => {
                    tracing::info!("draining");
                    trigger.trigger();
                    // A second signal stops at once.
                    tokio::select! {
                        _ = term.recv() => std::process::exit(1),
                        _ = tokio::signal::ctrl_c() => std::process::exit(1),
                        s = &mut waiting => s?,
                    }
                }
            };
            if let connector::Stopped::Revoked(why) = stopped {
                anyhow::bail!("the edge revoked this connector: {why}; register a new one");
            }
        }
    }
    Ok(())
}
