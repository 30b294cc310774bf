//! The worker's poll under what the process around it does. A process that starts children (a
//! test runner, an operator's wrapper, a plugin) lends every child a copy of each of its
//! descriptors between fork and exec: a connection siplb closes in that instant keeps its socket
//! alive, and still in the poll, after its slot went to the next connection accepted. What that
//! socket then sees must not reach the newcomer.

use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::common::*;
use siplb::sip::Method;

/// The inode of the TCP socket from `local` to `remote` (both on 127.0.0.1), from
/// `/proc/self/net/tcp`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    let want = (format!("0100007F:{local:04X}"), format!("0100007F:{remote:04X}"));
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == want.0 && f[2] == want.1).then(|| f[9].parse().ok())?
    })
}

/// A copy of this process's descriptor of socket `inode`, as a child between fork and exec
/// holds one.
fn hold(inode: u64) -> OwnedFd {
    let link = format!("socket:[{inode}]");
    let fd = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_str() == Some(link.as_str())))
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .expect("the socket's descriptor");
    // SAFETY: `fd` was open a moment ago and its connection is idle, so siplb does not close it
    // before it is copied here; the copy is a new descriptor of the same socket (dup), as fork
    // makes, and nothing but dropping it is ever done with it.
    unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .expect("dup")
}

#[test]
fn a_socket_kept_alive_past_its_close_never_reaches_the_connection_in_its_slot() {
    let h = Harness::new()
        .backends(1)
        .workers(1)
        .flags(&["--message-timeout".into(), "1".into()])
        .start();
    let addr = h.lb.listen_addrs[0];
    let mut x = tls_connect(addr, h.pki.client_tls(None), LB_NAME).expect("first client");
    metrics_when(&h.lb, |m| m.connections_open == 1);
    let x_port = x.sock.local_addr().expect("addr").port();
    let inode = socket_inode(addr.port(), x_port).expect("siplb's side of the connection");
    let held = hold(inode);
    // siplb closes X itself (half a message, then silence past --message-timeout) while the copy
    // keeps X's socket open and in the poll.
    x.write_all(b"OPTIONS sip:svc@pool.test SIP/2.0\r\n")
        .expect("write");
    metrics_when(&h.lb, |m| m.connections_open == 0);
    // The next client takes X's slot, and is served.
    let mut y = TestClient::connect(&h.pki, &h.lb);
    ask(&mut y, "before");
    // X's client resets its connection: an error on the socket the copy keeps in siplb's poll.
    socket2::SockRef::from(&x.sock)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(x);
    // The newcomer is served as before.
    ask(&mut y, "after");
    ask(&mut y, "after-again");
    assert!(y.ep.is_open(y.conn), "the newcomer was closed");
    drop(held);
}

/// Client `c` asks OPTIONS `id` of the pool and gets its answer.
fn ask(c: &mut TestClient, id: &str) {
    c.send(
        format!(
            "OPTIONS sip:svc@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS y.invalid;branch=z9hG4bK{id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:y@y.invalid>;tag=1\r\nTo: <sip:svc@pool.test>\r\nCall-ID: {id}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    c.wait_for(&format!("the answer to OPTIONS {id}"), |m| {
        is_response(m, 200, Method::Options) && m.call_id() == Some(id.as_bytes())
    });
}
