//! Small servers on 127.0.0.1:0 for the loadgen's integration tests, and a runner that takes
//! a URL, so the same checks can run against wsgate itself.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

pub const BIN: &str = env!("CARGO_BIN_EXE_wsgate-loadgen");

/// Spawns `serve` for every accepted connection; returns the listening port.
pub fn listen(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || serve(s));
        }
    });
    port
}

/// Echoes every data message.
pub fn echo_server() -> String {
    echo_server_with(|_, m| vec![m])
}

/// Answers the `n`-th data message of each connection (from 0) with what `answer` makes of
/// it, in order.
pub fn echo_server_with(
    answer: impl Fn(usize, Message) -> Vec<Message> + Send + Sync + 'static,
) -> String {
    let answer = Arc::new(answer);
    let port = listen(move |s| {
        let Ok(mut ws) = tungstenite::accept(s) else {
            return;
        };
        let mut n = 0;
        while let Ok(m) = ws.read() {
            if !(m.is_text() || m.is_binary()) {
                continue;
            }
            for m in answer(n, m) {
                if ws.send(m).is_err() {
                    return;
                }
            }
            n += 1;
        }
    });
    format!("ws://127.0.0.1:{port}/echo")
}

/// A server frame (unmasked, at most 64 KiB of payload) with first byte `b0` (FIN, RSV, opcode) and `payload`.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(n as u8),
        n => {
            f.push(126);
            f.extend(u16::try_from(n).expect("under 64 KiB").to_be_bytes());
        }
    }
    f.extend(payload);
    f
}

/// Echoes every data message as one binary frame whose first half (with the header) goes
/// out at once and the rest `delay` later: a message that trickles in.
pub fn split_echo_server(delay: Duration) -> String {
    let port = listen(move |s| {
        let Ok(mut ws) = tungstenite::accept(s) else {
            return;
        };
        while let Ok(m) = ws.read() {
            if !(m.is_text() || m.is_binary()) {
                continue;
            }
            let payload = m.into_data();
            let len = u16::try_from(payload.len()).expect("under 64 KiB");
            let mut frame = vec![0x82, 126];
            frame.extend(len.to_be_bytes());
            frame.extend(&payload[..]);
            let half = frame.len() / 2;
            let stream = ws.get_mut();
            if stream.write_all(&frame[..half]).is_err() {
                break;
            }
            std::thread::sleep(delay);
            if stream.write_all(&frame[half..]).is_err() {
                break;
            }
        }
    });
    format!("ws://127.0.0.1:{port}/echo")
}

/// Accepts the upgrade, then never reads again (a stalled server); the connection stays
/// open until the client goes.
pub fn stalled_server() -> String {
    let port = listen(|s| {
        let Ok(ws) = tungstenite::accept(s) else {
            return;
        };
        std::thread::sleep(Duration::from_secs(30));
        drop(ws);
    });
    format!("ws://127.0.0.1:{port}/")
}

/// Accepts the upgrade, then closes with 1001 at once.
pub fn closing_server() -> String {
    let port = listen(|s| {
        let Ok(mut ws) = tungstenite::accept(s) else {
            return;
        };
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    });
    format!("ws://127.0.0.1:{port}/")
}

/// Answers the upgrade, then sends a frame with a reserved opcode.
pub fn malformed_server() -> String {
    let port = listen(|s| {
        let Ok(ws) = tungstenite::accept(s) else {
            return;
        };
        let mut s = ws.get_ref().try_clone().unwrap();
        let _ = s.write_all(&[0x83, 0x00]);
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    format!("ws://127.0.0.1:{port}/")
}

type Peers = Arc<Mutex<Vec<(usize, Option<String>, WebSocket<TcpStream>)>>>;

fn send_to(peers: &Peers, topic: Option<&str>, msg: Message) {
    let mut p = peers.lock().unwrap();
    p.retain_mut(|(_, t, w)| {
        if topic.is_some() && t.as_deref() != topic {
            return true;
        }
        w.send(msg.clone()).is_ok()
    });
}

/// Raw dialect: every message received is sent to every connection.
pub fn broadcast_server() -> String {
    faulty_broadcast_server(Fault::None)
}

/// What [`faulty_broadcast_server`] does to the first publish of the measured window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Never relays it.
    Drop,
    /// Relays it after the publish that follows it.
    Delay,
    /// Relays it with its stamp's time moved to [`FAR_FUTURE_NS`].
    Future,
}

/// [`broadcast_server`] with a fault at the window's first publish, which it recognises as
/// the second message stamped with sequence number 0 (a publisher numbers its warm-up from 0,
/// then its window from 0 again). For one publisher and a warm-up with publishes in it.
pub fn faulty_broadcast_server(fault: Fault) -> String {
    let peers: Peers = Arc::default();
    let next = Arc::new(Mutex::new(0usize));
    // Messages stamped 0 so far, and the one held back by `Fault::Delay`.
    let state: Arc<Mutex<(u32, Option<Message>)>> = Arc::default();
    let port = listen(move |s| {
        let Ok(mut reader) = tungstenite::accept(s) else {
            return;
        };
        let id = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        let writer =
            WebSocket::from_raw_socket(reader.get_ref().try_clone().unwrap(), Role::Server, None);
        peers.lock().unwrap().push((id, None, writer));
        while let Ok(mut m) = reader.read() {
            if !(m.is_binary() || m.is_text()) {
                continue;
            }
            let mut state = state.lock().unwrap();
            if fault != Fault::None && stamp_seq(&m.clone().into_data()) == Some(0) {
                state.0 += 1;
                if state.0 == 2 {
                    match fault {
                        Fault::Future => m = restamped(m, |_| FAR_FUTURE_NS),
                        Fault::Delay => {
                            state.1 = Some(m);
                            continue;
                        }
                        Fault::Drop | Fault::None => continue,
                    }
                }
            }
            send_to(&peers, None, m);
            if let Some(held) = state.1.take() {
                send_to(&peers, None, held);
            }
        }
        peers.lock().unwrap().retain(|(i, _, _)| *i != id);
    });
    format!("ws://127.0.0.1:{port}/")
}

/// A stamp time no uptime reaches: 2^63 - 1 ns, 292 years.
pub const FAR_FUTURE_NS: u64 = i64::MAX as u64;

/// `m` with its stamp's time (ns) replaced by what `new_ts` makes of it.
pub fn restamped(m: Message, new_ts: impl FnOnce(u64) -> u64) -> Message {
    let binary = m.is_binary();
    let mut data = m.into_data().to_vec();
    let at = data.iter().position(|&b| b == b'~').expect("a stamp") + 1;
    let ts = std::str::from_utf8(&data[at..at + 16]).unwrap();
    let ts = new_ts(u64::from_str_radix(ts, 16).unwrap());
    data[at..at + 16].copy_from_slice(format!("{ts:016x}").as_bytes());
    if binary {
        Message::binary(data)
    } else {
        Message::text(String::from_utf8(data).unwrap())
    }
}

/// The sequence number of the stamp in a payload (`~`, 16 hex digits of time, 8 of
/// publisher, 8 of sequence number).
fn stamp_seq(payload: &[u8]) -> Option<u32> {
    let at = payload.iter().position(|&b| b == b'~')?;
    let hex = std::str::from_utf8(payload.get(at + 25..at + 33)?).ok()?;
    u32::from_str_radix(hex, 16).ok()
}

/// A tiny stand-in for wsgate's /ws protocol: `?subscribe=T`, the `subscribe` op (answered
/// with `{"op":"ok","id":N}`) and the `publish` op, delivered as `{"topic":T,"data":...}`.
// tungstenite's handshake callback returns its large error response by value.
#[allow(clippy::result_large_err)]
pub fn pubsub_server() -> String {
    let peers: Peers = Arc::default();
    let next = Arc::new(Mutex::new(0usize));
    let port = listen(move |s| {
        let mut query = String::new();
        let Ok(mut reader) = tungstenite::accept_hdr(s, |req: &Request, resp: Response| {
            query = req.uri().query().unwrap_or("").to_string();
            Ok(resp)
        }) else {
            return;
        };
        let id = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        let mut topic = query.strip_prefix("subscribe=").map(str::to_string);
        let writer =
            WebSocket::from_raw_socket(reader.get_ref().try_clone().unwrap(), Role::Server, None);
        peers.lock().unwrap().push((id, topic.clone(), writer));
        while let Ok(m) = reader.read() {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["op"].as_str() {
                Some("subscribe") => {
                    topic = v["topic"].as_str().map(str::to_string);
                    let ok = format!(r#"{{"op":"ok","id":{}}}"#, v["id"]);
                    let mut p = peers.lock().unwrap();
                    let me = p.iter_mut().find(|(i, _, _)| *i == id).unwrap();
                    me.1 = topic.clone();
                    me.2.send(Message::text(ok)).unwrap();
                }
                Some("publish") => {
                    let t = v["topic"].as_str().unwrap();
                    let d = serde_json::json!({"topic": t, "data": v["data"]});
                    send_to(&peers, Some(t), Message::text(d.to_string()));
                }
                _ => {}
            }
        }
        peers.lock().unwrap().retain(|(i, _, _)| *i != id);
    });
    format!("ws://127.0.0.1:{port}/ws")
}

/// A port where nothing listens.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsgate-loadgen-{}-{name}", std::process::id()))
}

/// Runs the loadgen (with `--quiet` and a JSON summary) and returns its output and summary.
pub fn loadgen(mode: &str, url: &str, args: &[&str]) -> (Output, Option<Value>) {
    let json = tmp(&format!("{mode}-{}.json", rand_suffix()));
    let out = Command::new(BIN)
        .arg(mode)
        .args(["--url", url, "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run loadgen");
    let v = std::fs::read(&json)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("valid JSON summary"));
    let _ = std::fs::remove_file(&json);
    (out, v)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Like [`loadgen`], asserting success.
pub fn loadgen_ok(mode: &str, url: &str, args: &[&str]) -> Value {
    loadgen_ok_with_output(mode, url, args).1
}

/// As `loadgen_ok`, with what the run printed.
pub fn loadgen_ok_with_output(mode: &str, url: &str, args: &[&str]) -> (Output, Value) {
    let (out, v) = loadgen(mode, url, args);
    assert!(
        out.status.success(),
        "loadgen {mode} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out, v.expect("JSON summary written"))
}

/// An echo run in which every send came back once and was timed, without an error, and
/// every message counted all of its `size` payload bytes once.
pub fn assert_every_echo_whole(v: &Value, size: u64) {
    let received = v["received"].as_u64().unwrap();
    assert!(received > 10, "{v}");
    assert_eq!(v["sent"].as_u64().unwrap(), received, "{v}");
    assert_eq!(v["latency_us"]["count"].as_u64().unwrap(), received, "{v}");
    assert_eq!(errors_total(v), 0, "{v}");
    assert_eq!(v["errors"]["bad_stamp"], 0, "{v}");
    let messages = v["messages_in"].as_u64().unwrap();
    assert!(messages >= received, "{v}");
    assert_eq!(
        v["payload_bytes_in"].as_u64().unwrap(),
        messages * size,
        "{v}"
    );
}

/// A fan-out run in which every expected delivery arrived once and in order, without an
/// error.
pub fn assert_every_delivery(v: &Value) {
    let f = &v["fanout"];
    assert_eq!(f["deliveries"], f["expected"], "{v}");
    for k in ["lost", "duplicates", "reordered"] {
        assert_eq!(f[k], 0, "{k}: {v}");
    }
    assert_eq!(errors_total(v), 0, "{v}");
}

pub fn errors_total(v: &Value) -> u64 {
    // Every kind the summary reports, so that a test asserting none misses none (it
    // listed six of the ten).
    let e = v["errors"].as_object().expect("an errors object");
    assert!(e.len() >= 10, "{e:?}");
    e.values().map(|n| n.as_u64().expect("a count")).sum()
}

/// The hidden blast server, on an ephemeral port; killed on drop.
pub struct Blast {
    pub child: Child,
    pub url: String,
}

impl Blast {
    pub fn start(args: &[&str]) -> Blast {
        let mut child = Command::new(BIN)
            .args([
                "blast-server",
                "--listen",
                "127.0.0.1:0",
                "--duration",
                "20s",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start blast-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line");
        Blast {
            child,
            url: format!("ws://{addr}/"),
        }
    }
}

impl Drop for Blast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const SHORT: [&str; 6] = ["--duration", "1s", "--warmup", "200ms", "--drain", "1s"];

/// A run of a second without a warm-up: every send is the window's.
pub const IN_WINDOW: [&str; 6] = ["--duration", "1s", "--warmup", "0s", "--drain", "1s"];

pub fn timeout() -> Duration {
    Duration::from_secs(30)
}
