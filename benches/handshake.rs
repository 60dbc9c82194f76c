//! Opening-handshake cost per connection: parse a browser's upgrade request, validate it,
//! render the `101` (RFC 6455 §4.2). No sockets: the kernel is not the subject here.
//!
//! `taskset -c 1 cargo bench --bench handshake -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wsgate_proto::handshake::{
    accept_key, parse_request, validate_upgrade, UpgradePolicy, MAX_HEADERS,
};

/// What Chrome 126 sends for `new WebSocket("wss://gateway.example.com/ws?subscribe=...")`,
/// header order and all, with a short session cookie.
const CHROME: &[u8] = b"GET /ws?subscribe=prices,news HTTP/1.1\r\n\
    Host: gateway.example.com\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
    Chrome/126.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://app.example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Cookie: session=8f14e45fceea167a5a36dedd4bea2543\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Protocol: v2.json, v1.json\r\n\
    \r\n";

const MAX_HEADER_BYTES: usize = 8 * 1024;

fn handshake(c: &mut Criterion) {
    let subprotocols = vec!["v2.json".to_owned()];
    let origins = vec!["https://app.example.com".to_owned()];
    let policy = UpgradePolicy {
        subprotocols: &subprotocols,
        allowed_origins: Some(&origins),
        deflate: false,
    };

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROME.len() as u64));
    // Baseline: httparse alone, borrowing; the gap to `parse` is our checks and copies.
    group.bench_function("httparse", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(black_box(CHROME)).expect("valid head").unwrap()
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            parse_request(black_box(CHROME), MAX_HEADER_BYTES)
                .expect("valid head")
                .expect("complete head")
        })
    });
    group.bench_function("parse_validate_respond", |b| {
        b.iter(|| {
            let req = parse_request(black_box(CHROME), MAX_HEADER_BYTES)
                .expect("valid head")
                .expect("complete head");
            let upgrade = validate_upgrade(&req, &policy).expect("valid upgrade");
            upgrade.response()
        })
    });
    group.finish();

    let key = b"dGhlIHNhbXBsZSBub25jZQ==";
    let mut group = c.benchmark_group("accept_key");
    group.throughput(Throughput::Bytes(key.len() as u64));
    group.bench_function("rfc_sample", |b| b.iter(|| accept_key(black_box(key))));
    group.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
