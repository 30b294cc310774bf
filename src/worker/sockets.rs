//! The listening sockets: one SO_REUSEPORT listener per worker on each address (socket2, one
//! error variant per step), the refusal of a port another process holds without
//! `--reuse-port`, and the host part of an advertised address.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::start::StartError;

/// Without `--reuse-port`, a port another process listens on is refused: our own listeners
/// share theirs through SO_REUSEPORT, which would let a second instance silently share it too. A
/// plain bind (no SO_REUSEPORT) fails on a port in use.
fn refuse_if_in_use(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|why| StartError::Socket { addr, why })?;
    sock.set_reuse_address(true)
        .map_err(|why| StartError::ReusePort { addr, why })?;
    sock.bind(&addr.into())
        .map_err(|why| StartError::Bind { addr, why })?;
    Ok(())
}

/// One SO_REUSEPORT listener per worker on `addr`, and the address they share. Port 0: the
/// first bind picks the port and the others join it; the kernel may pick a port that another
/// socket holds in a way SO_REUSEPORT cannot share (a connection's ephemeral port, say), so on
/// `AddrInUse` the whole group is given up and picked again, a few times.
pub(super) fn listener_group(
    addr: SocketAddr,
    workers: usize,
    reuse_port: bool,
) -> Result<(SocketAddr, Vec<TcpListener>), StartError> {
    if !reuse_port {
        refuse_if_in_use(addr)?;
    }
    let mut tries = 0;
    loop {
        let mut group = Vec::with_capacity(workers);
        let mut real = addr;
        let joined = (0..workers).try_for_each(|_| {
            let l = reuseport_listener(real)?;
            real = l.local_addr().map_err(|why| StartError::Bind { addr, why })?;
            group.push(l);
            Ok(())
        });
        match joined {
            Ok(()) => return Ok((real, group)),
            Err(StartError::Bind { why, .. })
                if addr.port() == 0 && why.kind() == io::ErrorKind::AddrInUse && tries < 10 =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The host part of `host:port`.
pub(super) fn host_of(a: &str) -> String {
    match a.rfind(':') {
        Some(i) if !a[i..].contains(']') => a[..i].to_string(),
        _ => a.to_string(),
    }
}

/// A non-blocking listener with SO_REUSEPORT, so each worker accepts on its own socket and the
/// kernel spreads connections over them.
pub fn reuseport_listener(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|why| StartError::Socket { addr, why })?;
    sock.set_reuse_address(true)
        .map_err(|why| StartError::ReusePort { addr, why })?;
    sock.set_reuse_port(true)
        .map_err(|why| StartError::ReusePort { addr, why })?;
    sock.set_nonblocking(true)
        .map_err(|why| StartError::Socket { addr, why })?;
    sock.bind(&addr.into())
        .map_err(|why| StartError::Bind { addr, why })?;
    sock.listen(1024)
        .map_err(|why| StartError::Listen { addr, why })?;
    Ok(TcpListener::from_std(sock.into()))
}
