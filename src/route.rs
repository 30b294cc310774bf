//! The routing contract (stateless, RFC 3261 §16; the README's "Routing") as a pure decision: given a
//! message, where it came from and which back ends can take new dialogs, say where it goes and
//! prepare its rewrite — no sockets, no threads, so it is unit-tested and fuzzed on its own. The
//! worker carries out the [`Decision`].
//!
//! Everything routing needs travels in the message: our Via's branch names the connection its
//! response must go back to; our Record-Route / Path URI names the client connection and the back
//! end the dialog is pinned to; both are MAC-protected [`Token`]s.

use std::borrow::Cow;
use std::sync::Arc;

use crate::balance::{self, Backend, BalanceKey};
use crate::sip::rewrite::{Forward, Record};
use crate::sip::scan;
use crate::sip::token::TOKEN_LEN;
use crate::sip::via::Via;
use crate::sip::{Field, Message, Method, Rewrite, Role, Token, TokenCache, TokenKey};

/// Length of our branch after the magic cookie and before `-<token>`: 16 hex characters of
/// transaction hash (RFC 3261 §16.11) and 8 of loop hash (§16.3).
pub const BRANCH_HASH: usize = 24;

/// Seconds a 503 asks the client to wait.
pub const RETRY_AFTER: u32 = 5;

/// When a REGISTER gets a Path (`--path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PathMode {
    /// Only when the UA says `Supported: path` (RFC 3327 §5.2).
    #[default]
    Supported,
    /// Always (for registrars known to support Path and UAs that do not announce it).
    Always,
}

/// What a back end can take in this worker now, from least to most (so `min` limits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Avail {
    /// No usable connection.
    Down,
    /// Connected but failing its health checks (or draining): its own dialogs and transactions
    /// only.
    Connected,
    /// Takes new dialogs too.
    Up,
}

impl From<bool> for Avail {
    fn from(up: bool) -> Avail {
        if up { Avail::Up } else { Avail::Down }
    }
}

/// What stays the same for every message a worker routes: one per worker, rebuilt when a reload
/// or the operator changes the back ends (and told each turn whether siplb is draining).
pub struct Router {
    pub key: Arc<TokenKey>,
    /// `host:port` clients see: our Via on requests to clients, the client-facing Record-Route.
    pub advertise: String,
    /// Its host part, to recognise our own Route and Via.
    pub adv_host: String,
    /// `host:port` and host that servers see (the peer listener): our Via on requests to
    /// servers, the server-facing Record-Route entry and Path. `None` without a peer listener:
    /// then servers reach clients over the connections siplb opened (RFC 5923 alias) and
    /// Record-Route has one entry.
    pub server_side: Option<(String, String)>,
    /// `host:port` and host WebSocket clients see (`--advertise-wss`), with WSS listeners: the
    /// client-facing Record-Route of a WebSocket client's dialogs names it, with `transport=ws`.
    pub wss: Option<(String, String)>,
    /// The back ends as routing sees them (draining ones with weight 0).
    pub backends: Vec<Backend>,
    pub balance: BalanceKey,
    pub path: PathMode,
    /// Shutting down: new dialogs and transactions get 503, dialogs in flight go on.
    pub draining: bool,
    /// Each back end's outstanding work (`--balance least-work`; missing counts as none).
    pub work: Vec<Arc<crate::balance::work::Work>>,
}

/// The back ends as one worker can use them at this moment, for a [`Router`]'s decision.
pub trait Pick {
    /// What back end `b` can take now.
    fn avail(&self, b: usize) -> Avail;
    /// The connection a request for `b` goes out on (its pool connections in turn); `None` when
    /// it has none.
    fn pick(&mut self, b: usize) -> Option<usize>;
}

/// Back ends as a function says (up, connected or down), each with one connection (0) while not
/// down: for tests, the fuzzer and benchmarks.
pub struct ByAvail<F>(pub F);

impl<F: Fn(usize) -> A, A: Into<Avail>> Pick for ByAvail<F> {
    fn avail(&self, b: usize) -> Avail {
        (self.0)(b).into()
    }
    fn pick(&mut self, b: usize) -> Option<usize> {
        (self.avail(b) != Avail::Down).then_some(0)
    }
}

/// Where an INVITE's transaction stands, for its CANCEL and the ACK of a non-2xx answer (the
/// worker remembers where each INVITE went).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// At back end `0`: they go there too.
    Backend(usize),
    /// siplb gave the final answer itself: a CANCEL is answered, the ACK ends here.
    AnsweredByUs,
}

/// Call-ID prefix of siplb's own OPTIONS probes: their answers never leave siplb.
pub const PROBE_PREFIX: &[u8] = b"siplb-probe-";

/// The connection a message came in on.
pub struct Origin<'a> {
    pub worker: u16,
    pub slot: u32,
    pub generation: u32,
    /// Our Via token naming this connection (role `ClientVia` on a client connection,
    /// `ServerVia` on a server's).
    pub token: &'a [u8; TOKEN_LEN],
    pub peer_ip: &'a [u8],
    pub peer_port: u16,
    /// A back-end server (pool or peer connection) rather than a client.
    pub from_server: bool,
    /// A WebSocket client (`--listen-wss`).
    pub ws: bool,
    /// Which back end, when the connection is a server's and it is known.
    pub backend: Option<usize>,
    /// Where this request's INVITE transaction stands, for a CANCEL or the ACK of a non-2xx
    /// answer.
    pub follow: Option<Follow>,
    /// Record-Route / Path tokens of this (client) connection per back end, made on first use.
    pub rr_cache: &'a mut Vec<Option<RouteTokens>>,
}

/// A client connection's Record-Route tokens for one back end: client-facing, server-facing.
pub type RouteTokens = [[u8; TOKEN_LEN]; 2];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Write the message as `rewrite` changes it to connection `conn`, one of this worker's to
    /// `backend`.
    ToBackend {
        backend: usize,
        conn: usize,
        rewrite: &'r Rewrite,
    },
    /// Write the message as `rewrite` changes it to the connection `to` names (here or on another
    /// worker); `request` says whether a missing connection is answered (430) or only counted.
    /// The token's role says which kind of connection it must be.
    ToConnection {
        to: Token,
        request: bool,
        rewrite: &'r Rewrite,
    },
    /// Answer the request ourselves.
    Answer {
        code: u16,
        reason: Cow<'static, str>,
        retry_after: Option<u32>,
    },
    /// Drop it (a response that is not ours) and count it.
    Drop(&'static str),
    /// A server's answer to a probe: the pool looks at it; it goes nowhere else.
    ProbeAnswer,
    /// It ends here: the ACK of a final answer siplb gave itself.
    Absorbed,
}

fn answer(code: u16, reason: impl Into<Cow<'static, str>>) -> Decision<'static> {
    Decision::Answer {
        code,
        reason: reason.into(),
        retry_after: None,
    }
}

fn unavailable() -> Decision<'static> {
    Decision::Answer {
        code: 503,
        reason: "Service Unavailable".into(),
        retry_after: Some(RETRY_AFTER),
    }
}

/// Our Route on top of a request: where it is, the token it carries (if valid), and whether the
/// value after it is ours too (the other half of our double Record-Route).
struct OurRoute {
    field: Field,
    token: Option<Token>,
    second: bool,
}

impl Router {
    /// Decides what happens to `m`; when it is forwarded, the decision carries its rewrite
    /// (prepared in `rw`, whose buffer is reused message after message). `pool` says what a
    /// back end can take now (in this worker) and gives the connection a request goes out on.
    pub fn decide<'r>(
        &self,
        m: &Message,
        from: &mut Origin,
        pool: &mut impl Pick,
        tokens: &mut TokenCache,
        rw: &'r mut Rewrite,
    ) -> Decision<'r> {
        if from.from_server
            && from.backend.is_some()
            && !m.is_request()
            && m.call_id().is_some_and(|c| c.starts_with(PROBE_PREFIX))
        {
            return Decision::ProbeAnswer;
        }
        match (m.is_request(), from.from_server) {
            (true, false) => self.client_request(m, from, pool, tokens, rw),
            (true, true) => self.server_request(m, from, tokens, rw),
            (false, from_server) => self.response(m, from_server, tokens, rw),
        }
    }

    /// Rule 1: a request from a client goes to the pinned or the hashed back end.
    fn client_request<'r>(
        &self,
        m: &Message,
        from: &mut Origin,
        pool: &mut impl Pick,
        tokens: &mut TokenCache,
        rw: &'r mut Rewrite,
    ) -> Decision<'r> {
        let method = m.method().unwrap_or(Method::Options);
        if from.follow == Some(Follow::AnsweredByUs) {
            return match method {
                Method::Cancel => answer(200, "OK"),
                _ => Decision::Absorbed,
            };
        }
        let (via, mf, lh) = match self.check_request(m, false) {
            Ok(v) => v,
            Err(d) => return d,
        };
        if self.draining && m.to_tag().is_none() && !matches!(method, Method::Ack | Method::Cancel) {
            return Decision::Answer {
                code: 503,
                reason: "Service Unavailable (shutting down)".into(),
                retry_after: Some(RETRY_AFTER),
            };
        }
        let ours = self.our_route(m, tokens);
        let pin = match ours.as_ref().and_then(|r| r.token) {
            // A Route meant for servers (our Path or server-facing Record-Route) arriving from a
            // client side: never turned around to a server on siplb's own say-so.
            Some(t) if t.role == Role::ServerRoute => {
                return answer(403, "Server-Facing Route Used By A Client");
            }
            Some(t) if t.role == Role::ClientRoute && t.pin != 0 => Some(t.pin),
            _ => None,
        };
        let connected = |b: usize| pool.avail(b) != Avail::Down;
        let chosen = match (from.follow, pin) {
            // CANCEL and the ACK of a non-2xx go where their INVITE went.
            (Some(Follow::Backend(b)), _) if connected(b) => Some(b),
            // A pinned dialog stays on its back end while any connection to it is up, whatever
            // its probes say, and is never re-hashed onto a server that does not have it (nor
            // onto none, when the pin names a back end since removed).
            (_, Some(p)) => balance::by_pin(p, &self.backends).filter(|&b| connected(b)),
            _ if self.balance == BalanceKey::LeastWork => balance::least_work(
                self.balance.key(m),
                &self.backends,
                |b| pool.avail(b) == Avail::Up,
                |b| self.work.get(b).map_or(0, |w| w.units()),
            ),
            _ => balance::choose(self.balance.key(m), &self.backends, |b| {
                pool.avail(b) == Avail::Up
            }),
        };
        let Some((be, conn)) = chosen.and_then(|b| Some((b, pool.pick(b)?))) else {
            return unavailable();
        };
        let sips = is_sips(m);
        let dialog = forms_dialog(m, method);
        let path = !dialog && method == Method::Register && self.wants_path(m);
        let t = (dialog || path).then(|| self.rr_tokens(from, be));
        let rr = match &t {
            Some(t) if dialog => {
                let client = match self.wss.as_ref().filter(|_| from.ws) {
                    Some((wss, _)) => Record {
                        ws: true,
                        ..self.record("Record-Route", wss, &t[0], sips)
                    },
                    None => self.record("Record-Route", &self.advertise, &t[0], sips),
                };
                match &self.server_side {
                    // Topmost the entry the server follows, then the one the client will
                    // (RFC 5658).
                    Some((side, _)) => [Some(self.record("Record-Route", side, &t[1], sips)), Some(client)],
                    None => [Some(client), None],
                }
            }
            // A WebSocket client (a browser) can only be reached over its flow: `ob` (RFC 5626
            // §5.2) tells the registrar so.
            Some(t) => [
                Some(Record {
                    ob: from.ws,
                    ..self.record("Path", self.server_addr(), &t[1], sips)
                }),
                None,
            ],
            None => [None, None],
        };
        let branch = self.branch(m, &via, lh);
        let fwd = Forward {
            received: Some((from.peer_ip, from.peer_port)),
            sent_by: self.server_addr().as_bytes(),
            ws: false,
            alias: true,
            branch: &branch,
            token: from.token,
            pop_route: ours.map(|r| (r.field, r.second)),
            max_forwards: mf,
            require_path: path,
            record: rr,
        };
        match rw.forward_request(m, &via, &fwd) {
            Ok(()) => Decision::ToBackend {
                backend: be,
                conn,
                rewrite: rw,
            },
            Err(e) => answer(400, format!("Cannot Forward: {e}")),
        }
    }

    /// Rule 3: a request from a server goes to the client connection its Route token names.
    fn server_request<'r>(
        &self,
        m: &Message,
        from: &Origin,
        tokens: &mut TokenCache,
        rw: &'r mut Rewrite,
    ) -> Decision<'r> {
        let (via, mf, lh) = match self.check_request(m, true) {
            Ok(v) => v,
            Err(d) => return d,
        };
        let method = m.method().unwrap_or(Method::Options);
        let Some(OurRoute {
            field,
            token: Some(t),
            second,
        }) = self.our_route(m, tokens)
        else {
            return answer(404, "No siplb Route To A Client");
        };
        if !matches!(t.role, Role::ServerRoute | Role::ClientRoute) {
            return answer(404, "No siplb Route To A Client");
        }
        // A client connection of another instance (sharing the key): not one of ours, as if it
        // had closed (RFC 5626).
        if t.instance != self.key.instance() {
            return answer(430, "Flow Failed");
        }
        let sips = is_sips(m);
        // A new dialog from the server (an INVITE to a registered client, say) is record-routed
        // too, pinned to this server, so the client's in-dialog requests come back to it.
        let pinned = |role| {
            self.key.encode(Token {
                role,
                pin: from.backend.map_or(0, |b| self.backends[b].pin),
                ..t
            })
        };
        // A WebSocket client (its token says so) sees siplb's WebSocket side (RFC 7118).
        let to_ws = self.wss.as_ref().filter(|_| t.ws).map(|(a, _)| a.as_str());
        let (client_tok, server_tok);
        let rr = match from.backend {
            Some(_) if forms_dialog(m, method) => {
                client_tok = pinned(Role::ClientRoute);
                server_tok = pinned(Role::ServerRoute);
                let client = match to_ws {
                    Some(wss) => Record {
                        ws: true,
                        ..self.record("Record-Route", wss, &client_tok, sips)
                    },
                    None => self.record("Record-Route", &self.advertise, &client_tok, sips),
                };
                // Topmost the entry the client follows, then the one servers do.
                match &self.server_side {
                    Some((side, _)) => [
                        Some(client),
                        Some(self.record("Record-Route", side, &server_tok, sips)),
                    ],
                    None => [Some(client), None],
                }
            }
            _ => [None, None],
        };
        let branch = self.branch(m, &via, lh);
        let fwd = Forward {
            received: None,
            sent_by: to_ws.unwrap_or(&self.advertise).as_bytes(),
            ws: to_ws.is_some(),
            alias: false,
            branch: &branch,
            token: from.token,
            pop_route: Some((field, second)),
            max_forwards: mf,
            record: rr,
            require_path: false,
        };
        match rw.forward_request(m, &via, &fwd) {
            Ok(()) => Decision::ToConnection {
                to: Token {
                    pin: 0,
                    role: Role::ClientRoute,
                    ..t
                },
                request: true,
                rewrite: rw,
            },
            Err(e) => answer(400, format!("Cannot Forward: {e}")),
        }
    }

    /// Rule 2: a response goes where our top Via's token says, if that token was minted for the
    /// direction the response travels; anything else is dropped.
    fn response<'r>(
        &self,
        m: &Message,
        from_server: bool,
        tokens: &mut TokenCache,
        rw: &'r mut Rewrite,
    ) -> Decision<'r> {
        let Some(top) = m.via else {
            return Decision::Drop("response without Via");
        };
        let Some(to) = m.top_via().ok().and_then(|v| self.our_via_token(&v, tokens)) else {
            return Decision::Drop("response whose top Via is not ours");
        };
        // A server answers what we sent it on a client's behalf, a client what we sent it on a
        // server's: a client replaying the Via siplb wrote towards a server is refused here.
        let expected = if from_server {
            Role::ClientVia
        } else {
            Role::ServerVia
        };
        if to.role != expected {
            return Decision::Drop("response whose Via token is for the other direction");
        }
        if to.instance != self.key.instance() {
            return Decision::Drop("response for a connection of another instance");
        }
        rw.clear();
        match rw.pop_top(top) {
            Ok(()) => Decision::ToConnection {
                to,
                request: false,
                rewrite: rw,
            },
            Err(_) => Decision::Drop("response whose Via cannot be removed"),
        }
    }

    /// Checks of every request: well-formed (400), not looping (482), Max-Forwards (483).
    /// Returns the top Via, the Max-Forwards to send on and the loop hash.
    fn check_request<'a>(
        &self,
        m: &Message<'a>,
        from_server: bool,
    ) -> Result<(Via<'a>, u32, [u8; 8]), Decision<'static>> {
        let via = m.validate_request().map_err(|why| answer(400, why.to_string()))?;
        let lh = self.loop_hash(m, from_server);
        if self.looped(m, &lh) {
            return Err(answer(482, "Loop Detected"));
        }
        match m.max_forwards {
            Some((_, 0)) => Err(answer(483, "Too Many Hops")),
            Some((_, n)) => Ok((via, n - 1, lh)),
            None => Ok((via, 70, lh)),
        }
    }

    fn record<'t>(
        &self,
        name: &'static str,
        host: &'t str,
        token: &'t [u8; TOKEN_LEN],
        sips: bool,
    ) -> Record<'t> {
        Record {
            name,
            host: host.as_bytes(),
            token,
            sips,
            ws: false,
            ob: false,
        }
    }

    /// RFC 3327 §5.2: Path only for a UA that supports it, unless `--path always`. Most real
    /// phones never say `Supported: path`, and then the registrar stores a contact it cannot
    /// reach outside a lab: the first such REGISTER is logged once, naming the flag to change.
    fn wants_path(&self, m: &Message) -> bool {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let wants = self.path == PathMode::Always || supports_path(m);
        if !wants && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(
                "a REGISTER went to the registrar without Path: the UA did not say 'Supported: path' \
                 (most phones do not); with a registrar that stores Path, use --path always so it can \
                 reach such UAs through siplb (said once)"
            );
        }
        wants
    }
}

/// Whether a request says `Supported: path` (or `k: path`).
fn supports_path(m: &Message) -> bool {
    let head = m.head();
    scan::Lines::new(&head[m.headers_start.min(head.len())..])
        .map_while(Result::ok)
        .filter(|h| h.name.eq_ignore_ascii_case(b"supported") || h.name.eq_ignore_ascii_case(b"k"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| scan::trim(t).eq_ignore_ascii_case(b"path"))
}

/// A request for a `sips:` URI: what siplb writes in Record-Route and Path is `sips:` too.
fn is_sips(m: &Message) -> bool {
    m.request_uri()
        .is_some_and(|u| u.len() > 5 && u[..5].eq_ignore_ascii_case(b"sips:"))
}

/// Dialog-forming requests (RFC 3261 §12) that siplb record-routes: INVITE, SUBSCRIBE, REFER and
/// NOTIFY outside a dialog (no To tag).
fn forms_dialog(m: &Message, method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
    ) && m.to_tag().is_none()
}

pub mod exercise;
pub mod invites;
mod ours;

#[cfg(test)]
mod tests;
