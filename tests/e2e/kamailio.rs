//! Interop with a real registrar: two Kamailio instances (Debian's `kamailio` and
//! `kamailio-tls-modules`) behind siplb, TLS only, client certificates required and verified,
//! registrar with Path, `lookup` + `t_relay`, `record_route`. alice registers through siplb, bob
//! calls her through siplb (siplb → Kamailio → siplb → alice, a spiral), the call is answered,
//! ACKed and ended by each side in turn; then 200 calls to alice, who hangs up. Run twice:
//! Kamailio configured the plain RFC way (it opens its own connection to the server-facing side
//! siplb names in Path and Record-Route), and with connection reuse (`tcp_accept_aliases`) and
//! phones that, like most real ones, never say `Supported: path` (siplb with `--path always`).
//! Skips, saying why, when Kamailio is not installed; `.ci/run` installs it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::kamailio::{Kamailio, kamailio, kamailio_installed};
use crate::common::*;
use siplb::load::caller::CallOpts;
use siplb::load::endpoint::{Endpoint, Handler, Out};
use siplb::load::msg::{self, Dialog, text};
use siplb::sip::header::Name;
use siplb::sip::{Message, Method};
use siplb::tls;

/// A user agent on one TLS connection to siplb: answers INVITEs (200 with Contact, Record-Route
/// copied), answers BYEs, and hangs up each call it answered once it is ACKed when `hang_up`.
struct Ua {
    user: &'static str,
    hang_up: bool,
    /// REGISTER says `Supported: path` (RFC 3327); most real phones do not.
    says_path: bool,
    /// Dialogs this UA answered, by Call-ID (its side: route set = Record-Route as received).
    answered: std::collections::HashMap<String, Dialog>,
    inbox: Vec<Vec<u8>>,
    byes_sent: usize,
    byes_ok: HashSet<String>,
}

impl Ua {
    fn new(user: &'static str, hang_up: bool, says_path: bool) -> Ua {
        Ua {
            user,
            hang_up,
            says_path,
            answered: Default::default(),
            inbox: Vec::new(),
            byes_sent: 0,
            byes_ok: HashSet::new(),
        }
    }

    fn contact(&self) -> String {
        format!(
            "Contact: <sip:{}@{}.invalid;transport=tls>\r\n",
            self.user, self.user
        )
    }
}

impl Handler for Ua {
    fn on_message(&mut self, out: &mut Out, conn: usize, m: &Message) {
        self.inbox.push(m.buf.to_vec());
        let call_id = m.call_id().map(text).unwrap_or_default();
        match m.method() {
            Some(Method::Invite) => {
                let tag = msg::unique("u");
                out.send(
                    conn,
                    msg::response(m, 200, "OK", Some(&tag), true, &self.contact()),
                );
                let remote_target = msg::values(m, Name::Contact)
                    .first()
                    .map(|c| msg::uri_of(c))
                    .unwrap_or_default();
                let d = Dialog {
                    call_id: call_id.clone(),
                    local: format!("{};tag={tag}", m.value(m.to).map(text).unwrap_or_default()),
                    remote: m.value(m.from).map(text).unwrap_or_default(),
                    remote_target,
                    route: msg::values(m, Name::RecordRoute),
                    cseq: 100,
                    host: format!("{}.invalid", self.user),
                };
                self.answered.insert(call_id, d);
            }
            Some(Method::Ack) => {
                if self.hang_up
                    && let Some(d) = self.answered.get_mut(&call_id)
                {
                    out.send(conn, d.request("BYE", None, None, ""));
                    self.byes_sent += 1;
                }
            }
            Some(_) => out.send(conn, msg::response(m, 200, "OK", None, false, "")),
            None => {
                if m.status() == Some(200) && m.cseq.is_some_and(|c| c.2 == Method::Bye) {
                    self.byes_ok.insert(call_id);
                }
            }
        }
    }
}

struct Phone {
    ep: Endpoint,
    conn: usize,
    ua: Ua,
}

impl Phone {
    fn connect(pki: &Pki, lb: SocketAddr, ua: Ua) -> Phone {
        let mut ep = Endpoint::new().expect("endpoint");
        let conn = ep
            .connect(lb, pki.client_tls(None), tls::server_name(LB_NAME).expect("name"))
            .expect("connect");
        Phone { ep, conn, ua }
    }

    fn send(&mut self, bytes: &[u8]) {
        assert!(self.ep.send(self.conn, bytes), "send failed");
    }

    /// Runs until a received message satisfies `pred` (looking at what came since `from`).
    fn wait_for(&mut self, what: &str, from: &mut usize, pred: impl Fn(&Message) -> bool) -> Vec<u8> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            while *from < self.ua.inbox.len() {
                let m = self.ua.inbox[*from].clone();
                *from += 1;
                if Message::parse(&m).is_ok_and(|p| pred(&p)) {
                    return m;
                }
            }
            assert!(
                Instant::now() < until,
                "{}: timed out waiting for {what}",
                self.ua.user
            );
            self.pump(Duration::from_millis(5));
        }
    }

    fn pump(&mut self, d: Duration) {
        self.ep.turn(&mut self.ua, d).expect("turn");
    }

    fn register(&mut self) {
        let mut d = Dialog {
            call_id: msg::unique("reg-"),
            local: format!("<sip:{}@pool.test>;tag={}", self.ua.user, msg::unique("r")),
            remote: format!("<sip:{}@pool.test>", self.ua.user),
            remote_target: "sip:pool.test".into(),
            route: vec![],
            cseq: 0,
            host: format!("{}.invalid", self.ua.user),
        };
        let supported = if self.ua.says_path {
            "Supported: path\r\n"
        } else {
            ""
        };
        let extra = format!("{}Expires: 3600\r\n{supported}", self.ua.contact());
        self.send(&d.request("REGISTER", None, None, &extra));
        let mut seen = 0;
        self.wait_for("200 REGISTER", &mut seen, |m| {
            is_response(m, 200, Method::Register)
        });
    }
}

/// Runs the whole scenario against two Kamailio instances in one mode; `says_path`: the phones
/// say `Supported: path` (else they register as most real phones do, and siplb runs with
/// `--path always`).
fn scenario(reuse: bool, says_path: bool) {
    if let Err(why) = kamailio_installed() {
        eprintln!("SKIPPED kamailio interop: {why}");
        return;
    }
    let pki = Pki::new();
    let names = ["k1.pool.test", "k2.pool.test"];
    let ports = [free_port(), free_port()];
    let ks: Vec<Kamailio> = (0..2)
        .map(|i| kamailio(&pki, names[i], ports[i], reuse, ""))
        .collect();
    let mut extra: Vec<String> = vec![
        "--peer-listen".into(),
        "127.0.0.1:0".into(),
        // Registrations and calls to a user go to the same registrar.
        "--balance".into(),
        "to-user".into(),
    ];
    if !says_path {
        // Phones that never say `Supported: path` reach the registrar's location table only
        // through the Path siplb adds anyway (the README's `--path always` + `path_mode 0`).
        extra.extend(["--path".into(), "always".into()]);
    }
    for i in 0..2 {
        extra.push("--backend".into());
        extra.push(format!("{}=127.0.0.1:{}", names[i], ports[i]));
    }
    let lb = start_balancer(&pki, &[], 2, &extra);
    let logs = || {
        ks.iter()
            .map(Kamailio::log_text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // Ready means every worker has both up or gave up waiting: wait (with a deadline) for the
    // snapshot to show both, then check the count too — an empty list is "all up" as well.
    let m = metrics_within(&lb, Duration::from_secs(10), |m| {
        m.backends.len() == names.len() && m.backends.iter().all(|b| b.up)
    });
    let up: Vec<&str> = m
        .backends
        .iter()
        .filter(|b| b.up)
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(
        (m.backends.len(), up.len()),
        (names.len(), names.len()),
        "siplb sees both Kamailio instances up: {:?}\n{}",
        m.backends,
        logs()
    );
    let addr = lb.listen_addrs[0];

    // (a) alice registers; bob calls her; each side ends one call.
    let mut alice = Phone::connect(&pki, addr, Ua::new("alice", false, says_path));
    alice.register();
    let mut bob = Phone::connect(&pki, addr, Ua::new("bob", false, says_path));
    for (round, bye_from_bob) in [(1, true), (2, false)] {
        let call_id = msg::unique(&format!("ab{round}-"));
        let mut d = new_dialog(&call_id, "sip:alice@pool.test");
        d.host = "bob.invalid".into();
        let contact = bob.ua.contact();
        bob.send(&d.request("INVITE", None, None, &contact));
        let (mut a_seen, mut b_seen) = (alice.ua.inbox.len(), bob.ua.inbox.len());
        // alice answers from her pump; bob waits for the 200.
        let until = Instant::now() + Duration::from_secs(5);
        while !alice.ua.answered.contains_key(&call_id) {
            assert!(Instant::now() < until, "alice never got the INVITE:\n{}", logs());
            alice.pump(Duration::from_millis(5));
            bob.pump(Duration::from_millis(1));
        }
        let ok = bob.wait_for("200 INVITE", &mut b_seen, |m| {
            is_response(m, 200, Method::Invite) && m.call_id() == Some(call_id.as_bytes())
        });
        d.confirm(&Message::parse(&ok).expect("200 parses"));
        bob.send(&d.request("ACK", Some(1), None, ""));
        alice.wait_for("ACK", &mut a_seen, |m| m.method() == Some(Method::Ack));
        if bye_from_bob {
            bob.send(&d.request("BYE", None, None, ""));
            alice.wait_for("BYE from bob", &mut a_seen, |m| m.method() == Some(Method::Bye));
            bob.wait_for("200 BYE", &mut b_seen, |m| is_response(m, 200, Method::Bye));
        } else {
            let mut ad = alice.ua.answered[&call_id].clone();
            alice.send(&ad.request("BYE", None, None, ""));
            bob.wait_for("BYE from alice", &mut b_seen, |m| m.method() == Some(Method::Bye));
            alice.wait_for("200 BYE", &mut a_seen, |m| is_response(m, 200, Method::Bye));
        }
    }

    // (b) 200 calls to alice, who hangs up each one.
    let mut callee = Phone::connect(&pki, addr, Ua::new("carol", true, says_path));
    callee.register();
    let opts = CallOpts {
        ruri: "sip:carol@pool.test".into(),
        remote_bye: true,
        rate: 100.0,
        calls: 200,
        ..call_opts(&pki, &lb, 200)
    };
    let caller = std::thread::spawn(move || run_calls(opts));
    while !caller.is_finished() {
        callee.pump(Duration::from_millis(5));
    }
    let report = caller.join().expect("caller");
    // The callee's last BYEs may still be answered: wait for them, with a deadline.
    let until = Instant::now() + Duration::from_secs(10);
    while callee.ua.byes_ok.len() < report.ok && Instant::now() < until {
        callee.pump(Duration::from_millis(5));
    }
    assert_eq!(report.failed, 0, "{}\n{}", report.summary(), logs());
    assert_eq!(callee.ua.byes_sent, 200);
    assert_eq!(
        callee.ua.byes_ok.len(),
        200,
        "every callee BYE answered by its caller"
    );
    lb.shutdown();
}

#[test]
fn kamailio_registrar_plain_rfc_routing() {
    scenario(false, true);
}

#[test]
fn kamailio_registrar_with_connection_reuse_and_phones_without_path() {
    scenario(true, false);
}
