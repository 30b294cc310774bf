//! siplb: a user-space load balancer for SIP over TLS. See README.md for the architecture; each
//! module's header says what it owns.

#![forbid(unsafe_code)]

pub mod sip;
