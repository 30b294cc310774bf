//! Counters and the Prometheus endpoint. Each worker counts in its own [`Metrics`] (plain
//! integers, no atomics or locks on the per-message path) and publishes a copy a few times a
//! second; [`Balancer::metrics`](crate::worker::Balancer::metrics) and `/metrics` add the copies
//! up. The HTTP responder is a small thread of its own, off every worker.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::sip::Method;

mod counts;
mod prometheus;

pub use counts::Counts;

/// Answers siplb generates, by code, in this order; anything else counts as "other".
pub const ANSWER_CODES: [u16; 9] = [400, 403, 404, 430, 482, 483, 503, 513, 0];
/// Request methods counted one by one; the rest are "OTHER".
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "INFO",
    "UPDATE",
    "PRACK",
    "MESSAGE",
    "PUBLISH",
    "OTHER",
];

pub fn method_index(m: Method) -> usize {
    match m {
        Method::Invite => 0,
        Method::Ack => 1,
        Method::Bye => 2,
        Method::Cancel => 3,
        Method::Register => 4,
        Method::Options => 5,
        Method::Subscribe => 6,
        Method::Notify => 7,
        Method::Refer => 8,
        Method::Info => 9,
        Method::Update => 10,
        Method::Prack => 11,
        Method::Message => 12,
        Method::Publish => 13,
        Method::Other(_) => 14,
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets: half a millisecond (a call on
/// loopback) to ten seconds (a ringing phone is not in these: they end at the first answer).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations: counts per bucket of [`BUCKETS`] (not cumulative here;
/// the exposition adds them up), their number and their sum. Plain integers, no allocation.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += s;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
    }
}

/// One back end as a worker sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BackendMetrics {
    pub name: String,
    /// Takes new dialogs in this worker (connected and passing its health probes).
    pub up: bool,
    /// Answered an initial request 503 and waits out its Retry-After (no new dialogs).
    pub overloaded: bool,
    /// Transactions forwarded and not yet finally answered (an INVITE counting 1.75).
    pub outstanding: f64,
    pub requests: u64,
    pub responses: u64,
    /// 2xx answers to INVITE that came from it.
    pub dialogs: u64,
    /// Round trip of the last answered health probe.
    pub probe_rtt: Option<Duration>,
    /// Round trips of the answered health probes.
    pub probe_seconds: Histogram,
    /// From an initial INVITE forwarded to the back end to its first answer (any code).
    pub answer_seconds: Histogram,
    pub probes_failed: u64,
    /// Connection failures by reason.
    pub failures: BTreeMap<String, u64>,
}

/// One federation partner (`--partner`), by its domain.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartnerMetrics {
    /// Its edges' connections open now, and their addresses.
    pub open: u64,
    pub peers: Vec<std::net::SocketAddr>,
    /// Its edges' connections accepted (certificate and name passed).
    pub connections: u64,
    /// Requests its edges sent.
    pub requests: u64,
    /// Certificates refused and requests answered 403, by reason.
    pub refusals: BTreeMap<String, u64>,
}

/// What one worker counted (or, added up, the whole balancer).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    /// The plain counters (declared once, in `counts`); reached through `Deref` too, so
    /// `m.responses` reads as any field.
    pub counts: Counts,
    pub workers: usize,
    pub requests_by_method: [u64; METHODS.len()],
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub answers: [u64; ANSWER_CODES.len()],
    pub refused: BTreeMap<String, u64>,
    pub handshake_failures: BTreeMap<String, u64>,
    /// Configuration reloads that took effect, and that failed (set by the collector).
    pub reloads: [u64; 2],
    pub loop_busy: Duration,
    /// WebSocket upgrades refused, by the HTTP status answered, and connections closed for a
    /// frame violation, by close code.
    pub ws_refused: BTreeMap<String, u64>,
    pub ws_failures: BTreeMap<String, u64>,
    pub backends: Vec<BackendMetrics>,
    pub partners: BTreeMap<String, PartnerMetrics>,
    /// From an initial INVITE read from a client to the first 2xx forwarded back to it.
    pub setup_seconds: Histogram,
    /// Per worker: messages handled and time busy (only in the added-up form).
    pub per_worker: Vec<(u64, Duration)>,
}

impl std::ops::Deref for Metrics {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.counts
    }
}

impl std::ops::DerefMut for Metrics {
    fn deref_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }
}

impl Metrics {
    /// Counts a message dropped for `why` (no allocation once a reason has been seen).
    pub fn drop_for(&mut self, why: &'static str) {
        self.dropped_responses += 1;
        match self.dropped.get_mut(why) {
            Some(n) => *n += 1,
            None => {
                self.dropped.insert(why.to_string(), 1);
            }
        }
    }

    pub fn answer(&mut self, code: u16) {
        let i = ANSWER_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(ANSWER_CODES.len() - 1);
        self.answers[i] += 1;
    }

    pub fn answers_with(&self, code: u16) -> u64 {
        ANSWER_CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.answers[i])
    }

    /// Counts with `f` for partner `domain` (its entry made on first use: one allocation per
    /// partner, not per message).
    pub fn partner(&mut self, domain: &str, f: impl FnOnce(&mut PartnerMetrics)) {
        match self.partners.get_mut(domain) {
            Some(p) => f(p),
            None => {
                let mut p = PartnerMetrics::default();
                f(&mut p);
                self.partners.insert(domain.to_string(), p);
            }
        }
    }

    pub fn backend(&self, name: &str) -> Option<&BackendMetrics> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Adds another worker's counters; back ends are matched by name (up if up anywhere).
    pub fn add(&mut self, o: &Metrics) {
        self.workers += 1;
        self.counts.add(&o.counts);
        for (a, b) in self.requests_by_method.iter_mut().zip(&o.requests_by_method) {
            *a += b;
        }
        for (a, b) in self.answers.iter_mut().zip(&o.answers) {
            *a += b;
        }
        add_map(&mut self.dropped, &o.dropped);
        add_map(&mut self.refused, &o.refused);
        add_map(&mut self.handshake_failures, &o.handshake_failures);
        self.loop_busy += o.loop_busy;
        add_map(&mut self.ws_refused, &o.ws_refused);
        add_map(&mut self.ws_failures, &o.ws_failures);
        self.setup_seconds.add(&o.setup_seconds);
        self.per_worker.push((o.messages, o.loop_busy));
        for (name, p) in &o.partners {
            let x = self.partners.entry(name.clone()).or_default();
            x.open += p.open;
            x.peers.extend(&p.peers);
            x.connections += p.connections;
            x.requests += p.requests;
            add_map(&mut x.refusals, &p.refusals);
        }
        for b in &o.backends {
            match self.backends.iter_mut().find(|x| x.name == b.name) {
                Some(x) => {
                    x.up |= b.up;
                    x.overloaded |= b.overloaded;
                    x.outstanding += b.outstanding;
                    x.requests += b.requests;
                    x.responses += b.responses;
                    x.dialogs += b.dialogs;
                    x.probes_failed += b.probes_failed;
                    x.probe_rtt = x.probe_rtt.max(b.probe_rtt);
                    x.probe_seconds.add(&b.probe_seconds);
                    x.answer_seconds.add(&b.answer_seconds);
                    add_map(&mut x.failures, &b.failures);
                }
                None => self.backends.push(b.clone()),
            }
        }
    }
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Serves `GET /metrics` on `addr` (see [`crate::http`]); `collect` adds up the workers'
/// published counters. Returns the bound address.
pub fn serve(
    addr: SocketAddr,
    collect: Arc<dyn Fn() -> Metrics + Send + Sync>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let handler: crate::http::Handler = Arc::new(move |line: &str| {
        if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
            crate::http::Reply {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: collect().prometheus(),
            }
        } else {
            crate::http::Reply {
                status: "404 Not Found",
                content_type: "text/plain",
                body: "only /metrics is here\n".into(),
            }
        }
    });
    crate::http::serve(
        "siplb-metrics",
        move || listener.incoming().flatten().next(),
        handler,
    )?;
    Ok(local)
}
