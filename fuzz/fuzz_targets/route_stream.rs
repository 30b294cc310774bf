//! Arbitrary bytes through the routing decision: the first byte picks the side (client or server)
//! and which back ends are up, the rest is a message stream; `siplb::route::exercise` checks that
//! forwarded requests carry our Via naming their connection, answers find their way back, and
//! pinned dialogs stay put.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| siplb::route::exercise::exercise(data));
