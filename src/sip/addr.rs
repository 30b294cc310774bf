//! Addresses: `name-addr` / `addr-spec` values (From, To, Contact, Route, Record-Route, Path) and
//! the parts of a SIP URI that routing reads (user for balancing keys, host/port to recognise our
//! own Route, parameters for our token). Borrowed views, lenient where RFC 4475 asks for leniency.

use super::scan::{self, Params};
use super::via::split_host_port;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("'<' without a closing '>'")]
    Unclosed,
    #[error("a quoted string is not closed")]
    Unbalanced,
    #[error("display name has characters that need quoting")]
    Display,
    #[error("address has no URI")]
    Empty,
    #[error("URI scheme is not sip, sips or tel")]
    Scheme,
    #[error("URI host or port is malformed")]
    HostPort,
}

/// `[display-name] <uri> *(;param)` or a bare `uri *(;param)`. In the bare form the parameters
/// after the URI belong to the header (RFC 3261 §20.10), so `uri` stops at the first `;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: &'a [u8],
    pub uri: &'a [u8],
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a [u8]) -> Result<NameAddr<'a>, AddrError> {
        let v = scan::trim(v);
        if !quotes_balanced(v) {
            return Err(AddrError::Unbalanced);
        }
        // Without a quote, the first `<` is the unquoted one.
        let lt = if memchr::memchr(b'"', v).is_none() {
            memchr::memchr(b'<', v)
        } else {
            scan::find_unquoted(v, b'<')
        };
        match lt {
            Some(lt) => {
                let display = scan::trim(&v[..lt]);
                let quoted = display.first() == Some(&b'"');
                if !quoted && !display.iter().all(|&b| scan::is_token(b) || scan::is_lws(b)) {
                    return Err(AddrError::Display);
                }
                let gt = memchr::memchr(b'>', &v[lt..]).ok_or(AddrError::Unclosed)? + lt;
                let uri = scan::trim(&v[lt + 1..gt]);
                if uri.is_empty() {
                    return Err(AddrError::Empty);
                }
                Ok(NameAddr {
                    display,
                    uri,
                    params: Params::new(&v[gt + 1..]),
                })
            }
            None => {
                let end = memchr::memchr(b';', v).unwrap_or(v.len());
                let uri = scan::trim(&v[..end]);
                if uri.is_empty() {
                    return Err(AddrError::Empty);
                }
                Ok(NameAddr {
                    display: b"",
                    uri,
                    params: Params::new(&v[end..]),
                })
            }
        }
    }

    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get(b"tag").flatten()
    }
}

/// Whether every double quote opens or closes a string (backslash escapes honoured).
fn quotes_balanced(v: &[u8]) -> bool {
    // Most values quote nothing: one vector search settles it.
    let Some(first) = memchr::memchr(b'"', v) else {
        return true;
    };
    let mut inside = false;
    let mut i = first;
    while i < v.len() {
        match v[i] {
            b'\\' if inside => i += 1,
            b'"' => inside = !inside,
            _ => {}
        }
        i += 1;
    }
    !inside
}

/// The parts of a `sip:`/`sips:` (or `tel:`) URI that routing uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a [u8],
    pub user: Option<&'a [u8]>,
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Uri<'a> {
    pub fn parse(u: &'a [u8]) -> Result<Uri<'a>, AddrError> {
        let colon = memchr::memchr(b':', u).ok_or(AddrError::Scheme)?;
        let (scheme, rest) = (&u[..colon], &u[colon + 1..]);
        let rest = &rest[..memchr::memchr(b'?', rest).unwrap_or(rest.len())];
        if scheme.eq_ignore_ascii_case(b"tel") {
            // tel:+1-555;phone-context=x — the number is the "user" for balancing purposes.
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            return Ok(Uri {
                scheme,
                user: Some(&rest[..end]),
                host: b"",
                port: None,
                params: Params::new(&rest[end..]),
            });
        }
        if !(scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
            return Err(AddrError::Scheme);
        }
        let (user, hostpart) = match memchr::memrchr(b'@', rest) {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = &userinfo[..memchr::memchr(b':', userinfo).unwrap_or(userinfo.len())];
                (Some(user), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let end = memchr::memchr(b';', hostpart).unwrap_or(hostpart.len());
        let (host, port) = split_host_port(&hostpart[..end]).ok_or(AddrError::HostPort)?;
        let port = match port {
            None => None,
            Some(p) => Some(
                scan::parse_u32(p)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or(AddrError::HostPort)?,
            ),
        };
        Ok(Uri {
            scheme,
            user,
            host,
            port,
            params: Params::new(&hostpart[end..]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(b"\"Bob, the <Great>\" <sip:bob@b.example;transport=tls>;tag=x1").unwrap();
        assert_eq!(a.display, b"\"Bob, the <Great>\"");
        assert_eq!(a.uri, b"sip:bob@b.example;transport=tls");
        assert_eq!(a.tag(), Some(&b"x1"[..]));
        let a = NameAddr::parse(b"sip:alice@a.example;tag=9fxced76sl").unwrap();
        assert_eq!(
            (a.uri, a.tag()),
            (&b"sip:alice@a.example"[..], Some(&b"9fxced76sl"[..]))
        );
        let a = NameAddr::parse(b"Alice<sip:a@h>").unwrap();
        assert_eq!(
            (a.display, a.uri, a.tag()),
            (&b"Alice"[..], &b"sip:a@h"[..], None)
        );
        assert_eq!(NameAddr::parse(b"<sip:a@h"), Err(AddrError::Unclosed));
        assert_eq!(NameAddr::parse(b"<>"), Err(AddrError::Empty));
        // RFC 4475 §3.1.2.7 (quotbal) and §3.1.2.16 (baddn).
        assert_eq!(
            NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>"),
            Err(AddrError::Unbalanced)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43"),
            Err(AddrError::Display)
        );
        let a =
            NameAddr::parse(b"\"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8")
                .unwrap();
        assert_eq!(a.tag(), Some(&b"98asjd8"[..]));
    }

    #[test]
    fn uris() {
        let u = Uri::parse(b"sip:lb.example:5061;transport=tls;lr;siplb=abc").unwrap();
        assert_eq!((u.user, u.host, u.port), (None, &b"lb.example"[..], Some(5061)));
        assert_eq!(u.params.get(b"lr"), Some(None));
        assert_eq!(u.params.get(b"siplb"), Some(Some(&b"abc"[..])));
        let u = Uri::parse(b"sips:alice:secret@[2001:db8::1]:5061?subject=x").unwrap();
        assert_eq!(
            (u.user, u.host, u.port),
            (Some(&b"alice"[..]), &b"[2001:db8::1]"[..], Some(5061))
        );
        // RFC 4475 §3.1.1.2: user part with ';' and escapes.
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(
            (u.user, u.host),
            (Some(&b"user;par=u%40example.net"[..]), &b"example.com"[..])
        );
        let u = Uri::parse(b"tel:+1-972-555-2222;phone-context=x").unwrap();
        assert_eq!(u.user, Some(&b"+1-972-555-2222"[..]));
        assert_eq!(Uri::parse(b"http://x"), Err(AddrError::Scheme));
        assert_eq!(Uri::parse(b"sip:h:99999"), Err(AddrError::HostPort));
    }
}
