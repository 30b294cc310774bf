//! Runs the SIP layer N times over the bench INVITE, for instruction counting under callgrind:
//! `perf/sip-instructions.sh` runs it twice and takes the difference, which is stable on a noisy
//! machine where nanoseconds are not. `read_instructions N` is frame + parse (`sip::read`);
//! `read_instructions N forward` is the whole forwarding path of `invite_frame_parse_rewrite`.

#[allow(dead_code)]
#[path = "../benches/common/forward.rs"]
mod forward;

use siplb::sip::{Read, Rewrite, TokenKey, read};

fn main() {
    let inv = forward::invite();
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: read_instructions N [forward]");
    let mut acc = 0;
    if args.next().as_deref() == Some("forward") {
        let key = TokenKey::from_secret(b"bench");
        let tok = forward::conn_token(&key);
        let mut rw = Rewrite::new();
        for _ in 0..n {
            acc += forward::forward_request(std::hint::black_box(&inv), &key, &tok, &tok, &mut rw);
        }
    } else {
        for _ in 0..n {
            let Read::Message(_, m) = read(std::hint::black_box(&inv), forward::MAX) else {
                panic!("the bench INVITE must parse")
            };
            acc += m.header_count;
        }
    }
    println!("{acc}");
}
