//! One worker's view of its back ends — MTLS connections and health — as a state machine without
//! I/O, in the manner of [`crate::route`]: the worker reports events (a connection opened, its
//! handshake finished, the server sent something, a probe was answered, a connection closed, time
//! passed) and carries out the [`Action`]s that come back (connect, send a probe, log a state
//! change, fail over a lost connection's INVITEs). Unit-tested without sockets.
//!
//! A pool connection counts only once the server has *accepted* it: in TLS 1.3 our side of the
//! handshake ends before the server has checked our certificate, and a server that refuses it says
//! so with an alert afterwards. So a connection is accepted on the first record the server sends
//! after the handshake (session tickets, a probe answer), or when it has stayed open for
//! [`ACCEPT_GRACE`]; only then is the back end up and its back-off reset.
//!
//! Health (`--health-check options`): SIP OPTIONS every `--health-interval`; `--health-fall`
//! failures in a row take a back end out of new dialogs, `--health-rise` passes bring it back; while
//! rising it is probed every `--health-fast-interval` (HAProxy's `fastinter`), and a back end never
//! seen up is admitted on its first pass. With `--health-check tls` an accepted connection is the
//! check. Health governs new dialogs only: a back end with an accepted connection still takes the
//! in-dialog requests and transactions of its dialogs.

use std::time::{Duration, Instant};

use crate::route::Avail;

/// The first retry after a failed connection.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts when nobody listens (connection refused, reset, timed out):
/// short, so a server that starts after siplb takes traffic within a second.
pub const MAX_BACKOFF_CONNECT: Duration = Duration::from_millis(500);
/// Longest wait between attempts when the TLS handshake failed (a refused or wrong certificate
/// does not mend itself in a second; a reload resets it).
pub const MAX_BACKOFF_TLS: Duration = Duration::from_secs(30);
/// A TLS 1.3 connection that the server has not refused by then is taken as accepted.
pub const ACCEPT_GRACE: Duration = Duration::from_millis(300);
/// Longest wait for a probe's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What checks a back end's health (`--health-check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HealthCheck {
    /// SIP OPTIONS; any final answer below 500 passes.
    #[default]
    Options,
    /// An accepted MTLS connection is the check (servers that do not answer OPTIONS).
    Tls,
}

/// The health settings, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub check: HealthCheck,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Connections per back end.
    pub size: usize,
}

/// The worker's name for a connection (its slot).
pub type ConnId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle {
        retry_at: Instant,
    },
    Connecting(ConnId),
    /// Our side of the handshake is done; the server has not shown it accepted us yet.
    Handshaken(ConnId, Instant),
    Accepted(ConnId),
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    state: State,
    backoff: Duration,
}

impl Conn {
    fn id(&self) -> Option<ConnId> {
        match self.state {
            State::Idle { .. } => None,
            State::Connecting(id) | State::Handshaken(id, _) | State::Accepted(id) => Some(id),
        }
    }
}

/// Why a connection closed, for its back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// TCP: refused, reset, timed out, closed.
    Io,
    /// The TLS handshake or a record failed (a certificate refused either way).
    Tls,
    /// siplb closed it (shutting down, removed by a reload): no retry scheduling matters.
    Ours,
}

/// What the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open connection `index` to `backend`, then report `connecting` or `connect_failed`.
    Connect { backend: usize, index: usize },
    /// Send probe `seq` on connection `conn`.
    Probe { backend: usize, conn: ConnId, seq: u32 },
    /// The back end takes new dialogs again (log it).
    Up { backend: usize },
    /// The back end takes no new dialogs (log it, once per reason, and count the reason).
    Down { backend: usize, why: String },
    /// Connection `conn` of `backend` closed: what it carried must go elsewhere.
    FailOver { backend: usize, conn: ConnId },
}

/// One back end's connections and health in one worker.
#[derive(Debug, Clone)]
pub struct Member {
    conns: Vec<Conn>,
    next: usize,
    /// Passes its health checks (new dialogs may go to it).
    healthy: bool,
    /// Has been up at least once (a first pass admits a back end never seen up).
    ever_up: bool,
    passes: u32,
    fails: u32,
    /// The probe waiting for its answer: sequence number, when it left, on which connection.
    outstanding: Option<(u32, Instant, ConnId)>,
    seq: u32,
    next_probe: Instant,
    /// The last state logged ("up", or why it is down), so each change is reported once.
    logged: Option<String>,
    /// It answered an initial request `503`: no new dialogs until then (its Retry-After).
    overloaded_until: Option<Instant>,
    pub probe_rtt: Option<Duration>,
    /// Every answered probe's round trip.
    pub probe_seconds: crate::metrics::Histogram,
    pub probes_failed: u64,
}

impl Member {
    fn new(size: usize, now: Instant) -> Member {
        Member {
            conns: vec![
                Conn {
                    state: State::Idle { retry_at: now },
                    backoff: FIRST_BACKOFF,
                };
                size
            ],
            next: 0,
            healthy: false,
            ever_up: false,
            passes: 0,
            fails: 0,
            outstanding: None,
            seq: 0,
            next_probe: now,
            logged: None,
            overloaded_until: None,
            probe_rtt: None,
            probe_seconds: Default::default(),
            probes_failed: 0,
        }
    }

    fn accepted(&self) -> bool {
        self.conns.iter().any(|c| matches!(c.state, State::Accepted(_)))
    }

    fn find(&self, id: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id() == Some(id))
    }
}

/// Every back end of one worker.
#[derive(Debug, Clone)]
pub struct Pool {
    policy: Policy,
    members: Vec<Member>,
}

impl Pool {
    pub fn new(policy: Policy, backends: usize, now: Instant) -> Pool {
        Pool {
            policy,
            members: (0..backends).map(|_| Member::new(policy.size, now)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, b: usize) -> &Member {
        &self.members[b]
    }

    /// A reload: members follow their back end to its new position (`map[old] = new`), new back
    /// ends start fresh, and every back-off starts again (certificates may have been mended).
    pub fn remap(&mut self, map: &[Option<usize>], backends: usize, now: Instant) {
        let mut members: Vec<Member> = (0..backends)
            .map(|_| Member::new(self.policy.size, now))
            .collect();
        for (old, m) in std::mem::take(&mut self.members).into_iter().enumerate() {
            if let Some(&Some(n)) = map.get(old) {
                members[n] = m;
            }
        }
        for c in members.iter_mut().flat_map(|m| m.conns.iter_mut()) {
            c.backoff = FIRST_BACKOFF;
            if let State::Idle { retry_at } = &mut c.state {
                *retry_at = (*retry_at).min(now);
            }
        }
        self.members = members;
    }

    /// What back end `b` can take now. An overloaded one keeps its dialogs and transactions,
    /// like one failing its probes, but takes no new dialogs.
    pub fn avail(&self, b: usize) -> Avail {
        let m = &self.members[b];
        match (m.accepted(), m.healthy && m.overloaded_until.is_none()) {
            (false, _) => Avail::Down,
            (true, true) => Avail::Up,
            (true, false) => Avail::Connected,
        }
    }

    /// Back end `b` said it is overloaded (a `503` to an initial request): no new dialogs until
    /// `until` (its Retry-After, capped by the caller). A later, longer one extends it.
    pub fn overloaded(&mut self, b: usize, until: Instant) {
        let m = &mut self.members[b];
        m.overloaded_until = Some(m.overloaded_until.map_or(until, |t| t.max(until)));
    }

    /// Whether `b` is overloaded now (until `tick` sees its Retry-After pass).
    pub fn is_overloaded(&self, b: usize) -> bool {
        self.members[b].overloaded_until.is_some()
    }

    pub fn all_up(&self) -> bool {
        (0..self.members.len()).all(|b| self.avail(b) == Avail::Up)
    }

    /// An accepted connection to `b`, round-robin.
    pub fn pick(&mut self, b: usize) -> Option<ConnId> {
        let m = &mut self.members[b];
        let n = m.conns.len();
        for i in 0..n {
            let j = (m.next + i) % n;
            if let State::Accepted(id) = m.conns[j].state {
                m.next = j + 1;
                return Some(id);
            }
        }
        None
    }

    /// Timers: connections due for a retry, TLS 1.3 connections past their grace, probes due or
    /// overdue.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for b in 0..self.members.len() {
            if self.members[b].overloaded_until.is_some_and(|t| t <= now) {
                self.members[b].overloaded_until = None;
            }
            for i in 0..self.members[b].conns.len() {
                match self.members[b].conns[i].state {
                    State::Idle { retry_at } if retry_at <= now => {
                        out.push(Action::Connect { backend: b, index: i })
                    }
                    State::Handshaken(id, at) if now.duration_since(at) >= ACCEPT_GRACE => {
                        self.accept(b, id, out)
                    }
                    _ => {}
                }
            }
            self.probe(b, now, out);
        }
    }

    fn probe(&mut self, b: usize, now: Instant, out: &mut Vec<Action>) {
        if self.policy.check != HealthCheck::Options {
            return;
        }
        let m = &mut self.members[b];
        if let Some((_, sent, _)) = m.outstanding
            && now.duration_since(sent) >= PROBE_TIMEOUT.min(self.policy.interval)
        {
            m.outstanding = None;
            self.result(b, false, "OPTIONS probe unanswered", out);
        }
        let policy = self.policy;
        let m = &mut self.members[b];
        if m.outstanding.is_some() || now < m.next_probe {
            return;
        }
        // A connection that has finished its handshake (a probe answer is what accepts it).
        let conn = m.conns.iter().find_map(|c| match c.state {
            State::Accepted(id) | State::Handshaken(id, _) => Some(id),
            _ => None,
        });
        // None: probe as soon as one is, rather than an interval later.
        let Some(conn) = conn else { return };
        let rising = !m.healthy;
        m.seq = m.seq.wrapping_add(1);
        m.outstanding = Some((m.seq, now, conn));
        m.next_probe = now
            + if rising {
                policy.fast_interval
            } else {
                policy.interval
            };
        out.push(Action::Probe {
            backend: b,
            conn,
            seq: m.seq,
        });
    }

    /// Connection `index` of `b` is being opened as `id`.
    pub fn connecting(&mut self, b: usize, index: usize, id: ConnId) {
        if let Some(c) = self.members.get_mut(b).and_then(|m| m.conns.get_mut(index)) {
            c.state = State::Connecting(id);
        }
    }

    /// Connection `index` of `b` could not even be started.
    pub fn connect_failed(&mut self, b: usize, index: usize, why: &str, now: Instant, out: &mut Vec<Action>) {
        if let Some(c) = self.members.get_mut(b).and_then(|m| m.conns.get_mut(index)) {
            retry_later(c, MAX_BACKOFF_CONNECT, now);
        }
        self.lost(b, why, now, out);
    }

    /// Our side of connection `id`'s handshake is done. TLS 1.2 ends with the server's Finished,
    /// so it is accepted at once; TLS 1.3 waits for a sign from the server.
    pub fn handshake_done(&mut self, b: usize, id: ConnId, tls13: bool, now: Instant, out: &mut Vec<Action>) {
        let Some(i) = self.members.get(b).and_then(|m| m.find(id)) else {
            return;
        };
        self.members[b].conns[i].state = State::Handshaken(id, now);
        if !tls13 {
            self.accept(b, id, out);
        } else if self.policy.check == HealthCheck::Options {
            // Probe now: its answer accepts the connection and is the first health check.
            self.members[b].next_probe = now;
        }
    }

    /// The server sent something on connection `id` after the handshake.
    pub fn data_read(&mut self, b: usize, id: ConnId, out: &mut Vec<Action>) {
        if let Some(m) = self.members.get(b)
            && m.conns
                .iter()
                .any(|c| matches!(c.state, State::Handshaken(h, _) if h == id))
        {
            self.accept(b, id, out);
        }
    }

    fn accept(&mut self, b: usize, id: ConnId, out: &mut Vec<Action>) {
        let Some(i) = self.members[b].find(id) else { return };
        let m = &mut self.members[b];
        m.conns[i].state = State::Accepted(id);
        m.conns[i].backoff = FIRST_BACKOFF;
        if self.policy.check == HealthCheck::Tls {
            self.set_healthy(b, true, "", out);
        }
    }

    /// The answer to a probe on connection `conn`; false if it is not the one outstanding (late,
    /// or not from where the probe went).
    pub fn probe_answer(
        &mut self,
        b: usize,
        conn: ConnId,
        seq: u32,
        code: u16,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(m) = self.members.get_mut(b) else {
            return false;
        };
        let Some((s, sent, c)) = m.outstanding else {
            return false;
        };
        if s != seq || c != conn {
            return false;
        }
        if code < 200 {
            return true;
        }
        m.outstanding = None;
        m.probe_rtt = Some(now.duration_since(sent));
        m.probe_seconds.observe(now.duration_since(sent));
        self.data_read(b, conn, out);
        if code < 500 {
            self.result(b, true, "", out);
        } else {
            self.result(b, false, "OPTIONS probe answered 5xx/6xx", out);
        }
        true
    }

    fn result(&mut self, b: usize, pass: bool, why: &str, out: &mut Vec<Action>) {
        let rise = self.policy.rise;
        let fall = self.policy.fall;
        let m = &mut self.members[b];
        if pass {
            m.fails = 0;
            m.passes += 1;
            if !m.healthy && (m.passes >= rise || !m.ever_up) {
                self.set_healthy(b, true, "", out);
            }
        } else {
            m.probes_failed += 1;
            m.passes = 0;
            m.fails += 1;
            if m.healthy && m.fails >= fall {
                self.set_healthy(b, false, why, out);
            } else if !m.healthy {
                self.note_down(b, why, out);
            }
        }
    }

    fn set_healthy(&mut self, b: usize, healthy: bool, why: &str, out: &mut Vec<Action>) {
        let m = &mut self.members[b];
        m.healthy = healthy;
        if healthy {
            m.ever_up = true;
            if m.logged.as_deref() != Some("up") {
                m.logged = Some("up".into());
                out.push(Action::Up { backend: b });
            }
        } else {
            self.note_down(b, why, out);
        }
    }

    fn note_down(&mut self, b: usize, why: &str, out: &mut Vec<Action>) {
        let m = &mut self.members[b];
        if m.logged.as_deref() != Some(why) {
            m.logged = Some(why.to_string());
            out.push(Action::Down {
                backend: b,
                why: why.to_string(),
            });
        }
    }

    /// Connection `id` of `b` closed: retry it with back-off (reset if it had been accepted).
    pub fn closed(
        &mut self,
        b: usize,
        id: ConnId,
        how: Closed,
        why: &str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.members.get(b).and_then(|m| m.find(id)) else {
            return;
        };
        let m = &mut self.members[b];
        let c = &mut m.conns[i];
        if matches!(c.state, State::Accepted(_)) {
            c.backoff = FIRST_BACKOFF;
        }
        let cap = if how == Closed::Tls {
            MAX_BACKOFF_TLS
        } else {
            MAX_BACKOFF_CONNECT
        };
        retry_later(c, cap, now);
        if m.outstanding.is_some_and(|(_, _, c)| c == id) {
            m.outstanding = None;
        }
        if how != Closed::Ours {
            out.push(Action::FailOver { backend: b, conn: id });
            self.lost(b, why, now, out);
        }
    }

    /// A connection failed: with none accepted left, the back end is down until it passes again.
    fn lost(&mut self, b: usize, why: &str, now: Instant, out: &mut Vec<Action>) {
        let m = &mut self.members[b];
        if m.accepted() {
            return;
        }
        m.passes = 0;
        m.outstanding = None;
        m.next_probe = now.min(m.next_probe);
        if m.healthy || m.logged.as_deref() != Some(why) {
            m.healthy = false;
            self.note_down(b, why, out);
        }
    }
}

/// Schedules a retry after the current back-off and doubles it, up to `cap`.
fn retry_later(c: &mut Conn, cap: Duration, now: Instant) {
    let wait = c.backoff.min(cap);
    c.state = State::Idle { retry_at: now + wait };
    c.backoff = (wait * 2).min(cap);
}

#[cfg(test)]
mod tests;
