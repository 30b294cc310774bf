//! `sipload` flags: `sipload server` (a pooled back end) and `sipload call` (a caller), with
//! the same refusal rules as siplb (exit 2 for flags, 1 for files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::caller::{self, CallOpts};
use super::server::{self, ByeOn, ServerOpts};
use crate::logging::{LogFormat, LogLevel};
use crate::tls::{self, Identity};

#[derive(Debug, Parser)]
#[command(
    name = "sipload",
    version,
    about = "Load generator and test SIP server for siplb (SIP over TLS)."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_enum, default_value_t = LogLevel::Warn, global = true)]
    pub log: LogLevel,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// A UAS playing a pooled back-end server (MTLS; its NAME must be in its certificate).
    Server(ServerArgs),
    /// A UAC placing calls through siplb (or any SIP/TLS server) and reporting the results.
    Call(CallArgs),
    /// Write a throwaway CA and certificates (PEM) for scripts and benchmarks.
    Certs(CertsArgs),
    /// Open N TLS connections, finish their handshakes and keep them open, silent (memory and
    /// connection-count measurements).
    Idle(IdleArgs),
    /// Flood a target with new INVITEs over N TLS connections for a while, as fast as TLS
    /// carries them (tests of rate limits and overload); reports the answers by status code.
    Flood(FloodArgs),
}

/// Where a client tool connects, and how it checks the certificate it finds there.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Address to connect to (siplb's front listener).
    #[arg(long, value_name = "ADDR")]
    pub target: SocketAddr,
    /// Name the target's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
    /// CA the target's certificate must chain to.
    #[arg(long, value_name = "PEM")]
    pub ca: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub to: TargetArgs,
    /// Source address to connect from (one of this machine's: 127.0.0.2, say).
    #[arg(long, value_name = "IP")]
    pub from: Option<std::net::IpAddr>,
    /// TLS connections, each writing INVITEs as fast as it can.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
    /// How long the flood lasts, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 4.0, value_parser = positive)]
    pub seconds: f64,
}

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub to: TargetArgs,
    /// Connections to open.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to keep them open once all are up.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub hold: u64,
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem and NAME.crt.pem / NAME.key.pem into.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A certificate for each NAME (DNS name or IP address; repeatable).
    #[arg(long = "name", value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on for siplb's MTLS connections.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The server's name (in its certificate, its Via and its Contact).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The server's certificate chain (PEM), carrying NAME.
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// The private key (PEM) for --cert.
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
    /// CA that clients (siplb) must present certificates from; also trusted for --peer.
    #[arg(long, value_name = "PEM")]
    pub ca: PathBuf,
    /// siplb's peer listener, for BYEs sent on a connection of the server's own (--bye-on peer).
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<SocketAddr>,
    /// siplb's certificate name, checked when connecting to --peer.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub peer_name: String,
    /// End each answered call from this side after MS milliseconds.
    #[arg(long, value_name = "MS")]
    pub bye_after_ms: Option<u64>,
    /// Connection the server's BYE leaves on.
    #[arg(long, value_enum, default_value_t = ByeOn::Same)]
    pub bye_on: ByeOn,
    /// Accept connections and record messages but never answer (a hung server).
    #[arg(long)]
    pub silent: bool,
    /// Answer INVITEs (180 and 200) MS milliseconds late; 100 Trying still comes at once (a busy
    /// or slow server).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub answer_delay: u64,
    /// Answer this share (0 to 1) of new INVITEs and other out-of-dialog requests `503` with
    /// `Retry-After: 30`, while OPTIONS pass (an overloaded server, a B2BUA out of channels).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = share)]
    pub reject_503: f64,
    /// Take at most CPS new INVITEs per second (burst: one second's worth); beyond it answer
    /// `503` with `Retry-After: 1`.
    #[arg(long, value_name = "CPS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::limit::MAX_RATE)))]
    pub capacity: Option<u32>,
    /// On exit, write one line per Call-ID seen with what was seen, tab-separated (calls are
    /// recorded only with it: a load run without it spends nothing on records).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub to: TargetArgs,
    /// Client certificate (for --require-client-cert balancers).
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) for --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Calls to place.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub calls: usize,
    /// New calls per second.
    #[arg(long, value_name = "R", default_value_t = 50.0)]
    pub rate: f64,
    /// Calls in flight at most.
    #[arg(long, value_name = "L", default_value_t = 20)]
    pub concurrency: usize,
    /// A new TLS connection for every call (default: one persistent connection).
    #[arg(long)]
    pub per_call_connection: bool,
    /// Milliseconds between ACK and BYE.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub hold_ms: u64,
    /// Wait for the far end's BYE instead of sending one.
    #[arg(long)]
    pub remote_bye: bool,
    /// Request-URI of the INVITEs (and their To).
    #[arg(long, value_name = "URI", default_value = "sip:service@example.com")]
    pub ruri: String,
    /// A different Request-URI user per call (u0, u1, ...).
    #[arg(long)]
    pub vary_user: bool,
    /// Call over SIP over secure WebSocket (RFC 7118): --target is a --listen-wss address.
    #[arg(long)]
    pub ws: bool,
    /// Host of the caller's From and Contact (a federation partner calls from its own domain).
    #[arg(long, value_name = "DOMAIN", default_value = "sipload.invalid")]
    pub from_domain: String,
    /// Seconds a call may take before it counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Behave as an RFC 3263 client: try a call once more on a new connection when its
    /// connection fails before any answer, or when it is answered 503 (a draining balancer).
    #[arg(long)]
    pub retry: bool,
}

/// Runs sipload; returns the process exit code.
pub fn main(args: Args) -> i32 {
    crate::logging::init(args.log.as_str(), LogFormat::Text);
    let result = match args.command {
        Cmd::Server(s) => run_server(s),
        Cmd::Call(c) => run_call(c),
        Cmd::Certs(c) => run_certs(c),
        Cmd::Flood(f) => run_flood(f),
        Cmd::Idle(i) => run_idle(i),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipload: {e}");
            1
        }
    }
}

fn flag_check(ok: bool, flag: &str, why: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("{flag}: {why}")) }
}

fn run_server(a: ServerArgs) -> Result<i32, String> {
    let id = Identity::load(&a.cert, &a.key).map_err(|e| e.to_string())?;
    let roots = tls::load_roots(&a.ca).map_err(|e| e.to_string())?;
    let server_tls = tls::mtls_server_config(&id, roots.clone()).map_err(|e| e.to_string())?;
    let peer = match a.peer {
        Some(addr) => Some((
            addr,
            tls::client_config(roots, Some(&id)).map_err(|e| e.to_string())?,
            tls::server_name(&a.peer_name).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let handle = server::spawn(ServerOpts {
        listen: a.listen,
        name: a.name.clone(),
        tls: server_tls,
        peer,
        bye_after: a.bye_after_ms.map(Duration::from_millis),
        bye_on: a.bye_on,
        silent: a.silent,
        crash_on_invite: false,
        faults: server::Faults {
            answer_delay: Duration::from_millis(a.answer_delay),
            reject_503: a.reject_503,
            capacity: a.capacity,
            ..Default::default()
        },
        record: a.report.is_some(),
    })
    .map_err(|e| format!("{}: {e}", a.listen))?;
    eprintln!("sipload server {} listening on {}", a.name, handle.addr);
    wait_for_signal()?;
    let stats = handle.stop();
    if a.report.is_some() {
        println!(
            "server {}: {} calls seen, {} connections",
            a.name,
            stats.calls.len(),
            stats.connections
        );
    } else {
        println!(
            "server {}: {} connections (calls are recorded with --report only)",
            a.name, stats.connections
        );
    }
    if let Some(path) = a.report {
        let text: String = stats
            .calls
            .iter()
            .map(|(id, seen)| format!("{id}\t{}\t{}\n", a.name, seen.join(",")))
            .collect();
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(0)
}

fn run_call(a: CallArgs) -> Result<i32, String> {
    flag_check(a.rate > 0.0, "--rate", "must be above 0")?;
    flag_check(a.concurrency > 0, "--concurrency", "must be at least 1")?;
    let roots = tls::load_roots(&a.to.ca).map_err(|e| e.to_string())?;
    let id = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => Some(Identity::load(c, k).map_err(|e| e.to_string())?),
        _ => None,
    };
    let opts = CallOpts {
        target: a.to.target,
        server_name: tls::server_name(&a.to.server_name).map_err(|e| format!("--server-name: {e}"))?,
        tls: tls::client_config(roots, id.as_ref()).map_err(|e| e.to_string())?,
        calls: a.calls,
        rate: a.rate,
        concurrency: a.concurrency,
        per_call_connection: a.per_call_connection,
        hold: Duration::from_millis(a.hold_ms),
        remote_bye: a.remote_bye,
        timeout: Duration::from_secs(a.timeout),
        ruri: a.ruri,
        vary_user: a.vary_user,
        from_domain: a.from_domain,
        ws: a.ws,
        progress: !a.quiet,
        retry: a.retry,
    };
    let report = caller::run(opts).map_err(|e| format!("{}: {e}", a.to.target))?;
    println!("{}", report.summary());
    Ok(if report.failed == 0 { 0 } else { 1 })
}

fn run_flood(a: FloodArgs) -> Result<i32, String> {
    let roots = tls::load_roots(&a.to.ca).map_err(|e| e.to_string())?;
    let report = crate::load::flood::run(crate::load::flood::FloodOpts {
        target: a.to.target,
        server_name: tls::server_name(&a.to.server_name).map_err(|e| e.to_string())?,
        tls: tls::client_config(roots, None).map_err(|e| e.to_string())?,
        from: a.from,
        connections: a.connections,
        duration: Duration::from_secs_f64(a.seconds),
    });
    println!("{}", report.summary());
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

fn run_certs(a: CertsArgs) -> Result<i32, String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let ca = crate::certs::Ca::new("sipload throwaway CA").map_err(|e| e.to_string())?;
    ca.write_pem(&a.dir.join("ca.pem")).map_err(|e| e.to_string())?;
    for name in &a.names {
        let leaf = ca.issue(&[name]).map_err(|e| e.to_string())?;
        leaf.write(&a.dir, name).map_err(|e| e.to_string())?;
    }
    println!(
        "wrote ca.pem and {} certificate(s) to {}",
        a.names.len(),
        a.dir.display()
    );
    Ok(0)
}

fn run_idle(a: IdleArgs) -> Result<i32, String> {
    struct Quiet;
    impl super::endpoint::Handler for Quiet {
        fn on_message(&mut self, _: &mut super::endpoint::Out, _: usize, _: &crate::sip::Message) {}
    }
    let roots = tls::load_roots(&a.to.ca).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(roots, None).map_err(|e| e.to_string())?;
    let name = tls::server_name(&a.to.server_name).map_err(|e| format!("--server-name: {e}"))?;
    let mut ep = super::endpoint::Endpoint::new().map_err(|e| e.to_string())?;
    let mut quiet = Quiet;
    let start = std::time::Instant::now();
    for i in 0..a.connections {
        ep.connect(a.to.target, std::sync::Arc::clone(&cfg), name.clone())
            .map_err(|e| format!("connection {i}: {e}"))?;
        if i % 200 == 199 {
            // Let handshakes progress instead of queueing thousands at once.
            ep.turn(&mut quiet, Duration::from_millis(1))
                .map_err(|e| e.to_string())?;
        }
    }
    while ep.handshaking() > 0 && start.elapsed() < Duration::from_secs(120) {
        ep.turn(&mut quiet, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    println!(
        "{} connections open ({} still handshaking) after {:.1}s",
        ep.open_count(),
        ep.handshaking(),
        start.elapsed().as_secs_f64()
    );
    let until = std::time::Instant::now() + Duration::from_secs(a.hold);
    while std::time::Instant::now() < until {
        ep.turn(&mut quiet, Duration::from_millis(100))
            .map_err(|e| e.to_string())?;
    }
    Ok(0)
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal handler: {e}"))?;
    }
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A share between 0 and 1 (`--reject-503`).
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a share between 0 and 1")),
    }
}

/// A rate above zero (`--capacity`).
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("'{s}' is not a rate above zero")),
    }
}
