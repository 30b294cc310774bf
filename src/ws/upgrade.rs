//! The HTTP/1.1 upgrade that opens a WebSocket for SIP (RFC 6455 §4.2, RFC 7118 §4): parsed with
//! httparse, answered `101 Switching Protocols` with the accept key (SHA-1 from ring) and the
//! `sip` subprotocol, or refused with the HTTP status that says what is wrong; a refusal closes
//! the connection.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Headers an upgrade may carry (browsers send 10 to 15).
const MAX_HEADERS: usize = 48;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the bytes read so far make of an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Not all of the head yet (and under the limit).
    Partial,
    /// Accepted: write `response`; the head was `consumed` bytes (frames may follow it).
    Accept { response: Vec<u8>, consumed: usize },
    /// Refused: write `response`, then close.
    Refuse { status: u16, response: Vec<u8> },
}

/// Reads an upgrade request from `buf` (at most `max` bytes of head); `origins` is the
/// `--wss-allow-origin` list (empty: any origin, and requests without one, are allowed).
pub fn read(buf: &[u8], max: usize, origins: &[String]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Upgrade::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "Request Header Fields Too Large", "");
        }
        Err(e) => return refuse(400, "Bad Request", &format!("X-Reason: {e}\r\n")),
    };
    if req.method != Some("GET") {
        return refuse(405, "Method Not Allowed", "Allow: GET\r\n");
    }
    if req.version != Some(1) {
        return refuse(505, "HTTP Version Not Supported", "");
    }
    let all: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| values(all, name);
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return refuse(
            426,
            "Upgrade Required",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        );
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return refuse(426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
    }
    let keys: Vec<&str> = header("sec-websocket-key").collect();
    let key = match keys.as_slice() {
        [k] if BASE64.decode(k.trim()).is_ok_and(|d| d.len() == 16) => k.trim(),
        _ => {
            return refuse(
                400,
                "Bad Request",
                "X-Reason: Sec-WebSocket-Key is not 16 bytes in base64\r\n",
            );
        }
    };
    if !has_token("sec-websocket-protocol", "sip") {
        return refuse(
            400,
            "Bad Request",
            "X-Reason: Sec-WebSocket-Protocol must offer sip (RFC 7118)\r\n",
        );
    }
    if !origins.is_empty()
        && let Some(origin) = header("origin").next()
        && !origins.iter().any(|o| o.eq_ignore_ascii_case(origin.trim()))
    {
        return refuse(403, "Forbidden", "X-Reason: Origin not allowed\r\n");
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
        accept_key(key)
    )
    .into_bytes();
    Upgrade::Accept { response, consumed }
}

/// The values of header `name` (any case) as text (a value that is not text reads as empty).
fn values<'h>(headers: &'h [httparse::Header<'h>], name: &'static str) -> impl Iterator<Item = &'h str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    BASE64.encode(ctx.finish().as_ref())
}

fn refuse(status: u16, reason: &str, extra: &str) -> Upgrade {
    let body = format!("{status} {reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\
Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Upgrade::Refuse { status, response }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET / HTTP/1.1\r\nHost: lb.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\nOrigin: https://phone.example.com\r\n\r\n";

    fn status(req: &str, origins: &[String]) -> u16 {
        match read(req.as_bytes(), 8192, origins) {
            Upgrade::Accept { .. } => 101,
            Upgrade::Refuse { status, .. } => status,
            Upgrade::Partial => 0,
        }
    }

    #[test]
    fn the_rfc_6455_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_upgrade_for_sip_is_accepted_with_frames_after_it() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x80");
        match read(&bytes, 8192, &[]) {
            Upgrade::Accept { response, consumed } => {
                assert_eq!(consumed, GOOD.len());
                let r = String::from_utf8(response).unwrap();
                assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{r}");
                assert!(
                    r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
                    "{r}"
                );
                assert!(r.contains("Sec-WebSocket-Protocol: sip\r\n"), "{r}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_wrong_gets_its_status() {
        let allowed = vec!["https://phone.example.com".to_string()];
        let other = vec!["https://other.example".to_string()];
        for (req, origins, want) in [
            (GOOD.to_string(), &allowed, 101),
            (GOOD.to_string(), &other, 403),
            (
                GOOD.replace("Origin: https://phone.example.com\r\n", ""),
                &other,
                101,
            ),
            (GOOD.replace("GET", "POST"), &allowed, 405),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), &allowed, 505),
            (GOOD.replace("Upgrade: websocket\r\n", ""), &allowed, 426),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), &allowed, 426),
            (GOOD.replace("Version: 13", "Version: 8"), &allowed, 426),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                &allowed,
                400,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"),
                &allowed,
                400,
            ),
            (GOOD.replace("Protocol: sip", "Protocol: xmpp"), &allowed, 400),
            (GOOD.replace("Sec-WebSocket-Protocol: sip\r\n", ""), &allowed, 400),
            ("OPTIONS sip:a@b SIP/2.0\r\n\r\n".to_string(), &allowed, 400),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), &allowed, 426),
            (GOOD[..40].to_string(), &allowed, 0),
            (
                format!("{}X-Long: {}\r\n\r\n", &GOOD[..GOOD.len() - 2], "a".repeat(9000)),
                &allowed,
                431,
            ),
            (
                format!("{}{}\r\n", &GOOD[..GOOD.len() - 2], "X: y\r\n".repeat(60)),
                &allowed,
                431,
            ),
        ] {
            assert_eq!(status(&req, origins), want, "{req:?}");
        }
    }

    #[test]
    fn a_refusal_is_a_complete_http_response() {
        let Upgrade::Refuse { response, .. } = read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 8192, &[]) else {
            panic!("accepted");
        };
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 426 Upgrade Required"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
    }
}
