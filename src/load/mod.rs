//! The bundled load tools behind `sipload`: a UAS playing a pooled back-end server
//! ([`server`]), a UAC placing calls ([`caller`]), a flooding source ([`flood`]), and the small
//! TLS end point the first two run on
//! ([`endpoint`]). They speak TLS themselves (rustls, the same [`crate::tls`] code as the
//! balancer) and share the balancer's [`crate::sip`] layer for framing and parsing.

pub mod caller;
pub mod cli;
pub mod endpoint;
pub mod flood;
pub mod msg;
pub mod server;
