//! Interval histogram logs in HdrHistogram's standard format (`--hlog`: one interval per
//! second, values in nanoseconds, what Java's `HistogramLogProcessor` reads), and `merge`:
//! several logs (from loadgen processes on one or more machines) combined into one set of
//! percentiles, JSON, .hgrm and plots.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use hdrhistogram::serialization::interval_log::{
    IntervalLogHistogram, IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plot;
use crate::stats::{new_hist, Latency};

/// One interval's latencies (ns), `start` after the log's start time.
pub struct Interval {
    pub start: Duration,
    pub length: Duration,
    pub hist: Histogram<u64>,
}

/// Writes the intervals of a run that began at `start` (wall clock).
pub fn write(path: &Path, start: SystemTime, intervals: &[Interval]) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = io::BufWriter::new(f);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("wsgate-loadgen: latency in nanoseconds, one interval per second")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut w, &mut serializer)?;
    for i in intervals {
        log.write_histogram(&i.hist, i.start, i.length, None)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    }
    drop(log);
    w.flush()?;
    Ok(())
}

/// One log as read back: its start time (seconds since the epoch) and its intervals.
pub struct Log {
    pub start_s: f64,
    /// False for a log with neither a start time nor absolute timestamps: `start_s` is then
    /// 0 and means nothing.
    pub start_known: bool,
    pub intervals: Vec<Interval>,
}

pub fn read(path: &Path) -> Result<Log> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut start_s = None;
    let mut base_s = None;
    let mut intervals = Vec::new();
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry
            .map_err(|e| anyhow::anyhow!("{}: not an interval log ({e:?})", path.display()))?
        {
            LogEntry::StartTime(t) => start_s = Some(t.as_secs_f64()),
            LogEntry::BaseTime(t) => base_s = Some(t.as_secs_f64()),
            LogEntry::Interval(i) => intervals.push(decode(&mut de, &i, path)?),
        }
    }
    // Timestamps past 2001 are absolute (seconds since the epoch), not since a start.
    let absolute = intervals
        .first()
        .is_some_and(|i| i.start.as_secs_f64() > 1e9);
    let start_known = start_s.is_some() || base_s.is_some() || absolute;
    let start_s = start_s.or(base_s).unwrap_or(0.0);
    // Interval timestamps are relative to the base time when there is one, else absolute.
    let base = base_s.unwrap_or(0.0);
    for i in &mut intervals {
        i.start = Duration::from_secs_f64((base + i.start.as_secs_f64() - start_s).max(0.0));
    }
    Ok(Log {
        start_s,
        start_known,
        intervals,
    })
}

fn decode(de: &mut Deserializer, i: &IntervalLogHistogram, path: &Path) -> Result<Interval> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(i.encoded_histogram())
        .with_context(|| format!("{}: bad base64 in an interval", path.display()))?;
    let h: Histogram<u64> = de
        .deserialize(&mut io::Cursor::new(raw))
        .map_err(|e| anyhow::anyhow!("{}: bad histogram ({e:?})", path.display()))?;
    let mut hist = new_hist();
    hist.add(&h)
        .context("an interval's values are out of range")?;
    Ok(Interval {
        start: i.start_timestamp(),
        length: i.duration(),
        hist,
    })
}

/// Per second of wall clock over all logs: (seconds since the earliest interval's start,
/// p50, p99, max) in microseconds, for the latency-over-time plot.
pub type Timeline = Vec<(f64, f64, f64, f64)>;

pub fn timeline(logs: &[(f64, &[Interval])]) -> Timeline {
    let t0 = logs
        .iter()
        .flat_map(|(start_s, intervals)| {
            intervals
                .iter()
                .map(move |i| start_s + i.start.as_secs_f64())
        })
        .fold(f64::INFINITY, f64::min);
    // Only the seconds that have samples: logs hours apart cost no more than logs side
    // by side (one histogram a second from the earliest start took 226 KB per second of
    // the gap, and a log without a start time, taken as starting in 1970, 172 GB).
    let mut seconds: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    for (start_s, intervals) in logs {
        for i in intervals.iter() {
            let end = start_s - t0 + i.start.as_secs_f64() + i.length.as_secs_f64();
            let at = end.max(0.0).floor() as u64;
            let _ = seconds.entry(at).or_insert_with(new_hist).add(&i.hist);
        }
    }
    let us = |v: u64| v as f64 / 1000.0;
    seconds
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(&s, h)| {
            (
                s as f64,
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.max()),
            )
        })
        .collect()
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Interval logs written with --hlog (from one or several loadgen processes).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the merged percentiles as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the merged distribution in .hgrm text format (microseconds).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Plot the merged latency by percentile (FILE.svg); latency over time goes beside it
    /// (FILE-time.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Serialize)]
struct Merged<'a> {
    files: Vec<String>,
    intervals: usize,
    /// From the earliest interval's start to the latest one's end.
    span_s: f64,
    latency_us: Latency,
    /// Per second: [seconds from the earliest start, p50, p99, max] in microseconds.
    timeline: &'a Timeline,
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let mut logs: Vec<Log> = a.files.iter().map(|f| read(f)).collect::<Result<_>>()?;
    // A log that does not say when it started is placed at the earliest start of the
    // others (it was placed in 1970, spanning the timeline over 56 years), and said.
    let earliest = logs
        .iter()
        .filter(|l| l.start_known && !l.intervals.is_empty())
        .map(|l| l.start_s)
        .fold(f64::INFINITY, f64::min);
    for (log, file) in logs.iter_mut().zip(&a.files) {
        if !log.start_known && !log.intervals.is_empty() && earliest.is_finite() {
            eprintln!(
                "warning: {} has no start time: its intervals are placed at the earliest \
                 start of the other logs",
                file.display()
            );
            log.start_s = earliest;
        }
    }
    let mut all = new_hist();
    let mut count = 0;
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    for log in &logs {
        for i in &log.intervals {
            all.add(&i.hist).expect("same bounds");
            count += 1;
            first = first.min(log.start_s + i.start.as_secs_f64());
            last = last.max(log.start_s + (i.start + i.length).as_secs_f64());
        }
    }
    if count == 0 {
        bail!("no intervals in {:?}", a.files);
    }
    let line = timeline(
        &logs
            .iter()
            .map(|l| (l.start_s, &l.intervals[..]))
            .collect::<Vec<_>>(),
    );
    let merged = Merged {
        files: a.files.iter().map(|f| f.display().to_string()).collect(),
        intervals: count,
        span_s: last - first,
        latency_us: Latency::from_hist(&all),
        timeline: &line,
    };
    let mut out = io::stdout().lock();
    let l = &merged.latency_us;
    writeln!(
        out,
        "wsgate-loadgen merge: {} files, {count} intervals over {:.1} s",
        logs.len(),
        merged.span_s
    )?;
    writeln!(out, "  latency (us)")?;
    writeln!(
        out,
        "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "count"
    )?;
    writeln!(
        out,
        "  {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12}",
        l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean, l.count
    )?;
    if let Some(path) = &a.json {
        let f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        serde_json::to_writer_pretty(io::BufWriter::new(f), &merged)?;
    }
    if let Some(path) = &a.hgrm {
        let f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut w = io::BufWriter::new(f);
        crate::stats::write_hgrm(&all, 1000.0, &mut w)?;
        w.flush()?;
    }
    if let Some(path) = &a.plot {
        let title = format!("merged: {} files", logs.len());
        plot::write(&all, &title, path)?;
        plot::write_timeline(&line, &title, &plot::timeline_path(path))?;
    }
    Ok(())
}

/// Seconds since the epoch of a wall-clock time.
pub fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
