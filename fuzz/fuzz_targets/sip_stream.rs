//! Arbitrary bytes as a SIP stream: framing, parsing, validation, rewriting, generated answers and
//! token decoding, exactly as `siplb::sip::exercise` drives them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| siplb::sip::exercise::exercise(data));
