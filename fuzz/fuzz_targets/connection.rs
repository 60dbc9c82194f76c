//! The server-side connection state machine without extensions: see `wsgate_fuzz::session`
//! for the operations and what is checked after each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_fuzz::Input;

fuzz_target!(|input: Input| wsgate_fuzz::session::run(input, false));
