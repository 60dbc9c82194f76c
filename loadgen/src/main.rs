//! wsgate-loadgen: a WebSocket load generator with coordinated-omission-free HDR latency
//! histograms. Modes: `echo`, `fanout`, `connect`; see `--help` and loadgen/README.md.
//!
//! ```text
//! main (CLI) → run (coordinator: phases, progress, Ctrl-C) → engine ×threads (mio loop,
//!   connections, wsgate-proto client side + ws reading policy, stamps, histograms)
//!   → stats (table, JSON, .hgrm) + plot, hlog (interval logs; `merge` combines them)
//! ```

mod blast;
mod engine;
mod hlog;
mod inflate;
mod modes;
mod plan;
mod plot;
mod run;
mod stamp;
mod stats;
mod sys;
mod tls;
mod ws;

use std::io::{ErrorKind, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use modes::{Common, ConnectArgs, EchoArgs, FanoutArgs};

#[derive(Parser)]
#[command(name = "wsgate-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Round-trip latency against an echo endpoint (closed or open loop).
    Echo(EchoArgs),
    /// Publish-to-delivery latency with N subscribers and P publishers at a total rate.
    Fanout(FanoutArgs),
    /// Handshakes per second and handshake latency, with connect-hold-close churn.
    Connect(ConnectArgs),
    /// Combines interval logs (--hlog) from several runs into one set of percentiles.
    Merge(hlog::MergeArgs),
    /// A trivially cheap frame blaster to measure the loadgen's own ceiling.
    #[command(hide = true)]
    BlastServer(blast::BlastArgs),
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Echo(EchoArgs { common: c, .. })
        | Cmd::Fanout(FanoutArgs { common: c, .. })
        | Cmd::Connect(ConnectArgs { common: c, .. }) => check_outputs(
            c.json.as_deref(),
            c.hgrm.as_deref(),
            c.plot.as_deref(),
            c.hlog.as_deref(),
        )?,
        Cmd::Merge(m) => check_outputs(
            m.json.as_deref(),
            m.hgrm.as_deref(),
            m.plot.as_deref(),
            None,
        )?,
        Cmd::BlastServer(_) => {}
    }
    let (plan, common) = {
        let progress = |c: &Common| !c.quiet && std::io::stderr().is_terminal();
        match &cli.cmd {
            Cmd::Echo(a) => (modes::echo_plan(a, progress(&a.common))?, &a.common),
            Cmd::Fanout(a) => (modes::fanout_plan(a, progress(&a.common))?, &a.common),
            Cmd::Connect(a) => (modes::connect_plan(a, progress(&a.common))?, &a.common),
            Cmd::BlastServer(_) => {
                let Cmd::BlastServer(a) = cli.cmd else {
                    unreachable!("matched above")
                };
                return blast::run(a);
            }
            Cmd::Merge(a) => return hlog::merge(a),
        }
    };
    match sys::raise_nofile() {
        Ok(n) if (n as usize) < plan.total_conns() + 64 => eprintln!(
            "warning: open-file limit {n} is below the {} connections asked for (ulimit -n)",
            plan.total_conns()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let progress = plan.progress;
    let timing = run::Timing {
        warmup: common.warmup,
        duration: common.duration,
        drain: common.drain,
    };
    let out = run::run(plan, timing, progress)?;
    let mut stdout = std::io::stdout().lock();
    out.summary.write_table(&mut stdout)?;
    stdout.flush()?;
    if let Some(path) = &common.json {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &out.summary)?;
    }
    if let Some(path) = &common.hgrm {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        stats::write_hgrm(&out.hist, 1000.0, &mut w)?;
        w.flush()?;
    }
    if let Some(path) = &common.plot {
        let title = format!(
            "{} {} ({} connections, {:.0}/s)",
            out.summary.mode, out.summary.url, out.summary.connections, out.summary.rate_per_s
        );
        plot::write(&out.hist, &title, path)?;
        let line = hlog::timeline(&[(hlog::epoch_s(out.start), &out.intervals[..])]);
        plot::write_timeline(&line, &title, &plot::timeline_path(path))?;
    }
    if let Some(path) = &common.hlog {
        hlog::write(path, out.start, &out.intervals)?;
    }
    match out.failure {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// Checks, before anything is connected or read, that every output file can be written:
/// they are written at the end, and a path that could not be (a missing directory, a typo)
/// lost the results of the whole run.
fn check_outputs(
    json: Option<&Path>,
    hgrm: Option<&Path>,
    plot: Option<&Path>,
    hlog: Option<&Path>,
) -> Result<()> {
    for (flag, path) in [("--json", json), ("--hgrm", hgrm), ("--hlog", hlog)] {
        if let Some(path) = path {
            check_writable(flag, path)?;
        }
    }
    if let Some(path) = plot {
        plot::check_type(path)?;
        check_writable("--plot", path)?;
        check_writable("--plot", &plot::timeline_path(path))?;
    }
    Ok(())
}

/// Opens `path` for writing, as the end of the run will, through a symlink. Without
/// truncating: a file already there (an earlier run's results) stays as it is until this
/// run's replace it; and one that was not there is removed again, so that a run that fails
/// leaves no empty file behind.
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    // Whether the file is there, not a link to it: a symlink to a missing file was taken
    // for one, and the empty file the open made at its target was left behind.
    let existed = !matches!(path.metadata(), Err(e) if e.kind() == ErrorKind::NotFound);
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{flag} {}: cannot write", path.display()))?;
    if !existed {
        // The file the open made: a symlink's target, not the link, which stays as it was.
        if let Ok(made) = std::fs::canonicalize(path) {
            let _ = std::fs::remove_file(made);
        }
    }
    Ok(())
}
