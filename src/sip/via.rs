//! One Via value (RFC 3261 §20.42): `SIP / 2.0 / TRANSPORT sent-by *(; param)`, with LWS allowed
//! around the slashes and before the parameters, and IPv6 references in sent-by.

use super::scan::{self, Params};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// What routing reads, found in the one pass that also checks the parameters.
    branch: Option<&'a [u8]>,
    /// `rport`: its name (a slice of the message, to know where to write its value) and value.
    pub rport: Option<(&'a [u8], Option<&'a [u8]>)>,
    /// `received`: its name and value (slices of the message), to replace what a client wrote.
    pub received: Option<(&'a [u8], Option<&'a [u8]>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViaError {
    #[error("no Via header")]
    Missing,
    #[error("Via protocol is not SIP/2.0/<transport>")]
    Protocol,
    #[error("Via sent-by host is missing or malformed")]
    Host,
    #[error("Via sent-by port is not a number from 1 to 65535")]
    Port,
    #[error("Via has an empty or malformed parameter")]
    Params,
}

impl<'a> Via<'a> {
    pub fn parse(v: &'a [u8]) -> Result<Via<'a>, ViaError> {
        // The common spelling first; the general one allows LWS around the slashes.
        let rest = match v.strip_prefix(b"SIP/2.0/") {
            Some(rest) => scan::trim(rest),
            None => {
                let (name, rest) = slash_part(v).ok_or(ViaError::Protocol)?;
                let (version, rest) = slash_part(rest).ok_or(ViaError::Protocol)?;
                if name != b"SIP" || version != b"2.0" {
                    return Err(ViaError::Protocol);
                }
                scan::trim(rest)
            }
        };
        let tlen = rest
            .iter()
            .position(|&b| !scan::is_token(b))
            .unwrap_or(rest.len());
        let (transport, rest) = rest.split_at(tlen);
        if transport.is_empty() {
            return Err(ViaError::Protocol);
        }
        let rest = scan::trim(rest);
        let end = rest
            .iter()
            .position(|&b| b == b';' || scan::is_lws(b))
            .unwrap_or(rest.len());
        let (sent_by, params) = rest.split_at(end);
        let (host, port) = split_host_port(sent_by).ok_or(ViaError::Host)?;
        let port = match port {
            None => None,
            Some(p) => Some(
                scan::parse_u32(p)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                    .ok_or(ViaError::Port)?,
            ),
        };
        let params = scan::trim(params);
        if !params.is_empty() && params[0] != b';' {
            return Err(ViaError::Host);
        }
        let mut via = Via {
            transport,
            host,
            port,
            params: Params::new(params),
            branch: None,
            rport: None,
            received: None,
        };
        for (name, value) in via.params.all() {
            if !scan::is_param_name(name) {
                return Err(ViaError::Params);
            }
            if name.eq_ignore_ascii_case(b"branch") {
                via.branch = via.branch.or(value);
            } else if name.eq_ignore_ascii_case(b"rport") {
                via.rport = via.rport.or(Some((name, value)));
            } else if name.eq_ignore_ascii_case(b"received") {
                via.received = via.received.or(Some((name, value)));
            }
        }
        Ok(via)
    }

    pub fn branch(&self) -> Option<&'a [u8]> {
        self.branch
    }
}

/// Splits `token LWS? "/" rest`; `None` without the slash.
fn slash_part(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let v = scan::trim(v);
    let slash = memchr::memchr(b'/', v)?;
    Some((scan::trim(&v[..slash]), &v[slash + 1..]))
}

/// `host[:port]` where host may be `[IPv6]`. Returns the host (brackets kept) and the port text.
pub fn split_host_port(s: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (host, rest) = if s.first() == Some(&b'[') {
        let close = memchr::memchr(b']', s)?;
        s.split_at(close + 1)
    } else {
        let colon = memchr::memchr(b':', s).unwrap_or(s.len());
        s.split_at(colon)
    };
    let host_ok = host.len() > 2 && host[0] == b'['
        || !host.is_empty()
            && host
                .iter()
                .all(|&b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_'));
    if !host_ok {
        return None;
    }
    match rest {
        [] => Some((host, None)),
        [b':', port @ ..] => Some((host, Some(port))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_spaced() {
        let v = Via::parse(b"SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK77;rport").unwrap();
        assert_eq!(
            (v.transport, v.host, v.port),
            (&b"TLS"[..], &b"192.0.2.1"[..], Some(5061))
        );
        assert_eq!(v.branch(), Some(&b"z9hG4bK77"[..]));
        assert_eq!(v.params.get(b"rport"), Some(None));
        // RFC 4475 §3.1.1.1 (wsinv): LWS and folding around the slashes and parameters.
        let v = Via::parse(b"SIP  /   2.0\r\n  /UDP\r\n    192.0.2.2;rport;branch=390skdjuw").unwrap();
        assert_eq!(
            (v.transport, v.host, v.port),
            (&b"UDP"[..], &b"192.0.2.2"[..], None)
        );
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        let v = Via::parse(b"SIP/2.0/TCP host.example.com ;branch=z9hG4bK1").unwrap();
        assert_eq!(v.host, b"host.example.com");
    }

    #[test]
    fn ipv6() {
        let v = Via::parse(b"SIP/2.0/TLS [2001:db8::9:1]:5061;branch=z9hG4bKas3").unwrap();
        assert_eq!((v.host, v.port), (&b"[2001:db8::9:1]"[..], Some(5061)));
    }

    #[test]
    fn bad() {
        assert_eq!(Via::parse(b"SIP/3.0/UDP h"), Err(ViaError::Protocol));
        assert_eq!(Via::parse(b"SIP/2.0 h"), Err(ViaError::Protocol));
        assert_eq!(Via::parse(b"SIP/2.0/UDP"), Err(ViaError::Host));
        assert_eq!(Via::parse(b"SIP/2.0/UDP h:99999"), Err(ViaError::Port));
        assert_eq!(Via::parse(b"SIP/2.0/UDP h:x"), Err(ViaError::Port));
        assert_eq!(Via::parse(b"SIP/2.0/UDP [::1"), Err(ViaError::Host));
        assert_eq!(Via::parse(b"SIP/2.0/UDP h junk"), Err(ViaError::Host));
        // RFC 4475 §3.1.2.1 (badinv01): empty parameters.
        assert_eq!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;"), Err(ViaError::Params));
        assert_eq!(Via::parse(b"SIP/2.0/UDP h;=x"), Err(ViaError::Params));
    }
}
