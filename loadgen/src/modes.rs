//! The subcommands' options and how each becomes a [`Plan`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use wsgate_proto::OpCode;

use crate::plan::{ConnSpec, Mode, Plan, Role};
use crate::stamp::STAMP_LEN;

/// Options every mode has.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target, ws:// or wss:// [default: ws://127.0.0.1:8080/echo for echo, /ws otherwise].
    /// Repeat for several wsgate nodes sharing topics (fanout): publishers connect to the
    /// first, subscribers round-robin to all, and the summary has latency per URL.
    #[arg(long)]
    pub url: Vec<String>,
    /// wss://: PEM file of the CA certificates to trust.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// wss://: accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Measured window (after the warm-up): 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the window, excluded from the results.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After the window, how long to wait for replies and deliveries still in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Worker threads, one event loop each [default: available cores, or the --cpus count].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin worker threads to these cores, round-robin: `1` or `0,1` or `0-3`.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Local source addresses to spread connections over: `127.0.0.2-127.0.0.20` or a list.
    #[arg(long)]
    pub source: Option<String>,
    /// New connections per second while connecting (0: as fast as possible).
    #[arg(long, default_value_t = 0.0, value_parser = parse_connect_rate)]
    pub connect_rate: f64,
    /// Give up on a connection not open (and subscribed) after this long; in connect mode
    /// also on a close handshake not answered after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Write the full summary as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm text format (microseconds).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Plot latency by percentile: FILE.svg or FILE.png; latency over time (p50, p99 and
    /// max per second) goes beside it, as FILE-time.svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write an interval log in HdrHistogram's standard format (one histogram per second,
    /// nanoseconds); combine several with `wsgate-loadgen merge`.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Offer permessage-deflate (no context takeover either way) and inflate compressed
    /// messages before reading their stamp: latency includes the client's inflate.
    #[arg(long)]
    pub deflate: bool,
    /// With --deflate: inflate each distinct compressed message once per thread, and know
    /// its other copies (a broadcast compressed once) by their bytes. Latency then includes
    /// a hash and a compare per delivery instead of an inflate; for rates one thread cannot
    /// inflate.
    #[arg(long, requires = "deflate")]
    pub inflate_once: bool,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Payload bytes (at least 33, the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Binary frames (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Closed loop: messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Open loop: total messages per second over all connections (latency from the intended
    /// send time). Without it, closed loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Dialect {
    /// wsgate's JSON protocol on /ws.
    Wsgate,
    /// The server broadcasts every message it receives to every connection.
    Raw,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PublishVia {
    Ws,
    Http,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publishing connections; 0 = passive (someone else publishes, e.g. the blast server).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total publishes per second over all publishers.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Payload bytes (at least 33, the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, value_enum, default_value_t = Dialect::Wsgate)]
    pub dialect: Dialect,
    /// Subscribe with the `subscribe` op after connecting instead of `?subscribe=`.
    #[arg(long)]
    pub subscribe_op: bool,
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    pub publish_via: PublishVia,
    /// Bearer token for `--publish-via http`.
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// New connections per second.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,
    /// How long each connection stays open before a close handshake.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Bearer token (a JWT) sent in `Authorization` on every upgrade.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored); keeps it out of
    /// the process list.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The range a rate may take: below it a send interval passes the run's clock, above it
/// no single process sends.
const RATES: std::ops::RangeInclusive<f64> = 0.001..=1e8;

/// A rate per second: a finite number in [`RATES`] (NaN, infinities, negative and tiny
/// rates passed before and flooded the target or sent nothing).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {s:?}: a number per second"))?;
    if RATES.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "rate {s} is outside {} to {} per second",
            RATES.start(),
            RATES.end()
        ))
    }
}

/// `--connect-rate`: a rate, or 0 for as fast as possible.
pub fn parse_connect_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => parse_rate(s),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    if !(0.0..1e7).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1`, `0,1`, `0-3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
            if a > b {
                bail!("bad cpu range {part}");
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().with_context(|| format!("bad cpu {part:?}"))?);
        }
    }
    if out.is_empty() {
        bail!("--cpus: no cpu given");
    }
    Ok(out)
}

/// `127.0.0.2-127.0.0.20` (IPv4 range) or a comma-separated list of addresses.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b || b - a > 65_536 {
                bail!("bad source range {part}");
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("--source: no address given");
    }
    Ok(out)
}

#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub secure: bool,
}

pub fn parse_url(url: &str) -> Result<Target> {
    let (rest, secure) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => bail!("--url {url:?}: only ws:// and wss:// URLs are supported"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("--url {url:?}: no host");
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if secure { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    Ok(Target {
        url: url.to_string(),
        addr,
        host: authority.to_string(),
        path: path.to_string(),
        secure,
    })
}

fn check_size(size: usize) -> Result<()> {
    if size < STAMP_LEN {
        bail!("--size {size}: the payload must hold the {STAMP_LEN}-byte stamp");
    }
    Ok(())
}

fn base(c: &Common, mode: Mode, default_path: &str, conns: usize, quiet: bool) -> Result<Plan> {
    let urls = match c.url.as_slice() {
        [] => vec![format!("ws://127.0.0.1:8080{default_path}")],
        urls => urls.to_vec(),
    };
    if urls.len() > 1 && mode != Mode::Fanout {
        bail!("--url may be repeated only in fanout mode");
    }
    let parsed = urls
        .iter()
        .map(|u| parse_url(u))
        .collect::<Result<Vec<_>>>()?;
    let t = parsed[0].clone();
    if parsed.iter().any(|p| p.secure != t.secure) {
        bail!("--url: every target must be ws://, or every target wss://");
    }
    let targets = parsed.into_iter().map(|p| (p.url, p.addr)).collect();
    let tls = if t.secure {
        Some(crate::tls::TlsClient::new(
            &t.host,
            c.ca.as_deref(),
            c.insecure,
        )?)
    } else {
        None
    };
    let cpus = match &c.cpus {
        Some(s) => parse_cpus(s)?,
        None => Vec::new(),
    };
    let avail = std::thread::available_parallelism().map_or(1, usize::from);
    let mut threads = c
        .threads
        .unwrap_or(if cpus.is_empty() { avail } else { cpus.len() });
    if mode != Mode::Connect {
        threads = threads.min(conns.max(1));
    }
    let threads = threads.max(1);
    let sources = match &c.source {
        Some(s) => parse_sources(s)?,
        None => Vec::new(),
    };
    Ok(Plan {
        mode,
        url: t.url,
        targets,
        host: t.host,
        tls,
        threads,
        cpus,
        sources,
        connect_rate: c.connect_rate.max(0.0),
        connect_timeout_ns: c.connect_timeout.as_nanos() as u64,
        conns: vec![Vec::new(); threads],
        sub_path: t.path.clone(),
        path: t.path,
        size: 64,
        opcode: OpCode::Text,
        rate: 0.0,
        pipeline: 1,
        prefix: Vec::new(),
        suffix: Vec::new(),
        http_head: Vec::new(),
        subscribe_msg: None,
        subscribers: 0,
        publishers: 0,
        hold_ns: 0,
        authorization: None,
        progress: !quiet,
        intervals: !quiet || c.hlog.is_some() || c.plot.is_some(),
        deflate: c.deflate,
        inflate_once: c.inflate_once,
    })
}

fn place(plan: &mut Plan, i: usize, role: Role, id: u32) {
    place_on(plan, i, role, id, 0);
}

fn place_on(plan: &mut Plan, i: usize, role: Role, id: u32, target: u16) {
    let source = (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
    let t = i % plan.threads;
    plan.conns[t].push(ConnSpec {
        role,
        id,
        source,
        target,
    });
}

pub fn echo_plan(a: &EchoArgs, progress: bool) -> Result<Plan> {
    check_size(a.size)?;
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let mut p = base(&a.common, Mode::Echo, "/echo", a.connections, !progress)?;
    p.size = a.size;
    p.opcode = if a.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    p.rate = a.rate.unwrap_or(0.0).max(0.0);
    p.pipeline = a.pipeline.max(1);
    for i in 0..a.connections {
        place(&mut p, i, Role::Echo, i as u32);
    }
    Ok(p)
}

fn check_topic(topic: &str) -> Result<()> {
    let ok = !topic.is_empty()
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if !ok {
        bail!("--topic {topic:?}: use letters, digits and -_.:/");
    }
    Ok(())
}

pub fn fanout_plan(a: &FanoutArgs, progress: bool) -> Result<Plan> {
    check_size(a.size)?;
    check_topic(&a.topic)?;
    if a.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    let total = a.subscribers + a.publishers;
    let mut p = base(&a.common, Mode::Fanout, "/ws", total, !progress)?;
    p.size = a.size;
    p.rate = a.rate.max(0.0);
    if a.publishers > 0 && a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if a.publishers == 0 {
        p.rate = 0.0;
    }
    p.subscribers = a.subscribers;
    p.publishers = a.publishers;
    let topic = &a.topic;
    let pub_role = match (a.dialect, a.publish_via) {
        (Dialect::Raw, PublishVia::Http) => bail!("--publish-via http needs --dialect wsgate"),
        (_, PublishVia::Http) => Role::HttpPublisher,
        _ => Role::Publisher,
    };
    match a.dialect {
        Dialect::Wsgate => {
            p.opcode = OpCode::Text;
            p.prefix = format!(r#"{{"op":"publish","topic":"{topic}","data":""#).into_bytes();
            p.suffix = br#""}"#.to_vec();
            if a.subscribe_op {
                p.subscribe_msg =
                    Some(format!(r#"{{"op":"subscribe","topic":"{topic}","id":1}}"#).into_bytes());
            } else {
                let sep = if p.path.contains('?') { '&' } else { '?' };
                p.sub_path = format!("{}{sep}subscribe={topic}", p.path);
            }
            let auth = a
                .token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            p.http_head = format!(
                "POST /publish/{topic} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n{auth}\r\n",
                p.host,
                a.size + 2
            )
            .into_bytes();
        }
        Dialect::Raw => p.opcode = OpCode::Binary,
    }
    // Publishers first, so they spread over threads from thread 0.
    for j in 0..a.publishers {
        place(&mut p, j, pub_role, j as u32);
    }
    let nodes = p.targets.len();
    for i in 0..a.subscribers {
        place_on(
            &mut p,
            a.publishers + i,
            Role::Subscriber,
            0,
            (i % nodes) as u16,
        );
    }
    Ok(p)
}

pub fn connect_plan(a: &ConnectArgs, progress: bool) -> Result<Plan> {
    if a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let mut p = base(&a.common, Mode::Connect, "/ws", 0, !progress)?;
    p.rate = a.rate;
    p.hold_ns = a.hold.as_nanos() as u64;
    let token = match &a.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => a.token.clone(),
    };
    if let Some(token) = token {
        if token.is_empty() || token.contains(['\r', '\n']) {
            bail!("the token must be one non-empty line");
        }
        p.authorization = Some(format!("Bearer {token}"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cpus_and_sources() {
        assert_eq!(parse_cpus("1").unwrap(), [1]);
        assert_eq!(parse_cpus("0,1").unwrap(), [0, 1]);
        assert_eq!(parse_cpus("0-3").unwrap(), [0, 1, 2, 3]);
        let s = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.5-127.0.0.4").is_err());
    }

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:9000/ws?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(t.path, "/ws?x=1");
        assert_eq!(parse_url("ws://127.0.0.1").unwrap().addr.port(), 80);
        let t = parse_url("wss://localhost/ws").unwrap();
        assert!(t.secure);
        assert_eq!(t.addr.port(), 443);
        assert!(parse_url("http://127.0.0.1/").is_err());
    }
}
