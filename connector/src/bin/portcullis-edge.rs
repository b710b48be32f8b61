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
    /// List or revoke registered connectors (the running edge's admin API, with an
    /// admin token under the same rules as registration).
    Connectors {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Edge configuration file: the registration address and the CA come from it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Registration URL of the edge (default: from --config, e.g. https://127.0.0.1:8441).
    #[arg(long, global = true)]
    edge: Option<String>,
    /// PEM file with the edge's connector CA (default: from --config's state directory).
    #[arg(long, global = true)]
    edge_ca: Option<PathBuf>,
    /// Admin token (JWT). Prefer --token-file or PORTCULLIS_ADMIN_TOKEN.
    #[arg(long, global = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the admin token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ConnectorsCommand {
    /// List every connector the registry knows (id, group, serial, seen, revoked).
    List {
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a connector: its tunnels drop at once on every edge replica, and its
    /// configuration pulls and renewals are refused (`connector_revoked`).
    Revoke {
        /// Connector id (`c-…`).
        id: String,
        /// Why (kept in the registry).
        #[arg(long)]
        reason: Option<String>,
    },
}

fn admin_token(token: Option<String>, file: Option<PathBuf>) -> anyhow::Result<String> {
    match (
        token.or_else(|| std::env::var("PORTCULLIS_ADMIN_TOKEN").ok()),
        file,
    ) {
        (Some(t), _) => Ok(t),
        (None, Some(f)) => Ok(std::fs::read_to_string(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string()),
        (None, None) => anyhow::bail!(
            "give the admin token with --token, --token-file or PORTCULLIS_ADMIN_TOKEN"
        ),
    }
}

fn admin_endpoint(a: &AdminArgs) -> anyhow::Result<portcullis_connector::connector::EdgeEndpoint> {
    let settings = match &a.config {
        Some(c) => Some(EdgeConfigFile::load(c)?.validate()?),
        None => None,
    };
    let url = match (&a.edge, &settings) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => {
            let addr = s.registration_listen;
            // Listening on every address: ask on this machine, by a name the edge's
            // certificate holds (server_names has localhost by default).
            let host = if addr.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                addr.ip().to_string()
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("https://{host}:{}", addr.port())
        }
        (None, None) => anyhow::bail!("give --config or --edge"),
    };
    let ca = match (&a.edge_ca, &settings) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.state_dir.join(portcullis_connector::pki::CA_CERT_FILE),
        (None, None) => anyhow::bail!("give --config or --edge-ca"),
    };
    Ok(portcullis_connector::connector::EdgeEndpoint::new(
        &url,
        &portcullis_connector::connector::EdgeTrust::CaFile(ca),
    )?)
}

fn when(t: Option<u64>) -> String {
    match t {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t as i64)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.to_string()),
        None => "-".into(),
    }
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
        Command::Connectors { admin, command } => {
            let endpoint = admin_endpoint(&admin)?;
            let token = admin_token(admin.token, admin.token_file)?;
            match command {
                ConnectorsCommand::List { json } => {
                    let list = endpoint.list_connectors(&token).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        println!(
                            "{:<20} {:<12} {:<34} {:<21} {:<21} {:<16} revoked",
                            "id", "group", "serial", "first seen", "last seen", "last address"
                        );
                        for c in list.connectors {
                            println!(
                                "{:<20} {:<12} {:<34} {:<21} {:<21} {:<16} {}",
                                c.id,
                                c.group,
                                c.serial,
                                when(c.first_seen),
                                when(c.last_seen),
                                c.last_address.as_deref().unwrap_or("-"),
                                c.revoked
                                    .map(|r| format!("{} by {}", when(Some(r.at)), r.by))
                                    .unwrap_or_else(|| "no".into())
                            );
                        }
                    }
                }
                ConnectorsCommand::Revoke { id, reason } => {
                    let answer = endpoint.revoke_connector(&token, &id, reason).await?;
                    println!(
                        "revoked connector {id}; {} tunnel(s) dropped on this edge",
                        answer["tunnels_dropped"]
                    );
                }
            }
        }
        Command::Run { config } => {
            let (nofile, before) = portcullis_connector::limits::raise_nofile_limit();
            if nofile != before {
                tracing::info!(
                    nofile,
                    before,
                    "raised the descriptor limit (RLIMIT_NOFILE)"
                );
            }
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
            // A second signal stops at once.
            tokio::select! {
                _ = handle.wait() => {}
                _ = term.recv() => std::process::exit(1),
                _ = tokio::signal::ctrl_c() => std::process::exit(1),
            }
        }
    }
    Ok(())
}
