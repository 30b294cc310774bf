//! Arbitrary bytes through the WebSocket server side (`siplb::ws::exercise`): the first byte
//! picks the limits and where the bytes are split into two reads; the rest is read as an upgrade
//! request and as a stream of client frames, with the caller's consumption between reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| siplb::ws::exercise(data));
