//! `portcullis`: render Envoy's, the filters' and the edge's configurations
//! from one `portcullis.yaml`, and check the provider before the first user.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write envoy.yaml, the filters' configurations and edge.json from portcullis.yaml.
    Render {
        /// The configuration file.
        #[arg(short, long, default_value = "portcullis.yaml")]
        config: PathBuf,
        /// Directory to write into.
        #[arg(short, long, default_value = "rendered")]
        out: PathBuf,
    },
    /// Fetch each provider's discovery document and JWKS the way the filter
    /// will, compare the issuer exactly, check each endpoint against the
    /// clusters, and print the redirect and post-logout URIs to register.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "portcullis.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render { config, out } => render(&config, &out),
        Command::Check { config } => check(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(config: &std::path::Path, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let r = portcullis_cli::render_file(config)?;
    for path in portcullis_cli::write_render(&r, out)? {
        println!("wrote {}", path.display());
    }
    if !r.env_keys.is_empty() {
        println!(
            "Envoy passes these variables from its environment to the filter: {}",
            r.env_keys.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let r = portcullis_cli::render_file(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(portcullis_cli::check::check(&r));
    print!("{}", report.text());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
