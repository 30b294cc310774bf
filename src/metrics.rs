//! Counters and the Prometheus endpoint. Each worker counts in its own [`Metrics`] (plain
//! integers, no atomics or locks on the per-message path) and publishes a copy a few times a
//! second; [`Balancer::metrics`](crate::worker::Balancer::metrics) and `/metrics` add the copies
//! up. The HTTP responder is a small thread of its own, off every worker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::sip::Method;

/// Answers siplb generates, by code, in this order; anything else counts as "other".
pub const ANSWER_CODES: [u16; 8] = [400, 404, 430, 482, 483, 503, 513, 0];
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

    /// The exposition rows (`_bucket` with `le`, `_sum`, `_count`) under `labels` (`k="v"` pairs
    /// without braces, or empty).
    fn rows(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, n) in BUCKETS.iter().zip(&self.counts) {
            acc += n;
            let _ = writeln!(out, "siplb_{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "siplb_{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "siplb_{name}_sum{braces} {:.6}", self.sum);
        let _ = writeln!(out, "siplb_{name}_count{braces} {}", self.count);
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

/// What one worker counted (or, added up, the whole balancer).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    pub workers: usize,
    pub requests_by_method: [u64; METHODS.len()],
    pub responses: u64,
    pub forwarded_requests: u64,
    pub forwarded_responses: u64,
    pub dropped_responses: u64,
    /// The same, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub answers: [u64; ANSWER_CODES.len()],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    pub handshake_failures: BTreeMap<String, u64>,
    pub clients_verified: u64,
    pub clients_unverified: u64,
    /// Servers that connected to the peer listener with an accepted certificate.
    pub peer_connections: u64,
    /// Messages from servers over `--max-backend-message-bytes`, skipped.
    pub oversized_from_servers: u64,
    /// Connections closed because the worker's queued output passed `--max-output-bytes`.
    pub output_budget_closes: u64,
    /// Times a worker stopped reading clients because servers were slow.
    pub backpressure_pauses: u64,
    /// Tokens in our Route or Via whose MAC failed (another key, or forged).
    pub bad_tokens: u64,
    pub handoffs: u64,
    /// Configuration reloads that took effect, and that failed (set by the collector).
    pub reloads: [u64; 2],
    pub failovers: u64,
    /// Initial INVITEs sent to another back end after theirs answered 503.
    pub retries_503: u64,
    /// Initial INVITEs sent to another back end after theirs gave no answer in time.
    pub retries_no_answer: u64,
    /// Out-of-dialog requests answered 503 for `--rate-limit-per-ip`.
    pub rate_limited: u64,
    /// New dialogs answered 503 because their worker was saturated, and times a worker became so.
    pub shed: u64,
    pub saturations: u64,
    pub messages: u64,
    pub loop_turns: u64,
    pub loop_busy: Duration,
    pub connections_open: u64,
    pub backends: Vec<BackendMetrics>,
    /// From an initial INVITE read from a client to the first 2xx forwarded back to it.
    pub setup_seconds: Histogram,
    /// Per worker: messages handled and time busy (only in the added-up form).
    pub per_worker: Vec<(u64, Duration)>,
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

    pub fn backend(&self, name: &str) -> Option<&BackendMetrics> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Adds another worker's counters; back ends are matched by name (up if up anywhere).
    pub fn add(&mut self, o: &Metrics) {
        self.workers += 1;
        for (a, b) in self.requests_by_method.iter_mut().zip(&o.requests_by_method) {
            *a += b;
        }
        for (a, b) in self.answers.iter_mut().zip(&o.answers) {
            *a += b;
        }
        self.responses += o.responses;
        self.forwarded_requests += o.forwarded_requests;
        self.forwarded_responses += o.forwarded_responses;
        self.dropped_responses += o.dropped_responses;
        add_map(&mut self.dropped, &o.dropped);
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.accepted += o.accepted;
        add_map(&mut self.refused, &o.refused);
        add_map(&mut self.handshake_failures, &o.handshake_failures);
        self.clients_verified += o.clients_verified;
        self.peer_connections += o.peer_connections;
        self.oversized_from_servers += o.oversized_from_servers;
        self.output_budget_closes += o.output_budget_closes;
        self.backpressure_pauses += o.backpressure_pauses;
        self.bad_tokens += o.bad_tokens;
        self.clients_unverified += o.clients_unverified;
        self.handoffs += o.handoffs;
        self.failovers += o.failovers;
        self.retries_503 += o.retries_503;
        self.rate_limited += o.rate_limited;
        self.shed += o.shed;
        self.saturations += o.saturations;
        self.retries_no_answer += o.retries_no_answer;
        self.messages += o.messages;
        self.loop_turns += o.loop_turns;
        self.loop_busy += o.loop_busy;
        self.connections_open += o.connections_open;
        self.setup_seconds.add(&o.setup_seconds);
        self.per_worker.push((o.messages, o.loop_busy));
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

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} {kind}");
            name.to_string()
        };
        let _ = family(
            "backend_up",
            "gauge",
            "1 if the back end takes new dialogs (connected and healthy)",
        );
        let mut out = s;
        for b in &self.backends {
            let _ = writeln!(
                out,
                "siplb_backend_up{{backend=\"{}\"}} {}",
                esc(&b.name),
                u8::from(b.up)
            );
        }
        let mut put = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "siplb_{name}{labels} {v}");
            }
        };
        let per_backend = |f: &dyn Fn(&BackendMetrics) -> String| -> Vec<(String, String)> {
            self.backends
                .iter()
                .map(|b| (format!("{{backend=\"{}\"}}", esc(&b.name)), f(b)))
                .collect()
        };
        put(
            "backend_requests_total",
            "counter",
            "Requests forwarded to the back end",
            per_backend(&|b| b.requests.to_string()),
        );
        put(
            "backend_outstanding_work",
            "gauge",
            "Transactions forwarded to the back end and not yet finally answered (INVITE: 1.75)",
            per_backend(&|b| format!("{}", b.outstanding)),
        );
        put(
            "backend_overloaded",
            "gauge",
            "1 while the back end waits out the Retry-After of a 503 it answered (no new dialogs)",
            per_backend(&|b| u8::from(b.overloaded).to_string()),
        );
        put(
            "backend_responses_total",
            "counter",
            "Responses received from the back end",
            per_backend(&|b| b.responses.to_string()),
        );
        put(
            "backend_dialogs_total",
            "counter",
            "Dialogs started on the back end (2xx to INVITE)",
            per_backend(&|b| b.dialogs.to_string()),
        );
        put(
            "backend_probe_seconds",
            "gauge",
            "Round trip of the last answered OPTIONS probe",
            per_backend(&|b| {
                b.probe_rtt
                    .map_or("NaN".into(), |d| format!("{:.6}", d.as_secs_f64()))
            }),
        );
        put(
            "backend_probes_failed_total",
            "counter",
            "OPTIONS probes unanswered or answered 5xx/6xx",
            per_backend(&|b| b.probes_failed.to_string()),
        );
        let failures = self
            .backends
            .iter()
            .flat_map(|b| {
                labelled("reason", &b.failures)
                    .into_iter()
                    .map(move |(l, n)| (format!("{{backend=\"{}\",{}", esc(&b.name), &l[1..]), n))
            })
            .collect();
        put(
            "backend_connection_failures_total",
            "counter",
            "Connection failures to the back end by reason",
            failures,
        );
        put(
            "connections_open",
            "gauge",
            "Client connections open",
            vec![(String::new(), self.connections_open.to_string())],
        );
        put(
            "connections_accepted_total",
            "counter",
            "Client connections accepted",
            vec![(String::new(), self.accepted.to_string())],
        );
        put(
            "connections_refused_total",
            "counter",
            "Client connections refused by reason",
            ["max-connections", "max-connections-per-ip"]
                .iter()
                .map(|r| {
                    let n = self.refused.get(*r).copied().unwrap_or(0);
                    (format!("{{reason=\"{r}\"}}"), n.to_string())
                })
                .collect(),
        );
        put(
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason",
            labelled("reason", &self.handshake_failures),
        );
        put(
            "clients_total",
            "counter",
            "Clients connected, by whether their certificate was verified",
            vec![
                ("{verified=\"true\"}".into(), self.clients_verified.to_string()),
                ("{verified=\"false\"}".into(), self.clients_unverified.to_string()),
            ],
        );
        put(
            "peer_connections_total",
            "counter",
            "Connections servers opened to the peer listener and that passed the name check",
            vec![(String::new(), self.peer_connections.to_string())],
        );
        put(
            "oversized_server_messages_total",
            "counter",
            "Messages from servers over --max-backend-message-bytes, skipped (the connection stays)",
            vec![(String::new(), self.oversized_from_servers.to_string())],
        );
        put(
            "output_budget_closes_total",
            "counter",
            "Connections closed because their worker's queued output passed --max-output-bytes",
            vec![(String::new(), self.output_budget_closes.to_string())],
        );
        put(
            "backpressure_pauses_total",
            "counter",
            "Times a worker stopped reading clients because servers were slow to take their messages",
            vec![(String::new(), self.backpressure_pauses.to_string())],
        );
        put(
            "bad_tokens_total",
            "counter",
            "Routing tokens refused for their MAC (minted with another key, or forged)",
            vec![(String::new(), self.bad_tokens.to_string())],
        );
        let methods = METHODS
            .iter()
            .zip(&self.requests_by_method)
            .map(|(m, n)| (format!("{{method=\"{m}\"}}"), n.to_string()))
            .collect();
        put(
            "requests_total",
            "counter",
            "Requests received, by method",
            methods,
        );
        put(
            "responses_total",
            "counter",
            "Responses received",
            vec![(String::new(), self.responses.to_string())],
        );
        put(
            "responses_dropped_total",
            "counter",
            "Responses dropped (not ours, for the other direction, or their connection had gone)",
            vec![(String::new(), self.dropped_responses.to_string())],
        );
        put(
            "messages_dropped_total",
            "counter",
            "Messages dropped, by reason",
            labelled("reason", &self.dropped),
        );
        let answers = ANSWER_CODES
            .iter()
            .zip(&self.answers)
            .map(|(c, n)| {
                (
                    format!(
                        "{{code=\"{}\"}}",
                        if *c == 0 { "other".into() } else { c.to_string() }
                    ),
                    n.to_string(),
                )
            })
            .collect();
        put(
            "generated_responses_total",
            "counter",
            "Responses siplb answered itself, by code",
            answers,
        );
        put(
            "failovers_total",
            "counter",
            "INVITEs sent again to another back end after theirs failed unanswered",
            vec![(String::new(), self.failovers.to_string())],
        );
        put(
            "rate_limited_total",
            "counter",
            "Out-of-dialog requests answered 503 because their source address passed --rate-limit-per-ip",
            vec![(String::new(), self.rate_limited.to_string())],
        );
        put(
            "shed_total",
            "counter",
            "New dialogs answered 503 because their worker was saturated (in-dialog traffic goes first)",
            vec![(String::new(), self.shed.to_string())],
        );
        put(
            "worker_saturations_total",
            "counter",
            "Times a worker became saturated (a turn over 250 ms or a quarter-full hand-off queue)",
            vec![(String::new(), self.saturations.to_string())],
        );
        put(
            "reloads_total",
            "counter",
            "Configuration reloads (SIGHUP), by whether they took effect",
            vec![
                ("{result=\"ok\"}".into(), self.reloads[0].to_string()),
                ("{result=\"failed\"}".into(), self.reloads[1].to_string()),
            ],
        );
        put(
            "retries_total",
            "counter",
            "Initial INVITEs sent to another back end, by why (503: the server was overloaded)",
            vec![
                ("{reason=\"503\"}".into(), self.retries_503.to_string()),
                ("{reason=\"server lost\"}".into(), self.failovers.to_string()),
                (
                    "{reason=\"no answer\"}".into(),
                    self.retries_no_answer.to_string(),
                ),
            ],
        );
        put(
            "handoffs_total",
            "counter",
            "Messages handed to another worker",
            vec![(String::new(), self.handoffs.to_string())],
        );
        put(
            "bytes_total",
            "counter",
            "SIP bytes read and written (plaintext)",
            vec![
                ("{direction=\"in\"}".into(), self.bytes_in.to_string()),
                ("{direction=\"out\"}".into(), self.bytes_out.to_string()),
            ],
        );
        let workers: Vec<_> = self
            .per_worker
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (format!("{{worker=\"{i}\"}}"), m.to_string()))
            .collect();
        put(
            "worker_messages_total",
            "counter",
            "Messages handled by each worker",
            workers,
        );
        let busy = self
            .per_worker
            .iter()
            .enumerate()
            .map(|(i, (_, d))| (format!("{{worker=\"{i}\"}}"), format!("{:.6}", d.as_secs_f64())))
            .collect();
        put(
            "worker_busy_seconds_total",
            "counter",
            "Time each worker's event loop spent handling events",
            busy,
        );
        for (name, help, of) in [
            (
                "backend_answer_seconds",
                "From an initial INVITE forwarded to the back end to its first answer",
                (|b: &BackendMetrics| b.answer_seconds) as fn(&BackendMetrics) -> Histogram,
            ),
            (
                "backend_probe_rtt_seconds",
                "Round trips of answered OPTIONS probes",
                |b: &BackendMetrics| b.probe_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP siplb_{name} {help}\n# TYPE siplb_{name} histogram");
            for b in &self.backends {
                of(b).rows(name, &format!("backend=\"{}\"", esc(&b.name)), &mut out);
            }
        }
        let _ = writeln!(
            out,
            "# HELP siplb_setup_seconds From an initial INVITE read from a client to the first 2xx \
             forwarded to it\n# TYPE siplb_setup_seconds histogram"
        );
        self.setup_seconds.rows("setup_seconds", "", &mut out);
        out
    }
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// One sample per reason; before the first event one sample with an empty reason (the same as no
/// label to Prometheus), so every family is there from the start.
fn labelled(label: &str, m: &BTreeMap<String, u64>) -> Vec<(String, String)> {
    if m.is_empty() {
        return vec![(format!("{{{label}=\"\"}}"), "0".into())];
    }
    m.iter()
        .map(|(k, v)| (format!("{{{label}=\"{}\"}}", esc(k)), v.to_string()))
        .collect()
}

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
