//! The server side of WebSocket (RFC 6455) for SIP over secure WebSocket (RFC 7118, WSS): the
//! HTTP upgrade ([`upgrade`]) and the frames ([`frame`]). Pure, no I/O: the worker feeds it the
//! bytes TLS decrypted and writes what it answers.

pub mod frame;
pub mod upgrade;

/// Arbitrary bytes through both halves, as the worker would drive them (for the fuzzer and the
/// unit tests' sweep): the upgrade never panics and answers a complete HTTP response; the frame
/// decoder, fed the bytes in two reads with consumption between, never panics, hands out only
/// ranges inside the buffer and never lets the caller drop more than it has.
pub fn exercise(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    match upgrade::read(rest, 512 + usize::from(ctl) * 16, &[]) {
        upgrade::Upgrade::Accept { response, consumed } => {
            assert!(consumed <= rest.len());
            assert!(response.starts_with(b"HTTP/1.1 101 "));
        }
        upgrade::Upgrade::Refuse { response, .. } => {
            assert!(response.starts_with(b"HTTP/1.1 ") && response.ends_with(b"\n"));
        }
        upgrade::Upgrade::Partial => {}
    }
    let max = 16 + usize::from(ctl) * 4;
    let cut = usize::from(ctl) % (rest.len() + 1);
    let mut buf = rest[..cut].to_vec();
    let mut d = frame::Decoder::new(max);
    for more in [&rest[cut..], &[][..]] {
        loop {
            match d.next(&mut buf) {
                frame::Event::Message { range, .. } => {
                    assert!(range.end <= buf.len() && range.len() <= max);
                }
                frame::Event::Ping(range) => assert!(range.end <= buf.len() && range.len() <= 125),
                frame::Event::Pong => {}
                frame::Event::Close(_) | frame::Event::Fail(..) => return,
                frame::Event::Partial => break,
            }
        }
        let n = d.consumable();
        assert!(n <= buf.len());
        buf.drain(..n);
        d.consumed(n);
        buf.extend_from_slice(more);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_and_their_mutations() {
        let mut seeds: Vec<Vec<u8>> = vec![
            b"\x10GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n".to_vec(),
        ];
        let mut frames = vec![7u8];
        frames.extend(super::frame::client_frame(
            super::frame::OP_TEXT,
            false,
            b"INVITE sip:a@b",
            [1, 2, 3, 4],
        ));
        frames.extend(super::frame::client_frame(
            super::frame::OP_PING,
            true,
            b"p",
            [5, 6, 7, 8],
        ));
        frames.extend(super::frame::client_frame(
            super::frame::OP_CONT,
            true,
            b" SIP/2.0",
            [9, 8, 7, 6],
        ));
        frames.extend(super::frame::client_frame(
            super::frame::OP_CLOSE,
            true,
            &[3, 232],
            [0, 0, 0, 0],
        ));
        seeds.push(frames);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for seed in &seeds {
            super::exercise(seed);
            for _ in 0..10_000 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut d = seed.clone();
                let at = (rng as usize) % d.len();
                d[at] = (rng >> 32) as u8;
                if rng & (1 << 45) != 0 {
                    d.truncate(at + 1);
                }
                super::exercise(&d);
            }
        }
    }
}
