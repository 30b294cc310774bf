//! Runs `siplb::sip::read` (frame + parse) N times over the bench INVITE, for instruction
//! counting under callgrind: `perf/sip-instructions.sh` runs it twice and takes the difference,
//! which is stable on a noisy machine where nanoseconds are not.

use siplb::sip::{Read, read};
fn main() {
    let text = include_str!("../benches/invite.sip").replace('\n', "\r\n");
    let body = text.len() - text.find("\r\n\r\n").unwrap() - 4;
    let inv = text.replace("{CL}", &body.to_string()).into_bytes();
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut acc = 0;
    for _ in 0..n {
        let Read::Message(_, m) = read(std::hint::black_box(&inv), 65536) else {
            panic!()
        };
        acc += m.header_count;
    }
    println!("{acc}");
}
