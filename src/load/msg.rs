//! Building SIP text for the load tools (not the balancer's hot path, so plain formatting):
//! responses that copy what RFC 3261 §8.2.6 says, in-dialog requests with a route set, and the
//! identifiers (tags, branches, Call-IDs) end points make up.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sip::Message;
use crate::sip::addr::NameAddr;
use crate::sip::header::Name;

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A short unique token: process id, a counter, and the clock.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{:x}{n:x}{t:x}", std::process::id())
}

pub fn branch() -> String {
    unique("z9hG4bK")
}

/// All values of one header, in order, over every line it appears on.
pub fn values(m: &Message, name: Name) -> Vec<String> {
    m.values_of(name).map(text).collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The URI inside a name-addr value (`<sip:x>;p` → `sip:x`).
pub fn uri_of(v: &str) -> String {
    NameAddr::parse(v.as_bytes()).map_or_else(|_| v.to_string(), |a| text(a.uri))
}

/// A response to `req`: its Via values, From, To (with `to_tag` if it has none), Call-ID, CSeq;
/// `record_route` copies Record-Route too (2xx and 1xx to dialog-forming requests).
pub fn response(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    record_route: bool,
    extra: &str,
) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in values(req, Name::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    if record_route {
        for v in values(req, Name::RecordRoute) {
            s.push_str(&format!("Record-Route: {v}\r\n"));
        }
    }
    let get = |f| req.value(f).map(text).unwrap_or_default();
    s.push_str(&format!("From: {}\r\n", get(req.from)));
    let to = get(req.to);
    match (to_tag, req.to_tag()) {
        (Some(t), None) => s.push_str(&format!("To: {to};tag={t}\r\n")),
        _ => s.push_str(&format!("To: {to}\r\n")),
    }
    s.push_str(&format!("Call-ID: {}\r\n", get(req.call_id)));
    s.push_str(&format!(
        "CSeq: {}\r\n",
        req.value(req.cseq.map(|c| c.0)).map(text).unwrap_or_default()
    ));
    s.push_str(extra);
    if !extra.contains("Content-Length") {
        s.push_str("Content-Length: 0\r\n\r\n");
    }
    s.into_bytes()
}

/// One side of a dialog, enough to send in-dialog requests (RFC 3261 §12.2.1.1).
#[derive(Debug, Clone, Default)]
pub struct Dialog {
    pub call_id: String,
    /// Our From value (with our tag) and the peer's To value (with its tag).
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub route: Vec<String>,
    pub cseq: u32,
    /// Our Via sent-by host.
    pub host: String,
}

impl Dialog {
    /// The caller's side takes the 2xx to its INVITE: the callee's tag (To), the route set (the
    /// Record-Route list reversed, RFC 3261 §12.1.2) and the remote target (Contact, if any).
    pub fn confirm(&mut self, ok: &Message) {
        self.remote = ok.value(ok.to).map(text).unwrap_or_default();
        self.route = values(ok, Name::RecordRoute).into_iter().rev().collect();
        if let Some(c) = values(ok, Name::Contact).first() {
            self.remote_target = uri_of(c);
        }
    }

    /// An in-dialog request; `branch` reuses a branch (ACK of a non-2xx, CANCEL), else a new one.
    pub fn request(&mut self, method: &str, cseq: Option<u32>, branch: Option<&str>, extra: &str) -> Vec<u8> {
        let n = cseq.unwrap_or_else(|| {
            self.cseq += 1;
            self.cseq
        });
        let br = branch.map_or_else(self::branch, str::to_string);
        let mut s = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/TLS {};branch={br}\r\nMax-Forwards: 70\r\n",
            self.remote_target, self.host
        );
        for r in &self.route {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        s.push_str(&format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {n} {method}\r\n{extra}",
            self.local, self.remote, self.call_id
        ));
        if !extra.contains("Content-Length") {
            s.push_str("Content-Length: 0\r\n\r\n");
        }
        s.into_bytes()
    }
}

/// A short SDP offer/answer, so INVITEs look like the real thing.
pub fn sdp(host: &str, port: u16) -> String {
    format!(
        "v=0\r\no=sipload 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// Headers for a body: type and length, then the empty line and the body.
pub fn with_body(content_type: &str, body: &str) -> String {
    format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}
