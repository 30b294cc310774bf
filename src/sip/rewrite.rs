//! Rewriting a message for forwarding without building a new one: a short, sorted list of edits
//! (delete a range, insert bytes at a position) over the original bytes. The inserted text lives
//! in one scratch buffer that is reused from message to message, so after warm-up nothing is
//! allocated; [`Rewrite::slices`] yields the result as `IoSlice`s for a vectored write.

use std::io::IoSlice;

use super::message::{Field, Message};
use super::scan;
use super::token::TOKEN_LEN;
use super::via::{Via, ViaError};

/// Edits one message can carry: Via push, two Route pops, Max-Forwards, received + rport, two
/// Record-Routes or a Path, Require, with room to spare.
pub const MAX_EDITS: usize = 12;
/// Slices a rewritten message can need: the original bytes around each edit, plus the inserts.
pub const MAX_SLICES: usize = 2 * MAX_EDITS + 1;

/// The branch magic cookie of RFC 3261 §8.1.1.7.
pub const MAGIC: &[u8] = b"z9hG4bK";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Edit {
    at: u32,
    del: u32,
    ins_start: u32,
    ins_end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("more than {MAX_EDITS} edits to one message")]
    TooManyEdits,
    #[error("two edits touch the same bytes")]
    Overlap,
    #[error("the message has no {0} header to change")]
    Missing(&'static str),
    #[error(transparent)]
    Via(#[from] ViaError),
}

/// The edits for one message. Keep one per connection (or per worker) and `clear` it between
/// messages so its scratch buffer is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    edits: [Edit; MAX_EDITS],
    n: usize,
    scratch: Vec<u8>,
}

impl Default for Rewrite {
    fn default() -> Self {
        Rewrite::new()
    }
}

/// Everything forwarding a request changes, so the balancer, the bench and the fuzzer run the
/// same sequence.
pub struct Forward<'a> {
    /// The sender's address for `received` / `rport` (requests from clients).
    pub received: Option<(&'a [u8], u16)>,
    /// Our `host:port` in our Via: the side of siplb the next hop sees.
    pub sent_by: &'a [u8],
    /// The next hop is a WebSocket client: our Via says `SIP/2.0/WSS` (RFC 7118 §5).
    pub ws: bool,
    /// Adds `;alias` to our Via (RFC 5923): the next hop may send its own requests for siplb
    /// over this connection instead of opening one.
    pub alias: bool,
    /// Our branch after the magic cookie (transaction and loop hashes).
    pub branch: &'a [u8],
    /// Names the connection the request came from (for its responses).
    pub token: &'a [u8; TOKEN_LEN],
    /// Our Route, to remove; `true` when the value after it is ours too (the other half of our
    /// double Record-Route, RFC 5658) and goes as well.
    pub pop_route: Option<(Field, bool)>,
    pub max_forwards: u32,
    /// Record-Route or Path entries to add, the first one topmost.
    pub record: [Option<Record<'a>>; 2],
    /// Adds `Require: path` (RFC 3327 §5.2), with a Path.
    pub require_path: bool,
}

/// One Record-Route or Path entry siplb writes: `<sip:HOST;transport=tls;lr;siplb=TOKEN>`, or
/// `<sips:HOST;lr;siplb=TOKEN>` when the request was for a `sips:` URI (RFC 3261 §16.6 step 4).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// `"Record-Route"` or `"Path"`.
    pub name: &'static str,
    pub host: &'a [u8],
    pub token: &'a [u8; TOKEN_LEN],
    pub sips: bool,
    /// Names siplb's WebSocket side (`transport=ws`, RFC 7118) instead of TLS.
    pub ws: bool,
    /// A Path for a client that asked for outbound (RFC 5626 `ob`): the registrar reaches it
    /// only through this flow.
    pub ob: bool,
}

/// The rewritten message as slices, ready for `write_vectored`.
pub struct Slices<'b> {
    arr: [IoSlice<'b>; MAX_SLICES],
    n: usize,
}

impl<'b> Slices<'b> {
    pub fn as_slice(&self) -> &[IoSlice<'b>] {
        &self.arr[..self.n]
    }
}

impl Rewrite {
    pub fn new() -> Rewrite {
        Rewrite {
            edits: [Edit::default(); MAX_EDITS],
            n: 0,
            scratch: Vec::with_capacity(512),
        }
    }

    /// A rewrite with no edits and no buffer yet (allocates nothing): what stands in for a
    /// worker's rewrite while a routing decision holds it.
    pub const fn unallocated() -> Rewrite {
        const NONE: Edit = Edit {
            at: 0,
            del: 0,
            ins_start: 0,
            ins_end: 0,
        };
        Rewrite {
            edits: [NONE; MAX_EDITS],
            n: 0,
            scratch: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.n = 0;
        self.scratch.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Replaces `del` bytes at `at` with what `write` appends to the scratch buffer.
    pub fn edit(
        &mut self,
        at: usize,
        del: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RewriteError> {
        if self.n == MAX_EDITS {
            return Err(RewriteError::TooManyEdits);
        }
        let (at, del) = (at as u32, del as u32);
        let overlaps = self.edits[..self.n].iter().any(|e| {
            let (a0, a1, b0, b1) = (e.at, e.at + e.del, at, at + del);
            (e.del > 0 && del > 0 && a0 < b1 && b0 < a1)
                || (e.del > 0 && a0 < b0 && b0 < a1)
                || (del > 0 && b0 < a0 && a0 < b1)
        });
        if overlaps {
            return Err(RewriteError::Overlap);
        }
        let ins_start = self.scratch.len() as u32;
        write(&mut self.scratch);
        let e = Edit {
            at,
            del,
            ins_start,
            ins_end: self.scratch.len() as u32,
        };
        // Keep the list sorted by position; edits at the same position stay in the order made.
        let pos = self.edits[..self.n]
            .iter()
            .position(|x| x.at > at)
            .unwrap_or(self.n);
        self.edits.copy_within(pos..self.n, pos + 1);
        self.edits[pos] = e;
        self.n += 1;
        Ok(())
    }

    /// Length of the rewritten message.
    pub fn len(&self, msg: &[u8]) -> usize {
        let ins: usize = self.edits[..self.n]
            .iter()
            .map(|e| (e.ins_end - e.ins_start) as usize)
            .sum();
        let del: usize = self.edits[..self.n].iter().map(|e| e.del as usize).sum();
        msg.len() + ins - del
    }

    /// The rewritten message as slices of `msg` and of the scratch buffer.
    pub fn slices<'b>(&'b self, msg: &'b [u8]) -> Slices<'b> {
        let mut arr = [IoSlice::new(&[]); MAX_SLICES];
        let mut n = 0;
        let mut pos = 0usize;
        let mut push = |s: &'b [u8]| {
            if !s.is_empty() {
                arr[n] = IoSlice::new(s);
                n += 1;
            }
        };
        for e in &self.edits[..self.n] {
            let at = (e.at as usize).min(msg.len());
            push(&msg[pos.min(at)..at]);
            push(&self.scratch[e.ins_start as usize..e.ins_end as usize]);
            pos = pos.max(at + e.del as usize);
        }
        push(&msg[pos.min(msg.len())..]);
        Slices { arr, n }
    }

    /// The rewritten message as one buffer (tests, and peers that cannot take vectored writes).
    pub fn write_to(&self, msg: &[u8], out: &mut Vec<u8>) {
        for s in self.slices(msg).as_slice() {
            out.extend_from_slice(s);
        }
    }

    /// The edits for forwarding request `m` (whose top Via is `via`), replacing any made before.
    pub fn forward_request(&mut self, m: &Message, via: &Via, f: &Forward) -> Result<(), RewriteError> {
        self.clear();
        if let Some((ip, port)) = f.received {
            self.via_received(m, via, ip, port)?;
        }
        self.push_via(m, f.sent_by, f.ws, f.branch, f.token, f.alias)?;
        match f.pop_route {
            Some((r, true)) => self.pop_two(m, r)?,
            Some((r, false)) => self.pop_top(r)?,
            None => {}
        }
        self.set_max_forwards(m, f.max_forwards)?;
        for r in f.record.iter().flatten() {
            self.insert_route_header(m, r)?;
        }
        if f.require_path {
            self.insert_header(m, |s| s.extend_from_slice(b"Require: path"))?;
        }
        Ok(())
    }

    /// Adds a header line above all others (so our Via, Record-Route or Path comes first).
    pub fn insert_header(
        &mut self,
        msg: &Message,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RewriteError> {
        self.edit(msg.headers_start, 0, |s| {
            write(s);
            s.extend_from_slice(b"\r\n");
        })
    }

    /// Pushes our Via: `Via: SIP/2.0/TLS <sent_by>;branch=z9hG4bK<hash>-<token>[;alias]`.
    pub fn push_via(
        &mut self,
        msg: &Message,
        sent_by: &[u8],
        ws: bool,
        hash: &[u8],
        token: &[u8; TOKEN_LEN],
        alias: bool,
    ) -> Result<(), RewriteError> {
        self.insert_header(msg, |s| {
            s.extend_from_slice(if ws {
                b"Via: SIP/2.0/WSS "
            } else {
                b"Via: SIP/2.0/TLS "
            });
            s.extend_from_slice(sent_by);
            s.extend_from_slice(b";branch=");
            s.extend_from_slice(MAGIC);
            s.extend_from_slice(hash);
            s.push(b'-');
            s.extend_from_slice(token);
            if alias {
                s.extend_from_slice(b";alias");
            }
        })
    }

    /// Adds one Record-Route or Path entry (see [`Record`]).
    pub fn insert_route_header(&mut self, msg: &Message, r: &Record) -> Result<(), RewriteError> {
        self.insert_header(msg, |s| {
            s.extend_from_slice(r.name.as_bytes());
            s.extend_from_slice(if r.sips { b": <sips:" } else { b": <sip:" });
            s.extend_from_slice(r.host);
            s.extend_from_slice(match (r.ws, r.sips) {
                (true, _) => &b";transport=ws;lr"[..],
                (false, true) => b";lr",
                (false, false) => b";transport=tls;lr",
            });
            if r.ob {
                s.extend_from_slice(b";ob");
            }
            s.extend_from_slice(b";siplb=");
            s.extend_from_slice(r.token);
            s.push(b'>');
        })
    }

    /// Removes the first two Route values, wherever the second one stands: on the first Route
    /// line, or first on the second line.
    pub fn pop_two(&mut self, msg: &Message, first: Field) -> Result<(), RewriteError> {
        match first.next {
            Some(second) => {
                let rest = &msg.buf[second as usize..first.value.end as usize];
                match scan::Values::new(rest).nth(1) {
                    Some(third) => {
                        let third = scan::offset_in(msg.buf, third);
                        self.edit(first.top.start as usize, third - first.top.start as usize, |_| {})
                    }
                    None => self.pop_top(Field { next: None, ..first }),
                }
            }
            None => {
                let line2 = msg.route_line2.ok_or(RewriteError::Missing("second Route"))?;
                self.pop_top(first)?;
                self.pop_top(line2)
            }
        }
    }

    /// Removes the top value of a list header (Via, Route): the whole line when it holds one
    /// value, otherwise the value and its comma.
    pub fn pop_top(&mut self, f: Field) -> Result<(), RewriteError> {
        match f.next {
            Some(next) => self.edit(f.top.start as usize, (next - f.top.start) as usize, |_| {}),
            None => self.edit(
                f.line.start as usize,
                (f.line.end - f.line.start) as usize,
                |_| {},
            ),
        }
    }

    /// Sets Max-Forwards to `n`, adding the header if the message has none.
    pub fn set_max_forwards(&mut self, msg: &Message, n: u32) -> Result<(), RewriteError> {
        match msg.max_forwards {
            Some((f, _)) => self.edit(f.value.start as usize, f.value.range().len(), |s| push_u32(s, n)),
            None => self.insert_header(msg, |s| {
                s.extend_from_slice(b"Max-Forwards: ");
                push_u32(s, n);
            }),
        }
    }

    /// Writes what siplb saw into the sender's (top) Via, replacing whatever the sender wrote
    /// there itself (RFC 3261 §18.2.1, RFC 3581 §4): `received` always, with the source address
    /// (back ends see only siplb's address, so this is their one view of the client), and `rport`
    /// with the source port when the Via has `rport`.
    pub fn via_received(
        &mut self,
        msg: &Message,
        via: &Via,
        ip: &[u8],
        port: u16,
    ) -> Result<(), RewriteError> {
        let f = msg.via.ok_or(RewriteError::Missing("Via"))?;
        let param_end = |name: &[u8], value: Option<&[u8]>| {
            let start = scan::offset_in(msg.buf, name);
            let end = value.map_or(start + name.len(), |v| scan::offset_in(msg.buf, v) + v.len());
            (start, end)
        };
        if let Some((name, value)) = via.rport {
            let (start, end) = param_end(name, value);
            self.edit(start, end - start, |s| {
                s.extend_from_slice(b"rport=");
                push_u32(s, u32::from(port));
            })?;
        }
        match via.received {
            Some((name, value)) => {
                let (start, end) = param_end(name, value);
                self.edit(start, end - start, |s| {
                    s.extend_from_slice(b"received=");
                    s.extend_from_slice(ip);
                })
            }
            None => self.edit(f.top.end as usize, 0, |s| {
                s.extend_from_slice(b";received=");
                s.extend_from_slice(ip);
            }),
        }
    }
}

/// Appends `n` in decimal.
pub fn push_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests;
