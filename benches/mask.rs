//! Unmasking throughput (RFC 6455 §5.3): every kernel this CPU has, the dispatched `unmask`,
//! and `autovec`, the plain byte loop left to the compiler (baseline target features: SSE2 on
//! x86_64). The hand-written kernels must beat both it and `scalar`, whose `u64` loop LLVM
//! vectorizes to SSE2; the byte loop's `% 4` key index keeps it mostly byte by byte.
//!
//! Each iteration unmasks the next of several buffers (up to 32 KiB in all, so they stay in
//! L1; one buffer from 32 KiB up): re-masking the bytes the previous iteration just stored
//! would measure store-to-load forwarding, which cannot forward from AVX-512 masked stores,
//! rather than throughput. In the gateway, unmasking follows a `recv` long after its stores.
//!
//! `mask`: buffers start 64-byte aligned, as when a payload is read into a fresh pool buffer.
//! `mask_unaligned`: 1 byte past alignment with phase 1, as after a header and a partial read.
//!
//! ```text
//! taskset -c 1 cargo bench --bench mask -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsgate_proto::mask::{self, Kernel};

const SIZES: [usize; 7] = [16, 64, 256, 1024, 4096, 16384, 65536];
const UNALIGNED_SIZES: [usize; 3] = [64, 4096, 65536];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The obvious byte loop: what the compiler makes of it without intrinsics.
#[inline(never)]
fn autovec(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) % 4];
    }
    (phase + buf.len()) % 4
}

/// Footprint of the buffers an iteration cycles through: half of a 48 KiB L1d.
const FOOTPRINT: usize = 32 << 10;

/// Buffers of `len` bytes, each starting `skew` bytes past a 64-byte boundary, as many as fit
/// in [`FOOTPRINT`] (at least 1, at most 64).
struct Buffers {
    mem: Vec<u8>,
    starts: Vec<usize>,
    len: usize,
    next: usize,
}

impl Buffers {
    fn new(len: usize, skew: usize) -> Buffers {
        let stride = (len + skew + 63) & !63;
        let count = (FOOTPRINT / stride).clamp(1, 64);
        let mem: Vec<u8> = (0..count * stride + 64).map(|i| i as u8).collect();
        let base = mem.as_ptr().align_offset(64);
        let starts = (0..count).map(|i| base + i * stride + skew).collect();
        Buffers {
            mem,
            starts,
            len,
            next: 0,
        }
    }

    #[inline]
    fn next(&mut self) -> &mut [u8] {
        let start = self.starts[self.next];
        self.next = if self.next + 1 == self.starts.len() {
            0
        } else {
            self.next + 1
        };
        &mut self.mem[start..start + self.len]
    }
}

fn run(c: &mut Criterion, group: &str, sizes: &[usize], skew: usize, phase: usize) {
    let mut g = c.benchmark_group(group);
    for &size in sizes {
        g.throughput(Throughput::Bytes(size as u64));
        let mut bufs = Buffers::new(size, skew);

        for k in Kernel::available() {
            g.bench_function(BenchmarkId::new(k.name(), size), |b| {
                b.iter(|| k.unmask(black_box(bufs.next()), KEY, phase))
            });
        }
        let dispatch = format!("unmask({})", mask::kernel());
        g.bench_function(BenchmarkId::new(dispatch, size), |b| {
            b.iter(|| mask::unmask(black_box(bufs.next()), KEY, phase))
        });
        g.bench_function(BenchmarkId::new("autovec", size), |b| {
            b.iter(|| autovec(black_box(bufs.next()), KEY, phase))
        });
    }
    g.finish();
}

fn aligned(c: &mut Criterion) {
    run(c, "mask", &SIZES, 0, 0);
}

fn unaligned(c: &mut Criterion) {
    run(c, "mask_unaligned", &UNALIGNED_SIZES, 1, 1);
}

criterion_group!(benches, aligned, unaligned);
criterion_main!(benches);
