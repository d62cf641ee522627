//! The `wsrelay` binary: parse the command line, start, map errors to exit
//! codes (2 for a configuration the node refuses, 1 for anything else).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use wsrelay::config::{LogFormat, Settings};
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
    /// Check a config file (with the flags and WSRELAY_* variables, as `serve` would
    /// merge them) and print the effective configuration, secrets masked
    CheckConfig {
        /// The TOML file to check
        file: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
    /// Run a node under a simulated playbook event storm and print live figures
    Demo(DemoOptions),
    /// Emit events: to a node over HTTP, or into the Redis Stream nodes read
    Emit {
        /// Base URL of the node, e.g. http://127.0.0.1:8051
        #[arg(long, env = "WSRELAY_URL", default_value = "http://127.0.0.1:8051")]
        url: String,
        /// The node's emit key (HTTP)
        #[arg(long, env = "WSRELAY_EMIT_KEY", hide_env_values = true)]
        key: Option<String>,
        /// XADD to this Redis instead of POSTing, pipelined
        #[arg(long, conflicts_with = "key")]
        redis: Option<String>,
        /// The stream to XADD to
        #[arg(long, default_value = "wsrelay:events")]
        stream: String,
        /// Group to emit to, e.g. jobs-status_changed
        #[arg(long, required_unless_present = "jsonl", requires = "data")]
        group: Option<String>,
        /// The payload: JSON text, delivered verbatim
        #[arg(long, requires = "group")]
        data: Option<String>,
        /// Many events: a file (or - for stdin) of lines {"group": G, "payload": JSON}
        #[arg(long, conflicts_with_all = ["group", "data"])]
        jsonl: Option<String>,
    },
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `level`).
/// Spans carry each line's context (the connection, the peer link).
fn init_logging(format: LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config, settings),
        Command::CheckConfig { file, settings } => check_config(&file, settings),
        Command::Demo(opts) => {
            // The demo's live table is what a newcomer should see first:
            // only warnings, and one summary line of the cluster's start.
            init_logging(LogFormat::Text, "warn");
            wsrelay::demo::run(&opts).map(|s| {
                if s.lost() > 0 || s.out_of_order > 0 {
                    eprintln!(
                        "demo: {} deliveries lost, {} out of order",
                        s.lost(),
                        s.out_of_order
                    );
                }
            })
        }
        Command::Emit {
            url,
            key,
            redis,
            stream,
            group,
            data,
            jsonl,
        } => {
            init_logging(LogFormat::Text, "info");
            emit(&url, key, redis, &stream, group, data, jsonl)
        }
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
    let (config_, warnings) = flags.clone().or(file).load()?;
    init_logging(config_.log_format, "info");
    for w in warnings {
        tracing::warn!("{w}");
    }
    let node = Node::start(config_)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => reload_peers(&node, config.as_deref(), &flags),
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down");
    node.shutdown();
    Ok(())
}

/// `check-config`: the file merged with the flags and environment as
/// `serve` would, validated; prints the result with secrets masked.
/// Exit 0 when a node would start with it, 2 with the reason otherwise.
fn check_config(path: &std::path::Path, flags: Settings) -> anyhow::Result<()> {
    let file = Settings::from_file(path)?;
    let (config, warnings) = flags.or(file).load()?;
    config.validate()?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "# {}: valid; the effective configuration (secrets masked):",
        path.display()
    );
    print!("{}", config.to_toml());
    Ok(())
}

/// SIGHUP: re-reads the config file and applies its peer list. Only the
/// peers change at run time; a bad file is logged and changes nothing.
fn reload_peers(node: &Node, path: Option<&std::path::Path>, flags: &Settings) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no --config file to re-read; peers unchanged");
        return;
    };
    let config = match Settings::from_file(path).and_then(|file| flags.clone().or(file).load()) {
        Ok((config, _)) => config,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; peers unchanged");
            return;
        }
    };
    match config.peer_specs() {
        Ok(peers) => {
            tracing::info!(peers = peers.len(), "SIGHUP: peer list reloaded");
            node.set_peers(peers);
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: peers unchanged"),
    }
}

/// `wsrelay emit`: one event (`--group`/`--data`) or many (`--jsonl`),
/// over HTTP or into the Redis Stream.
fn emit(
    url: &str,
    key: Option<String>,
    redis: Option<String>,
    stream: &str,
    group: Option<String>,
    data: Option<String>,
    jsonl: Option<String>,
) -> anyhow::Result<()> {
    let events = match (jsonl, group, data) {
        (Some(path), _, _) => wsrelay::producer::read_jsonl(&path)?,
        (None, Some(group), Some(data)) => {
            let payload: &serde_json::value::RawValue =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            vec![(group, payload.get().to_owned())]
        }
        _ => bail!("give --group and --data, or --jsonl"),
    };
    let accepted = match (redis, key) {
        (Some(redis), _) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(wsrelay::producer::redis_stream(&redis, stream, &events))?,
        (None, Some(key)) => wsrelay::producer::http(url, &key, &events)?,
        (None, None) => bail!("give --key (HTTP emit) or --redis (stream)"),
    };
    println!(r#"{{"accepted": {accepted}}}"#);
    Ok(())
}
