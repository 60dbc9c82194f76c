//! aarch64 unmasking kernel: NEON.
//!
//! Like the x86 kernels, it XORs all of `buf` with `key` repeated from `buf[0]` (the caller has
//! already rotated the key by the phase), and is `unsafe` only because it needs NEON, which
//! [`kernel`] detects before handing it out. NEON loads and stores need no alignment and cost
//! the same unaligned on the cores we target, so there is no aligned head.
//!
//! Not run in CI yet: we have no aarch64 runner. The tests in `mask.rs` cover it there.

use core::arch::aarch64::*;

use core::mem::size_of;

use super::{rotate, xor_words, Kernel, KernelFn};

/// Kernel names, best first.
pub(super) const NAMES: [&str; 1] = ["neon"];

/// The kernel called `name`, if this CPU supports it.
pub(super) fn kernel(name: &str) -> Option<Kernel> {
    let (name, func): (&'static str, KernelFn) = match name {
        "neon" if std::arch::is_aarch64_feature_detected!("neon") => ("neon", neon),
        _ => return None,
    };
    // INVARIANT (`Kernel::func`): `func`'s target features were detected just above.
    Some(Kernel { name, func })
}

/// `key` repeated `N` times, in memory order. Whole words, so the compiler emits one broadcast
/// (byte stores would stall the wide load that reads them back).
#[inline(always)]
fn splat<const N: usize>(key: [u8; 4]) -> [u32; N] {
    [u32::from_ne_bytes(key); N]
}

/// `0xff` then `0x00`, 16 of each: 16 bytes loaded from `16 - n` have the low `n` lanes set.
static LOW: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn neon(buf: &mut [u8], key: [u8; 4]) {
    let len = buf.len();
    if len < 16 {
        xor_words(buf, key);
        return;
    }
    let pattern = splat::<{ size_of::<uint8x16_t>() / 4 }>(key);
    let p = buf.as_mut_ptr();
    // SAFETY: `pattern` is as large as the vector.
    let k = unsafe { vld1q_u8(pattern.as_ptr().cast()) };
    let mut i = 0;
    while len - i >= 64 {
        // SAFETY: i + 64 <= len, so the four vectors at p + i .. p + i + 64 are inside `buf`.
        unsafe {
            let q = p.add(i);
            xor16(q, k);
            xor16(q.add(16), k);
            xor16(q.add(32), k);
            xor16(q.add(48), k);
        }
        i += 64;
    }
    while len - i >= 16 {
        // SAFETY: i + 16 <= len.
        unsafe { xor16(p.add(i), k) };
        i += 16;
    }
    let rest = len - i;
    if rest != 0 {
        // The last 16 bytes start at len - 16 >= 0 and already hold 16 - rest unmasked bytes:
        // zero those key lanes. (len - 16) % 4 == len % 4.
        let tail_pattern = splat::<{ size_of::<uint8x16_t>() / 4 }>(rotate(key, len));
        // SAFETY: p + len - 16 .. p + len is inside `buf` (len >= 16); 0 < 16 - rest < 16, so
        // the mask load reads LOW[rest .. rest + 16], inside its 32 bytes.
        unsafe {
            let keep = vld1q_u8(LOW.as_ptr().add(rest));
            let k = vbicq_u8(vld1q_u8(tail_pattern.as_ptr().cast()), keep);
            xor16(p.add(len - 16), k);
        }
    }
}

/// XORs the 16 bytes at `p` with `k`.
///
/// # Safety
///
/// The CPU must support NEON; `p .. p + 16` must be valid for reads and writes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn xor16(p: *mut u8, k: uint8x16_t) {
    // SAFETY: the caller guarantees the 16 bytes are ours; NEON accesses need no alignment.
    unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) }
}
