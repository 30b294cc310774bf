//! Why a balancer could not start: every step of loading, binding and spawning, with the exit
//! code the command line gives it (1 for files, certificates and the system; 2 for a flag).

use std::io;
use std::net::SocketAddr;

use super::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] RuntimeError),
    #[error("{addr}: cannot create socket: {why}")]
    Socket { addr: SocketAddr, why: io::Error },
    #[error("{addr}: cannot set SO_REUSEPORT/SO_REUSEADDR: {why}")]
    ReusePort { addr: SocketAddr, why: io::Error },
    #[error("{addr}: cannot bind: {why}")]
    Bind { addr: SocketAddr, why: io::Error },
    #[error("{addr}: cannot listen: {why}")]
    Listen { addr: SocketAddr, why: io::Error },
    #[error("cannot create an event loop: {0}")]
    Poll(io::Error),
    #[error("cannot make the token key: {0}")]
    Key(crate::sip::token::TokenError),
    #[error("cannot start a worker thread: {0}")]
    Thread(io::Error),
}

impl StartError {
    /// Exit code: 1 for files, certificates and the system refusing us; 2 for what a flag says.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Load(e) => e.exit_code(),
            _ => 1,
        }
    }
}
