//! `sipload server`: a UAS that plays a pooled SIP server behind siplb. It answers INVITE
//! (100, 180, 200 — or rings until CANCEL when the Request-URI user starts with `hold`), ACK,
//! BYE, CANCEL (200, and 487 for the held INVITE), REGISTER (and, for the user `callback`, calls
//! the registered contact back through its Path), OPTIONS and anything else with 200. It can end
//! calls itself (`bye_after`), on the connection the call came in on, on another one, or on a
//! connection of its own to siplb's peer listener. It records every message it sees per Call-ID,
//! so a test can check that no dialog touched two servers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use super::endpoint::{Endpoint, Handler, Out};
use super::msg::{self, Dialog, text, unique};
use crate::sip::addr::{NameAddr, Uri};
use crate::sip::header::Name;
use crate::sip::{Message, Method};

/// Which connection a server-initiated BYE leaves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ByeOn {
    /// The connection the INVITE came in on.
    Same,
    /// Any other open connection from siplb (with several workers: another worker's).
    Other,
    /// A connection of the server's own to siplb's peer listener (`--peer`).
    Peer,
}

pub struct ServerOpts {
    pub listen: SocketAddr,
    /// The name in the server's certificate; also its Via and Contact host.
    pub name: String,
    pub tls: Arc<ServerConfig>,
    /// siplb's peer listener, the client config to reach it (MTLS) and siplb's name.
    pub peer: Option<(SocketAddr, Arc<ClientConfig>, ServerName<'static>)>,
    pub bye_after: Option<Duration>,
    pub bye_on: ByeOn,
    /// Accept TLS and record what arrives, but never answer (a hung server, for health tests).
    pub silent: bool,
    /// Drop the connection an INVITE arrives on, unanswered (a crash, for failover tests).
    pub crash_on_invite: bool,
    /// Faults a test can switch on (also while the server runs).
    pub faults: Faults,
    /// Keep what every call saw and its last request ([`ServerStats`]): tests and the demo read
    /// them; a load run without `--report` does not need them (two locks and a copy per message,
    /// and memory that grows with every call).
    pub record: bool,
}

/// Ways a server misbehaves, for tests of health and failover.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer an INVITE with 100 and 180, then drop its connection (a crash mid-call).
    pub crash_after_ringing: bool,
    /// Leave OPTIONS unanswered (like SIPp's UAS and some B2BUAs); may be switched at run time.
    pub ignore_options: Arc<AtomicBool>,
    /// Stop reading and answering while set (a server that falls behind).
    pub stall: Arc<AtomicBool>,
    /// Bytes of body added to the 200 for an OPTIONS to a user (a server that says a lot; the
    /// balancer's own probes, to the server's name, are answered plainly).
    pub pad_options: usize,
    /// How late an INVITE's 180 and final answer come (its 100 Trying comes at once): a busy or
    /// slow server.
    pub answer_delay: Duration,
    /// The share (0..=1) of new INVITEs and other out-of-dialog requests (OPTIONS aside) answered
    /// `503` with `Retry-After: 30` while OPTIONS pass (overloaded, licence exhausted, a B2BUA out
    /// of channels).
    pub reject_503: f64,
    /// New INVITEs per second the server takes (burst: one second's worth); beyond it `503` with
    /// `Retry-After: 1`.
    pub capacity: Option<u32>,
    /// Never answer a new INVITE, not even `100 Trying`, while OPTIONS pass (a server whose call
    /// handling hangs).
    pub mute_invites: bool,
}

/// The load a server admits: `Faults::reject_503` spread evenly, then the `capacity` bucket
/// (the balancer's own token bucket, [`crate::limit`], with one source).
struct Admission {
    /// Accumulated share of new requests owed a 503.
    owed: f64,
    capacity: Option<(crate::limit::SourceLimit, Instant)>,
}

impl Admission {
    fn new(f: &Faults) -> Admission {
        Admission {
            owed: 0.0,
            capacity: f
                .capacity
                .map(|cps| (crate::limit::SourceLimit::new(cps, [0; 16]), Instant::now())),
        }
    }

    /// `Retry-After` seconds if this new request is to be refused (`capacity` counts INVITEs).
    fn refuse(&mut self, f: &Faults, invite: bool, now: Instant) -> Option<u32> {
        self.owed += f.reject_503.clamp(0.0, 1.0);
        if self.owed >= 1.0 {
            self.owed -= 1.0;
            return Some(30);
        }
        let (bucket, epoch) = self.capacity.as_ref().filter(|_| invite)?;
        let ms = now.saturating_duration_since(*epoch).as_millis() as u64 + 1;
        (!bucket.admit(std::net::Ipv4Addr::UNSPECIFIED.into(), ms)).then_some(1)
    }
}

/// What one server saw.
#[derive(Debug, Default, Clone)]
pub struct ServerStats {
    /// Call-ID → every request method and response (`200 BYE`) seen for it, in order.
    pub calls: BTreeMap<String, Vec<String>>,
    /// Call-ID → the last request seen for it, as it arrived (what the server was told).
    pub last_request: BTreeMap<String, Vec<u8>>,
    pub connections: u64,
}

impl ServerStats {
    pub fn last_request(&self, call_id: &str) -> Option<&[u8]> {
        self.last_request.get(call_id).map(Vec::as_slice)
    }

    pub fn saw(&self, call_id: &str, what: &str) -> bool {
        self.calls
            .get(call_id)
            .is_some_and(|v| v.iter().any(|w| w == what))
    }
}

pub struct ServerHandle {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<Mutex<ServerStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn snapshot(&self) -> ServerStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) -> ServerStats {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts a server on its own thread.
pub fn spawn(opts: ServerOpts) -> std::io::Result<ServerHandle> {
    let mut ep = Endpoint::new()?;
    let addr = ep.listen(opts.listen, Arc::clone(&opts.tls))?;
    let stats = Arc::new(Mutex::new(ServerStats::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let name = opts.name.clone();
    let admission = Admission::new(&opts.faults);
    let mut uas = Uas {
        host: format!("{}:{}", opts.name, addr.port()),
        addr,
        opts,
        stats: Arc::clone(&stats),
        dialogs: HashMap::new(),
        held: HashMap::new(),
        timers: Vec::new(),
        conns: Vec::new(),
        peer_conn: None,
        admission,
    };
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(format!("sipload-{name}"))
        .spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                if uas.opts.faults.stall.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if ep.turn(&mut uas, Duration::from_millis(5)).is_err() {
                    break;
                }
                uas.tick(&mut ep);
            }
        })?;
    Ok(ServerHandle {
        addr,
        name,
        stats,
        stop,
        thread: Some(thread),
    })
}

enum Action {
    Bye(String),
    /// A delayed INVITE's 180 and final answer (`--answer-delay`).
    Answer {
        conn: usize,
        invite: Vec<u8>,
        to_tag: String,
    },
    CallBack {
        conn: usize,
        contact: String,
        path: Vec<String>,
        aor: String,
    },
}

struct Uas {
    opts: ServerOpts,
    host: String,
    /// The address it listens on: its Contact, so any proxy can reach it without DNS.
    addr: SocketAddr,
    stats: Arc<Mutex<ServerStats>>,
    /// Established dialogs: Call-ID → (connection it came on, dialog).
    dialogs: HashMap<String, (usize, Dialog)>,
    /// INVITEs ringing until CANCEL: Call-ID → (connection, the INVITE, our To tag).
    held: HashMap<String, (usize, Vec<u8>, String)>,
    timers: Vec<(Instant, Action)>,
    conns: Vec<usize>,
    peer_conn: Option<usize>,
    admission: Admission,
}

impl Uas {
    fn record(&self, call_id: &str, what: String) {
        if let Ok(mut s) = self.stats.lock() {
            s.calls.entry(call_id.to_string()).or_default().push(what);
        }
    }

    fn contact(&self) -> String {
        format!("<sip:uas@{};transport=tls>", self.addr)
    }

    fn request(&mut self, out: &mut Out, conn: usize, m: &Message, method: Method, call_id: &str) {
        // RFC 3261 §8.2.6.2: every answer to a request without a To tag carries ours (one tag
        // per request, so a 100, a 180 and the final answer name the same dialog).
        let to_tag = unique("t");
        let reply = |code, reason| msg::response(m, code, reason, Some(&to_tag), false, "");
        let new = m.to_tag().is_none() && !matches!(method, Method::Options | Method::Ack | Method::Cancel);
        if new
            && let Some(secs) =
                self.admission
                    .refuse(&self.opts.faults, method == Method::Invite, Instant::now())
        {
            let extra = format!("Retry-After: {secs}\r\n");
            let busy = msg::response(m, 503, "Service Unavailable", Some(&to_tag), false, &extra);
            out.send(conn, busy);
            return;
        }
        match method {
            Method::Invite if m.to_tag().is_some() => {
                out.send(
                    conn,
                    msg::response(
                        m,
                        200,
                        "OK",
                        None,
                        true,
                        &format!("Contact: {}\r\n", self.contact()),
                    ),
                );
            }
            Method::Invite => {
                out.send(conn, reply(100, "Trying"));
                let delay = self.opts.faults.answer_delay;
                if delay.is_zero() {
                    self.answer_invite(out, conn, m, call_id, to_tag);
                } else {
                    let invite = m.buf.to_vec();
                    self.timers
                        .push((Instant::now() + delay, Action::Answer { conn, invite, to_tag }));
                }
            }
            Method::Ack => {
                if let (Some(d), true) = (self.opts.bye_after, self.dialogs.contains_key(call_id)) {
                    self.timers
                        .push((Instant::now() + d, Action::Bye(call_id.to_string())));
                }
            }
            Method::Bye => {
                self.dialogs.remove(call_id);
                out.send(conn, reply(200, "OK"));
            }
            Method::Cancel => {
                out.send(conn, reply(200, "OK"));
                if let Some((c, invite, tag)) = self.held.remove(call_id)
                    && let Ok(inv) = Message::parse(&invite)
                {
                    out.send(
                        c,
                        msg::response(&inv, 487, "Request Terminated", Some(&tag), false, ""),
                    );
                }
            }
            Method::Register => {
                let contact = msg::values(m, Name::Contact);
                let extra = contact
                    .iter()
                    .map(|c| format!("Contact: {c};expires=3600\r\n"))
                    .collect::<String>();
                out.send(conn, msg::response(m, 200, "OK", Some(&to_tag), false, &extra));
                let aor = m.value(m.to).map(text).unwrap_or_default();
                let user = NameAddr::parse(aor.as_bytes())
                    .ok()
                    .and_then(|a| Uri::parse(a.uri).ok()?.user.map(text));
                if user.as_deref() == Some("callback")
                    && let Some(c) = contact.first()
                {
                    self.timers.push((
                        Instant::now() + Duration::from_millis(50),
                        Action::CallBack {
                            conn,
                            contact: msg::uri_of(c),
                            path: msg::values(m, Name::Path),
                            aor: aor.clone(),
                        },
                    ));
                }
            }
            Method::Options
                if self.opts.faults.pad_options > 0
                    && m.request_uri().and_then(|u| Uri::parse(u).ok()?.user).is_some() =>
            {
                let pad = msg::with_body("text/plain", &"p".repeat(self.opts.faults.pad_options));
                out.send(conn, msg::response(m, 200, "OK", Some(&to_tag), false, &pad));
            }
            _ => out.send(conn, reply(200, "OK")),
        }
    }

    /// 180, then 200 (or, for a `hold…` user, ringing until CANCEL) for a new INVITE.
    fn answer_invite(&mut self, out: &mut Out, conn: usize, m: &Message, call_id: &str, to_tag: String) {
        out.send(conn, msg::response(m, 180, "Ringing", Some(&to_tag), true, ""));
        let user = m
            .request_uri()
            .and_then(|u| Uri::parse(u).ok()?.user)
            .unwrap_or(b"");
        if user.starts_with(b"hold") {
            self.held
                .insert(call_id.to_string(), (conn, m.buf.to_vec(), to_tag));
            return;
        }
        let body = msg::sdp("192.0.2.20", 30000);
        let extra = format!(
            "Contact: {}\r\n{}",
            self.contact(),
            msg::with_body("application/sdp", &body)
        );
        out.send(conn, msg::response(m, 200, "OK", Some(&to_tag), true, &extra));
        let get = |f| m.value(f).map(text).unwrap_or_default();
        let contact = msg::values(m, Name::Contact)
            .first()
            .map(|c| msg::uri_of(c))
            .unwrap_or_default();
        let dialog = Dialog {
            call_id: call_id.to_string(),
            local: format!("{};tag={to_tag}", get(m.to)),
            remote: get(m.from),
            remote_target: contact,
            route: msg::values(m, Name::RecordRoute),
            cseq: 0,
            host: self.host.clone(),
        };
        self.dialogs.insert(call_id.to_string(), (conn, dialog));
    }

    /// A response to a request this server sent (its BYE, its call-back INVITE).
    fn response(&mut self, out: &mut Out, conn: usize, m: &Message, call_id: &str) {
        let (Some(code), Some((_, _, Method::Invite))) = (m.status(), m.cseq) else {
            return;
        };
        if !(200..300).contains(&code) {
            return;
        }
        let Some((_, d)) = self.dialogs.get_mut(call_id) else {
            return;
        };
        // We were the UAC.
        d.confirm(m);
        let cseq = m.cseq.map_or(1, |c| c.1);
        out.send(conn, d.request("ACK", Some(cseq), None, ""));
        let after = self.opts.bye_after.unwrap_or(Duration::from_millis(50));
        self.timers
            .push((Instant::now() + after, Action::Bye(call_id.to_string())));
    }

    fn bye_conn(&mut self, ep: &mut Endpoint, came_on: usize) -> usize {
        match self.opts.bye_on {
            ByeOn::Same => came_on,
            ByeOn::Other => self
                .conns
                .iter()
                .copied()
                .find(|&c| c != came_on && ep.is_open(c))
                .unwrap_or(came_on),
            ByeOn::Peer => {
                if let Some(c) = self.peer_conn.filter(|&c| ep.is_open(c)) {
                    return c;
                }
                let Some((addr, tls, name)) = self.opts.peer.clone() else {
                    return came_on;
                };
                match ep.connect(addr, tls, name) {
                    Ok(c) => {
                        self.peer_conn = Some(c);
                        c
                    }
                    Err(_) => came_on,
                }
            }
        }
    }

    fn tick(&mut self, ep: &mut Endpoint) {
        let now = Instant::now();
        let due: Vec<Action> = {
            let (due, later): (Vec<_>, Vec<_>) = self.timers.drain(..).partition(|(t, _)| *t <= now);
            self.timers = later;
            due.into_iter().map(|(_, a)| a).collect()
        };
        for a in due {
            match a {
                Action::Answer { conn, invite, to_tag } => {
                    let Ok(m) = Message::parse(&invite) else { continue };
                    let call_id = m.call_id().map(text).unwrap_or_default();
                    let mut out = Out::default();
                    self.answer_invite(&mut out, conn, &m, &call_id, to_tag);
                    for (c, bytes) in out.queue {
                        ep.send(c, &bytes);
                    }
                }
                Action::Bye(call_id) => {
                    let Some((came_on, _)) = self.dialogs.get(&call_id).map(|(c, d)| (*c, d.clone())) else {
                        continue;
                    };
                    let conn = self.bye_conn(ep, came_on);
                    if let Some((_, d)) = self.dialogs.get_mut(&call_id) {
                        let bye = d.request("BYE", None, None, "");
                        ep.send(conn, &bye);
                        self.record(&call_id, "sent BYE".into());
                    }
                }
                Action::CallBack {
                    conn,
                    contact,
                    path,
                    aor,
                } => {
                    let call_id = unique("cb-");
                    let mut d = Dialog {
                        call_id: call_id.clone(),
                        local: format!("<sip:registrar@{}>;tag={}", self.host, unique("r")),
                        remote: aor,
                        remote_target: contact,
                        route: path,
                        cseq: 0,
                        host: self.host.clone(),
                    };
                    let invite = d.request("INVITE", None, None, &format!("Contact: {}\r\n", self.contact()));
                    ep.send(conn, &invite);
                    self.record(&call_id, "sent INVITE".into());
                    self.dialogs.insert(call_id, (conn, d));
                }
            }
        }
    }
}

impl Handler for Uas {
    fn on_message(&mut self, out: &mut Out, conn: usize, m: &Message) {
        let call_id = m.call_id().map(text).unwrap_or_default();
        let what = match (m.method(), m.status(), m.cseq) {
            (Some(meth), _, _) => text(meth.as_bytes()),
            (None, Some(code), Some((_, _, meth))) => format!("{code} {}", text(meth.as_bytes())),
            _ => "?".into(),
        };
        if self.opts.record {
            self.record(&call_id, what);
            if m.is_request()
                && let Ok(mut s) = self.stats.lock()
            {
                s.last_request.insert(call_id.clone(), m.buf.to_vec());
            }
        }
        if self.opts.silent {
            return;
        }
        if self.opts.crash_on_invite && m.method() == Some(Method::Invite) {
            out.drop.push(conn);
            return;
        }
        if m.method() == Some(Method::Options) && self.opts.faults.ignore_options.load(Ordering::Relaxed) {
            return;
        }
        if self.opts.faults.mute_invites && m.method() == Some(Method::Invite) && m.to_tag().is_none() {
            return;
        }
        if self.opts.faults.crash_after_ringing && m.method() == Some(Method::Invite) {
            out.send(conn, msg::response(m, 100, "Trying", None, false, ""));
            out.send(
                conn,
                msg::response(m, 180, "Ringing", Some(&unique("t")), true, ""),
            );
            out.drop.push(conn);
            return;
        }
        match m.method() {
            Some(meth) => self.request(out, conn, m, meth, &call_id),
            None => self.response(out, conn, m, &call_id),
        }
    }

    fn on_open(&mut self, conn: usize, _peer: SocketAddr) {
        self.conns.push(conn);
        if let Ok(mut s) = self.stats.lock() {
            s.connections += 1;
        }
    }

    fn on_close(&mut self, conn: usize, _why: super::endpoint::Closed, _error: Option<&str>) {
        self.conns.retain(|&c| c != conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_admits_cps_new_invites_a_second_and_reject_503_its_share() {
        let f = Faults {
            capacity: Some(10),
            ..Faults::default()
        };
        let mut a = Admission::new(&f);
        let t0 = Instant::now();
        let refused =
            |a: &mut Admission, at: Instant| (0..30).filter(|_| a.refuse(&f, true, at).is_some()).count();
        assert_eq!(refused(&mut a, t0), 20, "a burst of one second's worth");
        assert_eq!(
            refused(&mut a, t0 + Duration::from_secs(1)),
            20,
            "then 10 a second"
        );
        assert_eq!(a.refuse(&f, false, t0), None, "capacity counts INVITEs only");
        let half = Faults {
            reject_503: 0.5,
            ..Faults::default()
        };
        let mut b = Admission::new(&half);
        let n = (0..100)
            .filter(|_| b.refuse(&half, false, t0) == Some(30))
            .count();
        assert_eq!(n, 50);
    }
}
