//! The `wsgate` binary: configuration, the reactors, and waiting for a shutdown signal.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;
use wsgate::config::RawConfig;
use wsgate::server::Server;

/// A multi-threaded, high-performance WebSocket fan-out gateway.
#[derive(Parser)]
#[command(name = "wsgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default with no subcommand).
    Serve(RawConfig),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A failed log write is reported with eprintln!, which panics when stderr itself
        // is the broken pipe (its reader gone): the thread that logged would die, the
        // signal thread included. Lost log lines are the lesser harm.
        .log_internal_errors(false)
        .init();
    let Command::Serve(raw) = Cli::parse()
        .command
        .unwrap_or(Command::Serve(RawConfig::default()));
    let config = match raw.load() {
        Ok(config) => config,
        Err(e) => {
            say(format_args!("wsgate: {e}"));
            return ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format_args!("wsgate: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr, ignoring a closed one (eprintln! would panic).
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn serve(config: wsgate::config::Config) -> anyhow::Result<()> {
    match wsgate::sys::raise_nofile_limit() {
        Ok(limit) if (limit as usize) < config.limits.max_connections + 64 => {
            tracing::warn!(
                limit,
                max_connections = config.limits.max_connections,
                "open-files limit below max_connections"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if config.net.threads > cores {
        // Issue 9, item 6: each reactor costs memory (README, Configuration) and extra
        // reactors only compete for the same cores.
        tracing::warn!(
            "{} reactors but {cores} cores available to this process: each reactor costs \
             memory (see README, Configuration) and the extra ones only compete for the cores",
            config.net.threads
        );
    }
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let mut reloader = wsgate::reload::Reloader::default();
    if let Some(acceptor) = &config.tls.acceptor {
        let certs = acceptor.certs().clone();
        let files = certs.files();
        reloader.register("tls certificates", files, Box::new(move || certs.reload()));
    }
    if let Some(verifier) = &config.auth.verifier {
        let verifier = verifier.clone();
        let files = verifier.files();
        let reload = move || verifier.reload().map(|_| ()).map_err(|e| e.to_string());
        reloader.register("jwt keys", files, Box::new(reload));
    }
    reloader.spawn().context("starting the reload watcher")?;
    let (threads, pin) = (config.net.threads, config.net.pin);
    let server = Server::start(config.clone())
        .with_context(|| format!("starting on {}", config.net.listen))?;
    if let Some(addr) = server.tls_addr() {
        tracing::info!("wsgate listening for TLS (wss://) on {addr}");
    }
    tracing::info!(
        "wsgate listening on {}, {threads} reactors, pinning {}, io {}",
        server.local_addr(),
        if pin { "on" } else { "off" },
        server.backend()
    );
    let shared = server.shared().clone();
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal, "draining: closing connections with 1001");
                    shared.drain();
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    server.join().context("reactor failed")?;
    tracing::info!("drained, exiting");
    Ok(())
}
