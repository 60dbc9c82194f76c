//! permessage-deflate: which deflate implementation, and which level. CPU per message to
//! compress and to inflate realistic JSON (market ticks) of 64 B, 256 B, 1 KiB and 16 KiB,
//! each message on its own as the gateway does (no context takeover: the compressor is reset
//! per message), for:
//!
//! - `flate2-zlib-rs`: what wsgate-proto uses (`deflate::Deflater`, `deflate::Inflater`);
//! - `miniz_oxide`: flate2's default backend, driven directly (the same core API);
//! - `libdeflater`: libdeflate, whole-buffer only (its inflater needs the output size up
//!   front, which a gateway does not know: there it could only be the sending side; the
//!   loadgen, which knows what it sent, inflates with it).
//!
//! Before the benchmarks it prints the compression ratio per size and the memory one
//! compressor and one decompressor hold (resident set growth). Results and the choice are
//! in docs/deflate.md.
//!
//! ```text
//! taskset -c 1 cargo bench --bench deflate -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use miniz_oxide::deflate::core::{
    compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush,
};
use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZFlush};
use wsgate_proto::deflate::{Deflater, Inflater};
use wsgate_proto::OpCode;

const SIZES: [usize; 4] = [64, 256, 1024, 16384];
const LEVELS: [u32; 2] = [1, 6];

/// Market-data JSON of about `n` bytes: one tick for small sizes, a batch of ticks above.
fn json(n: usize) -> Vec<u8> {
    const SYMBOLS: [&str; 6] = [
        "BTC-USD", "ETH-USD", "SOL-USD", "ETH-BTC", "DOGE-USD", "XRP-EUR",
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ticks = Vec::new();
    let mut len = 2;
    loop {
        let r = next();
        let tick = format!(
            "{{\"s\":\"{}\",\"p\":{}.{:02},\"q\":{},\"t\":{}}}",
            SYMBOLS[(r % 6) as usize],
            20_000 + r % 50_000,
            (r >> 20) % 100,
            (r >> 30) % 1000,
            1_764_000_000_000u64 + (r >> 40) % 100_000
        );
        if len + tick.len() + 1 > n && !ticks.is_empty() {
            break;
        }
        len += tick.len() + 1;
        ticks.push(tick);
    }
    let body = if ticks.len() == 1 {
        ticks.pop().unwrap()
    } else {
        format!("[{}]", ticks.join(","))
    };
    body.into_bytes()
}

fn miniz_compressor(level: u32) -> Box<CompressorOxide> {
    Box::new(CompressorOxide::new(create_comp_flags_from_zip_params(
        level as i32,
        -15,
        0,
    )))
}

fn miniz_compress(c: &mut CompressorOxide, input: &[u8], out: &mut [u8]) -> usize {
    c.reset();
    let (_, _, n) = compress(c, input, out, TDEFLFlush::Sync);
    n - 4
}

fn libdeflate_compress(c: &mut libdeflater::Compressor, input: &[u8], out: &mut [u8]) -> usize {
    c.deflate_compress(input, out).expect("room for the bound")
}

/// Resident bytes per instance that `make` and one `run` leave behind: RSS (from
/// /proc/self/statm) grown by 64 live instances, divided by 64. Counts every heap (libdeflate
/// allocates with C's malloc) and only pages actually touched.
fn weigh<T>(make: impl Fn() -> T, run: impl Fn(&mut T)) -> usize {
    const N: usize = 64;
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    };
    let before = rss();
    let mut all: Vec<T> = (0..N).map(|_| make()).collect();
    all.iter_mut().for_each(&run);
    let grown = rss().saturating_sub(before);
    drop(all);
    grown / N
}

fn report() {
    println!("ratio (compressed / original), one message at a time:");
    println!(
        "{:>6} {:>22} {:>14} {:>14}",
        "bytes", "impl", "level 1", "level 6"
    );
    for &n in &SIZES {
        let data = json(n);
        let mut out = vec![0; n + 1024];
        let zlib_rs = LEVELS.map(|l| {
            Deflater::new(l, 0)
                .compress(&data)
                .map_or(data.len(), <[u8]>::len)
        });
        let miniz = LEVELS.map(|l| miniz_compress(&mut miniz_compressor(l), &data, &mut out));
        let libdeflate = LEVELS.map(|l| {
            let lvl = libdeflater::CompressionLvl::new(l as i32).unwrap();
            libdeflate_compress(&mut libdeflater::Compressor::new(lvl), &data, &mut out)
        });
        for (name, sizes) in [
            ("flate2-zlib-rs", zlib_rs),
            ("miniz_oxide", miniz),
            ("libdeflater", libdeflate),
        ] {
            let r = sizes.map(|s| s as f64 / data.len() as f64);
            println!("{:>6} {name:>22} {:>14.3} {:>14.3}", data.len(), r[0], r[1]);
        }
    }
    let sample = json(1024);
    println!("memory per instance after one 1 KiB message (resident bytes):");
    for level in LEVELS {
        let zlib_rs = weigh(
            || Deflater::new(level, 0),
            |d| {
                d.server_frame(OpCode::Text, &sample);
            },
        );
        let miniz = weigh(
            || miniz_compressor(level),
            |c| {
                miniz_compress(c, &sample, &mut [0; 4096]);
            },
        );
        let libdeflate = weigh(
            || {
                libdeflater::Compressor::new(
                    libdeflater::CompressionLvl::new(level as i32).unwrap(),
                )
            },
            |c| {
                libdeflate_compress(c, &sample, &mut [0; 4096]);
            },
        );
        println!(
            "  compressor level {level}: flate2-zlib-rs {zlib_rs}, miniz_oxide {miniz}, \
             libdeflater {libdeflate}"
        );
    }
    let body = Deflater::new(6, 0).compress(&sample).unwrap().to_vec();
    let zlib_rs = weigh(Inflater::default, |i| {
        i.inflate(&body, 1 << 20, None).unwrap();
    });
    let miniz = weigh(
        || InflateState::new_boxed(DataFormat::Raw),
        |s| {
            inflate(s, &body, &mut [0; 4096], MZFlush::Sync);
        },
    );
    println!("  decompressor: flate2-zlib-rs {zlib_rs}, miniz_oxide {miniz}");
}

fn bench(c: &mut Criterion) {
    report();
    let mut group = c.benchmark_group("deflate");
    for &n in &SIZES {
        let data = json(n);
        group.throughput(Throughput::Bytes(data.len() as u64));
        for level in LEVELS {
            let mut zlib_rs = Deflater::new(level, 0);
            group.bench_with_input(
                BenchmarkId::new(format!("flate2-zlib-rs/{level}"), n),
                &data,
                |b, data| b.iter(|| black_box(zlib_rs.compress(black_box(data)).map(<[u8]>::len))),
            );
            let mut miniz = miniz_compressor(level);
            let mut out = vec![0; n + 1024];
            group.bench_with_input(
                BenchmarkId::new(format!("miniz_oxide/{level}"), n),
                &data,
                |b, data| {
                    b.iter(|| black_box(miniz_compress(&mut miniz, black_box(data), &mut out)))
                },
            );
            let mut libdeflate = libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap(),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("libdeflater/{level}"), n),
                &data,
                |b, data| {
                    b.iter(|| {
                        black_box(libdeflate_compress(
                            &mut libdeflate,
                            black_box(data),
                            &mut out,
                        ))
                    })
                },
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("inflate");
    for &n in &SIZES {
        let data = json(n);
        let body = Deflater::new(1, 0)
            .compress(&data)
            .map_or(data.clone(), <[u8]>::to_vec);
        group.throughput(Throughput::Bytes(data.len() as u64));
        let mut zlib_rs = Inflater::default();
        group.bench_with_input(BenchmarkId::new("flate2-zlib-rs", n), &body, |b, body| {
            b.iter(|| {
                black_box(
                    zlib_rs
                        .inflate(black_box(body), 1 << 20, None)
                        .map(|v| v.len()),
                )
            })
        });
        let mut miniz = InflateState::new_boxed(DataFormat::Raw);
        let mut out = vec![0; n + 1024];
        let mut input = body.clone();
        input.extend([0, 0, 0xff, 0xff]);
        group.bench_with_input(BenchmarkId::new("miniz_oxide", n), &input, |b, input| {
            b.iter(|| {
                miniz.reset(DataFormat::Raw);
                black_box(
                    inflate(&mut miniz, black_box(input), &mut out, MZFlush::Sync).bytes_written,
                )
            })
        });
        // Whole-buffer: the tail, then an empty final block (libdeflate wants BFINAL).
        let mut libdeflate = libdeflater::Decompressor::new();
        input.extend([0x03, 0x00]);
        group.bench_with_input(BenchmarkId::new("libdeflater", n), &input, |b, input| {
            b.iter(|| black_box(libdeflate.deflate_decompress(black_box(input), &mut out)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
