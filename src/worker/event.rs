//! One worker's event loop: accept on its own listeners, read and frame every connection until
//! WouldBlock, route each message, then flush every connection written to once per batch (one
//! write syscall per connection per wake-up, not per message). The pool's timers (reconnects,
//! probes) run every turn; handshake and idle timeouts and INVITE expiry from a sweep four times a
//! second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use super::close::CloseReason;
use super::runtime::Runtime;
use super::shared::{Handoff, HandoffRx, Shared};
use super::slots::{Kind, Slots};
use super::state::{Counters, Load, LogBudget};
use crate::balance::pool::{Action, Pool};
use crate::balance::work::Outstanding;
use crate::metrics::Metrics;
use crate::route::invites::Invites;
use crate::sip::response::{Extra, write_response};
use crate::sip::{FrameError, Read, Rewrite, TokenCache};

pub const WAKER: Token = Token(usize::MAX);
/// Read-buffer room beyond `--max-message-bytes`, so a full message plus the start of the next
/// fit in one round.
const READ_SLACK: usize = 16 * 1024;
/// Bounded reads one connection gets per event-loop turn before the others' turn.
const READ_ROUNDS: usize = 4;
/// How often timers run (probes, reconnects, timeouts): a fraction of the shortest interval.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often a worker hands its counters to the metrics reader.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
const PEER: Token = Token(usize::MAX - 1);
/// Front listeners use tokens counting down from here.
const LISTEN_BASE: usize = usize::MAX - 2;

pub struct Worker {
    pub(super) id: u16,
    pub(super) poll: Poll,
    pub(super) shared: Arc<Shared>,
    /// The TLS configurations and back ends this worker uses (see `Runtime`).
    pub(super) rt: Arc<Runtime>,
    pub(super) rt_gen: u64,
    /// The back ends as routing sees them: the configured ones with the operator's weights
    /// (draining: 0), and which are disabled; rebuilt when the runtime or the admin settings change.
    pub(super) eff: Vec<crate::balance::Backend>,
    pub(super) disabled: Vec<bool>,
    admin_gen: u64,
    pub(super) listeners: Vec<TcpListener>,
    pub(super) peer_listener: Option<TcpListener>,
    rx: HandoffRx,
    pub(super) slots: Slots,
    /// Connections and health of the back ends (the state machine), its pending actions, and
    /// what this worker counts per back end.
    pub(super) pool: Pool,
    pub(super) actions: Vec<Action>,
    /// A random secret in this worker's probes, so no answer but a real one counts.
    pub(super) probe_secret: u64,
    pub(super) counters: Vec<Counters>,
    pub(super) rw: Rewrite,
    pub(super) tokens: TokenCache,
    /// Scratch for answers siplb generates and for hand-off copies.
    pub(super) out: Vec<u8>,
    /// Connections written to since the last flush.
    pub(super) dirty: Vec<usize>,
    /// Connections with data left to read after their rounds this turn.
    pub(super) backlog: Vec<usize>,
    /// Connections to close after the current batch, with why.
    pub(super) doomed: Vec<(usize, CloseReason)>,
    /// Output queued in this worker's streams (bounded by `--max-output-bytes`), and whether a
    /// connection was already picked to close for it this batch.
    pub(super) out_queued: usize,
    pub(super) shedding: bool,
    /// The part of `out_queued` waiting for servers; past [`PAUSE_ABOVE`] clients are not read
    /// (backpressure) until it falls below [`RESUME_BELOW`].
    pub(super) server_queued: usize,
    pub(super) paused: bool,
    /// Client connections with data left unread while paused.
    pub(super) paused_clients: Vec<usize>,
    /// This worker's counters (published to `Shared::published` by `publish`).
    pub(super) m: Metrics,
    /// Initial INVITEs until their transaction is over (CANCEL / ACK routing, failover).
    pub(super) invites: Invites,
    /// Transactions forwarded and not yet finally answered, per back end (least work).
    pub(super) outstanding: Outstanding,
    /// Saturated after the last turn (see [`SATURATED_TURN`]): new dialogs get 503.
    pub(super) saturated: bool,
    pub(super) load: Load,
    /// When this event-loop turn began: the clock of per-message bookkeeping that a turn's
    /// length cannot distort (work expiry after 32 s, rate buckets, last answers), read once a
    /// turn instead of once a message.
    pub(super) turn: Instant,
    /// Partner refusals this worker may still log in the current minute.
    pub(super) partner_log: LogBudget,
    /// When draining ends at the latest (set when the drain starts).
    drain_until: Option<Instant>,
    ready: bool,
    started: Instant,
    last_sweep: Instant,
    last_publish: Instant,
}

impl Worker {
    pub fn new(
        id: u16,
        poll: Poll,
        shared: Arc<Shared>,
        mut listeners: Vec<TcpListener>,
        mut peer_listener: Option<TcpListener>,
        rx: HandoffRx,
    ) -> std::io::Result<Worker> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTEN_BASE - i), Interest::READABLE)?;
        }
        if let Some(l) = peer_listener.as_mut() {
            poll.registry().register(l, PEER, Interest::READABLE)?;
        }
        let rt = shared.runtime.load_full();
        let pool = Pool::new(shared.cfg.health, rt.backends.len(), Instant::now());
        let counters = vec![Counters::default(); rt.backends.len()];
        let mut outstanding = Outstanding::default();
        outstanding.remap(shared.work_of(&rt.backends), &[]);
        Ok(Worker {
            id,
            poll,
            rt_gen: shared.runtime_gen.load(Ordering::Acquire),
            eff: Vec::new(),
            disabled: Vec::new(),
            admin_gen: u64::MAX,
            rt,
            shared,
            listeners,
            peer_listener,
            rx,
            slots: Slots::default(),
            pool,
            actions: Vec::new(),
            probe_secret: {
                let mut b = [0u8; 8];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .map_err(|_| std::io::Error::other("the system random generator failed"))?;
                u64::from_le_bytes(b)
            },
            counters,
            rw: Rewrite::new(),
            tokens: TokenCache::new(),
            out: Vec::with_capacity(1024),
            dirty: Vec::new(),
            backlog: Vec::new(),
            doomed: Vec::new(),
            out_queued: 0,
            shedding: false,
            server_queued: 0,
            paused: false,
            paused_clients: Vec::new(),
            m: Metrics::default(),
            invites: Invites::default(),
            outstanding,
            saturated: false,
            load: Default::default(),
            turn: Instant::now(),
            partner_log: LogBudget::new(Instant::now()),
            drain_until: None,
            ready: false,
            started: Instant::now(),
            last_sweep: Instant::now(),
            last_publish: Instant::now(),
        })
    }

    /// Rebuilds the back ends as routing sees them from the configured ones and the operator's
    /// settings (kept by name, so they outlive reloads).
    pub(super) fn apply_admin(&mut self) {
        self.admin_gen = self.shared.admin_gen.load(Ordering::Acquire);
        let overrides = self.shared.admin.lock().map(|o| o.clone()).unwrap_or_default();
        (self.eff, self.disabled) = super::rules::effective(&self.rt.backends, &overrides);
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
            self.publish(now);
            if let Some(a) = self.shared.applied.get(usize::from(self.id)) {
                a[0].store(self.rt_gen, Ordering::Release);
                a[1].store(self.admin_gen, Ordering::Release);
            }
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        self.apply_settings(Instant::now());
        self.pool_tick(Instant::now());
        while !self.shared.stop.load(Ordering::Acquire) {
            // Data left over from a flooding connection: look at events without sleeping.
            let wait = if self.backlog.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "event loop failed");
                break;
            }
            let busy = Instant::now();
            self.turn = busy;
            self.apply_settings(busy);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.take_handoffs(),
                    PEER => self.accept_peer(),
                    Token(t) if t > LISTEN_BASE - self.listeners.len() && t <= LISTEN_BASE => {
                        self.accept_clients(LISTEN_BASE - t)
                    }
                    Token(slot) => self.conn_event(slot, ev),
                }
            }
            for slot in std::mem::take(&mut self.backlog) {
                if self.read_rounds(slot) {
                    self.mark_dirty(slot);
                }
            }
            let now = Instant::now();
            // The pool's timers are a few back ends' worth of comparisons: every turn, so fast
            // probes and reconnects keep their pace.
            self.pool_tick(now);
            self.finish_batch();
            self.m.loop_busy += now.duration_since(busy);
            self.m.loop_turns += 1;
            self.saturation(now.duration_since(busy));
            if now.duration_since(self.last_sweep) >= SWEEP_EVERY || !self.ready {
                self.sweep(now);
            }
            if now.duration_since(self.last_publish) >= PUBLISH_EVERY {
                self.publish(now);
            }
            if self.shared.draining.load(Ordering::Acquire) && self.drained(now) {
                break;
            }
        }
        self.close_all();
        self.publish(Instant::now());
    }

    fn conn_event(&mut self, slot: usize, ev: &Event) {
        if let Some(c) = self.slots.get_mut(slot) {
            c.stream.read_to_eof = ev.is_read_closed() || ev.is_error();
        }
        if ev.is_readable() && !self.read_rounds(slot) {
            return;
        }
        let Some(c) = self.slots.get(slot) else { return };
        let why = match (ev.is_error(), c.stream.unclean_close) {
            (true, _) => CloseReason::SocketError,
            (false, true) => CloseReason::ClosedWithoutCloseNotify,
            (false, false) => CloseReason::ClosedByPeer,
        };
        if c.stream.closed || ev.is_read_closed() && !ev.is_readable() || ev.is_error() {
            self.doomed.push((slot, why));
        }
        self.mark_dirty(slot);
    }

    /// Reads and handles at most `READ_ROUNDS` bounded buffers of one connection. A connection with
    /// more waiting goes on the backlog for the next turn, so a flooding peer neither grows our
    /// buffers past the cap nor starves the others; the backlog also keeps edge-triggered readiness
    /// correct (no new event comes for data already waiting). False if the connection is gone.
    fn read_rounds(&mut self, slot: usize) -> bool {
        let server = self.slots.get(slot).is_some_and(|c| c.kind.is_server());
        if self.paused && !server {
            if let Some(c) = self.slots.get_mut(slot)
                && !c.paused
            {
                c.paused = true;
                self.paused_clients.push(slot);
            }
            return self.slots.get(slot).is_some();
        }
        let cap = self.shared.cfg.message_limit(server) + READ_SLACK;
        for _ in 0..READ_ROUNDS {
            let Some(c) = self.slots.get_mut(slot) else {
                return false;
            };
            let was_handshaking = c.stream.is_handshaking();
            let got = match c.stream.read(cap) {
                Ok(n) => {
                    self.m.bytes_in += n as u64;
                    n
                }
                Err(e) => {
                    self.read_failed(slot, was_handshaking, &e);
                    return false;
                }
            };
            let Some(c) = self.slots.get_mut(slot) else {
                return false;
            };
            c.last_active = Instant::now();
            c.pinged = false;
            let (kind, more) = (c.kind, c.stream.more);
            if was_handshaking && !c.stream.is_handshaking() && !self.on_handshake(slot, kind) {
                return false;
            }
            // The server sent something after the handshake: it accepted our certificate.
            if let (Kind::Backend(b), false, true) = (kind, was_handshaking, got > 0) {
                self.pool_event(|p, acts| p.data_read(b, slot, acts));
            }
            self.process(slot);
            if !more || self.doomed.iter().any(|&(s, _)| s == slot) {
                return self.slots.get(slot).is_some();
            }
        }
        self.backlog.push(slot);
        true
    }

    /// Frames and routes every complete message in the connection's read buffer.
    fn process(&mut self, slot: usize) {
        let Some(c) = self.slots.get_mut(slot) else { return };
        if c.ws.is_some() {
            return self.process_ws(slot);
        }
        // Routing needs `&mut self` for other connections while the message borrows this
        // buffer: move the buffer out (a pointer move, not a copy) and put it back after.
        let rbuf = std::mem::take(&mut c.stream.rbuf);
        let buf = rbuf.filled();
        let server = c.kind.is_server();
        let max = self.shared.cfg.message_limit(server);
        // The rest of an oversized message from a server, skipped by its Content-Length.
        let mut pos = c.skip.min(buf.len());
        c.skip -= pos;
        loop {
            match crate::sip::read(&buf[pos..], max) {
                Read::Message(f, m) => {
                    self.m.messages += 1;
                    self.route(slot, &m);
                    pos += f.consumed();
                }
                Read::Unparsable(f, e) => {
                    let msg = &buf[pos..][f.range()];
                    if is_request(msg) {
                        self.answer(slot, msg, 400, &e.reason(msg), Extra::default());
                    } else {
                        self.m.drop_for("unparsable response");
                    }
                    pos += f.consumed();
                }
                Read::Ping(n) => {
                    self.send_raw(slot, b"\r\n");
                    pos += n;
                }
                Read::Partial => break,
                Read::Invalid(FrameError::Oversized { skip, head, len, .. }) if server => {
                    let msg = &buf[pos + skip..];
                    self.oversized_from_server(slot, &msg[..head]);
                    let whole = skip + len;
                    let here = buf.len() - pos;
                    if whole <= here {
                        pos += whole;
                        continue;
                    }
                    if let Some(c) = self.slots.get_mut(slot) {
                        c.skip = whole - here;
                    }
                    pos = buf.len();
                    break;
                }
                Read::Invalid(e) => {
                    let rest = &buf[pos..];
                    let too_large = matches!(e, FrameError::TooLarge { .. } | FrameError::Oversized { .. });
                    if too_large && is_request(rest) {
                        self.answer(
                            slot,
                            &rest[..rest.len().min(max)],
                            513,
                            "Message Too Large",
                            Extra::default(),
                        );
                    } else if is_request(rest) && !matches!(e, FrameError::NotSip) {
                        self.answer(
                            slot,
                            &rest[..rest.len().min(max)],
                            400,
                            &e.to_string(),
                            Extra::default(),
                        );
                    }
                    self.doomed.push((slot, CloseReason::UnframableInput));
                    pos = buf.len();
                    break;
                }
            }
        }
        if let Some(c) = self.slots.get_mut(slot) {
            c.stream.rbuf = rbuf;
            c.stream.consume(pos);
            // A message begun and not finished starts the clock of --message-timeout.
            c.partial_since = match (c.stream.rbuf.filled().is_empty(), c.partial_since) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, since) => since,
            };
        }
    }

    /// A server sent a message over `--max-backend-message-bytes` (`head` is its header block):
    /// it is skipped, not the connection. A request gets 513 back; a response becomes a 513 for
    /// the client whose request it answers, routed like the server's own answer would have been.
    fn oversized_from_server(&mut self, slot: usize, head: &[u8]) {
        self.m.oversized_from_servers += 1;
        if is_request(head) {
            self.answer(slot, head, 513, "Message Too Large", Extra::default());
            return;
        }
        let mut synthetic = Vec::with_capacity(head.len() + 64);
        write_response(head, 513, "Message Too Large", Extra::default(), &mut synthetic);
        if let Read::Message(_, m) = crate::sip::read(&synthetic, usize::MAX) {
            self.route(slot, &m);
        }
    }

    fn take_handoffs(&mut self) {
        while let Ok(Handoff {
            slot,
            generation,
            to_client,
            bytes,
        }) = self.rx.try_recv()
        {
            if let Some(q) = self.shared.handoff_bytes.get(usize::from(self.id)) {
                q.fetch_sub(bytes.len(), Ordering::AcqRel);
            }
            if to_client
                && bytes.starts_with(b"SIP/")
                && !self.invites.is_empty()
                && let Ok(m) = crate::sip::Message::parse(&bytes)
            {
                self.invite_progress(slot, generation, &m);
            }
            let slot = slot as usize;
            match self.slots.get_checked(slot, generation) {
                Some(c) if c.kind.is_server() != to_client => {
                    let w = super::state::Wrote::by(&mut c.stream, |s| s.write_all(&bytes));
                    self.wrote(slot, bytes.len(), w);
                }
                _ => self.m.drop_for("connection gone or of the other kind"),
            }
        }
    }

    /// Timers: pool reconnects, readiness, handshake and idle timeouts.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.answer_timeouts(now);
        self.invites.expire(now);
        self.outstanding.expire(now);
        if !self.ready && (self.pool.all_up() || now.duration_since(self.started) > Duration::from_secs(3)) {
            // Readiness means what callers read: the snapshot `Balancer::metrics` shows is the
            // state this worker counted itself ready in, not one a publish period older.
            self.publish(now);
            self.ready = true;
            self.shared.ready.fetch_add(1, Ordering::AcqRel);
        }
        let cfg = &self.shared.cfg;
        let limits = super::rules::Limits {
            handshake: cfg.handshake_timeout,
            message: cfg.message_timeout,
            idle: cfg.idle_timeout,
        };
        let mut ping = Vec::new();
        for slot in self.slots.occupied() {
            let Some(c) = self.slots.get(slot) else { continue };
            let clocks = super::rules::Clocks {
                opened: c.opened,
                last_active: c.last_active,
                partial_since: c.partial_since,
                handshaking: c.stream.is_handshaking(),
                ws: c.stream.ws,
                pinged: c.pinged,
            };
            match super::rules::timer(&clocks, &limits, now) {
                Some(super::rules::Timer::Close(why)) => self.doomed.push((slot, why)),
                Some(super::rules::Timer::Ping) => ping.push(slot),
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

    /// Draining (SIGTERM): on the first turn stop accepting; then say whether this worker may end —
    /// no dialog in flight anywhere and no INVITE waiting here, or the drain timeout passed.
    fn drained(&mut self, now: Instant) -> bool {
        let until = match self.drain_until {
            Some(t) => t,
            None => {
                for mut l in self.listeners.drain(..) {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                if let Some(mut l) = self.peer_listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                let t = now + self.shared.cfg.drain_timeout;
                self.drain_until = Some(t);
                tracing::info!(worker = self.id, "draining: listeners closed");
                t
            }
        };
        let idle = self.shared.active_dialogs.load(Ordering::Acquire) <= 0 && self.invites.in_progress() == 0;
        if idle || now >= until {
            tracing::info!(worker = self.id, timed_out = !idle, "drained");
            return true;
        }
        false
    }

    /// Hands a copy of this worker's counters to the metrics reader.
    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let mut snap = self.m.clone();
        snap.bad_tokens = self.tokens.bad_mac;
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

    fn close_all(&mut self) {
        for slot in self.slots.occupied() {
            self.close(slot, CloseReason::ShuttingDown);
        }
    }
}

pub(super) fn is_request(msg: &[u8]) -> bool {
    !msg.starts_with(b"SIP/")
}
