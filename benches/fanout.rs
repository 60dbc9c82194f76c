//! The fan-out hot path without sockets: parsing a control message (validated in place, no copy),
//! encoding a delivery once, and queueing it to 1,000 subscribers by reference.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wsgate::app::control;
use wsgate::broadcast::prepare_delivery;
use wsgate_proto::OutQueue;

fn control_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("control_parse");
    for (name, text) in [
        ("subscribe", r#"{"op":"subscribe","topic":"prices.eu","id":1}"#.to_string()),
        ("publish_64b", format!(r#"{{"op":"publish","topic":"prices","data":"{}"}}"#, "x".repeat(64))),
        (
            "publish_object",
            r#"{"op":"publish","topic":"prices","id":7,"data":{"sym":"BTC-USD","bid":64123.5,"ask":64124.0,"ts":1763780000123}}"#
                .to_string(),
        ),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(control::parse(black_box(text.as_bytes())).is_ok()))
        });
    }
    group.finish();
}

fn delivery(c: &mut Criterion) {
    let data = format!("\"{}\"", "x".repeat(62));
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_64b", |b| {
        b.iter(|| prepare_delivery(black_box("prices"), data.as_bytes()))
    });
    let subscribers = 1000;
    group.throughput(Throughput::Elements(subscribers as u64));
    let mut queues: Vec<OutQueue> = (0..subscribers).map(|_| OutQueue::default()).collect();
    group.bench_function("queue_to_1000_subscribers", |b| {
        b.iter(|| {
            let message = prepare_delivery("prices", data.as_bytes());
            for q in &mut queues {
                q.push(message.frame().clone());
            }
            for q in &mut queues {
                let n = q.len_bytes();
                q.advance(n);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, control_parse, delivery);
criterion_main!(benches);
