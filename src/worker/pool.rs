//! A worker's MTLS connections to the back ends: `--pool-size` per back end, each verified
//! against `--backend-ca` and the back end's configured NAME (SNI and SAN). A connection that
//! fails is retried with doubling back-off; rustls resumes the TLS session. A back end takes new
//! dialogs in this worker while at least one of its connections has finished its handshake.
//! State changes are logged once, not on every retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::{ClientConnection, Connection};

use super::event::Worker;
use super::slots::Kind;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct PoolEntry {
    /// Slot of each pool connection, if open (connecting or up).
    conns: Vec<Option<usize>>,
    up: Vec<bool>,
    retry_at: Vec<Instant>,
    backoff: Vec<Duration>,
    next: usize,
    /// Last state logged, so a back end that stays down is reported once.
    logged_up: Option<bool>,
}

impl PoolEntry {
    pub fn new(size: usize) -> PoolEntry {
        PoolEntry {
            conns: vec![None; size],
            up: vec![false; size],
            retry_at: vec![Instant::now(); size],
            backoff: vec![FIRST_BACKOFF; size],
            next: 0,
            logged_up: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.iter().any(|&u| u)
    }

    /// A connection that is up, round-robin over the pool.
    pub fn pick(&mut self) -> Option<usize> {
        let n = self.conns.len();
        for i in 0..n {
            let j = (self.next + i) % n;
            if self.up[j] {
                self.next = j + 1;
                return self.conns[j];
            }
        }
        None
    }
}

impl Worker {
    pub(super) fn pool_all_up(&self) -> bool {
        self.pool.iter().all(PoolEntry::is_up)
    }

    /// Opens every pool connection that is missing and due.
    pub(super) fn connect_pool(&mut self, now: Instant) {
        for b in 0..self.pool.len() {
            for i in 0..self.pool[b].conns.len() {
                if self.pool[b].conns[i].is_some() || self.pool[b].retry_at[i] > now {
                    continue;
                }
                let slot = self.open_backend(b);
                let e = &mut self.pool[b];
                e.conns[i] = slot;
                if slot.is_none() {
                    e.retry_at[i] = now + e.backoff[i];
                    e.backoff[i] = (e.backoff[i] * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn open_backend(&mut self, b: usize) -> Option<usize> {
        let be = &self.shared.backends[b];
        let addr = be.addr;
        let sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.log_down(b, &format!("connect: {e}"));
                return None;
            }
        };
        let name = self.shared.backend_names[b].clone();
        let tls = match ClientConnection::new(Arc::clone(&self.shared.backend_tls), name) {
            Ok(t) => Connection::Client(t),
            Err(e) => {
                self.log_down(b, &format!("TLS: {e}"));
                return None;
            }
        };
        self.add_conn(sock, addr, tls, Kind::Backend(b))
    }

    /// A pool connection finished its handshake.
    pub(super) fn pool_up(&mut self, b: usize, slot: usize) {
        let e = &mut self.pool[b];
        if let Some(i) = e.conns.iter().position(|&s| s == Some(slot)) {
            e.up[i] = true;
            e.backoff[i] = FIRST_BACKOFF;
        }
        if e.logged_up != Some(true) {
            e.logged_up = Some(true);
            tracing::info!(worker = self.id, backend = %self.shared.backends[b].name, "back end up");
        }
    }

    /// A pool connection closed (or never came up): schedule its retry.
    pub(super) fn pool_down(&mut self, b: usize, slot: usize, why: &str) {
        let now = Instant::now();
        let e = &mut self.pool[b];
        if let Some(i) = e.conns.iter().position(|&s| s == Some(slot)) {
            e.conns[i] = None;
            e.up[i] = false;
            e.retry_at[i] = now + e.backoff[i];
            e.backoff[i] = (e.backoff[i] * 2).min(MAX_BACKOFF);
        }
        if !e.is_up() {
            self.log_down(b, why);
        }
    }

    fn log_down(&mut self, b: usize, why: &str) {
        let e = &mut self.pool[b];
        if e.logged_up != Some(false) {
            e.logged_up = Some(false);
            tracing::warn!(worker = self.id, backend = %self.shared.backends[b].name, why, "back end down");
        }
    }
}
