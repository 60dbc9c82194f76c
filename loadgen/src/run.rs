//! The coordinator: starts the workers, moves them through the phases (connect → warm-up and
//! measured window → drain → stop), prints the live progress line, honours Ctrl-C and
//! builds the [`Summary`]. It never touches a socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Shared, ThreadResult, Worker, DRAIN, REFUSED, RUN, STOP};
use crate::hlog::Interval;
use crate::plan::{Mode, Plan};
use crate::stats::{new_hist, Client, Counters, Echo, Fanout, Latency, Summary, UrlLatency};
use crate::sys;

pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
}

pub struct Outcome {
    pub summary: Summary,
    pub hist: hdrhistogram::Histogram<u64>,
    /// Wall-clock start of the warm-up, and the latencies per second since (when the plan
    /// asked for intervals).
    pub start: SystemTime,
    pub intervals: Vec<Interval>,
    /// Why the run measured nothing, if it did not: reported after the summary, with
    /// exit status 1.
    pub failure: Option<String>,
}

const TICK: Duration = Duration::from_millis(10);

struct Progress {
    bar: Option<ProgressBar>,
    last_t: u64,
    last_received: u64,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let bar = enabled.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("valid template"),
            );
            b
        });
        Progress {
            bar,
            last_t: sys::mono_ns(),
            last_received: 0,
        }
    }

    /// A line on stderr, above the progress line if there is one.
    fn warn(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn say(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
            b.tick();
        }
    }

    /// Once a second: rate, p50 and p99 of the last interval (`h`).
    fn update(&mut self, shared: &Shared, phase: &str, h: &hdrhistogram::Histogram<u64>) {
        let Some(bar) = &self.bar else {
            return;
        };
        let now = sys::mono_ns();
        let mut c = Counters::default();
        let mut open = 0;
        for live in &shared.live {
            let l = live.lock().expect("not poisoned");
            c += l.counters;
            open += l.open;
        }
        let received = c.received;
        let dt = (now - self.last_t) as f64 / 1e9;
        let rate = (received - self.last_received.min(received)) as f64 / dt.max(1e-9);
        self.last_t = now;
        self.last_received = received;
        // The summary's errors, summed: the same kinds as the final report.
        let errors = c.errors().total();
        bar.set_message(format!(
            "{phase}: {open} conns, {rate:.0}/s, p50 {:.0} us, p99 {:.0} us, errors {errors}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ));
        bar.tick();
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn run(plan: Plan, timing: Timing, progress: bool) -> Result<Outcome> {
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::new(plan.threads));
    let sigint = Arc::new(AtomicBool::new(false));
    // A second Ctrl-C exits at once.
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        Arc::clone(&sigint),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&sigint))?;

    let mut workers = Vec::new();
    for i in 0..plan.threads {
        let w = Worker::new(i, Arc::clone(&plan), Arc::clone(&shared))?;
        workers.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || w.run())?,
        );
    }
    let join = |workers: Vec<std::thread::JoinHandle<ThreadResult>>| -> Vec<ThreadResult> {
        workers
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    };

    let mut prog = Progress::new(progress);
    let mut said = 0;
    // Connect phase: until every connection is ready or failed, bounded.
    let total = plan.total_conns() as u64;
    let ramp_s = if plan.connect_rate > 0.0 {
        total as f64 / plan.connect_rate
    } else {
        0.0
    };
    let connect_deadline = sys::mono_ns() + ((ramp_s + 1.0) * 1e9) as u64 + plan.connect_timeout_ns;
    loop {
        let (ready, failed) = (
            shared.ready.load(Ordering::Acquire),
            shared.failed.load(Ordering::Acquire),
        );
        if ready + failed >= total || sigint.load(Ordering::Relaxed) {
            break;
        }
        if sys::mono_ns() > connect_deadline {
            break;
        }
        say_open_errors(&shared, &mut said, &prog);
        prog.say(format!(
            "connecting: {ready}/{total} ready, {failed} failed"
        ));
        std::thread::sleep(TICK);
    }
    let (ready, failed) = (
        shared.ready.load(Ordering::Acquire),
        shared.failed.load(Ordering::Acquire),
    );
    let first_error = shared
        .first_error
        .lock()
        .expect("not poisoned")
        .clone()
        .unwrap_or_else(|| "timed out".into());
    if total > 0 && ready == 0 {
        shared.phase.store(STOP, Ordering::Release);
        prog.finish();
        join(workers);
        bail!("could not connect to {}: {first_error}", plan.url);
    }
    if ready < total {
        eprintln!(
            "warning: {} of {total} connections are not ready ({failed} failed): {first_error}",
            total - ready
        );
    }

    // Warm-up and measured window.
    let t = sys::mono_ns();
    let start = SystemTime::now();
    let mut intervals = Intervals {
        t0: t,
        last: t,
        list: Vec::new(),
        on: plan.intervals,
    };
    let mstart = t + timing.warmup.as_nanos() as u64;
    let mend = mstart + timing.duration.as_nanos() as u64;
    shared.mstart.store(mstart, Ordering::Release);
    shared.mend.store(mend, Ordering::Release);
    shared.phase.store(RUN, Ordering::Release);
    let mut cpu_start = None;
    let mut cpu_end = None;
    let mut next_report = t + 1_000_000_000;
    let mut end = mend;
    let mut interrupted = false;
    loop {
        let now = sys::mono_ns();
        if cpu_start.is_none() && now >= mstart {
            cpu_start = Some(sys::process_cpu_ns());
        }
        if now >= mend {
            break;
        }
        if sigint.load(Ordering::Relaxed) {
            interrupted = true;
            end = now.max(mstart);
            shared.mend.store(end, Ordering::Release);
            break;
        }
        say_open_errors(&shared, &mut said, &prog);
        if now >= next_report {
            let h = intervals.take(&shared, now);
            prog.update(&shared, if now < mstart { "warm-up" } else { "run" }, &h);
            next_report += 1_000_000_000;
        }
        let wake = next_report.min(mend).min(if cpu_start.is_none() {
            mstart
        } else {
            u64::MAX
        });
        std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now)).min(TICK * 10));
    }
    if cpu_start.is_some() {
        cpu_end = Some(sys::process_cpu_ns());
    }

    // Drain: wait for what is still in flight.
    if !interrupted {
        shared.phase.store(DRAIN, Ordering::Release);
        let drain_end = sys::mono_ns() + timing.drain.as_nanos() as u64;
        while sys::mono_ns() < drain_end && !sigint.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            say_open_errors(&shared, &mut said, &prog);
            if sys::mono_ns() >= next_report {
                intervals.take(&shared, sys::mono_ns());
                next_report += 1_000_000_000;
            }
            if drained(&plan, &shared) {
                break;
            }
        }
    }
    shared.phase.store(STOP, Ordering::Release);
    prog.say("closing".into());
    let results = join(workers);
    prog.finish();
    say_open_errors(&shared, &mut said, &prog);
    intervals.take(&shared, sys::mono_ns());

    let window_ns = end.saturating_sub(mstart);
    let cpu_ns = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    };
    let mut out = summarize(
        &plan,
        &shared,
        results,
        window_ns,
        cpu_ns,
        &timing,
        interrupted,
    );
    out.start = start;
    out.intervals = intervals.list;
    let c = &out.summary;
    // A passive fan-out (--publishers 0) may hold idle connections on purpose.
    let passive = plan.mode == Mode::Fanout && plan.publishers == 0;
    if !interrupted && c.received == 0 && !passive {
        // Nothing arrived in the window (every connect refused, every connection gone):
        // not a measurement, however clean the table looks.
        let why = failure_reasons(&shared);
        let what = match plan.mode {
            _ if c.sent == 0 => "nothing was sent",
            Mode::Connect => "no handshake completed",
            Mode::Echo => "no echo came back",
            Mode::Fanout => "no delivery arrived",
        };
        out.failure = Some(match why {
            Some(why) => format!("{what} in the measured window: {why}"),
            // Nothing went wrong: nothing was due (0.5/s over a 1 s window).
            None if c.sent == 0 => {
                format!("{what} in the measured window: is the rate too low for the duration?")
            }
            None => format!("{what} in the measured window"),
        });
    }
    Ok(out)
}

/// Every kind of error the run had, as the reason it failed: the connect phase's first,
/// then the first of each kind after a handshake (a malformed frame, a close, a refused
/// publish), in order. Those were given only when the connect phase had none.
fn failure_reasons(shared: &Shared) -> Option<String> {
    let first = shared.first_error.lock().expect("not poisoned");
    let open = shared.open_errors.lock().expect("not poisoned");
    let all: Vec<&str> = first
        .iter()
        .chain(open.iter().map(|(_, m)| m))
        .map(String::as_str)
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// Says the errors on open connections that were not said yet: the first of each kind,
/// once (`said` counts those said so far).
fn say_open_errors(shared: &Shared, said: &mut usize, prog: &Progress) {
    let errors = shared.open_errors.lock().expect("not poisoned");
    for (kind, msg) in &errors[(*said).min(errors.len())..] {
        prog.warn(&match *kind {
            // Its connection goes on: only that publish failed.
            REFUSED => format!("warning: {msg} (later refused publishes are only counted)"),
            _ => format!(
                "warning: a connection failed after its handshake: {msg} (later {kind} \
                 errors are only counted)"
            ),
        });
    }
    *said = errors.len();
}

/// The per-second histograms the workers hand over, in order.
struct Intervals {
    t0: u64,
    last: u64,
    list: Vec<Interval>,
    on: bool,
}

impl Intervals {
    /// Takes what the workers recorded since the last call; keeps it unless empty.
    fn take(&mut self, shared: &Shared, now: u64) -> hdrhistogram::Histogram<u64> {
        let mut h = new_hist();
        for live in &shared.live {
            if let Some(i) = live.lock().expect("not poisoned").interval.take() {
                h.add(&i).expect("same bounds");
            }
        }
        if self.on && !h.is_empty() {
            self.list.push(Interval {
                start: Duration::from_nanos(self.last - self.t0),
                length: Duration::from_nanos(now.saturating_sub(self.last)),
                hist: h.clone(),
            });
        }
        self.last = now;
        h
    }
}

/// Everything sent in the window has come back (echo) or been delivered (fanout).
fn drained(plan: &Plan, shared: &Shared) -> bool {
    let mut c = Counters::default();
    let mut outstanding = 0;
    for live in &shared.live {
        let l = live.lock().expect("not poisoned");
        c += l.counters;
        outstanding += l.outstanding;
    }
    match plan.mode {
        Mode::Echo => outstanding == 0,
        Mode::Fanout => {
            plan.publishers > 0
                && c.received_window - c.duplicates + c.unplaced
                    >= c.sent_window * shared.ready_subs()
        }
        Mode::Connect => outstanding == 0,
    }
}

fn summarize(
    plan: &Plan,
    shared: &Shared,
    results: Vec<ThreadResult>,
    window_ns: u64,
    cpu_ns: u64,
    timing: &Timing,
    interrupted: bool,
) -> Outcome {
    let mut c = Counters::default();
    let mut hist = new_hist();
    let mut per_target: Vec<_> = plan.targets.iter().map(|_| new_hist()).collect();
    let mut thread_cpu = Vec::new();
    let (mut lag, mut send_lag) = (0u64, 0u64);
    let window_s = window_ns as f64 / 1e9;
    for r in &results {
        c += r.counters;
        hist.add(&r.hist).expect("same bounds");
        for (sum, h) in per_target.iter_mut().zip(&r.per_target) {
            sum.add(h).expect("same bounds");
        }
        lag = lag.max(r.loop_lag_max_ns);
        send_lag = send_lag.max(r.send_lag_max_ns);
        thread_cpu.push(if window_ns > 0 {
            (r.cpu_ns as f64 / window_ns as f64 * 100.0 * 10.0).round() / 10.0
        } else {
            0.0
        });
    }
    let cpu_pct = if window_ns > 0 {
        (cpu_ns as f64 / window_ns as f64 * 1000.0).round() / 10.0
    } else {
        0.0
    };
    let late_frac = c.late_sends as f64 / c.sent_window.max(1) as f64;
    let hot_thread = thread_cpu.iter().any(|&p| p >= 90.0);
    let saturated = hot_thread || late_frac > 0.01 || send_lag > 10_000_000;
    if saturated {
        let mut why = Vec::new();
        if hot_thread {
            why.push(format!(
                "a worker thread used {:.0}% of a core",
                thread_cpu.iter().cloned().fold(0.0, f64::max)
            ));
        }
        if late_frac > 0.01 || send_lag > 10_000_000 {
            why.push(format!(
                "{:.1}% of sends left late (max {:.1} ms behind schedule)",
                late_frac * 100.0,
                send_lag as f64 / 1e6
            ));
        }
        eprintln!(
            "warning: the load generator itself may be the bottleneck ({}); add --threads/cores \
             or lower the load",
            why.join("; ")
        );
    }
    if c.backlog_drops > 0 {
        // The sends a stalled server would have made slowest: their absence flatters the
        // percentiles, so it is said, not only counted.
        eprintln!(
            "warning: {} sends were not made because their connection had 32 MiB queued \
             (the server stopped reading); the latencies omit them",
            c.backlog_drops
        );
    }
    if c.future_stamp > 0 {
        // Left out of the latencies, which would otherwise be silently short of them.
        eprintln!(
            "warning: {} messages carried a stamp later than their arrival (a corrupt stamp, \
             or another machine's clock): their latency is not recorded",
            c.future_stamp
        );
    }
    let echo = (plan.mode == Mode::Echo).then(|| Echo {
        lost: c.sent_window.saturating_sub(c.received_window + c.unplaced),
        duplicates: c.duplicates,
        reordered: c.reordered,
    });
    if let Some(lost) = echo.as_ref().map(|e| e.lost).filter(|&n| n > 0) {
        // Said, not only counted: the latencies are those of the echoes that came, and say
        // nothing of those that did not.
        eprintln!(
            "warning: {lost} messages sent in the window had no echo by the end of the run \
             (lost)"
        );
    }
    let fanout = (plan.mode == Mode::Fanout).then(|| {
        let subs = shared.ready_subs();
        let expected = c.sent_window * subs;
        let unique = c.received_window - c.duplicates.min(c.received_window);
        Fanout {
            subscribers: subs,
            publishers: plan.publishers as u64,
            deliveries: c.received_window,
            expected,
            // A delivery stamped in the future arrived: it is counted as that, not as lost.
            lost: if plan.publishers > 0 {
                expected.saturating_sub(unique + c.unplaced)
            } else {
                c.gaps.saturating_sub(c.gaps_filled + c.unplaced)
            },
            duplicates: c.duplicates,
            reordered: c.reordered,
            gaps: c.gaps,
            per_url: if plan.targets.len() > 1 {
                plan.targets
                    .iter()
                    .zip(&per_target)
                    .enumerate()
                    .map(|(i, ((url, _), h))| UrlLatency {
                        url: url.clone(),
                        publishers_here: i == 0,
                        latency_us: Latency::from_hist(h),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    });
    let connections = match plan.mode {
        Mode::Connect => c.handshakes,
        _ => shared.ready.load(Ordering::Acquire),
    };
    let summary = Summary {
        mode: plan.mode.name().into(),
        url: plan.url.clone(),
        duration_s: window_s,
        warmup_s: timing.warmup.as_secs_f64(),
        connections,
        sent: c.sent_window,
        received: c.received_window,
        rate_per_s: if window_s > 0.0 {
            c.received_window as f64 / window_s
        } else {
            0.0
        },
        target_rate: plan.rate,
        size: plan.size,
        wire_bytes_in: c.bytes_in,
        payload_bytes_in: c.payload_in,
        messages_in: c.received,
        latency_us: Latency::from_hist(&hist),
        errors: c.errors(),
        fanout,
        echo,
        client: Client {
            cpu_pct,
            thread_cpu_pct: thread_cpu,
            threads: plan.threads,
            loop_lag_us_max: lag as f64 / 1000.0,
            send_lag_us_max: send_lag as f64 / 1000.0,
            late_sends: c.late_sends,
            backlog_drops: c.backlog_drops,
            saturated,
        },
        interrupted,
    };
    Outcome {
        summary,
        hist,
        start: SystemTime::now(),
        intervals: Vec::new(),
        failure: None,
    }
}
