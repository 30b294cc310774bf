//! The small HTTP/1.1 responder behind `/metrics` and the admin API: one request per connection,
//! each connection answered on a short-lived thread of its own (at most [`MAX_AT_ONCE`]; past
//! that a connection is closed at once), with read and write timeouts. A client that never sends,
//! or never reads what it asked for, holds only its own thread and only for [`TIMEOUT`]: the next
//! client is answered meanwhile. Nothing here touches a worker.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one connection may take to send its request line or to take the answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections answered at once.
pub const MAX_AT_ONCE: usize = 16;

/// An answer: status line text (`200 OK`), content type and body.
pub struct Reply {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

/// A connection the responder can serve: TCP or a Unix socket.
pub trait Stream: Read + Write + Send + 'static {
    fn timeouts(&self, t: Option<Duration>);
}

impl Stream for std::net::TcpStream {
    fn timeouts(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
        let _ = self.set_write_timeout(t);
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn timeouts(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
        let _ = self.set_write_timeout(t);
    }
}

/// The request line handler: gets `METHOD PATH HTTP/1.1`.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Answers every connection `accept` yields, from a thread named `name`.
pub fn serve<S: Stream>(
    name: &str,
    mut accept: impl FnMut() -> Option<S> + Send + 'static,
    handler: Handler,
) -> std::io::Result<()> {
    let busy = Arc::new(AtomicUsize::new(0));
    let conn_name = format!("{name}-conn");
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while let Some(s) = accept() {
            if busy.fetch_add(1, Ordering::AcqRel) >= MAX_AT_ONCE {
                busy.fetch_sub(1, Ordering::AcqRel);
                continue; // dropped: closed at once
            }
            let handler = Arc::clone(&handler);
            let done = Arc::clone(&busy);
            let spawned = std::thread::Builder::new()
                .name(conn_name.clone())
                .spawn(move || {
                    s.timeouts(Some(TIMEOUT));
                    let _ = answer(s, handler.as_ref());
                    done.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                // No thread to be had: the connection was dropped with the closure.
                busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })?;
    Ok(())
}

fn answer(mut s: impl Read + Write, handler: &(dyn Fn(&str) -> Reply + Send + Sync)) -> std::io::Result<()> {
    // The request line is all that matters; read until it is complete (or 4 KiB).
    let mut req = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !req.windows(2).any(|w| w == b"\r\n") && req.len() < 4096 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let r = handler(text.lines().next().unwrap_or(""));
    write!(
        s,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    )?;
    s.flush()
}
