//! Arbitrary bytes as a `--partners-file` (`siplb::config::partner::exercise`): the parser never
//! panics, accepts only DNS names in the form siplb compares, and what it accepts reads back the
//! same once written out again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| siplb::config::partner::exercise(data));
