//! The `pathway-gateway` command: parses the command line and calls into the
//! library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pathway_gateway::config::Config;
use pathway_gateway::server;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pathway-gateway",
    version,
    about = "FHIR R4 interoperability gateway for NHS care pathways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (embedded store in ./data unless configured).
    Serve {
        /// Configuration file (default: ./gateway.toml if present).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(&config);
            // A panic's message could quote what a sender sent; log where it
            // happened, not what it said.
            std::panic::set_hook(Box::new(|info| {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                tracing::error!(at, "panic (message withheld: it may carry patient data)");
            }));
            match serve(config) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("pathway-gateway: {err:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.http.listen))?;
        server::run(config, listener, server::shutdown_signal()).await?;
        Ok(())
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}
