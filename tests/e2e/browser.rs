//! WebRTC clients in a real browser: headless Chromium (fake media devices) runs a page with
//! JsSIP 3.13; two browser users, alice and bob, register over siplb's WSS listener to a Kamailio
//! registrar behind it; alice calls bob, bob answers and hangs up; alice calls carol, a user on
//! plain TLS, and hangs up; carol calls bob back and hangs up. The registrar's log shows it
//! reached the browsers through siplb: their REGISTERs carried siplb's Path (with `ob`) and its
//! INVITEs to them went to siplb's peer listener. Skips, saying why, without Chromium, Kamailio
//! or the JsSIP bundle (`scripts/browser-deps.sh`); `.ci/run` installs all three.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::kamailio::{kamailio, kamailio_installed};
use crate::common::*;
use siplb::load::endpoint::{Endpoint, Handler, Out};
use siplb::load::msg::{self, Dialog, text};
use siplb::sip::{Message, Method};
use siplb::tls;

fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-deps/jssip.js")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !chromium {
        return Some("chromium is not installed (apt-get install chromium)".into());
    }
    if let Err(why) = kamailio_installed() {
        return Some(why);
    }
    if !bundle().exists() {
        return Some(format!(
            "{} is missing (run scripts/browser-deps.sh)",
            bundle().display()
        ));
    }
    None
}

/// Headless Chromium on `page`, killed on drop; its console's "RESULT" lines are collected.
struct Browser {
    child: Child,
    results: Arc<Mutex<Vec<String>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(page: &std::path::Path, profile: &std::path::Path) -> Browser {
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                // siplb's certificate comes from the test's throwaway CA.
                "--ignore-certificate-errors",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("file://{}", page.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let results = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&results);
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // [..:INFO:CONSOLE:12] "RESULT alice registered", source: file:///... (12)
                if let Some(rest) = line.split("\"RESULT ").nth(1)
                    && let Some(result) = rest.split('"').next()
                    && let Ok(mut r) = sink.lock()
                {
                    r.push(result.to_string());
                }
            }
        });
        Browser { child, results }
    }

    fn results(&self) -> Vec<String> {
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn said(&self, what: &str) -> bool {
        self.results().iter().any(|r| r == what)
    }
}

/// carol, a user on plain TLS: answers an INVITE with an SDP answer made from the offer (so the
/// browser's WebRTC stack takes it), answers BYEs, ACKs the 200 to her own INVITE.
#[derive(Default)]
struct Carol {
    inbox: Vec<Vec<u8>>,
    /// The browser's offer, kept to offer it back in carol's own call.
    offer: Option<String>,
}

/// An answer to a WebRTC offer: the offer with the DTLS role taken (RFC 5763).
fn answer_to(offer: &str) -> String {
    offer.replace("a=setup:actpass", "a=setup:active")
}

impl Handler for Carol {
    fn on_message(&mut self, out: &mut Out, conn: usize, m: &Message) {
        self.inbox.push(m.buf.to_vec());
        match m.method() {
            Some(Method::Invite) => {
                let offer = text(m.body());
                let tag = msg::unique("c");
                let extra = format!(
                    "Contact: <sip:carol@carol.invalid;transport=tls>\r\n{}",
                    msg::with_body("application/sdp", &answer_to(&offer))
                );
                out.send(conn, msg::response(m, 200, "OK", Some(&tag), true, &extra));
                self.offer = Some(offer);
            }
            Some(Method::Ack) => {}
            Some(_) => out.send(conn, msg::response(m, 200, "OK", None, false, "")),
            None => {}
        }
    }
}

fn pump(ep: &mut Endpoint, carol: &mut Carol) {
    ep.turn(carol, Duration::from_millis(10)).expect("turn");
}

#[test]
fn browsers_register_and_call_through_siplb_to_a_kamailio_registrar() {
    let _heavy = machine_to_ourselves();
    if let Some(why) = missing() {
        eprintln!("SKIPPED browser test: {why}");
        return;
    }
    let pki = Pki::new();
    let port = free_port();
    let k = kamailio(
        &pki,
        "k1.pool.test",
        port,
        false,
        r#"if (is_method("REGISTER")) { xlog("L_NOTICE", "REGISTER $tu path=$hdr(Path)\n"); }"#,
    );
    let lb = start_balancer(
        &pki,
        &[],
        2,
        &[
            "--peer-listen".into(),
            "127.0.0.1:0".into(),
            "--listen-wss".into(),
            "127.0.0.1:0".into(),
            "--backend".into(),
            format!("k1.pool.test=127.0.0.1:{port}"),
        ],
    );
    let m = metrics_within(&lb, Duration::from_secs(10), |m| {
        m.backends.len() == 1 && m.backends[0].up
    });
    assert!(
        m.backends.len() == 1 && m.backends[0].up,
        "{:?}\n{}",
        m.backends,
        k.log_text()
    );
    let peer = lb.peer_addr.expect("peer listener");

    // carol registers over TLS.
    let mut ep = Endpoint::new().expect("endpoint");
    let conn = ep
        .connect(
            lb.listen_addrs[0],
            pki.client_tls(None),
            tls::server_name(LB_NAME).expect("name"),
        )
        .expect("connect");
    let mut carol = Carol::default();
    let mut reg = Dialog {
        call_id: msg::unique("reg-"),
        local: format!("<sip:carol@pool.test>;tag={}", msg::unique("r")),
        remote: "<sip:carol@pool.test>".into(),
        remote_target: "sip:pool.test".into(),
        route: vec![],
        cseq: 0,
        host: "carol.invalid".into(),
    };
    ep.send(
        conn,
        &reg.request(
            "REGISTER",
            None,
            None,
            "Contact: <sip:carol@carol.invalid;transport=tls>\r\nExpires: 600\r\nSupported: path\r\n",
        ),
    );
    let until = Instant::now() + Duration::from_secs(20);
    while !carol
        .inbox
        .iter()
        .any(|b| Message::parse(b).is_ok_and(|m| is_response(&m, 200, Method::Register)))
    {
        assert!(
            Instant::now() < until,
            "carol did not register:\n{}",
            k.log_text()
        );
        pump(&mut ep, &mut carol);
    }

    // The browsers.
    let page = pki.dir.path().join("page.html");
    let html = include_str!("browser/jssip-page.html")
        .replace("__JSSIP__", &format!("file://{}", bundle().display()))
        .replace("__WSS__", &format!("wss://127.0.0.1:{}", lb.wss_addrs[0].port()));
    std::fs::write(&page, html).expect("page");
    let browser = Browser::open(&page, &pki.dir.path().join("chromium-profile"));
    let wait = |what: &str, ep: &mut Endpoint, carol: &mut Carol| {
        let until = Instant::now() + Duration::from_secs(60);
        while !browser.said(what) {
            assert!(
                Instant::now() < until,
                "the browser never said '{what}'; it said {:?}\nKamailio:\n{}",
                browser.results(),
                k.log_text()
            );
            pump(ep, carol);
        }
    };
    wait("alice registered", &mut ep, &mut carol);
    wait("bob registered", &mut ep, &mut carol);
    // alice → bob, bob hangs up.
    wait("bob confirmed alice", &mut ep, &mut carol);
    wait("alice ended bob by remote", &mut ep, &mut carol);
    // alice → carol over TLS, alice hangs up.
    wait("alice confirmed carol", &mut ep, &mut carol);
    wait("alice ended carol by local", &mut ep, &mut carol);
    wait("alice done", &mut ep, &mut carol);
    let offer = carol.offer.clone().expect("carol got the browser's offer");
    assert!(offer.contains("a=fingerprint:"), "a WebRTC offer: {offer}");
    // JsSIP says "ended" when it sends its BYE: carol reads it on her next turns.
    let until = Instant::now() + Duration::from_secs(20);
    while !carol
        .inbox
        .iter()
        .any(|b| Message::parse(b).is_ok_and(|m| m.method() == Some(Method::Bye)))
    {
        assert!(Instant::now() < until, "alice's BYE did not reach carol");
        pump(&mut ep, &mut carol);
    }

    // carol → bob, carol hangs up.
    let call_id = msg::unique("carol-bob-");
    let mut d = new_dialog(&call_id, "sip:bob@pool.test");
    d.local = format!("<sip:carol@pool.test>;tag={}", msg::unique("c"));
    d.host = "carol.invalid".into();
    let extra = format!(
        "Contact: <sip:carol@carol.invalid;transport=tls>\r\n{}",
        msg::with_body("application/sdp", &offer)
    );
    ep.send(conn, &d.request("INVITE", None, None, &extra));
    let until = Instant::now() + Duration::from_secs(60);
    let ok = loop {
        if let Some(ok) = carol.inbox.iter().find(|b| {
            Message::parse(b).is_ok_and(|m| {
                is_response(&m, 200, Method::Invite) && m.call_id() == Some(call_id.as_bytes())
            })
        }) {
            break ok.clone();
        }
        assert!(
            Instant::now() < until,
            "bob never answered carol; the browser said {:?}\nKamailio:\n{}",
            browser.results(),
            k.log_text()
        );
        pump(&mut ep, &mut carol);
    };
    d.confirm(&Message::parse(&ok).expect("200 parses"));
    ep.send(conn, &d.request("ACK", Some(1), None, ""));
    wait("bob confirmed carol", &mut ep, &mut carol);
    ep.send(conn, &d.request("BYE", None, None, ""));
    wait("bob ended carol by remote", &mut ep, &mut carol);

    // The registrar reached the browsers through siplb: their Path (with `ob`), and its INVITEs
    // to them relayed to siplb's peer listener.
    let log = std::fs::read_to_string(&k.log).unwrap_or_default();
    let peer_path = format!("path=<sip:127.0.0.1:{};transport=tls;lr;ob;siplb=", peer.port());
    for user in ["alice", "bob"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("REGISTER sip:{user}@pool.test")) && l.contains(&peer_path)),
            "{user}'s REGISTER without siplb's Path:\n{}",
            k.log_text()
        );
    }
    let via_siplb = format!("via sip:127.0.0.1:{};transport=tls;lr;ob;siplb=", peer.port());
    let relayed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("RELAY INVITE to ") && l.contains(".invalid;transport=ws") && l.contains(&via_siplb)
        })
        .collect();
    assert!(
        relayed.len() >= 2,
        "INVITEs to bob (from alice and carol) through siplb:\n{log}"
    );
    let m = lb.metrics();
    assert!(m.ws_upgrades >= 2, "{m:?}");
    eprintln!(
        "the browser said: {:?}\nthe registrar relayed: {relayed:#?}",
        browser.results()
    );
    drop(browser);
    lb.shutdown();
}
