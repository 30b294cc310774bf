//! The balancer at run time: one thread per worker, each with its own `mio::Poll`, its own
//! SO_REUSEPORT listeners, its own connections and its own MTLS pool to every back end. Nothing
//! on the per-message path is shared or locked; the one cross-thread path is [`Handoff`], a
//! message for a connection another worker owns, sent over a crossbeam channel with that worker's
//! `mio::Waker`. [`Balancer`] starts, watches and stops the workers.

mod conn;
mod event;
mod failover;
mod pool;
mod route;
pub mod slots;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Poll, Waker};
use rustls::pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};

use crate::balance::Backend;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sip::TokenKey;
use crate::tls::{self, trust::TlsSet};

/// A message for a connection owned by another worker: already rewritten, ready to write.
pub struct Handoff {
    pub slot: u32,
    pub generation: u32,
    /// The connection must be a client's (else a server's).
    pub to_client: bool,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Load(String),
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
    /// Exit code per DESIGN.md: 1 for files and certificates (and the system refusing us).
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// What can change at run time (SIGHUP): every TLS configuration and the back-end set. Workers
/// hold an `Arc` of the one they use and look for a newer one once per event-loop turn, never per
/// message.
pub struct Runtime {
    /// The token key (`--token-key-file`, or random per process), and a digest of the file's
    /// secret to tell a changed key on reload.
    pub key: Arc<TokenKey>,
    key_digest: Option<[u8; 32]>,
    pub tls: TlsSet,
    pub backends: Vec<Backend>,
    pub backend_names: Vec<ServerName<'static>>,
    pub backend_name_strings: Vec<String>,
}

impl Runtime {
    /// Reads every file the configuration names: certificates, keys, CAs, CRLs, back-ends file,
    /// token key. `prev` is the configuration running now (on reload): its key stays unless the
    /// key file changed, and then stays accepted for [`KEY_GRACE`].
    pub fn load(cfg: &Config, prev: Option<&Runtime>, instance: u32) -> Result<Runtime, String> {
        let backends = cfg.current_backends().map_err(|e| e.to_string())?;
        let backend_name_strings: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let backend_names = backends
            .iter()
            .map(|b| tls::server_name(&b.name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let tls = tls::trust::build(&cfg.tls, &backend_name_strings).map_err(|e| e.to_string())?;
        let (key, key_digest) = match (&cfg.token_key_file, prev) {
            (Some(path), prev) => {
                let secret = crate::config::read_token_key(path).map_err(|e| e.to_string())?;
                let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &secret)
                    .as_ref()
                    .try_into()
                    .map_err(|_| "digest length".to_string())?;
                match prev {
                    Some(p) if p.key_digest == Some(digest) => (Arc::clone(&p.key), Some(digest)),
                    Some(p) => {
                        tracing::info!("token key changed: the previous one is accepted for 10 minutes");
                        let k =
                            TokenKey::from_secret(&secret).rotated_from(&p.key, Instant::now() + KEY_GRACE);
                        (Arc::new(k), Some(digest))
                    }
                    None => (
                        Arc::new(TokenKey::from_secret(&secret).with_instance(instance)),
                        Some(digest),
                    ),
                }
            }
            (None, Some(p)) => (Arc::clone(&p.key), None),
            (None, None) => (
                Arc::new(
                    TokenKey::generate()
                        .map_err(|e| format!("cannot make the token key: {e}"))?
                        .with_instance(instance),
                ),
                None,
            ),
        };
        Ok(Runtime {
            key,
            key_digest,
            tls,
            backends,
            backend_names,
            backend_name_strings,
        })
    }
}

/// How long a rotated-out token key is still accepted.
pub const KEY_GRACE: Duration = Duration::from_secs(600);

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
}

/// A running balancer.
pub struct Balancer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub listen_addrs: Vec<SocketAddr>,
    pub peer_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, with `--metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the admin API is served, with a TCP `--admin`.
    pub admin_addr: Option<SocketAddr>,
}

/// Capacity of each worker's hand-off channel, in messages and in bytes: a worker that falls
/// behind makes the others drop (and count) what they would hand it, not grow without bound.
const HANDOFF_QUEUE: usize = 65_536;
pub const HANDOFF_BYTES: usize = 64 << 20;

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
        let runtime = Runtime::load(&cfg, None, instance).map_err(StartError::Load)?;
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
        if cfg.advertise.ends_with(":0") {
            // The advertised port follows the real one when the first listener asked for port 0.
            let host = cfg.advertise.trim_end_matches(":0").to_string();
            cfg.advertise = format!("{host}:{}", listen_addrs[0].port());
        }
        let adv_host = host_of(&cfg.advertise);
        let peer_advertise = peer_addr.map(|p| {
            let a = cfg
                .peer_advertise
                .clone()
                .unwrap_or_else(|| format!("{adv_host}:{}", p.port()));
            let h = host_of(&a);
            (a, h)
        });

        let mut polls = Vec::new();
        let mut handoff = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..cfg.workers {
            let poll = Poll::new().map_err(StartError::Poll)?;
            let waker = Arc::new(Waker::new(poll.registry(), event::WAKER).map_err(StartError::Poll)?);
            let (tx, rx) = crossbeam_channel::bounded(HANDOFF_QUEUE);
            polls.push(poll);
            handoff.push((tx, waker));
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            instance,
            runtime: ArcSwap::from_pointee(runtime),
            runtime_gen: AtomicU64::new(0),
            admin: Mutex::new(Default::default()),
            admin_gen: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            published: (0..cfg.workers).map(|_| Mutex::new(Metrics::default())).collect(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            adv_host,
            peer_advertise,
            handoff_bytes: (0..cfg.workers).map(|_| AtomicUsize::new(0)).collect(),
            handoff,
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active_dialogs: AtomicI64::new(0),
            ready: AtomicUsize::new(0),
            work: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            limit: match cfg.rate_limit_per_ip {
                0 => None,
                n => {
                    let mut key = [0u8; 16];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                        .map_err(|_| StartError::Key(crate::sip::token::TokenError::Random))?;
                    Some(crate::limit::SourceLimit::new(n, key))
                }
            },
            applied: (0..cfg.workers)
                .map(|_| [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)])
                .collect(),
            admitted: AtomicUsize::new(0),
            cfg,
        });
        let mut threads = Vec::new();
        let parts = polls
            .into_iter()
            .zip(receivers)
            .zip(listeners)
            .zip(peer_listeners);
        for (id, (((poll, rx), ls), pl)) in parts.enumerate() {
            let w = event::Worker::new(id as u16, poll, Arc::clone(&shared), ls, pl, rx)
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
            peer_addr,
            metrics_addr: None,
            admin_addr: None,
        };
        if let Some(addr) = lb.shared.cfg.admin.clone() {
            let ctl: Arc<dyn crate::admin::Control> = Arc::new(AdminHandle(Arc::clone(&lb.shared)));
            match crate::admin::serve(&addr, lb.shared.cfg.admin_allow_remote, ctl) {
                Ok(bound) => lb.admin_addr = bound,
                Err(e) => {
                    lb.shutdown();
                    return Err(StartError::Load(e));
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
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.shared.ready.load(Ordering::Acquire) >= self.threads.len() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits until every worker runs with the latest reload and admin change (and has published
    /// metrics that show them). Returns whether that happened within `timeout`.
    pub fn wait_applied(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let want = [
                self.shared.runtime_gen.load(Ordering::Acquire),
                self.shared.admin_gen.load(Ordering::Acquire),
            ];
            let done =
                self.shared.applied.iter().all(|a| {
                    a[0].load(Ordering::Acquire) == want[0] && a[1].load(Ordering::Acquire) == want[1]
                });
            if done || Instant::now() >= until {
                return done;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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
    pub fn reload(&self) -> Result<(), String> {
        reload(&self.shared)
    }

    /// A handle that reloads this balancer from another thread (SIGHUP).
    pub fn reloader(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || reload(&shared)
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

/// The admin API's view of a running balancer.
struct AdminHandle(Arc<Shared>);

impl crate::admin::Control for AdminHandle {
    fn list(&self) -> String {
        use crate::admin::json_str;
        let rt = self.0.runtime.load();
        let overrides = self.0.admin.lock().map(|o| o.clone()).unwrap_or_default();
        let workers: Vec<Metrics> = self
            .0
            .published
            .iter()
            .map(|p| p.lock().map(|m| m.clone()).unwrap_or_default())
            .collect();
        let rows: Vec<String> = rt
            .backends
            .iter()
            .map(|b| {
                let o = overrides.get(&b.name).copied().unwrap_or_default();
                let per: Vec<&crate::metrics::BackendMetrics> =
                    workers.iter().filter_map(|w| w.backend(&b.name)).collect();
                let health: Vec<&str> = per
                    .iter()
                    .map(|m| match (m.overloaded, m.up) {
                        (true, _) => "overloaded",
                        (false, true) => "up",
                        (false, false) => "down",
                    })
                    .collect();
                let dialogs: u64 = per.iter().map(|m| m.dialogs).sum();
                let work: f64 = per.iter().map(|m| m.outstanding).sum();
                let rtt = per
                    .iter()
                    .filter_map(|m| m.probe_rtt)
                    .max()
                    .map_or("null".to_string(), |d| format!("{:.6}", d.as_secs_f64()));
                format!(
                    "{{\"name\":\"{}\",\"address\":\"{}\",\"weight\":{},\"configured_weight\":{},\"admin_state\":\"{}\",\"health\":[{}],\"dialogs\":{},\"outstanding_work\":{},\"probe_rtt_seconds\":{}}}",
                    json_str(&b.name),
                    b.addr,
                    o.weight.unwrap_or(b.weight),
                    b.weight,
                    o.state.as_str(),
                    health.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(","),
                    dialogs,
                    work,
                    rtt
                )
            })
            .collect();
        format!("[{}]\n", rows.join(","))
    }

    fn set(&self, name: &str, change: crate::admin::Change) -> bool {
        if !self.0.runtime.load().backends.iter().any(|b| b.name == name) {
            return false;
        }
        if let Ok(mut o) = self.0.admin.lock() {
            let e = o.entry(name.to_string()).or_default();
            match change {
                crate::admin::Change::State(s) => e.state = s,
                crate::admin::Change::Weight(w) => e.weight = Some(w),
            }
        }
        self.0.admin_gen.fetch_add(1, Ordering::AcqRel);
        for (_, waker) in &self.0.handoff {
            let _ = waker.wake();
        }
        tracing::info!(backend = name, change = %change, "admin change");
        true
    }
}

fn collect(shared: &Shared) -> Metrics {
    let mut total = Metrics::default();
    for p in &shared.published {
        if let Ok(m) = p.lock() {
            total.add(&m);
        }
    }
    total
}

fn reload(shared: &Shared) -> Result<(), String> {
    let current = shared.runtime.load_full();
    match Runtime::load(&shared.cfg, Some(&current), shared.instance) {
        Ok(rt) => {
            let n = rt.backends.len();
            shared.runtime.store(Arc::new(rt));
            shared.runtime_gen.fetch_add(1, Ordering::AcqRel);
            shared.reloads.fetch_add(1, Ordering::Relaxed);
            for (_, waker) in &shared.handoff {
                let _ = waker.wake();
            }
            tracing::info!(backends = n, "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            shared.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            Err(e)
        }
    }
}

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
fn listener_group(
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
fn host_of(a: &str) -> String {
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

/// Receiver side of a worker's hand-off channel.
pub type HandoffRx = Receiver<Handoff>;
