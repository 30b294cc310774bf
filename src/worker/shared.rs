//! What every worker of one balancer shares: the configuration, the runtime (swapped whole on
//! reload), the operator's settings, the hand-off channels between workers and their byte bounds,
//! the counters workers publish, and the few atomics drains and limits need. Nothing here is
//! touched per message but the hand-off of a message for another worker's connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::runtime::{Runtime, RuntimeError};
use super::sockets::host_of;
use crate::balance::Backend;
use crate::config::Config;
use crate::metrics::Metrics;

/// A message for a connection owned by another worker: already rewritten, ready to write.
pub struct Handoff {
    pub slot: u32,
    pub generation: u32,
    /// The connection must be a client's (else a server's).
    pub to_client: bool,
    pub bytes: Vec<u8>,
}

/// Receiver side of a worker's hand-off channel.
pub type HandoffRx = Receiver<Handoff>;

/// Capacity of each worker's hand-off channel, in messages and in bytes: a worker that falls
/// behind makes the others drop (and count) what they would hand it, not grow without bound.
pub(super) const HANDOFF_QUEUE: usize = 65_536;
pub const HANDOFF_BYTES: usize = 64 << 20;

/// What all workers read and nobody writes on the hot path.
pub struct Shared {
    pub cfg: Config,
    /// This process among instances sharing a token key (random at start, in every token).
    pub instance: u32,
    pub runtime: ArcSwap<Runtime>,
    /// Bumped on every successful reload.
    pub runtime_gen: AtomicU64,
    /// The operator's settings per back-end name (`--admin`), and a counter bumped on each
    /// change so workers look once per turn.
    pub admin: Mutex<crate::admin::Overrides>,
    pub admin_gen: AtomicU64,
    /// Host part of `cfg.advertise`, for recognising our own Route and Via.
    pub adv_host: String,
    /// The host of `--advertise-wss`, when siplb has WebSocket listeners.
    pub wss_host: Option<String>,
    /// `host:port` and host servers reach siplb at (with a peer listener).
    pub peer_advertise: Option<(String, String)>,
    pub handoff: Vec<(Sender<Handoff>, Arc<Waker>)>,
    /// Bytes waiting in each worker's hand-off channel (bounded by [`HANDOFF_BYTES`]).
    pub handoff_bytes: Vec<AtomicUsize>,
    pub stop: AtomicBool,
    /// SIGTERM: stop accepting, answer new dialogs 503, wait for dialogs in flight.
    pub draining: AtomicBool,
    /// Dialogs started (2xx to INVITE) minus dialogs ended (2xx to BYE) — what draining waits for.
    pub active_dialogs: AtomicI64,
    pub ready: AtomicUsize,
    /// Each back end's outstanding work by name (`--balance least-work`), shared by every worker
    /// and kept across reloads; looked up on start and reload only.
    pub work: Mutex<HashMap<String, Arc<crate::balance::work::Work>>>,
    /// When the balancer started (see [`Shared::millis`]).
    pub epoch: Instant,
    /// `--rate-limit-per-ip`: every source address's bucket, shared by all workers.
    pub limit: Option<crate::limit::SourceLimit>,
    /// Per worker: the `runtime_gen` and `admin_gen` it has applied and published, so callers
    /// can wait for a reload or an admin change to be in force everywhere (`wait_applied`).
    pub applied: Vec<[AtomicU64; 2]>,
    /// Connections open on the front and peer listeners (what `--max-connections` caps).
    pub admitted: AtomicUsize,
    /// Open client connections per source address (only with `--max-connections-per-ip`);
    /// touched on accept and close, never per message.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Each worker's counters as last published (a few times a second).
    pub published: Vec<Mutex<Metrics>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Shared {
    /// What the workers of a balancer share, for `cfg` as loaded into `runtime`: `peer_port` is
    /// the peer listener's real port, if there is one; `handoff` has one channel per worker.
    pub fn new(
        cfg: Config,
        runtime: Runtime,
        instance: u32,
        peer_port: Option<u16>,
        handoff: Vec<(Sender<Handoff>, Arc<Waker>)>,
        limit: Option<crate::limit::SourceLimit>,
    ) -> Shared {
        let adv_host = host_of(&cfg.advertise);
        let wss_host = cfg.advertise_wss.as_deref().map(host_of);
        let peer_advertise = peer_port.map(|p| {
            let a = cfg
                .peer_advertise
                .clone()
                .unwrap_or_else(|| format!("{adv_host}:{p}"));
            let h = host_of(&a);
            (a, h)
        });
        let workers = cfg.workers;
        Shared {
            instance,
            runtime: ArcSwap::from_pointee(runtime),
            runtime_gen: AtomicU64::new(0),
            admin: Mutex::new(Default::default()),
            admin_gen: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            published: (0..workers).map(|_| Mutex::new(Metrics::default())).collect(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            adv_host,
            wss_host,
            peer_advertise,
            handoff_bytes: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            handoff,
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active_dialogs: AtomicI64::new(0),
            ready: AtomicUsize::new(0),
            work: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            limit,
            applied: (0..workers)
                .map(|_| [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)])
                .collect(),
            admitted: AtomicUsize::new(0),
            cfg,
        }
    }

    /// The server-facing `host:port` and host, if siplb has a peer listener.
    pub fn server_side(&self) -> Option<(&str, &str)> {
        self.peer_advertise
            .as_ref()
            .map(|(a, h)| (a.as_str(), h.as_str()))
    }

    /// The `host:port` servers see.
    pub fn server_advertise(&self) -> &str {
        self.server_side().map_or(&self.cfg.advertise, |(a, _)| a)
    }

    /// `t` as milliseconds since the balancer started: the clock shared overload deadlines use.
    pub fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The shared outstanding-work totals of `backends`, in their order (made on first use).
    pub fn work_of(&self, backends: &[Backend]) -> Vec<Arc<crate::balance::work::Work>> {
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        backends
            .iter()
            .map(|b| Arc::clone(work.entry(b.name.clone()).or_default()))
            .collect()
    }

    /// Sends `h` to worker `w` and wakes it. A full or closed channel drops the message (the
    /// worker is stopping); SIP over TLS end points recover by their own timers.
    pub fn hand_off(&self, w: usize, h: Handoff) -> bool {
        let (Some((tx, waker)), Some(queued)) = (self.handoff.get(w), self.handoff_bytes.get(w)) else {
            return false;
        };
        let n = h.bytes.len();
        if queued.fetch_add(n, Ordering::AcqRel) + n > HANDOFF_BYTES {
            queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        if tx.try_send(h).is_err() {
            queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        let _ = waker.wake();
        true
    }

    /// Loads the configuration again and hands it to the workers (SIGHUP, `Balancer::reload`).
    pub fn reload(&self) -> Result<(), RuntimeError> {
        let current = self.runtime.load_full();
        match Runtime::load(&self.cfg, Some(&current), self.instance) {
            Ok(rt) => {
                let n = rt.backends.len();
                self.runtime.store(Arc::new(rt));
                self.runtime_gen.fetch_add(1, Ordering::AcqRel);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                for (_, waker) in &self.handoff {
                    let _ = waker.wake();
                }
                tracing::info!(backends = n, "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload failed; the running configuration stays");
                Err(e)
            }
        }
    }
}
