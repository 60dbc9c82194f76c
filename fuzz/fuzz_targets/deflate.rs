//! The server-side connection state machine with permessage-deflate negotiated: compressed
//! messages from an independent compressor, arbitrary RSV1 frames (garbage, bombs, unended
//! blocks, continuations, control frames) under the inflate limits, and compressed echoes
//! checked by an independent decompressor. See `wsgate_fuzz::session`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_fuzz::Input;

fuzz_target!(|input: Input| wsgate_fuzz::session::run(input, true));
