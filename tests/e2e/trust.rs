//! The TLS/MTLS security model: back ends that are not trusted get no traffic (and nothing is
//! lost), client certificates optional or required, SNI certificate choice. Real TLS, rcgen PKI.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::common::*;
use siplb::certs::Ca;
use siplb::tls::{self, Identity};

/// Two good back ends and a third whose certificate (made by `bad` from the test PKI, with any
/// extra balancer flags) is not to be trusted: it must see no traffic, and no call may fail.
fn untrusted_third_backend(bad: impl FnOnce(&Pki) -> (Identity, Vec<String>)) {
    let pki = Pki::new();
    let opts = Backends::default();
    let (bad_id, extra) = bad(&pki);
    let mut backends = start_backends(&pki, Backends::n(2), None);
    backends.push(start_backend(&pki, &backend_name(2), bad_id, opts, None));
    let lb = start_balancer(&pki, &backends, 2, &extra);
    let report = run_calls(call_opts(&pki, &lb, 100));
    assert_eq!((report.ok, report.failed), (100, 0), "{}", report.summary());
    let stats: Vec<_> = backends.into_iter().map(|b| b.stop()).collect();
    let shares = assert_one_backend_per_call(&report, &stats);
    assert_eq!(shares[2], 0, "the untrusted back end got calls: {shares:?}");
    assert_eq!(stats[2].calls.len(), 0, "the untrusted back end saw traffic");
    lb.shutdown();
}

fn identity(leaf: &siplb::certs::Leaf) -> Identity {
    Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("identity")
}

#[test]
fn backend_from_another_ca_gets_no_calls() {
    untrusted_third_backend(|_| {
        let other = Ca::new("some other CA").expect("CA");
        (identity(&other.issue(&[&backend_name(2)]).expect("leaf")), vec![])
    });
}

#[test]
fn revoked_backend_gets_no_calls() {
    untrusted_third_backend(|pki| {
        let leaf = pki.ca.issue(&[&backend_name(2)]).expect("leaf");
        let crl = pki.dir.path().join("revoked.crl.pem");
        pki.ca.write_crl(&crl, &[leaf.serial]).expect("crl");
        (identity(&leaf), vec!["--crl".into(), crl.display().to_string()])
    });
}

#[test]
fn expired_backend_gets_no_calls() {
    untrusted_third_backend(|pki| {
        (
            identity(&pki.ca.issue_expired(&[&backend_name(2)]).expect("leaf")),
            vec![],
        )
    });
}

/// Sends an OPTIONS on a fresh TLS connection; true if a SIP answer comes back.
fn options_answered(lb: &siplb::worker::Balancer, cfg: Arc<rustls::ClientConfig>, name: &str) -> bool {
    let Some(mut s) = tls_connect(lb.listen_addrs[0], cfg, name) else {
        return false;
    };
    let req = "OPTIONS sip:ping@pool.test SIP/2.0\r\nVia: SIP/2.0/TLS client.invalid;branch=z9hG4bKopt1\r\n\
Max-Forwards: 70\r\nFrom: <sip:c@client.invalid>;tag=1\r\nTo: <sip:ping@pool.test>\r\nCall-ID: opt-1\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"SIP/2.0 200"))
}

#[test]
fn required_client_certificates() {
    let pki = Pki::new();
    let backends = start_backends(&pki, Backends::n(1), None);
    let extra = vec![
        "--client-ca".into(),
        pki.ca_path.display().to_string(),
        "--require-client-cert".into(),
    ];
    let lb = start_balancer(&pki, &backends, 2, &extra);
    let other = Ca::new("untrusted client CA").expect("CA");
    let stranger = other.issue(&["stranger.test"]).expect("leaf");
    let stranger = Identity::from_pem(&stranger.cert_pem, &stranger.key_pem).expect("id");
    let roots = tls::roots_from_pem(pki.ca.pem()).expect("roots");
    assert!(
        !options_answered(&lb, pki.client_tls(None), LB_NAME),
        "a client without a certificate got in"
    );
    let untrusted = tls::client_config(roots, Some(&stranger)).expect("cfg");
    assert!(
        !options_answered(&lb, untrusted, LB_NAME),
        "a client from an untrusted CA got in"
    );
    // A trusted client completes calls.
    let mut call = call_opts(&pki, &lb, 30);
    call.tls = pki.client_tls(Some(&["client.test"]));
    let report = run_calls(call);
    assert_eq!((report.ok, report.failed), (30, 0), "{}", report.summary());
    let m = metrics_when(&lb, |m| m.handshake_failures.values().sum::<u64>() >= 2);
    assert!(
        m.handshake_failures.values().sum::<u64>() >= 2,
        "{:?}",
        m.handshake_failures
    );
    lb.shutdown();
}

#[test]
fn optional_client_certificates_tell_verified_from_unverified() {
    let Harness {
        pki,
        backends: _backends,
        lb,
    } = Harness::new().backends(1).workers(2).client_ca().start();
    let other = Ca::new("untrusted client CA").expect("CA");
    let stranger = other.issue(&["stranger.test"]).expect("leaf");
    let stranger = Identity::from_pem(&stranger.cert_pem, &stranger.key_pem).expect("id");
    let roots = tls::roots_from_pem(pki.ca.pem()).expect("roots");
    assert!(
        options_answered(&lb, pki.client_tls(None), LB_NAME),
        "no certificate"
    );
    assert!(
        options_answered(
            &lb,
            tls::client_config(roots, Some(&stranger)).expect("cfg"),
            LB_NAME
        ),
        "untrusted certificate"
    );
    assert!(
        options_answered(&lb, pki.client_tls(Some(&["client.test"])), LB_NAME),
        "trusted certificate"
    );
    let m = metrics_when(&lb, |m| m.clients_verified + m.clients_unverified >= 3);
    assert_eq!((m.clients_verified, m.clients_unverified), (1, 2));
    lb.shutdown();
}

/// The end-entity certificate a TLS client is shown, with SNI `sni` (None: no SNI at all).
fn served_certificate(
    lb: &siplb::worker::Balancer,
    pki: &Pki,
    sni: Option<&str>,
    verify_as: &str,
) -> Vec<u8> {
    let roots = tls::roots_from_pem(pki.ca.pem()).expect("roots");
    let mut cfg = (*tls::client_config(roots, None).expect("cfg")).clone();
    cfg.enable_sni = sni.is_some();
    let s = tls_connect(lb.listen_addrs[0], Arc::new(cfg), sni.unwrap_or(verify_as))
        .expect("handshake completes (certificate valid for the name asked)");
    s.conn.peer_certificates().expect("certificate")[0].to_vec()
}

#[test]
fn sni_picks_the_certificate_and_no_sni_gets_the_fallback() {
    let pki = Pki::new();
    let a = pki
        .ca
        .issue(&["a.sni.test"])
        .expect("a")
        .write(pki.dir.path(), "a")
        .expect("write");
    let b = pki
        .ca
        .issue(&["b.sni.test"])
        .expect("b")
        .write(pki.dir.path(), "b")
        .expect("write");
    let backends = start_backends(&pki, Backends::n(1), None);
    let extra = vec![
        "--sni-cert".into(),
        format!("{}:{}", a.cert.display(), a.key.display()),
        "--sni-cert".into(),
        format!("{}:{}", b.cert.display(), b.key.display()),
    ];
    let lb = start_balancer(&pki, &backends, 1, &extra);
    let cert_a = served_certificate(&lb, &pki, Some("a.sni.test"), "");
    let cert_b = served_certificate(&lb, &pki, Some("b.sni.test"), "");
    let fallback = served_certificate(&lb, &pki, None, LB_NAME);
    let unknown = served_certificate(&lb, &pki, Some(LB_NAME), LB_NAME);
    assert_ne!(cert_a, cert_b);
    assert_eq!(
        cert_a,
        std::fs::read(&a.cert).map(|pem| pem_der(&pem)).expect("a")
    );
    assert_eq!(
        cert_b,
        std::fs::read(&b.cert).map(|pem| pem_der(&pem)).expect("b")
    );
    assert_eq!(
        fallback,
        std::fs::read(&pki.lb.cert).map(|pem| pem_der(&pem)).expect("lb")
    );
    assert_eq!(
        unknown, fallback,
        "a name without its own certificate gets the fallback"
    );
    lb.shutdown();
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem).expect("pem").to_vec()
}

/// A client CA with a CRL and a pool CA without one: each CRL applies to its own CA's chains.
#[test]
fn crls_apply_to_their_own_ca_and_others_pass_unless_required() {
    let pki = Pki::new();
    let clients = Ca::new("client CA").expect("CA");
    let clients_pem = pki.dir.path().join("clients.pem");
    clients.write_pem(&clients_pem).expect("write");
    let good = clients.issue(&["alice.clients.test"]).expect("leaf");
    let bad = clients.issue(&["mallory.clients.test"]).expect("leaf");
    let crl = pki.dir.path().join("clients.crl.pem");
    clients.write_crl(&crl, &[bad.serial]).expect("crl");
    let roots = || tls::roots_from_pem(pki.ca.pem()).expect("roots");
    let as_client = |leaf: &siplb::certs::Leaf| {
        tls::client_config(roots(), Some(&identity(leaf))).expect("client config")
    };
    let backends = start_backends(&pki, Backends::n(2), None);
    let flags = |required: bool| {
        let mut f: Vec<String> = vec![
            "--client-ca".into(),
            clients_pem.display().to_string(),
            "--require-client-cert".into(),
            "--crl".into(),
            crl.display().to_string(),
        ];
        if required {
            f.push("--crl-required".into());
        }
        f
    };
    let lb = start_balancer(&pki, &backends, 1, &flags(false));
    let m = metrics_when(&lb, |m| m.backends.len() == 2 && m.backends.iter().all(|b| b.up));
    assert!(
        m.backends.len() == 2 && m.backends.iter().all(|b| b.up),
        "the pool CA has no CRL: {:?}",
        m.backends
    );
    assert!(options_answered(&lb, as_client(&good), LB_NAME));
    assert!(
        !options_answered(&lb, as_client(&bad), LB_NAME),
        "a revoked client got in"
    );
    lb.shutdown();
    // Asked for: a chain whose CA published no CRL is refused (the pool's here).
    let lb = start_balancer(&pki, &backends, 1, &flags(true));
    let m = metrics_when(&lb, |m| {
        m.backends.len() == 2 && m.backends.iter().any(|b| !b.failures.is_empty())
    });
    assert!(
        m.backends.len() == 2 && m.backends.iter().all(|b| !b.up),
        "{:?}",
        m.backends
    );
    lb.shutdown();
}

/// A client offering every suite in rustls' default order (AES-256-GCM first) gets siplb's
/// choice, AES-128-GCM with SHA-256 (cheaper per call; still TLS 1.3 AEAD), on the client hop
/// and on the hop to a back end; a client offering only AES-256 still gets it.
#[test]
fn siplb_picks_aes_128_gcm_first_on_both_hops() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let Harness {
        pki,
        backends: _backends,
        lb,
    } = Harness::new().backends(1).workers(1).start();
    let roots = tls::roots_from_pem(pki.ca.pem()).expect("roots");
    let offer = |suites: Option<Vec<rustls::SupportedCipherSuite>>| {
        let mut p = rustls::crypto::ring::default_provider();
        if let Some(s) = suites {
            p.cipher_suites = s;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let s = tls_connect(lb.listen_addrs[0], Arc::new(cfg), LB_NAME).expect("handshake");
        s.conn.negotiated_cipher_suite().map(|s| s.suite())
    };
    assert_eq!(
        rustls::crypto::ring::default_provider().cipher_suites[0].suite(),
        TLS13_AES_256_GCM_SHA384
    );
    assert_eq!(offer(None), Some(TLS13_AES_128_GCM_SHA256));
    let only_256 = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384];
    assert_eq!(offer(Some(only_256)), Some(TLS13_AES_256_GCM_SHA384));
    // The pool hop: siplb is the client there and offers AES-128-GCM first.
    let ours = tls::provider();
    assert_eq!(ours.cipher_suites[0].suite(), TLS13_AES_128_GCM_SHA256);
    lb.shutdown();
}
