//! siplb: a user-space load balancer for SIP over TLS. See README.md for the architecture; each
//! module's header says what it owns.

#![forbid(unsafe_code)]

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
