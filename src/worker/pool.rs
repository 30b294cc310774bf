//! A worker's MTLS connections to the back ends: `--pool-size` per back end, each verified
//! against `--backend-ca` and the back end's configured NAME (SNI and SAN). A connection that
//! fails is retried with doubling back-off; rustls resumes the TLS session. A back end takes new
//! dialogs in this worker while at least one of its connections has finished its handshake.
//! State changes are logged once, not on every retry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::{ClientConnection, Connection};

use super::event::Worker;
use super::slots::Kind;
use crate::metrics::BackendMetrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct PoolEntry {
    /// Slot of each pool connection, if open (connecting or up).
    conns: Vec<Option<usize>>,
    up: Vec<bool>,
    retry_at: Vec<Instant>,
    backoff: Vec<Duration>,
    next: usize,
    /// Last state logged ("up", or why it is down), so each change is reported once.
    logged: Option<String>,
    /// The detailed reason of the last failure, used when the connection is closed.
    failure: Option<String>,
    pub requests: u64,
    pub responses: u64,
    pub dialogs: u64,
    pub failures: BTreeMap<String, u64>,
    /// Passes its health probes (a fresh back end starts healthy; after a failure it must pass
    /// `HEALTHY_AFTER` probes in a row).
    pub healthy: bool,
    pub probe_fails: u32,
    pub probe_oks: u32,
    /// The probe waiting for its answer: sequence number and when it left.
    pub outstanding: Option<(u32, Instant)>,
    pub probe_seq: u32,
    pub next_probe: Instant,
    pub probe_rtt: Option<Duration>,
    pub probes_failed: u64,
}

impl PoolEntry {
    pub fn new(size: usize) -> PoolEntry {
        PoolEntry {
            conns: vec![None; size],
            up: vec![false; size],
            retry_at: vec![Instant::now(); size],
            backoff: vec![FIRST_BACKOFF; size],
            next: 0,
            logged: None,
            failure: None,
            requests: 0,
            responses: 0,
            dialogs: 0,
            failures: BTreeMap::new(),
            healthy: true,
            probe_fails: 0,
            probe_oks: 0,
            outstanding: None,
            probe_seq: 0,
            next_probe: Instant::now(),
            probe_rtt: None,
            probes_failed: 0,
        }
    }

    pub fn metrics(&self, name: &str) -> BackendMetrics {
        BackendMetrics {
            name: name.to_string(),
            up: self.is_up(),
            requests: self.requests,
            responses: self.responses,
            dialogs: self.dialogs,
            probe_rtt: self.probe_rtt,
            probes_failed: self.probes_failed,
            failures: self.failures.clone(),
        }
    }

    /// Takes new messages: a connection has finished its handshake and the health probes pass.
    pub fn is_up(&self) -> bool {
        self.healthy && self.connected()
    }

    pub fn connected(&self) -> bool {
        self.up.iter().any(|&u| u)
    }

    /// A connection that has finished its handshake, round-robin over the pool.
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
    /// Takes a reloaded configuration: pool entries follow their back end by name (connections
    /// to back ends that stay are kept, whatever their position now), connections to back ends
    /// that left are closed, new back ends get fresh entries and are connected by the sweep.
    pub(super) fn adopt_runtime(&mut self) {
        let new = self.shared.runtime.load_full();
        self.rt_gen = self.shared.runtime_gen.load(Ordering::Acquire);
        let map: Vec<Option<usize>> = self
            .rt
            .backends
            .iter()
            .map(|b| {
                new.backends
                    .iter()
                    .position(|n| n.name == b.name && n.addr == b.addr)
            })
            .collect();
        for slot in self.slots.occupied() {
            let Some(kind) = self.slots.get(slot).map(|c| c.kind) else {
                continue;
            };
            if let Kind::Backend(b) = kind
                && map[b].is_none()
            {
                self.close(slot, "removed from the back-end set");
            }
        }
        let mut pool: Vec<PoolEntry> = new
            .backends
            .iter()
            .map(|_| PoolEntry::new(self.shared.cfg.pool_size))
            .collect();
        for (old, entry) in std::mem::take(&mut self.pool).into_iter().enumerate() {
            if let Some(n) = map[old] {
                pool[n] = entry;
            }
        }
        for slot in self.slots.occupied() {
            let Some(c) = self.slots.get_mut(slot) else {
                continue;
            };
            c.kind = match c.kind {
                Kind::Backend(b) => Kind::Backend(map[b].unwrap_or(b)),
                Kind::Peer(b) => Kind::Peer(b.and_then(|b| map[b])),
                Kind::Client => Kind::Client,
            };
            // Record-Route tokens are cached per back-end position, which may have changed.
            c.rr_tokens.clear();
        }
        self.pool = pool;
        self.rt = new;
        self.connect_pool(Instant::now());
        tracing::info!(
            worker = self.id,
            backends = self.rt.backends.len(),
            "worker took the new configuration"
        );
    }

    /// Logs that back end `b` takes traffic again.
    pub(super) fn log_up(&mut self, b: usize) {
        let e = &mut self.pool[b];
        if e.logged.as_deref() != Some("up") {
            e.logged = Some("up".into());
            tracing::info!(worker = self.id, backend = %self.rt.backends[b].name, "back end up");
        }
    }

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
        let be = &self.rt.backends[b];
        let addr = be.addr;
        let sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.log_down(b, &format!("connect: {e}"));
                return None;
            }
        };
        let name = self.rt.backend_names[b].clone();
        let tls = match ClientConnection::new(Arc::clone(&self.rt.tls.backend), name) {
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
        e.failure = None;
        if !e.healthy {
            // Reconnected after a failure: probe now rather than at the next interval.
            e.next_probe = Instant::now();
            return;
        }
        self.log_up(b);
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
        let detail = e.failure.take();
        if !e.connected() {
            // Back from a lost connection only after passing health probes again.
            e.healthy = false;
            e.probe_oks = 0;
            e.outstanding = None;
            e.next_probe = now;
            self.log_down(b, detail.as_deref().unwrap_or(why));
        }
        self.fail_over(slot, b);
    }

    /// Why a pool connection failed (a TLS verification error, say), for the close that follows.
    pub(super) fn pool_failure(&mut self, b: usize, why: String) {
        self.pool[b].failure = Some(why);
    }

    /// Logs that back end `b` is down, once per reason (no flood while it stays down).
    pub(super) fn log_down(&mut self, b: usize, why: &str) {
        let e = &mut self.pool[b];
        *e.failures.entry(why.to_string()).or_default() += 1;
        if e.logged.as_deref() != Some(why) {
            e.logged = Some(why.to_string());
            tracing::warn!(worker = self.id, backend = %self.rt.backends[b].name, why, "back end down");
        }
    }
}
