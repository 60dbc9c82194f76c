//! Frame header decoding, and the whole receive path of one connection (header, SIMD
//! unmask, UTF-8 check, message assembly) over a buffer of pipelined frames.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsgate_proto::{Budget, Connection, FrameHeader, Limits, OutQueue};

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    wsgate_proto::frame::encode_client_raw(true, 0, opcode, [0x11, 0x22, 0x33, 0x44], payload)
}

fn header_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header_decode");
    for (name, len) in [("7bit", 64usize), ("16bit", 4096), ("64bit", 1 << 20)] {
        let bytes = masked_frame(0x2, &vec![0u8; len]);
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| FrameHeader::parse(black_box(&bytes[..14])))
        });
    }
    group.finish();
}

fn receive_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive_messages");
    for size in [20usize, 128, 1024, 16384] {
        let payload = "x".repeat(size);
        let frame = masked_frame(0x1, payload.as_bytes());
        let count = (64 * 1024 / frame.len()).max(1);
        let wire: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * count)
            .collect();
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let limits = Limits::default();
        group.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            let mut conn = Connection::server(Instant::now());
            let mut out = OutQueue::default();
            let mut budget = Budget::new(u64::MAX);
            let mut inflater = wsgate_proto::deflate::Inflater::default();
            let mut events = Vec::with_capacity(count);
            let mut buf = wire.clone();
            let now = Instant::now();
            b.iter(|| {
                buf.copy_from_slice(wire);
                let mut rest = &mut buf[..];
                while !rest.is_empty() {
                    let n = conn.handle_bytes(
                        now,
                        &limits,
                        &mut budget,
                        &mut inflater,
                        rest,
                        &mut out,
                        &mut events,
                    );
                    rest = &mut std::mem::take(&mut rest)[n..];
                    events.clear();
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, header_decode, receive_path);
criterion_main!(benches);
