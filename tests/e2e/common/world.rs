//! A test's world: a throwaway PKI made with rcgen, sipload back ends with certificates naming
//! them, and siplb started through the real command-line parser in front of them — one at a time
//! or together through [`Harness`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls::ClientConfig;
use siplb::certs::{Ca, LeafFiles};
use siplb::cli::Args;
use siplb::load::server::{self, ByeOn, Faults, ServerHandle, ServerOpts};
use siplb::tls::{self, Identity};
use siplb::worker::Balancer;

pub const LB_NAME: &str = "siplb.test";

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_path: PathBuf,
    pub lb: LeafFiles,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("siplb test CA").expect("CA");
        let ca_path = dir.path().join("ca.pem");
        ca.write_pem(&ca_path).expect("write CA");
        let lb = ca
            .issue(&[LB_NAME, "127.0.0.1"])
            .expect("lb cert")
            .write(dir.path(), "lb")
            .expect("write lb");
        Pki { dir, ca, ca_path, lb }
    }

    /// A client config that trusts the test CA (optionally with a client certificate).
    pub fn client_tls(&self, names: Option<&[&str]>) -> Arc<ClientConfig> {
        let roots = tls::roots_from_pem(self.ca.pem()).expect("roots");
        let id = names.map(|n| {
            let leaf = self.ca.issue(n).expect("leaf");
            Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("identity")
        });
        tls::client_config(roots, id.as_ref()).expect("client config")
    }

    pub fn identity(&self, names: &[&str]) -> Identity {
        let leaf = self.ca.issue(names).expect("leaf");
        Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("identity")
    }
}

/// A federation partner's PKI: its own CA (written beside ours) and edge certificates from it.
pub struct PartnerPki {
    pub domain: String,
    pub ca: Ca,
    pub ca_path: PathBuf,
}

impl PartnerPki {
    pub fn new(pki: &Pki, domain: &str) -> PartnerPki {
        let ca = Ca::new(&format!("{domain} partner CA")).expect("partner CA");
        let ca_path = pki.dir.path().join(format!("{domain}-ca.pem"));
        ca.write_pem(&ca_path).expect("write partner CA");
        PartnerPki {
            domain: domain.into(),
            ca,
            ca_path,
        }
    }

    /// `--partner` for it: `DOMAIN=CA[,name=N]...`.
    pub fn flag(&self, names: &[&str]) -> String {
        let mut f = format!("{}={}", self.domain, self.ca_path.display());
        for n in names {
            f.push_str(&format!(",name={n}"));
        }
        f
    }

    /// A client config for an edge with `leaf` (from any CA), trusting siplb's CA.
    pub fn edge_tls(pki: &Pki, leaf: &siplb::certs::Leaf) -> Arc<ClientConfig> {
        let id = Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("identity");
        tls::client_config(tls::roots_from_pem(pki.ca.pem()).expect("roots"), Some(&id)).expect("config")
    }

    /// An edge certificate from this partner's CA naming `names`.
    pub fn edge(&self, pki: &Pki, names: &[&str]) -> Arc<ClientConfig> {
        PartnerPki::edge_tls(pki, &self.ca.issue(names).expect("leaf"))
    }
}

/// Options for the back ends a test starts.
#[derive(Clone, Copy)]
pub struct Backends {
    pub count: usize,
    pub bye_after: Option<Duration>,
    pub bye_on: ByeOn,
    pub silent: bool,
    pub crash_on_invite: bool,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            count: 3,
            bye_after: None,
            bye_on: ByeOn::Same,
            silent: false,
            crash_on_invite: false,
        }
    }
}

impl Backends {
    /// `n` ordinary back ends.
    pub fn n(count: usize) -> Backends {
        Backends {
            count,
            ..Backends::default()
        }
    }
}

pub fn backend_name(i: usize) -> String {
    format!("b{i}.pool.test")
}

/// Starts sipload servers with certificates naming them; `peer` is siplb's peer listener.
pub fn start_backends(pki: &Pki, opts: Backends, peer: Option<SocketAddr>) -> Vec<ServerHandle> {
    (0..opts.count)
        .map(|i| {
            start_backend(
                pki,
                &backend_name(i),
                pki.identity(&[&backend_name(i)]),
                opts,
                peer,
            )
        })
        .collect()
}

/// Starts one sipload server showing `id` (which may be from another CA, revoked, expired...).
pub fn start_backend(
    pki: &Pki,
    name: &str,
    id: Identity,
    opts: Backends,
    peer: Option<SocketAddr>,
) -> ServerHandle {
    start_backend_at(
        pki,
        name,
        id,
        opts,
        peer,
        "127.0.0.1:0".parse().expect("addr"),
        Faults::default(),
    )
}

/// As `start_backend`, listening on `listen`, with `faults`.
pub fn start_backend_at(
    pki: &Pki,
    name: &str,
    id: Identity,
    opts: Backends,
    peer: Option<SocketAddr>,
    listen: SocketAddr,
    faults: Faults,
) -> ServerHandle {
    let roots = tls::roots_from_pem(pki.ca.pem()).expect("roots");
    let server_tls = tls::mtls_server_config(&id, roots.clone()).expect("server tls");
    let peer = peer.map(|addr| {
        let client = tls::client_config(roots, Some(&id)).expect("client tls");
        (addr, client, tls::server_name(LB_NAME).expect("name"))
    });
    server::spawn(ServerOpts {
        listen,
        name: name.to_string(),
        tls: server_tls,
        peer,
        bye_after: opts.bye_after,
        bye_on: opts.bye_on,
        silent: opts.silent,
        crash_on_invite: opts.crash_on_invite,
        record: true,
        faults,
    })
    .expect("start back end")
}

/// Back end `i` (as `backend_name(i)`) with `faults`, on a port of its own.
pub fn backend_with(pki: &Pki, i: usize, faults: Faults) -> ServerHandle {
    let name = backend_name(i);
    start_backend_at(
        pki,
        &name,
        pki.identity(&[&name]),
        Backends::n(1),
        None,
        "127.0.0.1:0".parse().expect("addr"),
        faults,
    )
}

/// Starts siplb with `workers` workers in front of `backends`, plus `extra` flags.
pub fn start_balancer(pki: &Pki, backends: &[ServerHandle], workers: usize, extra: &[String]) -> Balancer {
    let mut args: Vec<String> = vec!["siplb".into()];
    if !extra.iter().any(|a| a == "--listen") {
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    }
    args.extend::<Vec<String>>(vec![
        "--cert".into(),
        pki.lb.cert.display().to_string(),
        "--key".into(),
        pki.lb.key.display().to_string(),
        "--workers".into(),
        workers.to_string(),
    ]);
    if !extra.iter().any(|a| a == "--backend-ca") {
        args.extend(["--backend-ca".into(), pki.ca_path.display().to_string()]);
    }
    for b in backends {
        args.push("--backend".into());
        args.push(format!("{}={}", b.name, b.addr));
    }
    args.extend(extra.iter().cloned());
    siplb::logging::init(
        &std::env::var("SIPLB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        siplb::logging::LogFormat::Text,
    );
    let cfg = Args::try_parse_from(args)
        .expect("flags")
        .run
        .into_config()
        .expect("config");
    let lb = Balancer::start(cfg).expect("balancer starts");
    assert!(
        lb.wait_ready(Duration::from_secs(10)),
        "balancer did not connect to its back ends"
    );
    lb
}

/// One test's world: a CA with every certificate it needs, sipload back ends, and siplb in front
/// of them, made by [`Harness::new`]'s builder (`Harness::new().backends(3).workers(2).start()`).
/// Each part stops when it goes out of scope (siplb's workers are joined, the servers told to
/// stop), so a test may take the parts apart: `let Harness { pki, backends, lb } = ...;`.
pub struct Harness {
    pub lb: Balancer,
    pub backends: Vec<ServerHandle>,
    pub pki: Pki,
}

/// What [`Harness::new`] starts: three ordinary back ends and two workers unless told otherwise.
pub struct HarnessBuilder {
    backends: Backends,
    workers: usize,
    flags: Vec<String>,
    client_ca: bool,
}

impl Harness {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> HarnessBuilder {
        HarnessBuilder {
            backends: Backends::default(),
            workers: 2,
            flags: Vec::new(),
            client_ca: false,
        }
    }
}

impl HarnessBuilder {
    /// `n` ordinary back ends.
    pub fn backends(mut self, n: usize) -> Self {
        self.backends.count = n;
        self
    }

    /// Back ends as `opts` says (how many, and how they behave).
    pub fn with(mut self, opts: Backends) -> Self {
        self.backends = opts;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// siplb flags beside the ones every test needs (certificates, back ends, workers).
    pub fn flags(mut self, flags: &[String]) -> Self {
        self.flags.extend(flags.iter().cloned());
        self
    }

    /// `--client-ca` the test CA: clients showing a certificate from it are verified.
    pub fn client_ca(mut self) -> Self {
        self.client_ca = true;
        self
    }

    /// Starts the back ends, then siplb, and waits until siplb is connected to them.
    pub fn start(mut self) -> Harness {
        let pki = Pki::new();
        if self.client_ca {
            self.flags
                .extend(["--client-ca".into(), pki.ca_path.display().to_string()]);
        }
        let backends = start_backends(&pki, self.backends, None);
        let lb = start_balancer(&pki, &backends, self.workers, &self.flags);
        Harness { lb, backends, pki }
    }
}
