//! The `wsrelay` binary: parse the command line, start, map errors to exit
//! codes (2 for a configuration the node refuses, 1 for anything else).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use wsrelay::config::Settings;
use wsrelay::demo::DemoOptions;
use wsrelay::{Node, StartError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A websocket group-fanout relay for event floods (AWX-compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node
    Serve {
        /// TOML file with the same keys as the flags (snake_case)
        #[arg(long, env = "WSRELAY_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Run a node under a simulated playbook event storm and print live figures
    Demo(DemoOptions),
    /// Emit one event to a node over HTTP
    Emit {
        /// Base URL of the node, e.g. http://127.0.0.1:8051
        #[arg(long, env = "WSRELAY_URL", default_value = "http://127.0.0.1:8051")]
        url: String,
        /// The node's emit key
        #[arg(long, env = "WSRELAY_EMIT_KEY", hide_env_values = true)]
        key: String,
        /// Group to emit to, e.g. jobs-status_changed
        #[arg(long)]
        group: String,
        /// The payload: JSON text, delivered verbatim
        #[arg(long)]
        data: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config, settings),
        Command::Demo(opts) => wsrelay::demo::run(&opts).map(|s| {
            if s.lost() > 0 || s.out_of_order > 0 {
                eprintln!(
                    "demo: {} deliveries lost, {} out of order",
                    s.lost(),
                    s.out_of_order
                );
            }
        }),
        Command::Emit {
            url,
            key,
            group,
            data,
        } => emit(&url, &key, &group, &data),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsrelay: {e:#}");
            let config_error =
                matches!(e.downcast_ref::<StartError>(), Some(StartError::Config(_)))
                    || e.downcast_ref::<wsrelay::config::ConfigError>().is_some();
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

fn serve(config: Option<PathBuf>, flags: Settings) -> anyhow::Result<()> {
    let file = match &config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let node = Node::start(flags.or(file).into_config())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down");
    node.shutdown();
    Ok(())
}

/// A one-shot HTTP/1.1 POST, enough for scripts; `http://` only.
fn emit(url: &str, key: &str, group: &str, data: &str) -> anyhow::Result<()> {
    let payload: &serde_json::value::RawValue =
        serde_json::from_str(data).context("--data is not valid JSON")?;
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must start with http:// (TLS is the proxy's job)");
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let body = format!(
        r#"{{"group": {}, "payload": {}}}"#,
        serde_json::to_string(group)?,
        payload.get()
    );
    let mut stream =
        TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /api/v1/emit HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, reply) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{status}: {reply}");
    }
    println!("{reply}");
    Ok(())
}
