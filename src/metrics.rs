//! Per-reactor counters and the Prometheus text rendering of `/metrics`.
//!
//! Each reactor writes only its own counters (relaxed atomics, each reactor's on its own
//! cache lines) and its own latency histogram, which it folds into a shared one at every
//! timer sweep; a scrape reads them all.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::transport::tls::CertStatus;

/// One reactor's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct ReactorMetrics {
    /// Connections open on this reactor (any phase).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Upgrades completed.
    pub handshakes_ok: AtomicU64,
    /// Upgrade requests refused with an error status.
    pub handshakes_rejected: AtomicU64,
    /// Connections dropped before sending a complete request head.
    pub handshakes_timed_out: AtomicU64,
    /// WebSocket connections failed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// WebSocket messages received.
    pub messages_in: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Publishes accepted on this reactor (HTTP and client).
    pub publishes: AtomicU64,
    /// Frames queued to subscribers.
    pub deliveries: AtomicU64,
    /// Publishes compressed for permessage-deflate subscribers (once each, here, on the
    /// reactor they were published on).
    pub deflate_compressions: AtomicU64,
    /// Vectored writes handed to the driver (deliveries / writes = frames per write).
    pub writes: AtomicU64,
    /// The write-batching delay in force, in microseconds (0: frames leave in their turn).
    pub batch_delay_us: AtomicU64,
    /// Deliveries skipped under the `drop` slow-consumer policy.
    pub dropped: AtomicU64,
    /// Subscribers closed under the `close` slow-consumer policy.
    pub slow_consumer_closes: AtomicU64,
    /// Bytes of partial WebSocket messages held (taken from the reactor's budget).
    pub buffered_bytes: AtomicU64,
    /// Connections closed with 1013 because the budget for partial messages was spent.
    pub over_budget_closes: AtomicU64,
    /// /ws upgrades refused with 401: a missing or bad token.
    pub auth_failures: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS connections that sent a plain HTTP request (answered 400).
    pub tls_plain_http: AtomicU64,
    /// TLS connections whose first bytes were not a TLS record.
    pub tls_not_tls: AtomicU64,
    /// TLS handshakes failed (bad ClientHello, no common version or cipher, peer alert).
    pub tls_handshake_failures: AtomicU64,
    /// TLS handshakes not finished within the handshake timeout.
    pub tls_timeouts: AtomicU64,
    /// Established TLS connections failed (a bad record, a fatal alert).
    pub tls_errors: AtomicU64,
    /// /ws messages refused with `rate_limited` (message or byte rate).
    pub messages_rate_limited: AtomicU64,
    /// /ws subscribe and unsubscribe ops refused with `rate_limited`.
    pub ops_rate_limited: AtomicU64,
    /// /ws connections closed with 1008 for going on past the rate limit.
    pub rate_limit_closes: AtomicU64,
    /// Connections refused with 429: their IP is at `max_connections_per_ip`.
    pub ip_limited: AtomicU64,
    /// Connections refused with 429: their IP is over `connection_rate_per_ip`.
    pub ip_rate_limited: AtomicU64,
    /// HTTP publishes refused with 429: their token is over `publish_rate_per_token`.
    pub publish_rate_limited: AtomicU64,
    /// /ws tokens replaced by a `refresh` op.
    pub token_refreshes: AtomicU64,
    /// /ws connections closed with 1008 at their token's expiry.
    pub token_expired_closes: AtomicU64,
    /// Publish-to-write latency in microseconds, folded in by the reactor at each sweep.
    pub latency_us: Mutex<Histogram<u64>>,
}

impl Default for ReactorMetrics {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            handshakes_ok: AtomicU64::new(0),
            handshakes_rejected: AtomicU64::new(0),
            handshakes_timed_out: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            deflate_compressions: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            batch_delay_us: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slow_consumer_closes: AtomicU64::new(0),
            buffered_bytes: AtomicU64::new(0),
            over_budget_closes: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_plain_http: AtomicU64::new(0),
            tls_not_tls: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_timeouts: AtomicU64::new(0),
            tls_errors: AtomicU64::new(0),
            messages_rate_limited: AtomicU64::new(0),
            ops_rate_limited: AtomicU64::new(0),
            rate_limit_closes: AtomicU64::new(0),
            ip_limited: AtomicU64::new(0),
            ip_rate_limited: AtomicU64::new(0),
            publish_rate_limited: AtomicU64::new(0),
            token_refreshes: AtomicU64::new(0),
            token_expired_closes: AtomicU64::new(0),
            latency_us: Mutex::new(new_histogram()),
        }
    }
}

/// A histogram of 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl ReactorMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a scrape shows besides the counters.
pub struct Snapshot<'a> {
    pub reactors: &'a [ReactorMetrics],
    /// Deliveries waiting in each reactor's inbox.
    pub inbox_depth: Vec<usize>,
    /// Deliveries dropped because an inbox was full.
    pub inbox_overflows: Vec<u64>,
    pub io: &'static str,
    pub draining: bool,
    /// The TLS certificates' reloads and expiry, with a TLS listener.
    pub tls: Option<CertStatus>,
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "# HELP wsgate_info Build and runtime information.\n# TYPE wsgate_info gauge"
    );
    let _ = writeln!(
        out,
        "wsgate_info{{version=\"{}\",io=\"{}\",reactors=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        s.io,
        s.reactors.len()
    );
    let _ = writeln!(
        out,
        "# HELP wsgate_draining 1 while draining.\n# TYPE wsgate_draining gauge"
    );
    let _ = writeln!(out, "wsgate_draining {}", u8::from(s.draining));
    let per_reactor =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> u64| {
            let _ = writeln!(
                out,
                "# HELP wsgate_{name} {help}\n# TYPE wsgate_{name} {kind}"
            );
            for i in 0..s.reactors.len() {
                let _ = writeln!(out, "wsgate_{name}{{reactor=\"{i}\"}} {}", value(i));
            }
        };
    let r = s.reactors;
    let get = |f: fn(&ReactorMetrics) -> &AtomicU64| move |i: usize| ReactorMetrics::get(f(&r[i]));
    per_reactor(
        &mut out,
        "connections",
        "gauge",
        "Open connections.",
        &get(|m| &m.connections),
    );
    per_reactor(
        &mut out,
        "accepted_total",
        "counter",
        "Connections accepted.",
        &get(|m| &m.accepted),
    );
    let _ = writeln!(
        out,
        "# HELP wsgate_handshakes_total WebSocket handshakes by result.\n# TYPE wsgate_handshakes_total counter"
    );
    for (i, m) in r.iter().enumerate() {
        for (result, c) in [
            ("ok", &m.handshakes_ok),
            ("rejected", &m.handshakes_rejected),
            ("timeout", &m.handshakes_timed_out),
        ] {
            let _ = writeln!(
                out,
                "wsgate_handshakes_total{{reactor=\"{i}\",result=\"{result}\"}} {}",
                ReactorMetrics::get(c)
            );
        }
    }
    per_reactor(
        &mut out,
        "protocol_errors_total",
        "counter",
        "Connections failed for a protocol violation.",
        &get(|m| &m.protocol_errors),
    );
    per_reactor(
        &mut out,
        "messages_in_total",
        "counter",
        "WebSocket messages received.",
        &get(|m| &m.messages_in),
    );
    per_reactor(
        &mut out,
        "bytes_in_total",
        "counter",
        "Bytes read from sockets.",
        &get(|m| &m.bytes_in),
    );
    per_reactor(
        &mut out,
        "bytes_out_total",
        "counter",
        "Bytes written to sockets.",
        &get(|m| &m.bytes_out),
    );
    per_reactor(
        &mut out,
        "publishes_total",
        "counter",
        "Publishes accepted (HTTP and client).",
        &get(|m| &m.publishes),
    );
    per_reactor(
        &mut out,
        "deliveries_total",
        "counter",
        "Frames queued to subscribers.",
        &get(|m| &m.deliveries),
    );
    per_reactor(
        &mut out,
        "deflate_compressions_total",
        "counter",
        "Publishes compressed for permessage-deflate subscribers, by the reactor they were \
         published on (once each; the cluster bridge's are wsgate_cluster_compressions_total).",
        &get(|m| &m.deflate_compressions),
    );
    per_reactor(
        &mut out,
        "writes_total",
        "counter",
        "Vectored writes handed to the driver.",
        &get(|m| &m.writes),
    );
    per_reactor(
        &mut out,
        "batch_delay_microseconds",
        "gauge",
        "How long deliveries may wait to share a write now (0: they leave in their turn).",
        &get(|m| &m.batch_delay_us),
    );
    per_reactor(
        &mut out,
        "dropped_total",
        "counter",
        "Deliveries skipped for slow consumers (policy drop).",
        &get(|m| &m.dropped),
    );
    per_reactor(
        &mut out,
        "slow_consumer_closes_total",
        "counter",
        "Subscribers closed as slow consumers (policy close).",
        &get(|m| &m.slow_consumer_closes),
    );
    per_reactor(
        &mut out,
        "buffered_bytes",
        "gauge",
        "Bytes of partial WebSocket messages held, out of max_buffered_bytes.",
        &get(|m| &m.buffered_bytes),
    );
    per_reactor(
        &mut out,
        "over_budget_closes_total",
        "counter",
        "Connections closed with 1013: the memory for partial messages was spent.",
        &get(|m| &m.over_budget_closes),
    );
    per_reactor(
        &mut out,
        "auth_failures_total",
        "counter",
        "/ws upgrades refused with 401: a missing or bad token.",
        &get(|m| &m.auth_failures),
    );
    per_reactor(
        &mut out,
        "messages_rate_limited_total",
        "counter",
        "/ws messages refused with rate_limited (message or byte rate).",
        &get(|m| &m.messages_rate_limited),
    );
    per_reactor(
        &mut out,
        "ops_rate_limited_total",
        "counter",
        "/ws subscribe and unsubscribe ops refused with rate_limited.",
        &get(|m| &m.ops_rate_limited),
    );
    per_reactor(
        &mut out,
        "rate_limit_closes_total",
        "counter",
        "/ws connections closed with 1008 for going on past the rate limit.",
        &get(|m| &m.rate_limit_closes),
    );
    per_reactor(
        &mut out,
        "ip_limited_total",
        "counter",
        "Connections refused with 429: their IP is at max_connections_per_ip.",
        &get(|m| &m.ip_limited),
    );
    per_reactor(
        &mut out,
        "ip_rate_limited_total",
        "counter",
        "Connections refused with 429: their IP is over connection_rate_per_ip.",
        &get(|m| &m.ip_rate_limited),
    );
    per_reactor(
        &mut out,
        "publish_rate_limited_total",
        "counter",
        "HTTP publishes refused with 429: their token is over publish_rate_per_token.",
        &get(|m| &m.publish_rate_limited),
    );
    per_reactor(
        &mut out,
        "token_refreshes_total",
        "counter",
        "/ws tokens replaced by a refresh op.",
        &get(|m| &m.token_refreshes),
    );
    per_reactor(
        &mut out,
        "token_expired_closes_total",
        "counter",
        "/ws connections closed with 1008 at their token's expiry.",
        &get(|m| &m.token_expired_closes),
    );
    per_reactor(
        &mut out,
        "inbox_depth",
        "gauge",
        "Deliveries waiting in the reactor's inbox.",
        &|i| s.inbox_depth[i] as u64,
    );
    per_reactor(
        &mut out,
        "inbox_overflows_total",
        "counter",
        "Deliveries lost to a full inbox.",
        &|i| s.inbox_overflows[i],
    );
    let _ = writeln!(
        out,
        "# HELP wsgate_tls_handshakes_total TLS handshakes by result.\n\
         # TYPE wsgate_tls_handshakes_total counter"
    );
    for (i, m) in r.iter().enumerate() {
        for (result, c) in [
            ("ok", &m.tls_handshakes),
            ("plain_http", &m.tls_plain_http),
            ("not_tls", &m.tls_not_tls),
            ("failed", &m.tls_handshake_failures),
            ("timeout", &m.tls_timeouts),
        ] {
            let _ = writeln!(
                out,
                "wsgate_tls_handshakes_total{{reactor=\"{i}\",result=\"{result}\"}} {}",
                ReactorMetrics::get(c)
            );
        }
    }
    per_reactor(
        &mut out,
        "tls_errors_total",
        "counter",
        "Established TLS connections failed (a bad record, a fatal alert).",
        &get(|m| &m.tls_errors),
    );
    if let Some(tls) = &s.tls {
        let _ = writeln!(
            out,
            "# HELP wsgate_tls_reloads_total Certificate reloads by result (a failed one keeps \
             the old certificates).\n# TYPE wsgate_tls_reloads_total counter\n\
             wsgate_tls_reloads_total{{result=\"ok\"}} {}\n\
             wsgate_tls_reloads_total{{result=\"failed\"}} {}",
            tls.reloads, tls.reload_failures
        );
        let _ = writeln!(
            out,
            "# HELP wsgate_tls_certificate_expiry_seconds The loaded certificate's notAfter, \
             Unix time.\n# TYPE wsgate_tls_certificate_expiry_seconds gauge"
        );
        for (file, expiry) in &tls.expiry {
            let file = file.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "wsgate_tls_certificate_expiry_seconds{{file=\"{file}\"}} {expiry}"
            );
        }
    }
    let mut merged = new_histogram();
    for m in r {
        let _ = merged.add(&*m.latency_us.lock().expect("histogram lock poisoned"));
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_publish_to_write_seconds Time from a publish to the write of its frames.\n\
         # TYPE wsgate_publish_to_write_seconds summary"
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = merged.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(
            out,
            "wsgate_publish_to_write_seconds{{quantile=\"{q}\"}} {v}"
        );
    }
    let _ = writeln!(
        out,
        "wsgate_publish_to_write_seconds_count {}",
        merged.len()
    );
    let _ = writeln!(
        out,
        "wsgate_publish_to_write_seconds_sum {}",
        merged.mean() * merged.len() as f64 / 1e6
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_per_reactor() {
        let reactors = vec![ReactorMetrics::default(), ReactorMetrics::default()];
        ReactorMetrics::add(&reactors[1].deliveries, 42);
        reactors[0].latency_us.lock().unwrap().record(1500).unwrap();
        let text = render(&Snapshot {
            reactors: &reactors,
            inbox_depth: vec![0, 3],
            inbox_overflows: vec![0, 0],
            io: "epoll",
            draining: false,
            tls: Some(CertStatus {
                reloads: 2,
                reload_failures: 1,
                expiry: vec![("/etc/a \"b\".pem".into(), 1_900_000_000)],
            }),
        });
        assert!(text.contains("wsgate_tls_reloads_total{result=\"failed\"} 1\n"));
        assert!(text.contains(
            "wsgate_tls_certificate_expiry_seconds{file=\"/etc/a \\\"b\\\".pem\"} 1900000000\n"
        ));
        assert!(text.contains("wsgate_deliveries_total{reactor=\"1\"} 42\n"));
        assert!(text.contains("wsgate_inbox_depth{reactor=\"1\"} 3\n"));
        assert!(text.contains("wsgate_handshakes_total{reactor=\"0\",result=\"ok\"} 0\n"));
        assert!(text.contains("io=\"epoll\""));
        assert!(text.contains("wsgate_publish_to_write_seconds{quantile=\"0.5\"} 0.0015"));
        assert!(text.contains("wsgate_publish_to_write_seconds_count 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
