//! One function that drives every entry point of the SIP layer over arbitrary bytes, the way the
//! balancer would: read (frame + parse) every message in the buffer, validate, rewrite for
//! forwarding, answer errors, decode tokens, check a partner's identity headers. Shared by the
//! cargo-fuzz target and the unit tests' mutation sweep, so both exercise exactly the same
//! paths. It checks the invariants the forwarding path relies on and panics only when one is
//! broken.

use super::frame::{Read, Status, frame, read};
use super::message::Message;
use super::response::{Extra, write_response};
use super::rewrite::{Forward, MAGIC, Record, Rewrite};
use super::token::{TOKEN_LEN, Token, TokenCache, TokenKey};

/// Feeds `data` through the SIP layer as a stream of messages.
pub fn exercise(data: &[u8]) {
    let key = TokenKey::from_secret(b"exercise");
    let token = key.encode(Token {
        worker: 1,
        slot: 2,
        generation: 3,
        pin: 4,
        role: super::Role::ClientRoute,
        instance: 0,
        ws: false,
    });
    let mut cache = TokenCache::new();
    let mut rw = Rewrite::new();
    let mut out = Vec::new();
    let mut pos = 0;
    // A small limit too, so the size checks get exercised by short inputs.
    let max = if data.first().is_some_and(|b| b & 1 == 1) {
        256
    } else {
        64 * 1024
    };
    while pos < data.len() {
        let buf = &data[pos..];
        match read(buf, max) {
            Read::Message(f, m) => {
                assert!(f.consumed() <= buf.len() && f.len >= f.head);
                assert_eq!(m.buf.len(), f.len);
                // The one-pass path agrees with framing first and parsing second.
                assert_eq!(frame(buf, max), Status::Complete(f));
                let slow = Message::parse_head(m.buf, f.head).expect("the two-pass parse agrees");
                assert_eq!(format!("{slow:?}"), format!("{m:?}"));
                rw.clear();
                if m.is_request() {
                    // The partner rule reads From and the identity headers of any request.
                    let _ = super::identity::outside_domain(&m, "a.example");
                    match m.validate_request() {
                        Ok(via) => {
                            let branch = key.branch(&[via.branch().unwrap_or(b""), via.host]);
                            let fwd = Forward {
                                received: Some((b"192.0.2.1", 5061)),
                                sent_by: b"lb.example:5061",
                                ws: false,
                                alias: true,
                                branch: &branch,
                                token: &token,
                                pop_route: m.route.map(|r| (r, m.route_line2.is_some())),
                                max_forwards: m.max_forwards.map_or(70, |(_, n)| n.saturating_sub(1)),
                                record: [
                                    Some(Record {
                                        name: "Record-Route",
                                        host: b"lb-s.example:5062",
                                        token: &token,
                                        sips: false,
                                        ws: false,
                                        ob: false,
                                    }),
                                    Some(Record {
                                        name: "Record-Route",
                                        host: b"lb.example:5061",
                                        token: &token,
                                        sips: true,
                                        ws: false,
                                        ob: false,
                                    }),
                                ],
                                require_path: m.path.is_some(),
                            };
                            let _ = rw.forward_request(&m, &via, &fwd);
                        }
                        Err(why) => answer(m.head(), &why.to_string(), &mut out),
                    }
                } else if let Ok(via) = m.top_via() {
                    if let Some(b) = via.branch()
                        && b.starts_with(MAGIC)
                        && b.len() >= TOKEN_LEN
                    {
                        let _ = cache.decode(&key, &b[b.len() - TOKEN_LEN..]);
                    }
                    if let Some(v) = m.via {
                        let _ = rw.pop_top(v);
                    }
                }
                out.clear();
                rw.write_to(m.buf, &mut out);
                assert_eq!(out.len(), rw.len(m.buf));
                pos += f.consumed();
            }
            Read::Unparsable(f, e) => {
                answer(&buf[f.range()], &e.to_string(), &mut out);
                pos += f.consumed();
            }
            Read::Ping(n) => pos += n,
            Read::Invalid(e) => {
                answer(buf, &e.to_string(), &mut out);
                break;
            }
            Read::Partial => break,
        }
    }
}

/// Our own answers must always frame and parse.
fn answer(head: &[u8], reason: &str, out: &mut Vec<u8>) {
    out.clear();
    write_response(head, 400, reason, Extra::default(), out);
    match read(out, 1 << 20) {
        Read::Message(f, _) => assert_eq!(f.len, out.len(), "answer framed short"),
        other => panic!(
            "our answer does not parse: {other:?}\n{}",
            String::from_utf8_lossy(out)
        ),
    }
}
