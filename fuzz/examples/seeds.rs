//! Writes the committed seed corpus, `fuzz/corpus/<target>/<name>`: a few meaningful
//! inputs per target for the fuzzer to mutate. Run from `fuzz/` after changing an input
//! format: `cargo run --example seeds`.

use std::path::Path;

use wsgate_fuzz::{Input, Op, Setup};
use wsgate_proto::frame::encode_client_raw as encode_masked;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };
    for (name, bytes) in handshake() {
        write("handshake", name, &bytes)?;
    }
    for (name, bytes) in frame() {
        write("frame", name, &bytes)?;
    }
    for (name, input) in connection() {
        let bytes = input.encode();
        assert_eq!(Input::decode(&bytes), Ok(input), "{name} round-trips");
        write("connection", name, &bytes)?;
    }
    for (name, input) in deflate() {
        let bytes = input.encode();
        assert_eq!(Input::decode(&bytes), Ok(input), "{name} round-trips");
        write("deflate", name, &bytes)?;
    }
    for (name, bytes) in mask() {
        write("mask", name, &bytes)?;
    }
    for (name, text) in control() {
        write("control", name, text.as_bytes())?;
    }
    for (name, text) in config() {
        write("config", name, text.as_bytes())?;
    }
    for (name, bytes) in tls_records() {
        write("tls_records", name, &bytes)?;
    }
    Ok(())
}

/// Policy flags (1: subprotocols, 2: allowed origins, 4: permessage-deflate, 0xf8: where
/// to cut a prefix), the limit, then the request.
fn handshake() -> Vec<(&'static str, Vec<u8>)> {
    let head = |flags: u8, max: u16, request: &[u8]| {
        let mut out = vec![flags];
        out.extend_from_slice(&max.to_le_bytes());
        out.extend_from_slice(request);
        out
    };
    vec![
        (
            "chrome-upgrade",
            head(
                0x84,
                8192,
                b"GET /ws?subscribe=prices HTTP/1.1\r\n\
                 Host: localhost:8080\r\n\
                 Connection: Upgrade\r\n\
                 Pragma: no-cache\r\n\
                 Cache-Control: no-cache\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
                 Upgrade: websocket\r\n\
                 Origin: http://example.com\r\n\
                 Sec-WebSocket-Version: 13\r\n\
                 Accept-Encoding: gzip, deflate, br, zstd\r\n\
                 Accept-Language: en-US,en;q=0.9\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            ),
        ),
        (
            "firefox-subprotocols",
            head(
                0x47,
                8192,
                b"GET /echo HTTP/1.1\r\n\
                 Host: example.com\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
                 Sec-WebSocket-Version: 13\r\n\
                 Origin: http://example.com\r\n\
                 Sec-WebSocket-Protocol: superchat, chat\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate\r\n\
                 Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
                 Connection: keep-alive, Upgrade\r\n\
                 Upgrade: websocket\r\n\r\n\
                 \x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
            ),
        ),
        (
            "publish-post",
            head(
                0x20,
                4096,
                b"POST /publish/prices HTTP/1.1\r\nHost: gw\r\n\
                 Authorization: Bearer change-me\r\nContent-Type: application/json\r\n\
                 Content-Length: 13\r\n\r\n{\"price\": 42}",
            ),
        ),
        (
            "chunked-publish",
            head(
                0x10,
                4096,
                b"POST /publish/t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "http10-healthz",
            head(0x00, 256, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ),
        (
            "absolute-form",
            head(
                0xfc,
                1024,
                b"GET http://gw:8080/ws?x=1 HTTP/1.1\r\nHost: gw:8080\r\nUpgrade: websocket\r\n\
                 Connection: upgrade\r\nSec-WebSocket-Version: 8\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            ),
        ),
        (
            "duplicate-key",
            head(
                0x00,
                1024,
                b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n",
            ),
        ),
        ("options-star", head(0x00, 64, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")),
        (
            // Python websockets' offer, then a declined one and a quoted value, over two
            // header fields.
            "deflate-offers",
            head(
                0x64,
                4096,
                b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7, \
                 x-webkit-deflate-frame\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"10\"; \
                 client_max_window_bits, permessage-deflate; server_no_context_takeover\r\n\r\n",
            ),
        ),
        (
            "deflate-declined",
            head(
                0x04,
                4096,
                b"GET /echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                 server_no_context_takeover, permessage-deflate; client_max_window_bits=08; \
                 mystery\r\n\r\n",
            ),
        ),
    ]
}

/// Headers as clients send them (the payload after them is ignored).
fn frame() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // RFC 6455 §5.7: a masked "Hello".
        (
            "masked-hello",
            vec![
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
        ),
        ("unmasked-hello", b"\x81\x05Hello".to_vec()),
        ("fragment-start", vec![0x01, 0x83, 1, 2, 3, 4]),
        ("continuation-end", vec![0x80, 0x82, 1, 2, 3, 4]),
        (
            "close-1000",
            encode_masked(true, 0, 0x8, KEY, &[0x03, 0xe8]),
        ),
        ("len16", vec![0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4]),
        (
            "len64",
            vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
        ),
        (
            "len64-top-bit",
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        ),
        (
            "len16-not-shortest",
            vec![0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4],
        ),
        ("rsv1-ping", vec![0xc9, 0x80, 1, 2, 3, 4]),
    ]
}

fn conn(setup: Setup, ops: Vec<Op>) -> Input {
    Input { setup, ops }
}

fn frame_op(head: u8, payload: &[u8]) -> Op {
    Op::Frame {
        head,
        key: KEY,
        payload: payload.to_vec(),
    }
}

/// Sessions with permessage-deflate negotiated. Head 0xd1/0xd2 (FIN, RSV1, RSV3): the target
/// compresses the payload itself; other RSV1 frames carry these bytes as they are.
fn deflate() -> Vec<(&'static str, Input)> {
    let roomy = Setup {
        max_frame: 4096,
        max_message: 8192,
        idle_ms: 0,
        pong_ms: 10,
        close_ms: 10,
    };
    let tight = Setup {
        max_frame: 4096,
        max_message: 1024,
        ..roomy
    };
    let json: Vec<u8> = (0..40)
        .flat_map(|i| format!("{{\"id\":{i},\"price\":4200{i}.5,\"side\":\"buy\"}},").into_bytes())
        .collect();
    let mut deflater = wsgate_proto::deflate::Deflater::new(6, 0);
    let compressed = deflater.compress(&json).expect("compressible").to_vec();
    let bomb = deflater
        .compress(&[0; 60_000])
        .expect("compressible")
        .to_vec();
    let (a, b) = compressed.split_at(compressed.len() / 3);
    vec![
        (
            "compressed-echo",
            conn(
                roomy,
                vec![
                    frame_op(0xd1, &json),
                    frame_op(0xd2, &[7; 300]),
                    frame_op(0xd1, b""),
                    Op::Read(vec![3, 1, 7, 0]),
                    Op::Write(20),
                ],
            ),
        ),
        (
            "fragmented-compressed",
            conn(
                roomy,
                vec![
                    frame_op(0x41, a),
                    frame_op(0x89, b"ping between"),
                    frame_op(0x80, b),
                    Op::Read(vec![5, 0]),
                ],
            ),
        ),
        (
            "bomb",
            conn(tight, vec![frame_op(0xc2, &bomb), Op::Read(vec![])]),
        ),
        (
            "garbage",
            conn(roomy, vec![frame_op(0xc1, &[0xff; 16]), Op::Read(vec![])]),
        ),
        (
            "unended-block",
            conn(
                roomy,
                vec![
                    frame_op(0xc2, &[0x00, 0xe8, 0x03, 0x17, 0xfc, 1, 2, 3]),
                    Op::Read(vec![]),
                ],
            ),
        ),
        (
            "rsv1-on-control-and-continuation",
            conn(
                roomy,
                vec![
                    frame_op(0x01, b"plain start"),
                    frame_op(0xc0, b"compressed end"),
                    frame_op(0xc9, b"ping"),
                    Op::Read(vec![]),
                ],
            ),
        ),
        (
            "compressed-invalid-utf8",
            conn(
                roomy,
                vec![frame_op(0xd1, b"{\"a\":\"\xc3\x28\"}"), Op::Read(vec![])],
            ),
        ),
        (
            "compressed-send-and-close",
            conn(
                roomy,
                vec![
                    Op::Send {
                        text: true,
                        payload: json.clone(),
                    },
                    Op::Write(9),
                    Op::Close {
                        code: 0,
                        reason: b"bye".to_vec(),
                    },
                    frame_op(0x88, &[0x03, 0xe8]),
                    Op::Read(vec![]),
                ],
            ),
        ),
    ]
}

/// Sessions: the reads are split unevenly so that headers arrive in pieces.
fn connection() -> Vec<(&'static str, Input)> {
    let roomy = Setup {
        max_frame: 1024,
        max_message: 2048,
        idle_ms: 0,
        pong_ms: 10,
        close_ms: 10,
    };
    let small = Setup {
        max_frame: 64,
        max_message: 100,
        idle_ms: 50,
        pong_ms: 20,
        close_ms: 30,
    };
    let hello = b"Hello";
    vec![
        (
            "echo-bytewise",
            conn(
                roomy,
                vec![
                    frame_op(0x81, hello),
                    frame_op(0x82, &[0; 200]),
                    Op::Read(vec![1; 40]),
                ],
            ),
        ),
        (
            "fragments-with-ping",
            conn(
                roomy,
                vec![
                    frame_op(0x01, b"Hel"),
                    frame_op(0x89, b"are you there"),
                    frame_op(0x00, "lo, wörld ".as_bytes()),
                    frame_op(0x80, "€".as_bytes()),
                    Op::Read(vec![3, 7, 2, 9]),
                    Op::Write(5),
                ],
            ),
        ),
        (
            "peer-close",
            conn(
                roomy,
                vec![
                    frame_op(0x81, hello),
                    frame_op(0x88, b"\x03\xe8bye"),
                    Op::Read(vec![]),
                ],
            ),
        ),
        (
            "server-close-then-reply",
            conn(
                small,
                vec![
                    frame_op(0x01, "caf\u{e9}".as_bytes().split_at(4).0),
                    Op::Read(vec![]),
                    Op::Close {
                        code: 1,
                        reason: b"going away".to_vec(),
                    },
                    frame_op(0x80, &[0xa9]),
                    frame_op(0x88, b"\x03\xe9"),
                    Op::Read(vec![2]),
                    Op::AdvanceTime(40),
                ],
            ),
        ),
        (
            "idle-ping-pong",
            conn(
                small,
                vec![
                    Op::AdvanceTime(60),
                    frame_op(0x8a, b""),
                    Op::Read(vec![]),
                    Op::AdvanceTime(60),
                    Op::Timeout,
                    Op::AdvanceTime(30),
                    Op::Send {
                        text: true,
                        payload: b"late".to_vec(),
                    },
                ],
            ),
        ),
        (
            "message-too-big",
            conn(
                small,
                vec![
                    frame_op(0x02, &[7; 60]),
                    frame_op(0x00, &[7; 60]),
                    Op::Read(vec![10, 100]),
                ],
            ),
        ),
        (
            "invalid-utf8",
            conn(
                roomy,
                vec![frame_op(0x81, b"ok \xc3\x28"), Op::Read(vec![5])],
            ),
        ),
        (
            "unmasked-and-reserved",
            conn(
                roomy,
                vec![
                    Op::Raw(b"\x81\x05Hello".to_vec()),
                    Op::Read(vec![1]),
                    frame_op(0x83, b""),
                ],
            ),
        ),
        (
            "send-and-partial-writes",
            conn(
                roomy,
                vec![
                    Op::Send {
                        text: false,
                        payload: vec![1; 300],
                    },
                    Op::Send {
                        text: true,
                        payload: b"two".to_vec(),
                    },
                    Op::Write(3),
                    Op::Write(200),
                    Op::ReleaseIdle,
                    Op::Write(1000),
                ],
            ),
        ),
    ]
}

/// Key, phase, split (of 255), alignment, payload.
fn mask() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |phase: u8, split: u8, align: u8, len: usize| {
        let mut out = vec![KEY[0], KEY[1], KEY[2], KEY[3], phase, split, align];
        out.extend((0..len).map(|i| (i * 7) as u8));
        out
    };
    vec![
        ("empty", seed(0, 0, 0, 0)),
        ("short", seed(1, 100, 3, 15)),
        ("avx2-block", seed(2, 128, 1, 64)),
        ("avx512-block-plus-tail", seed(3, 200, 17, 131)),
        ("long", seed(0, 17, 5, 1500)),
    ]
}

fn control() -> Vec<(&'static str, &'static str)> {
    vec![
        ("subscribe", r#"{"op":"subscribe","topic":"prices","id":1}"#),
        (
            "unsubscribe",
            r#"{"op":"unsubscribe","topic":"prices","id":"a-1"}"#,
        ),
        (
            "publish-object",
            r#"{"op":"publish","topic":"chat.room","data":{"user":"ann","text":"hi \u00e9\ud83d\ude00","n":[1,2.5e10,-0,null,true]}}"#,
        ),
        (
            "publish-string",
            r#"{"op":"publish","topic":"t","data":"caf\u00e9 \" \\ \n"}"#,
        ),
        ("bad-id", r#"{"op":"subscribe","topic":"t","id":{"x":1}}"#),
        ("unknown-op", r#"{"op":"list","id":7}"#),
        ("not-json", r#"{"op":"subscribe","#),
    ]
}

fn config() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "readme",
            r#"listen = "0.0.0.0:8080"
threads = 0
max_outbound_bytes = 1048576
slow_consumer = "close"
client_publish = ["chat.*"]
publish_token = "change-me"
allowed_origins = ["https://app.example"]
idle_timeout = "60s"
"#,
        ),
        (
            "limits",
            r#"max_frame_size = 65536
max_message_size = 1048576
max_header_bytes = 8192
handshake_timeout = "2.5s"
close_timeout = "250ms"
pong_timeout = "1m"
drain_grace = "1h"
io = "epoll"
uring_bufs = 1024
max_topic_len = 1024
"#,
        ),
        ("bad-duration", "idle_timeout = \"10 parsecs\"\n"),
    ]
}

/// The suite (0..3), then steps (`wsgate_fuzz::tls`): 0 a sealed record (kind: 0 data, 5
/// alert, 6 handshake, bit 7 flips a byte; content; padding; where to flip), 2 raw bytes,
/// 3 deliver (piece sizes), 4 a server frame, 5 the server's close.
fn tls_records() -> Vec<(&'static str, Vec<u8>)> {
    let blob = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    let record = |out: &mut Vec<u8>, kind: u8, content: &[u8], padding: u8, flip: u16| {
        out.extend_from_slice(&[0, kind]);
        blob(out, content);
        out.push(padding);
        out.extend_from_slice(&flip.to_le_bytes());
    };
    let deliver = |out: &mut Vec<u8>, sizes: &[u8]| {
        out.push(3);
        blob(out, sizes);
    };
    let mut echo = vec![0];
    record(&mut echo, 0, b"GET /echo HTTP/1.1\r\n\r\n", 0, 0);
    record(&mut echo, 0, b"", 40, 0);
    deliver(&mut echo, &[3, 1, 0]);
    echo.push(4);
    blob(&mut echo, b"a frame from the server");
    echo.push(5);
    let mut update = vec![1];
    record(&mut update, 6, &[24, 0, 0, 1, 1], 0, 0);
    record(&mut update, 0, b"after the update", 0, 0);
    deliver(&mut update, &[]);
    let mut close = vec![2];
    record(&mut close, 0, b"last", 0, 0);
    record(&mut close, 5, &[1, 0], 0, 0);
    deliver(&mut close, &[7]);
    let mut tampered = vec![0];
    record(&mut tampered, 0x80, b"tampered", 0, 0x0109);
    deliver(&mut tampered, &[]);
    let mut raw = vec![0];
    raw.push(2);
    blob(&mut raw, &[23, 3, 3, 0x41, 0x01]);
    deliver(&mut raw, &[]);
    vec![
        ("echo", echo),
        ("key-update", update),
        ("close-notify", close),
        ("tampered", tampered),
        ("overflow-header", raw),
    ]
}
