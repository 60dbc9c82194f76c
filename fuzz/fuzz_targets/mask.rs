//! SIMD unmasking against the scalar oracle (RFC 6455 §5.3).
//!
//! Input: a 4-byte key, a phase byte, a split byte, an alignment byte, then the payload.
//! Every kernel this CPU has (`Kernel::available`, best first, scalar last) and the
//! dispatching `unmask` must give the scalar result and the same next phase, in one call or
//! split in two with the phase carried over, at any start alignment; masking twice gives
//! the payload back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::mask::{self, Kernel};

/// `unmask`'s signature: buffer, key, phase in; next phase out.
type Unmask<'a> = &'a dyn Fn(&mut [u8], [u8; 4], usize) -> usize;

fuzz_target!(|data: &[u8]| {
    let [k0, k1, k2, k3, phase, split, align, payload @ ..] = data else {
        return;
    };
    let key = [*k0, *k1, *k2, *k3];
    let phase = usize::from(*phase);
    let split = usize::from(*split) * payload.len() / 255;
    let align = usize::from(*align % 64);

    let mut expected = payload.to_vec();
    let next = mask::unmask_scalar(&mut expected, key, phase);
    assert_eq!(next, (phase + payload.len()) % 4);
    for (i, (&got, &was)) in expected.iter().zip(payload).enumerate() {
        assert_eq!(got, was ^ key[(phase + i) % 4], "byte {i}");
    }

    let run = |f: Unmask<'_>, name: &str| {
        // Whole, at an offset from the allocation's alignment.
        let mut buf = vec![0u8; align + payload.len()];
        buf[align..].copy_from_slice(payload);
        assert_eq!(f(&mut buf[align..], key, phase), next, "{name}: phase");
        assert_eq!(&buf[align..], &expected[..], "{name}: whole");
        // Again: masking is its own inverse.
        f(&mut buf[align..], key, phase);
        assert_eq!(&buf[align..], payload, "{name}: twice");
        // In two pieces, carrying the phase.
        let (a, b) = buf[align..].split_at_mut(split);
        let mid = f(a, key, phase);
        assert_eq!(f(b, key, mid), next, "{name}: split phase");
        assert_eq!(&buf[align..], &expected[..], "{name}: split at {split}");
    };
    run(&mask::unmask, "unmask");
    for kernel in Kernel::available() {
        run(
            &|buf, key, phase| kernel.unmask(buf, key, phase),
            kernel.name(),
        );
    }
});
