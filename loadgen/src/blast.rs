//! `blast-server` (hidden): a trivially cheap WebSocket sender to measure the loadgen's own
//! ceiling. It accepts upgrades (answering 101 with the right accept key) and then writes
//! pre-built, unmasked frames to every connection as fast as it can. Only the stamp (send
//! time and sequence number) is rewritten, once per batch for all connections.
//!
//! Not a server to test anything against: it ignores what clients send.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use wsgate_proto::handshake::{self, UpgradePolicy};
use wsgate_proto::{FrameHeader, OpCode};

use crate::stamp::{self, Stamp, STAMP_LEN};
use crate::sys;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Binary frames carrying the payload (the raw dialect).
    Binary,
    /// Text frames `{"topic":"T","data":"<payload>"}` (a wsgate delivery).
    Delivery,
}

#[derive(Args, Debug)]
pub struct BlastArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    pub format: Format,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Frames per batch (one write per connection per batch).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Pin the sending thread to this core.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Exit after this long.
    #[arg(long, default_value = "60s", value_parser = crate::modes::parse_duration)]
    pub duration: Duration,
    /// Batches per second instead of as fast as possible: with `--batch 1`, a bare loop
    /// writing one frame to every connection per round, the floor a gateway is compared with.
    #[arg(long)]
    pub rate: Option<f64>,
}

struct Batch {
    buf: Vec<u8>,
    /// Offset of each frame's stamp.
    stamps: Vec<usize>,
}

fn build(a: &BlastArgs) -> Batch {
    let (opcode, pre, suf) = match a.format {
        Format::Binary => (OpCode::Binary, Vec::new(), Vec::new()),
        Format::Delivery => (
            OpCode::Text,
            format!(r#"{{"topic":"{}","data":""#, a.topic).into_bytes(),
            br#""}"#.to_vec(),
        ),
    };
    // A server's frame header: final, unmasked.
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        len: (pre.len() + a.size + suf.len()) as u64,
    };
    let mut head = [0u8; wsgate_proto::frame::MAX_HEADER_LEN];
    let head_len = header.encode(&mut head);
    let head = &head[..head_len];
    let mut buf = Vec::new();
    let mut stamps = Vec::new();
    for _ in 0..a.batch {
        buf.extend_from_slice(head);
        buf.extend_from_slice(&pre);
        stamps.push(buf.len());
        let at = buf.len();
        buf.resize(at + a.size, 0);
        stamp::write(
            &mut buf[at..],
            Stamp {
                ts: 0,
                publisher: 0,
                seq: 0,
            },
        );
        buf.extend_from_slice(&suf);
    }
    Batch { buf, stamps }
}

/// Reads the upgrade request and answers it with wsgate-proto's server side.
fn upgrade(mut s: TcpStream) -> Result<TcpStream> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut chunk = [0u8; 1024];
    let request = loop {
        let n = s.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "closed during handshake");
        req.extend_from_slice(&chunk[..n]);
        if let Some(request) = handshake::parse_request(&req, 16 * 1024)? {
            break request;
        }
    };
    let upgrade = handshake::validate_upgrade(&request, &UpgradePolicy::default())?;
    s.write_all(&upgrade.response())?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub fn run(a: BlastArgs) -> Result<()> {
    anyhow::ensure!(a.size >= STAMP_LEN, "--size must be at least {STAMP_LEN}");
    let _ = sys::raise_nofile();
    let listener = TcpListener::bind(&a.listen).with_context(|| format!("bind {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let accepted = Arc::clone(&conns);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let accepted = Arc::clone(&accepted);
            std::thread::spawn(move || {
                if let Ok(s) = upgrade(s) {
                    accepted.lock().expect("not poisoned").push(s);
                }
            });
        }
    });
    if let Some(cpu) = a.cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let mut batch = build(&a);
    let end = sys::mono_ns() + a.duration.as_nanos() as u64;
    let mut seq: u32 = 0;
    let mut active: Vec<TcpStream> = Vec::new();
    let mut ts_hex = [0u8; STAMP_LEN];
    let period_ns = a.rate.map(|r| (1e9 / r.max(0.001)) as u64);
    let mut next_round = sys::mono_ns();
    while sys::mono_ns() < end {
        active.append(&mut conns.lock().expect("not poisoned"));
        if active.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Some(period) = period_ns {
            let now = sys::mono_ns();
            if now < next_round {
                std::thread::sleep(Duration::from_nanos(next_round - now));
            }
            next_round += period;
        }
        // Stamp once per batch: the time is shared, the sequence numbers count up.
        let ts = sys::mono_ns();
        stamp::write(
            &mut ts_hex,
            Stamp {
                ts,
                publisher: 0,
                seq: 0,
            },
        );
        for &at in &batch.stamps {
            batch.buf[at..at + 25].copy_from_slice(&ts_hex[..25]);
            stamp::put_seq(&mut batch.buf[at..at + STAMP_LEN], seq);
            seq = seq.wrapping_add(1);
        }
        active.retain_mut(|s| s.write_all(&batch.buf).is_ok());
    }
    Ok(())
}
