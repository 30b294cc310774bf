//! The balancer at run time: one thread per worker, each with its own `mio::Poll`, its own
//! SO_REUSEPORT listeners, its own connections and its own MTLS pool to every back end. Nothing
//! on the per-message path is shared or locked; the one cross-thread path is [`Handoff`], a
//! message for a connection another worker owns, sent over a crossbeam channel with that worker's
//! `mio::Waker`. [`Balancer`] starts, watches and stops the workers.

mod admin_view;
pub mod core;
mod runtime;
mod shared;
mod shell;
mod sockets;
mod start;

pub use runtime::{KEY_GRACE, Runtime, RuntimeError};
use shared::HANDOFF_QUEUE;
pub use shared::{HANDOFF_BYTES, Handoff, HandoffRx, Shared};
pub use sockets::reuseport_listener;
use sockets::{host_of, listener_group};
pub use start::StartError;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Poll, Waker};

use crate::config::Config;
use crate::metrics::Metrics;

/// A running balancer.
pub struct Balancer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub listen_addrs: Vec<SocketAddr>,
    /// The `--listen-wss` addresses, with their real ports.
    pub wss_addrs: Vec<SocketAddr>,
    pub peer_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, with `--metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the admin API is served, with a TCP `--admin`.
    pub admin_addr: Option<SocketAddr>,
}

impl Balancer {
    /// Loads certificates, binds every listener (port 0 becomes one real port shared by all
    /// workers) and starts the workers.
    pub fn start(mut cfg: Config) -> Result<Balancer, StartError> {
        let instance = {
            let mut b = [0u8; 4];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| StartError::Key(crate::sip::token::TokenError::Random))?;
            u32::from_le_bytes(b)
        };
        let runtime = Runtime::load(&cfg, None, instance)?;
        // Listeners: the first of each address picks the port, the others share it.
        let mut listeners: Vec<Vec<TcpListener>> = (0..cfg.workers).map(|_| Vec::new()).collect();
        let mut listen_addrs = Vec::new();
        for &addr in &cfg.listen {
            let (real, group) = listener_group(addr, cfg.workers, cfg.reuse_port)?;
            for (per_worker, l) in listeners.iter_mut().zip(group) {
                per_worker.push(l);
            }
            listen_addrs.push(real);
        }
        let mut peer_listeners: Vec<Option<TcpListener>> = (0..cfg.workers).map(|_| None).collect();
        let mut peer_addr = None;
        if let Some(addr) = cfg.peer_listen {
            let (real, group) = listener_group(addr, cfg.workers, cfg.reuse_port)?;
            for (slot, l) in peer_listeners.iter_mut().zip(group) {
                *slot = Some(l);
            }
            peer_addr = Some(real);
        }
        // WebSocket listeners follow the TLS ones in each worker's list.
        let mut wss_addrs = Vec::new();
        for &addr in &cfg.listen_wss {
            let (real, group) = listener_group(addr, cfg.workers, cfg.reuse_port)?;
            for (per_worker, l) in listeners.iter_mut().zip(group) {
                per_worker.push(l);
            }
            wss_addrs.push(real);
        }
        if cfg.advertise.ends_with(":0") {
            // The advertised port follows the real one when the first listener asked for port 0.
            let host = cfg.advertise.trim_end_matches(":0").to_string();
            cfg.advertise = format!("{host}:{}", listen_addrs[0].port());
        }
        let adv_host = host_of(&cfg.advertise);
        // WebSocket clients are told `--advertise-wss`, by default the advertised host with the
        // (real) port of the first WebSocket listener.
        if cfg.advertise_wss.is_none()
            && let Some(real) = wss_addrs.first()
        {
            cfg.advertise_wss = Some(format!("{adv_host}:{}", real.port()));
        }
        let mut polls = Vec::new();
        let mut handoff = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..cfg.workers {
            let poll = Poll::new().map_err(StartError::Poll)?;
            let waker = Arc::new(Waker::new(poll.registry(), shell::WAKER).map_err(StartError::Poll)?);
            let (tx, rx) = crossbeam_channel::bounded(HANDOFF_QUEUE);
            polls.push(poll);
            handoff.push((tx, waker));
            receivers.push(rx);
        }
        let limit = match cfg.rate_limit_per_ip {
            0 => None,
            n => {
                let mut key = [0u8; 16];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| StartError::Key(crate::sip::token::TokenError::Random))?;
                Some(crate::limit::SourceLimit::new(n, key))
            }
        };
        let peer_port = peer_addr.map(|p: SocketAddr| p.port());
        let shared = Arc::new(Shared::new(cfg, runtime, instance, peer_port, handoff, limit));
        let mut threads = Vec::new();
        let parts = polls
            .into_iter()
            .zip(receivers)
            .zip(listeners)
            .zip(peer_listeners);
        for (id, (((poll, rx), ls), pl)) in parts.enumerate() {
            let w = shell::Worker::new(id as u16, poll, Arc::clone(&shared), ls, pl, rx)
                .map_err(StartError::Poll)?;
            let t = std::thread::Builder::new()
                .name(format!("siplb-w{id}"))
                .spawn(move || w.run())
                .map_err(StartError::Thread)?;
            threads.push(t);
        }
        let mut lb = Balancer {
            shared,
            threads,
            listen_addrs,
            wss_addrs,
            peer_addr,
            metrics_addr: None,
            admin_addr: None,
        };
        if let Some(addr) = lb.shared.cfg.admin.clone() {
            let ctl: Arc<dyn crate::admin::Control> =
                Arc::new(admin_view::AdminHandle(Arc::clone(&lb.shared)));
            match crate::admin::serve(&addr, lb.shared.cfg.admin_allow_remote, ctl) {
                Ok(bound) => lb.admin_addr = bound,
                Err(e) => {
                    lb.shutdown();
                    return Err(StartError::Load(RuntimeError::Admin(e)));
                }
            }
        }
        if let Some(addr) = lb.shared.cfg.metrics {
            let bound = match crate::metrics::serve(addr, lb.collector()) {
                Ok(b) => b,
                Err(why) => {
                    // The workers are already running: stop them before giving up.
                    lb.shutdown();
                    return Err(StartError::Bind { addr, why });
                }
            };
            lb.metrics_addr = Some(bound);
        }
        // Only now is every listener bound: clients, peers, admin and metrics.
        let show = |a: Option<String>| a.unwrap_or_else(|| "none".into());
        tracing::info!(
            listen = %lb.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
            peer = %show(lb.peer_addr.map(|a| a.to_string())),
            metrics = %show(lb.metrics_addr.map(|a| a.to_string())),
            admin = %show(lb.shared.cfg.admin.as_ref().map(|a| a.to_string())),
            workers = lb.threads.len(),
            advertise = %lb.shared.cfg.advertise,
            backends = lb.shared.runtime.load().backends.len(),
            "siplb started"
        );
        Ok(lb)
    }

    /// Waits until every worker has an MTLS connection to every back end (or gave up waiting
    /// for the ones that are down). Returns whether that happened within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        poll_until(timeout, || {
            self.shared.ready.load(Ordering::Acquire) >= self.threads.len()
        })
    }

    /// Waits until every worker runs with the latest reload and admin change (and has published
    /// metrics that show them). Returns whether that happened within `timeout`.
    pub fn wait_applied(&self, timeout: Duration) -> bool {
        poll_until(timeout, || {
            let want = [
                self.shared.runtime_gen.load(Ordering::Acquire),
                self.shared.admin_gen.load(Ordering::Acquire),
            ];
            self.shared
                .applied
                .iter()
                .all(|a| a[0].load(Ordering::Acquire) == want[0] && a[1].load(Ordering::Acquire) == want[1])
        })
    }

    /// The workers' counters added up (each worker publishes a few times a second).
    pub fn metrics(&self) -> Metrics {
        collect(&self.shared)
    }

    /// A handle that collects the metrics from another thread (the `/metrics` responder).
    pub fn collector(&self) -> Arc<dyn Fn() -> Metrics + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || collect(&shared))
    }

    pub fn advertise(&self) -> &str {
        &self.shared.cfg.advertise
    }

    /// Asks every worker to stop, without waiting.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for (_, waker) in &self.shared.handoff {
            let _ = waker.wake();
        }
    }

    /// Stops and waits for the workers.
    pub fn shutdown(self) {
        self.stop();
        // Dropping joins them (see `Drop`).
    }

    /// Reads certificates, keys, CRLs and the back-ends file again; new connections use them,
    /// existing ones stay up. On failure the running configuration stays and the error says why.
    pub fn reload(&self) -> Result<(), RuntimeError> {
        self.shared.reload()
    }

    /// A handle that reloads this balancer from another thread (SIGHUP).
    pub fn reloader(&self) -> impl Fn() -> Result<(), RuntimeError> + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.reload()
    }

    /// A handle that starts a graceful stop (SIGTERM): no new connections or dialogs, dialogs in
    /// flight finish (up to `--drain-timeout`), then the workers close their connections and end.
    pub fn drainer(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            shared.draining.store(true, Ordering::Release);
            for (_, waker) in &shared.handoff {
                let _ = waker.wake();
            }
        }
    }

    /// A handle that can stop this balancer from another thread (signal handling).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            shared.stop.store(true, Ordering::Release);
            for (_, waker) in &shared.handoff {
                let _ = waker.wake();
            }
        }
    }

    /// Waits for the workers to end (after a stop or a drain from another thread).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A balancer that goes out of scope stops: its workers never outlive it (a test that panics
/// must not leave workers reconnecting to dead ports while the next test runs).
impl Drop for Balancer {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls `done` every few milliseconds until it holds (true) or `timeout` passes (false): for
/// callers outside the workers (tests, the demo) waiting on what the workers publish.
fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn collect(shared: &Shared) -> Metrics {
    let mut total = Metrics::default();
    for p in &shared.published {
        if let Ok(m) = p.lock() {
            total.add(&m);
        }
    }
    // Reloads are the balancer's, not a worker's.
    total.reloads = [
        shared.reloads.load(Ordering::Relaxed),
        shared.reload_failures.load(Ordering::Relaxed),
    ];
    total
}
