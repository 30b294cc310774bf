//! SIP request methods. Methods are case-sensitive (RFC 3261 §7.1); unknown ones are kept as
//! borrowed bytes and forwarded like any other (RFC 4475 §3.1.1.12).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Subscribe,
    Notify,
    Refer,
    Info,
    Update,
    Prack,
    Message,
    Publish,
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    pub fn parse(s: &'a [u8]) -> Method<'a> {
        match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            other => Method::Other(other),
        }
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Register => b"REGISTER",
            Method::Options => b"OPTIONS",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Refer => b"REFER",
            Method::Info => b"INFO",
            Method::Update => b"UPDATE",
            Method::Prack => b"PRACK",
            Method::Message => b"MESSAGE",
            Method::Publish => b"PUBLISH",
            Method::Other(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn round_trip_and_case() {
        for m in [
            &b"INVITE"[..],
            b"ACK",
            b"BYE",
            b"NOTIFY",
            b"PUBLISH",
            b"NEWMETHOD",
        ] {
            assert_eq!(Method::parse(m).as_bytes(), m);
        }
        assert_eq!(Method::parse(b"invite"), Method::Other(b"invite"));
    }
}
