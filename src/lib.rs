//! siplb: a user-space load balancer for SIP over TLS. See README.md for the architecture; each
//! module's header says what it owns.

// `deny`, not `forbid`: one documented SSE2 block in `sip::scan` allows it (issue 13).
#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod limit;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod route;
pub mod sip;
pub mod tls;
pub mod worker;
pub mod ws;

/// Declares the binaries' global allocator: jemalloc by default, mimalloc with
/// `--no-default-features --features mimalloc`, the system one with `--no-default-features` (see
/// Cargo.toml). In the binaries, not the library, so tests and other users of the library keep
/// whichever allocator they choose.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[cfg(feature = "mimalloc")]
        #[global_allocator]
        static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
        #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
        #[global_allocator]
        static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
    };
}
