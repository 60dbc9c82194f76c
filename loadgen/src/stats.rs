//! Counters, histograms and the run summary with its outputs: the table (stdout), the JSON
//! summary, the `.hgrm` percentile distribution and the percentile plot.
//!
//! Latencies are recorded in nanoseconds and reported in microseconds.

use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded, ns (larger values saturate).
const HIST_MAX_NS: u64 = 100_000_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// Event counts of one worker; "window" counts only what was sent in the measured window.
        #[derive(Clone, Copy, Debug, Default)]
        pub struct Counters { $(pub $field: u64,)* }

        impl std::ops::AddAssign for Counters {
            fn add_assign(&mut self, o: Self) { $(self.$field += o.$field;)* }
        }
    };
}

counters!(
    sent,
    sent_window,
    received,
    received_window,
    received_other,
    bytes_in,
    payload_in,
    handshakes,
    gaps,
    gaps_filled,
    // Echoes stamped in the future or not stamped, and deliveries stamped in the future,
    // that arrived once the window had opened (see `engine::arrived_unplaced`).
    unplaced,
    duplicates,
    reordered,
    bad_stamp,
    future_stamp,
    late_sends,
    backlog_drops,
    err_connect,
    err_handshake,
    err_reset,
    err_closed,
    err_protocol,
    err_timeout,
    err_http,
    err_refused,
);

impl Counters {
    /// The error counts as the summary reports them. The live progress line sums the same
    /// (with [`Errors::total`]): it summed a list of its own, which left out `bad_stamp` and
    /// `future_stamp`.
    pub fn errors(&self) -> Errors {
        Errors {
            connect: self.err_connect,
            handshake: self.err_handshake,
            reset: self.err_reset,
            closed_by_server: self.err_closed,
            protocol: self.err_protocol,
            timeout: self.err_timeout,
            http_status: self.err_http,
            refused: self.err_refused,
            bad_stamp: self.bad_stamp,
            future_stamp: self.future_stamp,
        }
    }
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    pub min: f64,
    pub stdev: f64,
    pub count: u64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            min: us(h.min()),
            stdev: h.stdev() / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub struct Errors {
    pub connect: u64,
    pub handshake: u64,
    pub reset: u64,
    pub closed_by_server: u64,
    pub protocol: u64,
    pub timeout: u64,
    /// Non-2xx answers to HTTP publishes.
    pub http_status: u64,
    /// Publishes over /ws the server answered with an error (wsgate dialect: forbidden,
    /// too large, rate limited).
    pub refused: u64,
    /// Messages without a readable stamp.
    pub bad_stamp: u64,
    /// Messages whose stamp is later than their arrival (corrupt, or another machine's
    /// clock): over the whole run, and not timed, since their window and latency are unknown.
    pub future_stamp: u64,
}

impl Errors {
    /// Every error counted, each kind once. Destructured without `..`: a new kind does not
    /// compile until it is added to the sum.
    pub fn total(&self) -> u64 {
        let Errors {
            connect,
            handshake,
            reset,
            closed_by_server,
            protocol,
            timeout,
            http_status,
            refused,
            bad_stamp,
            future_stamp,
        } = *self;
        connect
            + handshake
            + reset
            + closed_by_server
            + protocol
            + timeout
            + http_status
            + refused
            + bad_stamp
            + future_stamp
    }
}

/// Echo mode's own counts, named as fan-out's.
#[derive(Debug, Serialize, Default)]
pub struct Echo {
    /// Messages sent in the window whose echo had not come by the end of the drain: `sent`
    /// − `received` − echoes whose stamp (from the future, or none) cannot place them,
    /// which arrived once the window had opened. Each is a `timeout` error too, which
    /// counts the warm-up's as well.
    pub lost: u64,
    /// Echoes of a message sent in the window that came again after its first: not in
    /// `received`, nor a second latency sample (detected up to 64 sends back).
    pub duplicates: u64,
    /// Echoes of a message sent in the window that came after that of a later one on the
    /// same connection.
    pub reordered: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct Fanout {
    pub subscribers: u64,
    pub publishers: u64,
    /// Deliveries of messages published in the window (duplicates included).
    pub deliveries: u64,
    /// Publishes in the window × subscribers; 0 when publishers are external (`--publishers 0`).
    pub expected: u64,
    /// `expected` − unique deliveries. With external publishers, the sequence gaps not filled
    /// later, counted from each subscriber's first delivery of the window (their numbering
    /// of the window is unknown); with our own, sequence checks start at the window's first
    /// publish. Either way less the deliveries stamped in the future that arrived once the
    /// window had opened: they came, though their stamps cannot say which publish they were.
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries that came after a later sequence number.
    pub reordered: u64,
    /// Missing sequence numbers seen as gaps, some of them filled later.
    pub gaps: u64,
    /// With several `--url`s: delivery latency by the node each subscriber connected to
    /// (publishers connect to the first, so the others' latency is cross-node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_url: Vec<UrlLatency>,
}

/// Deliveries received from one node.
#[derive(Debug, Serialize)]
pub struct UrlLatency {
    pub url: String,
    /// Whether the publishers connect to this node.
    pub publishers_here: bool,
    pub latency_us: Latency,
}

#[derive(Debug, Serialize, Default)]
pub struct Client {
    /// Process CPU over the window, percent of one core (200 = two cores busy).
    pub cpu_pct: f64,
    /// Per worker thread, percent of one core.
    pub thread_cpu_pct: Vec<f64>,
    pub threads: usize,
    pub loop_lag_us_max: f64,
    /// How late the latest open-loop send left vs its schedule.
    pub send_lag_us_max: f64,
    pub late_sends: u64,
    pub backlog_drops: u64,
    /// The loadgen itself may have been the bottleneck: distrust the latencies.
    pub saturated: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct Summary {
    pub mode: String,
    pub url: String,
    /// Length of the measured window, s.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: u64,
    /// Messages (publishes, connection attempts) sent in the window.
    pub sent: u64,
    /// Echoes, deliveries or handshakes of what was sent in the window.
    pub received: u64,
    pub rate_per_s: f64,
    /// Offered rate, per s; 0 for closed loop.
    pub target_rate: f64,
    pub size: usize,
    /// Bytes read off the sockets (handshakes included), and the data messages' payload
    /// bytes among them after inflating: with --deflate, what compression saved.
    pub wire_bytes_in: u64,
    pub payload_bytes_in: u64,
    /// Messages received over the whole run (warm-up and late ones included): with
    /// `wire_bytes_in`, the wire bytes per message.
    pub messages_in: u64,
    pub latency_us: Latency,
    pub errors: Errors,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<Fanout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<Echo>,
    pub client: Client,
    /// The run was cut short by Ctrl-C.
    pub interrupted: bool,
}

impl Summary {
    /// The human-readable table.
    pub fn write_table(&self, w: &mut impl Write) -> io::Result<()> {
        let l = &self.latency_us;
        writeln!(w, "wsgate-loadgen {}  {}", self.mode, self.url)?;
        writeln!(
            w,
            "  window {:.2} s (after {:.2} s warm-up), {} connections, {} sent, {} received",
            self.duration_s, self.warmup_s, self.connections, self.sent, self.received
        )?;
        let unit = if self.mode == "connect" {
            "handshakes/s"
        } else if self.mode == "fanout" {
            "deliveries/s"
        } else {
            "msg/s"
        };
        writeln!(w, "  throughput {:.1} {unit}", self.rate_per_s)?;
        writeln!(
            w,
            "  bytes in: wire {} payload {} (wire/payload {:.3})",
            self.wire_bytes_in,
            self.payload_bytes_in,
            self.wire_bytes_in as f64 / self.payload_bytes_in.max(1) as f64
        )?;
        writeln!(w, "  latency (us)")?;
        writeln!(
            w,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "count"
        )?;
        writeln!(
            w,
            "  {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean, l.count
        )?;
        if let Some(f) = &self.fanout {
            writeln!(
                w,
                "  fanout: {} subscribers x {} publishers: {} deliveries of {} expected, \
                 {} lost, {} duplicates, {} reordered",
                f.subscribers,
                f.publishers,
                f.deliveries,
                f.expected,
                f.lost,
                f.duplicates,
                f.reordered
            )?;
            for u in &f.per_url {
                let l = &u.latency_us;
                writeln!(
                    w,
                    "  {} ({}): p50 {:.1} p99 {:.1} max {:.1} us, {} deliveries",
                    u.url,
                    if u.publishers_here {
                        "same node"
                    } else {
                        "cross-node"
                    },
                    l.p50,
                    l.p99,
                    l.max,
                    l.count
                )?;
            }
        }
        if let Some(e) = &self.echo {
            writeln!(
                w,
                "  echo: {} lost, {} duplicates, {} reordered",
                e.lost, e.duplicates, e.reordered
            )?;
        }
        let e = &self.errors;
        writeln!(
            w,
            "  errors: connect {} handshake {} reset {} closed_by_server {} protocol {} \
             timeout {} http {} refused {} bad_stamp {} future_stamp {}",
            e.connect,
            e.handshake,
            e.reset,
            e.closed_by_server,
            e.protocol,
            e.timeout,
            e.http_status,
            e.refused,
            e.bad_stamp,
            e.future_stamp
        )?;
        let c = &self.client;
        writeln!(
            w,
            "  client: cpu {:.0}% ({} threads: {}), loop lag max {:.0} us, send lag max {:.0} us{}",
            c.cpu_pct,
            c.threads,
            c.thread_cpu_pct
                .iter()
                .map(|p| format!("{p:.0}%"))
                .collect::<Vec<_>>()
                .join(" "),
            c.loop_lag_us_max,
            c.send_lag_us_max,
            if c.saturated { "  SATURATED" } else { "" }
        )?;
        if c.backlog_drops > 0 {
            writeln!(
                w,
                "  dropped: {} sends not made, their connection's queue over 32 MiB (the \
                 server stopped reading): the latencies above omit them",
                c.backlog_drops
            )?;
        }
        if self.interrupted {
            writeln!(w, "  (interrupted: results so far)")?;
        }
        Ok(())
    }
}

/// Writes the percentile distribution in HdrHistogram's text format (as Java's
/// `outputPercentileDistribution` and wrk2 print it), values scaled by `1/scale`
/// (1000.0: ns recorded, microseconds out).
pub fn write_hgrm(h: &Histogram<u64>, scale: f64, w: &mut impl Write) -> io::Result<()> {
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
            if q < 1.0 {
                writeln!(
                    w,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / scale,
            h.stdev() / scale,
            h.highest_equivalent(h.max()) as f64 / scale,
        )
    };
    writeln!(w, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]")?;
    writeln!(
        w,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets(h)
    )?;
    Ok(())
}

/// Sub-bucket count of a histogram: 2^ceil(log2(2 * 10^digits)).
fn sub_buckets(h: &Histogram<u64>) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(h.sigfig()));
    largest.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut h = new_hist();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap(); // 1..10000 us
        }
        h
    }

    #[test]
    fn latency_in_microseconds() {
        let l = Latency::from_hist(&sample());
        assert_eq!(l.count, 10_000);
        assert!((l.p50 - 5000.0).abs() / 5000.0 < 0.001, "{}", l.p50);
        assert!((l.p99 - 9900.0).abs() / 9900.0 < 0.001, "{}", l.p99);
        assert!((l.max - 10_000.0).abs() / 10_000.0 < 0.001, "{}", l.max);
        assert!((l.mean - 5000.5).abs() < 5.0, "{}", l.mean);
        assert_eq!(Latency::from_hist(&new_hist()).count, 0);
    }

    #[test]
    fn hgrm_has_standard_shape() {
        let mut out = Vec::new();
        write_hgrm(&sample(), 1000.0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First data row: the smallest value at percentile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[1], "0.000000000000");
        assert_eq!(first[3], "1.00");
        // Last data row: percentile 1, the total count and no 1/(1-p) column.
        let last_row = lines[lines.len() - 4];
        let last: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(last.len(), 3, "{last_row}");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        // Percentiles never decrease and counts add up.
        let mut prev = -1.0;
        for row in &lines[2..lines.len() - 3] {
            let q: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(q >= prev);
            prev = q;
        }
        assert!(lines[lines.len() - 3].starts_with("#[Mean    = "));
        assert!(lines[lines.len() - 2].contains("Total count    =        10000]"));
        assert!(lines[lines.len() - 1].contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn hgrm_of_empty_histogram() {
        let mut out = Vec::new();
        write_hgrm(&new_hist(), 1000.0, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Total count    =            0]"));
    }

    /// Every counter named (no `..`): a new one does not compile here until it is given a
    /// side. Error kinds get distinct powers of two, so one left out of the total or counted
    /// twice shows; the others a value that any of them in it would show too.
    #[test]
    fn error_total_counts_every_kind_once() {
        let other = 1 << 20;
        let c = Counters {
            sent: other,
            sent_window: other,
            received: other,
            received_window: other,
            received_other: other,
            bytes_in: other,
            payload_in: other,
            handshakes: other,
            gaps: other,
            gaps_filled: other,
            unplaced: other,
            duplicates: other,
            reordered: other,
            late_sends: other,
            backlog_drops: other,
            err_connect: 1,
            err_handshake: 1 << 1,
            err_reset: 1 << 2,
            err_closed: 1 << 3,
            err_protocol: 1 << 4,
            err_timeout: 1 << 5,
            err_http: 1 << 6,
            err_refused: 1 << 7,
            bad_stamp: 1 << 8,
            future_stamp: 1 << 9,
        };
        let e = c.errors();
        assert_eq!(e.total(), (1 << 10) - 1, "{e:?}");
        assert_eq!((e.bad_stamp, e.future_stamp), (1 << 8, 1 << 9));
    }

    #[test]
    fn counters_add() {
        let mut a = Counters {
            sent: 1,
            err_reset: 2,
            ..Default::default()
        };
        a += Counters {
            sent: 3,
            err_reset: 1,
            ..Default::default()
        };
        assert_eq!((a.sent, a.err_reset), (4, 3));
    }
}
