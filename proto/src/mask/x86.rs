//! x86 / x86_64 unmasking kernels: AVX-512 (F + BW), AVX2 and SSE2.
//!
//! Each kernel XORs all of `buf` with `key` repeated from `buf[0]`: the caller has already
//! rotated the key by the phase. They are `unsafe` only because they need CPU features, which
//! [`kernel`] detects before it hands one out. No state, no allocation.
//!
//! Shape, for a vector of `W` bytes and `len >= W`:
//! - head (long buffers): the bytes up to the first `W`-aligned address, so no body access
//!   splits a cache line. AVX-512 uses a byte mask; AVX2 and SSE2 XOR one unaligned vector
//!   whose key lanes past the head are zero;
//! - body: vectors, four per iteration;
//! - tail: AVX-512 uses a byte mask; AVX2 and SSE2 XOR the last `W` bytes as one vector whose
//!   key lanes before the tail are zero.
//!
//! Lanes XORed with zero are read and written back unchanged; that is sound because `buf` is
//! exclusively ours, and it replaces up to `2 * W - 2` scalar steps. Where such a vector
//! overlaps a neighbour, both are loaded before either is stored, and the neighbour is stored
//! last: a load that overlaps a pending store in part (or a masked store's 64 bytes at all)
//! cannot be forwarded from it and waits for it to commit, ~10 ns on our Sapphire Rapids VM.

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use core::mem::size_of;

use super::{rotate, xor_words, Kernel, KernelFn};

/// Kernel names, best first.
pub(super) const NAMES: [&str; 3] = ["avx512", "avx2", "sse2"];

/// The kernel called `name`, if this CPU supports it.
pub(super) fn kernel(name: &str) -> Option<Kernel> {
    let (name, func): (&'static str, KernelFn) = match name {
        "avx512" if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") => {
            ("avx512", avx512)
        }
        "avx2" if is_x86_feature_detected!("avx2") => ("avx2", avx2),
        "sse2" if is_x86_feature_detected!("sse2") => ("sse2", sse2),
        _ => return None,
    };
    // INVARIANT (`Kernel::func`): `func`'s target features were detected just above.
    Some(Kernel { name, func })
}

/// `0xff` then `0x00`, 32 of each: 16 or 32 bytes loaded from `32 - n` have the low `n` lanes
/// set (see [`low16`], [`low32`]).
static LOW: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 32 {
        t[i] = 0xff;
        i += 1;
    }
    t
};

/// `key` repeated `N` times, in memory order. Whole words, so the compiler emits one broadcast
/// (byte stores would stall the wide load that reads them back).
#[inline(always)]
fn splat<const N: usize>(key: [u8; 4]) -> [u32; N] {
    [u32::from_ne_bytes(key); N]
}

/// Bytes from `p` to the next multiple of `align` (a power of two), 0 if `p` is aligned.
#[inline(always)]
fn misalignment(p: *const u8, align: usize) -> usize {
    (p as usize).wrapping_neg() & (align - 1)
}

// ---------------------------------------------------------------------------------------------
// AVX-512
//
// Its intrinsics and target features are stable since Rust 1.89, the crate's `rust-version`.

/// # Safety
///
/// The CPU must support AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn avx512(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    let p = buf.as_mut_ptr();
    if len <= 64 {
        // SAFETY: the mask selects lanes 0..len, all inside `buf`; AVX-512F/BW are enabled.
        unsafe { xor64_masked(p, low64(len), key64(key)) };
        return;
    }
    // SAFETY: AVX-512F is enabled.
    let mut k = unsafe { key64(key) };
    let mut i = 0;
    let head = misalignment(p, 64);
    if len >= 256 && head != 0 {
        // Masked stores don't forward to loads that overlap their 64-byte footprint, masked
        // lanes or not: load the first aligned vector before storing the head.
        // SAFETY: head + 64 < 128 < len, so lanes 0..head and the vector at p + head are
        // inside `buf`; AVX-512F/BW are enabled.
        unsafe {
            let first = _mm512_loadu_si512(p.add(head).cast());
            xor64_masked(p, low64(head), k);
            k = key64(rotate(key, head));
            _mm512_storeu_si512(p.add(head).cast(), _mm512_xor_si512(first, k));
        }
        i = head + 64;
    }
    while len - i >= 256 {
        // SAFETY: i + 256 <= len, so the four vectors at p + i .. p + i + 256 are inside `buf`.
        unsafe {
            let q = p.add(i);
            xor64(q, k);
            xor64(q.add(64), k);
            xor64(q.add(128), k);
            xor64(q.add(192), k);
        }
        i += 256;
    }
    while len - i >= 64 {
        // SAFETY: i + 64 <= len.
        unsafe { xor64(p.add(i), k) };
        i += 64;
    }
    if i < len {
        // SAFETY: i < len; the mask selects lanes 0..len - i, all inside `buf`.
        unsafe { xor64_masked(p.add(i), low64(len - i), k) };
    }
}

/// `key` in every 4-byte lane of a 512-bit vector.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn key64(key: [u8; 4]) -> __m512i {
    let pattern = splat::<{ size_of::<__m512i>() / 4 }>(key);
    // SAFETY: `pattern` is as large as the vector; the load is unaligned.
    unsafe { _mm512_loadu_si512(pattern.as_ptr().cast()) }
}

/// A byte mask selecting lanes `0..n`.
#[inline(always)]
fn low64(n: usize) -> __mmask64 {
    debug_assert!(n <= 64);
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// XORs the 64 bytes at `p` with `k`.
///
/// # Safety
///
/// The CPU must support AVX-512F; `p .. p + 64` must be valid for reads and writes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn xor64(p: *mut u8, k: __m512i) {
    // SAFETY: the caller guarantees the 64 bytes are ours; both accesses are unaligned.
    unsafe {
        let v = _mm512_loadu_si512(p.cast());
        _mm512_storeu_si512(p.cast(), _mm512_xor_si512(v, k));
    }
}

/// XORs the bytes `p + i` for each set bit `i` of `mask` with lane `i` of `k`.
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512BW; `p + i` must be valid for reads and writes for
/// every set bit `i` of `mask`. Masked-off lanes are neither read nor written (their faults are
/// suppressed), so they may lie outside the allocation.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn xor64_masked(p: *mut u8, mask: __mmask64, k: __m512i) {
    // SAFETY: the caller guarantees the selected lanes are ours; the others are not accessed.
    unsafe {
        let v = _mm512_maskz_loadu_epi8(mask, p.cast());
        _mm512_mask_storeu_epi8(p.cast(), mask, _mm512_xor_si512(v, k));
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2

/// # Safety
///
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn avx2(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    if len < 32 {
        // SAFETY: AVX2 implies SSE2.
        unsafe { sse2(buf, key) };
        return;
    }
    let p = buf.as_mut_ptr();
    // SAFETY: AVX2 is enabled.
    let mut k = unsafe { key32(key) };
    let mut i = 0;
    let head = misalignment(p, 32);
    if len >= 128 && head != 0 {
        // The head vector overlaps the first aligned one: load both, then store in order.
        // SAFETY: head + 32 < 64 <= len, so both vectors are inside `buf`; head < 32.
        unsafe {
            let first = _mm256_loadu_si256(p.add(head).cast());
            xor32(p, _mm256_and_si256(k, low32(head)));
            k = key32(rotate(key, head));
            _mm256_storeu_si256(p.add(head).cast(), _mm256_xor_si256(first, k));
        }
        i = head + 32;
    }
    // [i, len) is at least 32 bytes: whole vectors, the last of which is done with the tail.
    let rest = (len - i) % 32;
    let last = len - rest - 32;
    while last - i >= 128 {
        // SAFETY: i + 128 <= last < len, so the four vectors at p + i .. are inside `buf`.
        unsafe {
            let q = p.add(i);
            xor32(q, k);
            xor32(q.add(32), k);
            xor32(q.add(64), k);
            xor32(q.add(96), k);
        }
        i += 128;
    }
    while i < last {
        // SAFETY: i + 32 <= last.
        unsafe { xor32(p.add(i), k) };
        i += 32;
    }
    // SAFETY: p + last .. p + last + 32 is inside `buf`, and so is p + len - 32 .. p + len
    // (len >= 32); 0 < 32 - rest < 32.
    unsafe {
        let v = _mm256_loadu_si256(p.add(last).cast());
        if rest != 0 {
            // The last 32 bytes: all but the tail are also in `v`, so zero those key lanes
            // and store before `v`. (len - 32) % 4 == len % 4.
            let k = _mm256_andnot_si256(low32(32 - rest), key32(rotate(key, len)));
            xor32(p.add(len - 32), k);
        }
        _mm256_storeu_si256(p.add(last).cast(), _mm256_xor_si256(v, k));
    }
}

/// `key` in every 4-byte lane of a 256-bit vector.
///
/// # Safety
///
/// The CPU must support AVX.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn key32(key: [u8; 4]) -> __m256i {
    let pattern = splat::<{ size_of::<__m256i>() / 4 }>(key);
    // SAFETY: `pattern` is as large as the vector; the load is unaligned.
    unsafe { _mm256_loadu_si256(pattern.as_ptr().cast()) }
}

/// A vector whose lanes `0..n` are `0xff` and the rest zero.
///
/// # Safety
///
/// The CPU must support AVX; `n <= 32`.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn low32(n: usize) -> __m256i {
    debug_assert!(n <= 32);
    // SAFETY: 32 - n + 32 <= 64 = LOW.len(); the load is unaligned.
    unsafe { _mm256_loadu_si256(LOW.as_ptr().add(32 - n).cast()) }
}

/// XORs the 32 bytes at `p` with `k`.
///
/// # Safety
///
/// The CPU must support AVX2; `p .. p + 32` must be valid for reads and writes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn xor32(p: *mut u8, k: __m256i) {
    // SAFETY: the caller guarantees the 32 bytes are ours; both accesses are unaligned.
    unsafe {
        let v = _mm256_loadu_si256(p.cast());
        _mm256_storeu_si256(p.cast(), _mm256_xor_si256(v, k));
    }
}

// ---------------------------------------------------------------------------------------------
// SSE2

/// # Safety
///
/// The CPU must support SSE2.
#[target_feature(enable = "sse2")]
unsafe fn sse2(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    if len < 16 {
        xor_words(buf, key);
        return;
    }
    let p = buf.as_mut_ptr();
    // SAFETY: SSE2 is enabled.
    let mut k = unsafe { key16(key) };
    let mut i = 0;
    let head = misalignment(p, 16);
    if len >= 64 && head != 0 {
        // As in `avx2`.
        // SAFETY: head + 16 < 32 <= len, so both vectors are inside `buf`; head < 16.
        unsafe {
            let first = _mm_loadu_si128(p.add(head).cast());
            xor16(p, _mm_and_si128(k, low16(head)));
            k = key16(rotate(key, head));
            _mm_storeu_si128(p.add(head).cast(), _mm_xor_si128(first, k));
        }
        i = head + 16;
    }
    // As in `avx2`: [i, len) is at least 16 bytes.
    let rest = (len - i) % 16;
    let last = len - rest - 16;
    while last - i >= 64 {
        // SAFETY: i + 64 <= last < len, so the four vectors at p + i .. are inside `buf`.
        unsafe {
            let q = p.add(i);
            xor16(q, k);
            xor16(q.add(16), k);
            xor16(q.add(32), k);
            xor16(q.add(48), k);
        }
        i += 64;
    }
    while i < last {
        // SAFETY: i + 16 <= last.
        unsafe { xor16(p.add(i), k) };
        i += 16;
    }
    // SAFETY: p + last .. p + last + 16 and p + len - 16 .. p + len are inside `buf`
    // (len >= 16); 0 < 16 - rest < 16.
    unsafe {
        let v = _mm_loadu_si128(p.add(last).cast());
        if rest != 0 {
            let k = _mm_andnot_si128(low16(16 - rest), key16(rotate(key, len)));
            xor16(p.add(len - 16), k);
        }
        _mm_storeu_si128(p.add(last).cast(), _mm_xor_si128(v, k));
    }
}

/// `key` in every 4-byte lane of a 128-bit vector.
///
/// # Safety
///
/// The CPU must support SSE2.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn key16(key: [u8; 4]) -> __m128i {
    let pattern = splat::<{ size_of::<__m128i>() / 4 }>(key);
    // SAFETY: `pattern` is as large as the vector; the load is unaligned.
    unsafe { _mm_loadu_si128(pattern.as_ptr().cast()) }
}

/// A vector whose lanes `0..n` are `0xff` and the rest zero.
///
/// # Safety
///
/// The CPU must support SSE2; `n <= 16`.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn low16(n: usize) -> __m128i {
    debug_assert!(n <= 16);
    // SAFETY: 32 - n + 16 <= 48 <= LOW.len(); the load is unaligned.
    unsafe { _mm_loadu_si128(LOW.as_ptr().add(32 - n).cast()) }
}

/// XORs the 16 bytes at `p` with `k`.
///
/// # Safety
///
/// The CPU must support SSE2; `p .. p + 16` must be valid for reads and writes.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn xor16(p: *mut u8, k: __m128i) {
    // SAFETY: the caller guarantees the 16 bytes are ours; both accesses are unaligned.
    unsafe {
        let v = _mm_loadu_si128(p.cast());
        _mm_storeu_si128(p.cast(), _mm_xor_si128(v, k));
    }
}
