//! Who a request says it comes from, for the rule that a federation partner speaks only for its
//! own domain: the hosts of its From and of its asserted or preferred identities
//! (P-Asserted-Identity, P-Preferred-Identity, RFC 3325), each of which must be the domain or a
//! name under it.

use super::Message;
use super::addr::{NameAddr, Uri};

/// Whether `host` is `domain` or a name under it (ASCII case-insensitive; one trailing dot
/// ignored). An IP address is never in a domain; `domain` is lower case without a trailing dot.
pub fn in_domain(host: &[u8], domain: &str) -> bool {
    let host = host.strip_suffix(b".").unwrap_or(host);
    let d = domain.as_bytes();
    if host.eq_ignore_ascii_case(d) {
        return true;
    }
    host.len() > d.len() + 1
        && host[host.len() - d.len() - 1] == b'.'
        && host[host.len() - d.len()..].eq_ignore_ascii_case(d)
}

/// The identity headers besides From that a partner may not fill with another domain's users.
pub const ASSERTED: [&str; 2] = ["P-Asserted-Identity", "P-Preferred-Identity"];

/// The first header of request `m` naming someone outside `domain`, if any: From, then every
/// value of [`ASSERTED`]. A value that does not parse, or a `tel:` URI (a number belongs to no
/// domain), counts as outside.
pub fn outside_domain(m: &Message<'_>, domain: &str) -> Option<&'static str> {
    let inside = |v: &[u8]| {
        NameAddr::parse(v)
            .ok()
            .and_then(|a| Uri::parse(a.uri).ok())
            .is_some_and(|u| !u.host.is_empty() && in_domain(u.host, domain))
    };
    if !m.value(m.from).is_some_and(inside) {
        return Some("From");
    }
    ASSERTED
        .into_iter()
        .find(|name| m.values_named(name).any(|v| !inside(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_names_under_them() {
        assert!(in_domain(b"a.example", "a.example"));
        assert!(in_domain(b"A.Example.", "a.example"));
        assert!(in_domain(b"edge.a.example", "a.example"));
        for host in [
            &b"evila.example"[..],
            b"a.example.evil",
            b".a.example",
            b"example",
            b"",
            b"192.0.2.1",
            b"[2001:db8::1]",
        ] {
            assert!(!in_domain(host, "a.example"), "{}", String::from_utf8_lossy(host));
        }
    }

    fn request(headers: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS edge.a.example;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n{headers}To: <sip:bob@pool.test>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn outside(headers: &str) -> Option<&'static str> {
        let buf = request(headers);
        let m = Message::parse(&buf).expect("parses");
        outside_domain(&m, "a.example")
    }

    #[test]
    fn a_partner_speaks_for_its_own_domain_only() {
        assert_eq!(outside("From: \"Alice\" <sip:alice@a.example>;tag=1\r\n"), None);
        assert_eq!(
            outside("f: <sips:alice@sales.A.EXAMPLE:5061;transport=tls>;tag=1\r\n"),
            None
        );
        assert_eq!(
            outside("From: <sip:alice@a.example>;tag=1\r\nP-Asserted-Identity: <sip:alice@a.example>\r\n"),
            None
        );
        assert_eq!(outside("From: <sip:bob@b.example>;tag=1\r\n"), Some("From"));
        assert_eq!(
            outside("From: <sip:bob@a.example.b.example>;tag=1\r\n"),
            Some("From")
        );
        assert_eq!(outside("From: <sip:bob@192.0.2.1>;tag=1\r\n"), Some("From"));
        assert_eq!(outside("From: <tel:+15550100>;tag=1\r\n"), Some("From"));
        assert_eq!(outside("From: <sip:bob@a.example;tag=1\r\n"), Some("From"));
        assert_eq!(
            outside("From: <sip:alice@a.example>;tag=1\r\np-asserted-identity: <sip:ceo@pool.test>\r\n"),
            Some("P-Asserted-Identity")
        );
        // Every value counts, on one line or several.
        assert_eq!(
            outside(
                "From: <sip:alice@a.example>;tag=1\r\nP-Asserted-Identity: <sip:alice@a.example>, <tel:+15550100>\r\n"
            ),
            Some("P-Asserted-Identity")
        );
        assert_eq!(
            outside(
                "From: <sip:alice@a.example>;tag=1\r\nP-Preferred-Identity: <sip:a@a.example>\r\nP-Preferred-Identity: <sip:b@b.example>\r\n"
            ),
            Some("P-Preferred-Identity")
        );
    }
}
