//! siplb: a user-space load balancer for SIP over TLS. See README.md for the architecture; each
//! module's header says what it owns.

// `deny`, not `forbid`: one documented SSE2 block in `sip::scan` allows it (issue 13).
#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod certs;
pub mod config;
pub mod demo;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod route;
pub mod sip;
pub mod tls;
pub mod worker;
