//! `sipload call`: a UAC that places N calls at R calls/s with at most L in flight, over one
//! persistent TLS connection or a new one per call. Each call is INVITE → 200 → ACK → (hold) →
//! BYE → 200; a BYE from the far end ends it too. Reports calls/s, failures by reason and setup
//! latency (INVITE to 200) percentiles, with a progress bar while it runs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::endpoint::{Closed, Endpoint, Handler, Out};
use super::msg::{self, Dialog, text, unique};
use crate::sip::{Message, Method};

#[derive(Clone)]
pub struct CallOpts {
    pub target: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
    pub calls: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub per_call_connection: bool,
    /// Time between ACK and our BYE.
    pub hold: Duration,
    /// Wait for the far end's BYE instead of sending one.
    pub remote_bye: bool,
    pub timeout: Duration,
    pub ruri: String,
    /// Give every call its own Request-URI user (`u<n>`), for `--balance ruri-user`.
    pub vary_user: bool,
    /// Host of the caller's From, Contact and Via.
    pub from_domain: String,
    /// Call over a WebSocket (SIP over WSS, RFC 7118) instead of plain TLS.
    pub ws: bool,
    pub progress: bool,
    /// As an RFC 3263 client does: a call whose connection fails before any answer, or that is
    /// answered 503, is tried once more on a new connection.
    pub retry: bool,
}

#[derive(Debug, Default, Clone)]
pub struct CallReport {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Setup latencies of the calls that were answered, sorted.
    pub setup: Vec<Duration>,
    pub call_ids: Vec<String>,
    pub failures: BTreeMap<String, usize>,
}

impl CallReport {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.setup.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.setup.len() as f64 - 1.0) * p / 100.0).round() as usize;
        self.setup[i.min(self.setup.len() - 1)]
    }

    /// The mean setup latency of the calls that were answered.
    pub fn mean(&self) -> Duration {
        let n = self.setup.len().max(1) as u32;
        self.setup.iter().sum::<Duration>() / n
    }

    pub fn calls_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut s = format!(
            "calls: {} ok, {} failed in {:.2}s ({:.1} calls/s); setup latency ms mean {:.2} p50 {:.2} p90 {:.2} p99 {:.2}",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.calls_per_sec(),
            ms(self.mean()),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
        );
        for (why, n) in &self.failures {
            s.push_str(&format!("\n  failed: {n} × {why}"));
        }
        s
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Inviting,
    Talking,
    Ending,
}

struct Call {
    conn: usize,
    started: Instant,
    state: State,
    dialog: Dialog,
    bye_at: Option<Instant>,
    /// The INVITE as sent, while it may be sent once more (`retry`).
    invite: Option<Vec<u8>>,
    /// Some answer came back.
    answered: bool,
}

struct Uac {
    opts: CallOpts,
    calls: HashMap<String, Call>,
    report: CallReport,
    /// Connections that carried a call that ended (per-call mode closes them).
    finished_conns: Vec<usize>,
    /// Calls to send once more, on a new connection.
    retry: Vec<String>,
}

impl Uac {
    fn end(&mut self, call_id: &str, failure: Option<String>) {
        let Some(c) = self.calls.remove(call_id) else {
            return;
        };
        match failure {
            None => self.report.ok += 1,
            Some(why) => {
                self.report.failed += 1;
                *self.report.failures.entry(why).or_default() += 1;
            }
        }
        self.finished_conns.push(c.conn);
    }
}

impl Handler for Uac {
    fn on_message(&mut self, out: &mut Out, conn: usize, m: &Message) {
        let call_id = m.call_id().map(text).unwrap_or_default();
        if let Some(meth) = m.method() {
            out.send(conn, msg::response(m, 200, "OK", Some(&unique("u")), false, ""));
            if meth == Method::Bye && self.calls.contains_key(&call_id) {
                self.end(&call_id, None);
            }
            return;
        }
        let (Some(code), Some((_, cseq, meth))) = (m.status(), m.cseq) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if meth == Method::Invite && code == 503 && call.state == State::Inviting && call.invite.is_some() {
            self.retry.push(call_id);
            return;
        }
        call.answered = true;
        match (meth, code) {
            (_, 100..=199) => {}
            (Method::Invite, 200..=299) if call.state == State::Inviting => {
                self.report.setup.push(call.started.elapsed());
                let d = &mut call.dialog;
                d.confirm(m);
                out.send(conn, d.request("ACK", Some(cseq), None, ""));
                call.state = State::Talking;
                if !self.opts.remote_bye {
                    call.bye_at = Some(Instant::now() + self.opts.hold);
                }
            }
            (Method::Invite, 200..=299) => {} // a retransmitted 200
            (Method::Invite, _) => self.end(&call_id, Some(format!("INVITE answered {code}"))),
            (Method::Bye, 200..=299) => self.end(&call_id, None),
            (Method::Bye, _) => self.end(&call_id, Some(format!("BYE answered {code}"))),
            _ => {}
        }
    }

    fn on_close(&mut self, conn: usize, why: Closed, error: Option<&str>) {
        let lost: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.conn == conn)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            let again = self
                .calls
                .get(&id)
                .is_some_and(|c| c.state == State::Inviting && !c.answered && c.invite.is_some());
            if again {
                self.retry.push(id);
            } else {
                let failure = match error {
                    Some(e) => format!("{} ({e})", why.as_str()),
                    None => why.as_str().into(),
                };
                self.end(&id, Some(failure));
            }
        }
    }
}

/// Places the calls and returns what happened.
pub fn run(opts: CallOpts) -> std::io::Result<CallReport> {
    let mut ep = Endpoint::new()?;
    let mut uac = Uac {
        opts: opts.clone(),
        calls: HashMap::new(),
        report: CallReport::default(),
        finished_conns: Vec::new(),
        retry: Vec::new(),
    };
    let start = Instant::now();
    let mut started = 0usize;
    let mut persistent: Option<usize> = None;
    let mut last_progress = Instant::now();
    // indicatif draws only on a terminal: a pipe or a file gets the summary alone.
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(opts.calls as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} calls, {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    while started < opts.calls || !uac.calls.is_empty() {
        let now = Instant::now();
        // Start the calls that are due, within the concurrency limit.
        while started < opts.calls
            && uac.calls.len() < opts.concurrency
            && start + interval * started as u32 <= now
        {
            let conn = if opts.per_call_connection {
                open(&mut ep, &opts)?
            } else {
                match persistent.filter(|&c| ep.is_open(c)) {
                    Some(c) => c,
                    None => {
                        let c = open(&mut ep, &opts)?;
                        persistent = Some(c);
                        c
                    }
                }
            };
            let call_id = unique("call-");
            let ruri = if opts.vary_user {
                let host = opts.ruri.rsplit(['@', ':']).next().unwrap_or("invalid");
                format!("sip:u{started}@{host}")
            } else {
                opts.ruri.clone()
            };
            let mut dialog = Dialog {
                call_id: call_id.clone(),
                local: format!("<sip:caller@{}>;tag={}", opts.from_domain, unique("f")),
                remote: format!("<{ruri}>"),
                remote_target: ruri,
                route: Vec::new(),
                cseq: 0,
                host: opts.from_domain.clone(),
            };
            let body = msg::sdp("192.0.2.10", 40000);
            let extra = format!(
                "Contact: <sip:caller@{};transport=tls>\r\n{}",
                opts.from_domain,
                msg::with_body("application/sdp", &body)
            );
            let invite = dialog.request("INVITE", None, None, &extra);
            ep.send(conn, &invite);
            uac.report.call_ids.push(call_id.clone());
            uac.calls.insert(
                call_id,
                Call {
                    conn,
                    started: Instant::now(),
                    state: State::Inviting,
                    dialog,
                    bye_at: None,
                    invite: opts.retry.then_some(invite),
                    answered: false,
                },
            );
            started += 1;
        }
        ep.turn(&mut uac, Duration::from_millis(1))?;
        // Calls to try once more: a new connection (the old one failed, or its server is going).
        for id in std::mem::take(&mut uac.retry) {
            let Some(invite) = uac.calls.get_mut(&id).and_then(|c| c.invite.take()) else {
                continue;
            };
            let conn = match open(&mut ep, &opts) {
                Ok(c) => c,
                Err(e) => {
                    uac.end(&id, Some(format!("retry: {e}")));
                    continue;
                }
            };
            if !opts.per_call_connection {
                persistent = Some(conn);
            }
            if let Some(c) = uac.calls.get_mut(&id) {
                c.conn = conn;
            }
            ep.send(conn, &invite);
        }
        let now = Instant::now();
        // BYEs that are due, and calls that took too long.
        let mut timed_out = Vec::new();
        for (id, c) in uac.calls.iter_mut() {
            if c.bye_at.is_some_and(|t| t <= now) {
                c.bye_at = None;
                c.state = State::Ending;
                let bye = c.dialog.request("BYE", None, None, "");
                ep.send(c.conn, &bye);
            }
            if now.duration_since(c.started) > opts.timeout {
                let secs = opts.timeout.as_secs_f64();
                let why = if ep.is_handshaking(c.conn) {
                    format!("TLS handshake not finished within {secs} s")
                } else {
                    match c.state {
                        State::Inviting => format!("no final answer to the INVITE within {secs} s"),
                        State::Talking => format!("no BYE from the far end within {secs} s"),
                        State::Ending => format!("no answer to the BYE within {secs} s"),
                    }
                };
                timed_out.push((id.clone(), why));
            }
        }
        for (id, why) in timed_out {
            uac.end(&id, Some(why));
        }
        if opts.per_call_connection {
            for conn in uac.finished_conns.drain(..) {
                ep.close(conn);
            }
        } else {
            uac.finished_conns.clear();
        }
        if let Some(b) = bar
            .as_ref()
            .filter(|_| now.duration_since(last_progress) > Duration::from_millis(250))
        {
            last_progress = now;
            progress(b, &uac.report);
        }
    }
    if let Some(b) = &bar {
        progress(b, &uac.report);
        b.finish();
    }
    uac.report.elapsed = start.elapsed();
    uac.report.setup.sort();
    Ok(uac.report)
}

fn progress(bar: &indicatif::ProgressBar, r: &CallReport) {
    bar.set_position((r.ok + r.failed) as u64);
    bar.set_message(format!("{} failed", r.failed));
}

/// A new connection to the target, over TLS or WebSocket as `opts` say.
fn open(ep: &mut Endpoint, opts: &CallOpts) -> std::io::Result<usize> {
    if opts.ws {
        ep.connect_ws(opts.target, Arc::clone(&opts.tls), opts.server_name.clone())
    } else {
        ep.connect(opts.target, Arc::clone(&opts.tls), opts.server_name.clone())
    }
}
