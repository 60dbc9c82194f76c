//! In-place unmasking of client payloads (RFC 6455 §5.3): a server unmasks what it receives
//! and a client masks what it sends, with the same XOR.
//!
//! Owns the XOR of payload bytes with the frame's 4-byte masking key, carrying the key's phase
//! across buffer boundaries so that a payload can be unmasked in whatever pieces it arrives in.
//! It does not parse frames, allocate, or keep per-connection state: the caller keeps the phase.
//!
//! [`unmask_scalar`] is the reference. SIMD kernels (x86: AVX-512, AVX2, SSE2; aarch64: NEON)
//! are picked once at run time and must match it byte for byte. `--cfg wsgate_scalar` compiles
//! them out (Miri, debugging). All `unsafe` lives in the `x86` and `aarch64` modules and in
//! `Kernel::apply`, the one call into them.

use std::sync::OnceLock;

#[cfg(all(any(target_arch = "x86", target_arch = "x86_64"), not(wsgate_scalar)))]
#[allow(unsafe_code)] // `#[target_feature]` kernels: intrinsics on raw pointers into `buf`
mod x86;
#[cfg(all(any(target_arch = "x86", target_arch = "x86_64"), not(wsgate_scalar)))]
use x86 as arch;

#[cfg(all(target_arch = "aarch64", not(wsgate_scalar)))]
#[allow(unsafe_code)] // `#[target_feature]` kernel: intrinsics on raw pointers into `buf`
mod aarch64;
#[cfg(all(target_arch = "aarch64", not(wsgate_scalar)))]
use aarch64 as arch;

/// No SIMD kernels on this target or with `--cfg wsgate_scalar`.
#[cfg(any(
    wsgate_scalar,
    not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64"))
))]
mod arch {
    pub(super) const NAMES: [&str; 0] = [];

    pub(super) fn kernel(_name: &str) -> Option<super::Kernel> {
        None
    }
}

/// Below this many bytes [`unmask`] runs the scalar loop inline: dispatch would cost more than
/// it saves.
const SIMD_MIN_LEN: usize = 16;

/// XORs `buf` in place with `key`, starting at key byte `phase % 4` (the payload offset of
/// `buf[0]`), and returns the phase for the next byte: `(phase + buf.len()) % 4`.
///
/// RFC 6455 §5.3: payload byte `i` is XORed with `key[i % 4]`. Unmasking a payload piece by
/// piece, passing each call's result as the next call's `phase` (starting from 0), gives the
/// same bytes as unmasking it in one call. Masking is the same operation.
///
/// Uses the fastest kernel this CPU supports (see [`kernel`]), chosen on first use.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    if buf.len() < SIMD_MIN_LEN {
        return unmask_scalar(buf, key, phase);
    }
    selected().apply(buf, rotate(key, phase));
    next_phase(phase, buf.len())
}

/// The scalar reference implementation (the oracle); same contract.
///
/// XORs 8 bytes at a time with the key repeated twice, then the remaining bytes one by one.
pub fn unmask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    xor_words(buf, rotate(key, phase));
    next_phase(phase, buf.len())
}

/// Name of the kernel chosen at run time: "avx512", "avx2", "sse2", "neon" or "scalar".
///
/// The first call detects CPU features; later calls read the cached choice.
pub fn kernel() -> &'static str {
    selected().name
}

/// Unmasks with the kernel called `kernel` (see [`Kernel::by_name`]); `None` if this CPU does
/// not support it. For benches and tests: unlike [`unmask`], short buffers also go through it.
#[doc(hidden)]
pub fn unmask_with(kernel: &str, buf: &mut [u8], key: [u8; 4], phase: usize) -> Option<usize> {
    Some(Kernel::by_name(kernel)?.unmask(buf, key, phase))
}

/// A kernel this CPU can run. Public only for benches and tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    name: &'static str,
    /// INVARIANT: the CPU supports every target feature `func` is compiled with. Only
    /// [`Kernel::SCALAR`] and `arch::kernel`, after run-time detection, build a `Kernel`.
    func: KernelFn,
}

/// XORs all of `buf` with `key` repeated from `buf[0]` (phase 0). May need CPU features: see
/// [`Kernel::func`].
type KernelFn = unsafe fn(&mut [u8], [u8; 4]);

impl Kernel {
    const SCALAR: Kernel = Kernel {
        name: "scalar",
        func: xor_words,
    };

    /// The kernels this CPU supports, best first; the last is "scalar".
    pub fn available() -> Vec<Kernel> {
        let simd = arch::NAMES.iter().filter_map(|name| arch::kernel(name));
        simd.chain([Kernel::SCALAR]).collect()
    }

    /// "avx512", "avx2", "sse2", "neon" or "scalar", if this CPU supports it.
    pub fn by_name(name: &str) -> Option<Kernel> {
        match name {
            "scalar" => Some(Kernel::SCALAR),
            _ => arch::kernel(name),
        }
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    /// [`unmask`] with this kernel, whatever the length of `buf`.
    pub fn unmask(self, buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
        self.apply(buf, rotate(key, phase));
        next_phase(phase, buf.len())
    }

    /// XORs `buf` with `key` from phase 0.
    #[inline]
    #[allow(unsafe_code)] // the one call into the `#[target_feature]` kernels
    fn apply(self, buf: &mut [u8], key: [u8; 4]) {
        // SAFETY: by the INVARIANT on `func`, the CPU supports its target features; `func`
        // has no other precondition.
        unsafe { (self.func)(buf, key) }
    }
}

/// The best kernel for this CPU, detected on the first call.
#[inline]
fn selected() -> Kernel {
    static SELECTED: OnceLock<Kernel> = OnceLock::new();
    *SELECTED.get_or_init(|| Kernel::available()[0])
}

/// `key` rotated so that byte 0 is the one for payload offset `phase`: byte `i` of the result
/// is `key[(phase + i) % 4]`, a right rotation of the little-endian word.
#[inline]
fn rotate(key: [u8; 4], phase: usize) -> [u8; 4] {
    let bits = 8 * (phase % 4) as u32;
    u32::from_le_bytes(key).rotate_right(bits).to_le_bytes()
}

/// (phase + len) % 4, without overflow: 2^64 is a multiple of 4.
#[inline]
fn next_phase(phase: usize, len: usize) -> usize {
    phase.wrapping_add(len) % 4
}

/// The scalar kernel: XORs `buf` with `key` from phase 0, a `u64` at a time. (LLVM turns the
/// word loop into SSE2 on x86_64; the bench's `autovec` is the plain byte loop.)
fn xor_words(buf: &mut [u8], key: [u8; 4]) {
    // Two copies of the key, in memory order whatever the endianness.
    let k = u64::from(u32::from_ne_bytes(key)) * 0x1_0000_0001;
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let w: [u8; 8] = (*word)
            .try_into()
            .expect("chunks_exact_mut(8) yields 8 bytes");
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
    }
    // 8 is a multiple of 4, so the remainder starts at phase 0 too.
    for (b, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The trivially correct byte loop that checks everything else, `unmask_scalar` included.
    fn oracle(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(phase % 4 + i) % 4];
        }
        (phase % 4 + buf.len()) % 4
    }

    /// A way to unmask: the public functions and each kernel this CPU has.
    #[derive(Clone, Copy)]
    enum Way {
        Dispatch,
        Scalar,
        Kernel(Kernel),
    }

    impl Way {
        fn all() -> Vec<Way> {
            let kernels = Kernel::available().into_iter().map(Way::Kernel);
            [Way::Dispatch, Way::Scalar]
                .into_iter()
                .chain(kernels)
                .collect()
        }

        fn name(self) -> &'static str {
            match self {
                Way::Dispatch => "unmask",
                Way::Scalar => "unmask_scalar",
                Way::Kernel(k) => k.name(),
            }
        }

        fn unmask(self, buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
            match self {
                Way::Dispatch => unmask(buf, key, phase),
                Way::Scalar => unmask_scalar(buf, key, phase),
                Way::Kernel(k) => unmask_with(k.name(), buf, key, phase).expect("available"),
            }
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Unmasks `buf[start..start + len]` for every `start` in `starts` (relative to a 64-byte
    /// aligned address), every `len` in `0..=max_len` and every phase 0..=3, with every way;
    /// checks the bytes against the oracle and that nothing outside the range changed.
    /// Returns the number of cases checked.
    fn check_exhaustive(starts: std::ops::RangeInclusive<usize>, max_len: usize) -> usize {
        const GUARD: usize = 64;
        let ways = Way::all();
        let mut cases = 0;
        // Room to find a 64-byte aligned base, then the largest start, range and a guard.
        let mut backing = noise(64 + starts.end() + max_len + GUARD, 0x5eed);
        let base = backing.as_ptr().align_offset(64);
        let src = backing.split_off(base);
        let mut buf = src.clone();
        for start in starts {
            for phase in 0..4 {
                // Unmasking a prefix gives the prefix of the unmasked whole.
                let mut expected = src[start..start + max_len].to_vec();
                oracle(&mut expected, KEY, phase);
                for &way in &ways {
                    let name = way.name();
                    for len in 0..=max_len {
                        buf.copy_from_slice(&src);
                        let end = start + len;
                        let next = way.unmask(&mut buf[start..end], KEY, phase);
                        let case = format!("{name}: start {start}, len {len}, phase {phase}");
                        assert_eq!(next, (phase + len) % 4, "{case}: phase");
                        assert!(buf[start..end] == expected[..len], "{case}: wrong bytes");
                        assert!(buf[..start] == src[..start], "{case}: wrote before buf");
                        assert!(buf[end..] == src[end..], "{case}: wrote after buf");
                        cases += 1;
                    }
                }
            }
        }
        cases
    }

    // RFC 6455 §5.7: "A single-frame masked text message" carrying "Hello".
    #[test]
    fn rfc_5_7_masked_hello() {
        for way in Way::all() {
            let name = way.name();
            let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
            let next = way.unmask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
            assert_eq!(&payload, b"Hello", "{name}");
            assert_eq!(next, 1, "{name}");
        }
    }

    #[test]
    fn kernel_is_best_available() {
        let names: Vec<_> = Kernel::available().iter().map(|k| k.name()).collect();
        assert_eq!(kernel(), names[0]);
        assert_eq!(names.last(), Some(&"scalar"));
        assert!(["avx512", "avx2", "sse2", "neon", "scalar"].contains(&kernel()));
        assert_eq!(unmask_with("no-such-kernel", &mut [], KEY, 0), None);
        #[cfg(wsgate_scalar)]
        assert_eq!(names, ["scalar"]);
    }

    #[test]
    fn phase_wraps_without_overflow() {
        for way in Way::all() {
            let name = way.name();
            let mut buf = [0u8; 40];
            // 2^64 is a multiple of 4: usize::MAX is phase 3.
            assert_eq!(
                way.unmask(&mut buf, KEY, usize::MAX),
                (3 + 40) % 4,
                "{name}"
            );
            assert_eq!(buf[0], KEY[3], "{name}");
            assert_eq!(buf[1], KEY[0], "{name}");
        }
    }

    /// Every length 0..=4096, start offsets 0..=3 from an aligned address, phases 0..=3.
    #[test]
    fn all_lengths_to_4k_match_oracle() {
        // Miri interprets every byte: it checks the same shapes on shorter buffers.
        let max_len = if cfg!(miri) { 72 } else { 4096 };
        let cases = check_exhaustive(0..=3, max_len);
        assert_eq!(cases, 4 * 4 * (max_len + 1) * Way::all().len());
    }

    /// Every start offset 0..=64 (every head length of every kernel), lengths 0..=512.
    #[test]
    fn all_alignments_match_oracle() {
        // Under Miri, every head length of the 32-byte AVX2 kernel it runs.
        let (starts, max_len) = if cfg!(miri) { (32, 40) } else { (64, 512) };
        let cases = check_exhaustive(0..=starts, max_len);
        assert_eq!(cases, (starts + 1) * 4 * (max_len + 1) * Way::all().len());
    }

    proptest! {
        /// Unmasking in arbitrary pieces, carrying the phase, equals unmasking in one go.
        #[test]
        fn chunked_equals_one_shot(
            payload in prop::collection::vec(any::<u8>(), 0..6000),
            key in any::<[u8; 4]>(),
            phase in any::<usize>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
            cuts.push(payload.len());
            cuts.sort_unstable();

            let mut expected = payload.clone();
            let expected_next = oracle(&mut expected, key, phase);
            for way in Way::all() {
                let name = way.name();
                let mut one_shot = payload.clone();
                prop_assert_eq!(way.unmask(&mut one_shot, key, phase), expected_next, "{}", name);
                prop_assert!(one_shot == expected, "{}: one-shot", name);

                let mut chunked = payload.clone();
                let (mut at, mut p) = (0, phase);
                for &cut in &cuts {
                    p = way.unmask(&mut chunked[at..cut], key, p);
                    at = cut;
                }
                prop_assert_eq!(p, expected_next, "{}", name);
                prop_assert!(chunked == expected, "{}: chunked", name);
            }
        }
    }
}
