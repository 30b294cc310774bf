//! A worker's core: everything a worker decides, with no socket, no event loop and no clock of
//! its own — connections and their accounting, the pool of back-end connections and its health,
//! routing and the INVITE table, failover, budgets, backpressure and draining. It reaches the
//! world only through its connections' [`Wire`] (plaintext in, plaintext out) and a [`Connector`]
//! for new pool connections, and learns the time from its caller: input comes in through
//! `handle_*(.., now)`, and what the event loop must do (register a new connection, change what it
//! polls for) is pulled through `poll_*`. The shell (`super::shell`) owns the mio `Poll`, the
//! listeners, the sockets and the hand-off channel and does nothing but move bytes and events
//! between them and this core; the tests here drive it in virtual time with in-memory wires.
//!
//! Where each piece of state lives: connections in [`slots`] (life and closing in `conns.rs`,
//! reading and framing in `input.rs`, writing, the output budget and backpressure in `output.rs`
//! with their arithmetic in `state::Queued`), back ends in `backends.rs` (one owner: pool, probe
//! secret, counters, outstanding work, the operator's settings; carried out in `pool.rs`), calls in
//! `route.rs` (the router's decision carried out, the dialog gauge) and `failover.rs` (the INVITE
//! table: retries and answers of our own).

mod backends;
mod close;
mod conns;
mod failover;
mod input;
mod output;
mod partner;
mod pool;
mod route;
pub(super) mod rules;
pub mod slots;
mod state;
#[cfg(test)]
mod tests;
mod websocket;

pub use close::CloseReason;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ::core::net::SocketAddr;

use super::runtime::Runtime;
use super::shared::Shared;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::route::invites::Invites;
use crate::sip::{Rewrite, TokenCache};
pub use crate::tls::wire::Wire;
use backends::Backends;
pub use slots::{Kind, Readiness};
use slots::{Slots, Stamp};
use state::{Load, LogBudget, Queued};

/// How often timers run (probes, reconnects, timeouts): a fraction of the shortest interval.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often a worker hands its counters to the metrics reader.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The longest the event loop waits for an event: the pool's timers (fast probes, reconnects)
/// keep their pace.
const TICK: Duration = Duration::from_millis(100);

/// Opens a pool connection to back end `b` of the runtime (a socket and a TLS client session in
/// the shell; an in-memory wire in tests), with the address it goes to.
pub type Connector<S> = Box<dyn FnMut(&Runtime, usize) -> Result<(S, SocketAddr), ConnectError> + Send>;

/// Why a pool connection could not even be started (the pool backs off and counts the reason).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct Core<S: Wire> {
    id: u16,
    shared: Arc<Shared>,
    /// The TLS configurations and back ends this worker uses (see `Runtime`).
    rt: Arc<Runtime>,
    rt_gen: u64,
    admin_gen: u64,
    slots: Slots<S>,
    connect: Connector<S>,
    /// New connections the shell has yet to register with its poll, and connections whose
    /// interest (readable, or writable too) changed.
    registering: Vec<Stamp>,
    /// Connections closed this turn, for the shell to take off its poll and drop.
    released: Vec<S>,
    reinterest: Vec<usize>,
    /// The back ends as this worker has them (`pool.rs`).
    be: Backends,
    /// Routing as this worker's settings make it (see `rebuild_router`), the buffer its
    /// decisions' rewrites are prepared in (lent to each decision in turn), and the tokens it
    /// decoded lately.
    router: Router,
    rw: Rewrite,
    tokens: TokenCache,
    /// Scratch for answers siplb generates and for hand-off copies.
    out: Vec<u8>,
    /// Connections written to since the last flush.
    dirty: Vec<usize>,
    /// Connections with data left to read after their rounds this turn.
    backlog: Vec<usize>,
    /// Connections to close after the current batch, with why.
    doomed: Vec<(Stamp, CloseReason)>,
    /// Output queued in this worker's streams: the client part bounded by `--max-output-bytes`,
    /// the server part met with backpressure.
    queued: Queued,
    /// Client connections with data left unread while paused.
    paused_clients: Vec<usize>,
    /// This worker's counters (published to `Shared::published` by `publish`).
    m: Metrics,
    /// Initial INVITEs until their transaction is over (CANCEL / ACK routing, failover).
    invites: Invites,
    /// Saturated after the last turn (see [`SATURATED_TURN`]): new dialogs get 503.
    saturated: bool,
    load: Load,
    /// The time as the caller last told it (`now` of the last `handle_*`): the core has no clock
    /// of its own, and per-message bookkeeping reads this instead of the system clock.
    turn: Instant,
    /// Partner refusals this worker may still log in the current minute.
    partner_log: LogBudget,
    /// When draining ends at the latest (set when the drain starts).
    drain_until: Option<Instant>,
    ready: bool,
    started: Instant,
    last_sweep: Instant,
    last_publish: Instant,
}

impl<S: Wire> Core<S> {
    /// Worker `id`'s core. `probe_secret` goes into its probes (random in a real worker), so no
    /// answer but a real one counts.
    pub fn new(
        id: u16,
        shared: Arc<Shared>,
        probe_secret: u64,
        connect: Connector<S>,
        now: Instant,
    ) -> Core<S> {
        let rt = shared.runtime.load_full();
        let be = Backends::new(&shared, &rt, probe_secret, now);
        let router = be.router(&shared, &rt);
        Core {
            id,
            rt_gen: shared.runtime_gen.load(Ordering::Acquire),
            admin_gen: u64::MAX,
            rt,
            shared,
            slots: Slots::default(),
            connect,
            registering: Vec::new(),
            released: Vec::new(),
            reinterest: Vec::new(),
            be,
            router,
            rw: Rewrite::new(),
            tokens: TokenCache::new(),
            out: Vec::with_capacity(1024),
            dirty: Vec::new(),
            backlog: Vec::new(),
            doomed: Vec::new(),
            queued: Queued::default(),
            paused_clients: Vec::new(),
            m: Metrics::default(),
            invites: Invites::default(),
            saturated: false,
            load: Default::default(),
            turn: now,
            partner_log: LogBudget::new(now),
            drain_until: None,
            ready: false,
            started: now,
            last_sweep: now,
            last_publish: now,
        }
    }

    /// Rebuilds the back ends as routing sees them from the configured ones and the operator's
    /// settings (kept by name, so they outlive reloads).
    pub(super) fn apply_admin(&mut self) {
        self.admin_gen = self.shared.admin_gen.load(Ordering::Acquire);
        self.be.apply_admin(&self.shared, &self.rt);
    }

    /// Takes a reload or an admin change (rare: one atomic load each per turn otherwise), then
    /// says so with a fresh snapshot, so whoever waits for it (`Balancer::wait_applied`) reads
    /// metrics that show it.
    fn apply_settings(&mut self, now: Instant) {
        let mut changed = false;
        if self.shared.runtime_gen.load(Ordering::Acquire) != self.rt_gen {
            self.adopt_runtime();
            self.admin_gen = u64::MAX;
            changed = true;
        }
        if self.shared.admin_gen.load(Ordering::Acquire) != self.admin_gen {
            self.apply_admin();
            changed = true;
        }
        if changed {
            self.rebuild_router();
            self.publish(now);
            if let Some(a) = self.shared.applied.get(usize::from(self.id)) {
                a[0].store(self.rt_gen, Ordering::Release);
                a[1].store(self.admin_gen, Ordering::Release);
            }
        }
    }

    /// A new turn of the event loop at `now`: a reload or an admin change is taken first.
    pub fn begin_turn(&mut self, now: Instant) {
        self.turn = now;
        self.apply_settings(now);
        self.router.draining = self.shared.draining.load(Ordering::Acquire);
    }

    /// Timers at `now`: connections with data left to read get their next rounds, the pool's
    /// timers run (reconnects, probes), what the turn wrote is flushed and what it doomed closed,
    /// and four times a second the sweep (timeouts, INVITEs unanswered) and the publish.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.turn = now;
        for slot in std::mem::take(&mut self.backlog) {
            if self.read_rounds(slot) {
                self.mark_dirty(slot);
            }
        }
        // The pool's timers are a few back ends' worth of comparisons: every turn, so fast
        // probes and reconnects keep their pace.
        self.pool_tick(now);
        self.finish_batch();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY || !self.ready {
            self.sweep(now);
        }
        if now.duration_since(self.last_publish) >= PUBLISH_EVERY {
            self.publish(now);
        }
    }

    /// When the core wants [`Core::handle_timeout`] next: at once while a connection has data
    /// left to read, else within a pool tick.
    pub fn poll_timeout(&self) -> Instant {
        if self.backlog.is_empty() {
            self.turn + TICK
        } else {
            self.turn
        }
    }

    /// A new connection for the shell to register with its poll (under its slot as token).
    pub fn poll_register(&mut self) -> Option<usize> {
        while let Some(stamp) = self.registering.pop() {
            if self.slots.holds(stamp) {
                return Some(stamp.slot);
            }
        }
        None
    }

    /// A connection closed since the last call (its close_notify already queued and sent as far
    /// as the socket took it): the shell takes it off its poll before it drops it. Dropping alone
    /// is not enough: a socket whose descriptor a forked child still holds for an instant stays in
    /// the poll, and its events would reach whichever connection took its slot.
    pub fn poll_released(&mut self) -> Option<S> {
        self.released.pop()
    }

    /// The generation of `slot`: a connection's poll token carries it with its slot, so an event
    /// meant for a connection that has gone is told from one for the connection in its slot now.
    pub fn generation(&self, slot: usize) -> u32 {
        self.slots.generation(slot)
    }

    /// A connection whose interest changed: whether it now waits for writable too.
    pub fn poll_interest(&mut self) -> Option<(usize, bool)> {
        while let Some(slot) = self.reinterest.pop() {
            if let Some(c) = self.slots.get(slot) {
                return Some((slot, c.interest));
            }
        }
        None
    }

    /// The runtime this core works with (the shell starts new connections' TLS with it, so a
    /// reload reaches both at the same turn).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// The open connections and what each is for.
    pub fn connections(&self) -> Vec<(usize, Kind)> {
        self.slots
            .occupied()
            .into_iter()
            .filter_map(|s| self.slots.get(s).map(|c| (s, c.kind)))
            .collect()
    }

    /// Whether registrations or interest changes wait for the shell.
    pub fn wants_sync(&self) -> bool {
        !self.registering.is_empty() || !self.reinterest.is_empty() || !self.released.is_empty()
    }

    /// The wire of the connection in `slot` (the shell registers its socket).
    pub fn wire_mut(&mut self, slot: usize) -> Option<&mut S> {
        self.slots.get_mut(slot).map(|c| &mut c.stream)
    }

    /// Timers: pool reconnects, readiness, handshake and idle timeouts.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.answer_timeouts(now);
        self.invites.expire(now);
        self.be.outstanding.expire(now);
        if !self.ready && (self.be.pool.all_up() || now.duration_since(self.started) > Duration::from_secs(3))
        {
            // Readiness means what callers read: the snapshot `Balancer::metrics` shows is the
            // state this worker counted itself ready in, not one a publish period older.
            self.ready = true;
            self.publish(now);
            self.shared.ready.fetch_add(1, Ordering::AcqRel);
        }
        let cfg = &self.shared.cfg;
        let limits = rules::Limits {
            handshake: cfg.handshake_timeout,
            message: cfg.message_timeout,
            idle: cfg.idle_timeout,
        };
        let mut ping = Vec::new();
        for slot in self.slots.occupied() {
            let Some(c) = self.slots.get(slot) else { continue };
            let clocks = rules::Clocks {
                opened: c.opened,
                last_active: c.last_active,
                partial_since: c.partial_since,
                handshaking: c.stream.is_handshaking(),
                ws: c.stream.ws(),
                pinged: c.pinged,
            };
            match rules::timer(&clocks, &limits, now) {
                Some(rules::Timer::Close(why)) => self.doom(slot, why),
                Some(rules::Timer::Ping) => ping.push(slot),
                None => {}
            }
        }
        for slot in ping {
            if let Some(c) = self.slots.get_mut(slot) {
                c.pinged = true;
            }
            self.send_with(slot, 2 + 5, |s| {
                s.write_control(crate::ws::frame::OP_PING, b"siplb")
            });
        }
        self.finish_batch();
    }

    /// Draining (SIGTERM; the shell stops accepting): whether this worker may end — no dialog in
    /// flight anywhere and no INVITE waiting here, or `--drain-timeout` passed since the first
    /// call.
    pub fn drained(&mut self, now: Instant) -> bool {
        let until = *self
            .drain_until
            .get_or_insert(now + self.shared.cfg.drain_timeout);
        let idle = self.shared.active_dialogs.load(Ordering::Acquire) <= 0 && self.invites.in_progress() == 0;
        if idle || now >= until {
            tracing::info!(worker = self.id, timed_out = !idle, "drained");
            return true;
        }
        false
    }

    /// Hands a copy of this worker's counters to the metrics reader.
    pub fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let mut snap = self.m.clone();
        snap.bad_tokens = self.tokens.bad_mac;
        snap.workers_ready = u64::from(self.ready);
        snap.connections_open = self
            .slots
            .occupied()
            .into_iter()
            .filter(|&s| self.slots.get(s).is_some_and(|c| c.kind == Kind::Client))
            .count() as u64;
        self.partner_gauges(&mut snap);
        snap.ws_open = self
            .slots
            .occupied()
            .into_iter()
            .filter(|&s| self.slots.get(s).is_some_and(|c| c.ws.is_some()))
            .count() as u64;
        snap.backends = self
            .rt
            .backends
            .iter()
            .enumerate()
            .map(|(i, _)| self.backend_metrics(i))
            .collect();
        if let Some(Ok(mut p)) = self.shared.published.get(usize::from(self.id)).map(|p| p.lock()) {
            *p = snap;
        }
    }

    /// The worker stops: every connection is closed.
    pub fn close_all(&mut self) {
        for slot in self.slots.occupied() {
            self.close(slot, CloseReason::ShuttingDown);
        }
    }
}

pub(super) fn is_request(msg: &[u8]) -> bool {
    !msg.starts_with(b"SIP/")
}
