//! Command line to validated configuration. Owns the flag names (a contract: scripts and units
//! name them; add flags, never rename one), their
//! defaults, and the two kinds of refusal: a bad flag (exit 2) and an unreadable or invalid file
//! (exit 1), each as one line naming the flag or file and what is wrong.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::balance::pool::{HealthCheck, Policy};
use crate::balance::{Backend, BalanceKey};
use crate::logging::{LogFormat, LogLevel};
use crate::route::PathMode;
use crate::tls::partner::PartnerSpec;
use crate::tls::trust::TlsFiles;

mod error;
pub mod partner;
mod token_key;
pub use error::ConfigError;
pub use token_key::{keygen, read_token_key};

/// Headings of `siplb --help`, in the order an operator sets things up.
const LISTEN: &str = "Listeners and TLS";
const BACKENDS: &str = "Back ends";
const HEALTH: &str = "Health checks";
const LIMITS: &str = "Limits and timeouts";
const OPERATIONS: &str = "Operations";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address for SIP/TLS clients (repeatable). A wildcard address needs --advertise.
    #[arg(help_heading = LISTEN, long = "listen", value_name = "ADDR", default_value = "0.0.0.0:5061")]
    pub listen: Vec<SocketAddr>,
    /// Address for SIP over secure WebSocket (RFC 7118: browsers, WebRTC phones), with the same
    /// certificates and client-certificate rules as --listen (repeatable; default: none).
    #[arg(help_heading = LISTEN, long = "listen-wss", value_name = "ADDR")]
    pub listen_wss: Vec<SocketAddr>,
    /// HOST[:PORT] WebSocket clients reach siplb at, written into the Record-Route towards them
    /// (default: the --advertise host with the first --listen-wss port).
    #[arg(help_heading = LISTEN, long, value_name = "HOST[:PORT]", requires = "listen_wss")]
    pub advertise_wss: Option<String>,
    /// An Origin a browser may open a WebSocket from, as it sends it (https://phone.example.com)
    /// (repeatable; default: any; clients that send no Origin are not browsers and pass).
    #[arg(help_heading = LISTEN, long = "wss-allow-origin", value_name = "ORIGIN", requires = "listen_wss")]
    pub wss_allow_origin: Vec<String>,
    /// Certificate chain (PEM) shown to clients.
    #[arg(help_heading = LISTEN, long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(help_heading = LISTEN, long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Another certificate and key, shown to clients that ask (by SNI) for a name it carries;
    /// --cert stays the fallback for clients without SNI or asking for another name (repeatable).
    #[arg(help_heading = LISTEN, long = "sni-cert", value_name = "CERT:KEY")]
    pub sni_cert: Vec<String>,
    /// CA (PEM) for client certificates; with it, clients may present one and it is verified.
    #[arg(help_heading = LISTEN, long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Federation partner: DOMAIN=CA_PEM[,name=HOST]...; its edges connect to --listen with a
    /// certificate from their own CA carrying one of its names (default: DOMAIN and names under
    /// it), and may only speak for DOMAIN (From, P-Asserted-Identity) (repeatable).
    #[arg(help_heading = LISTEN, long = "partner", value_name = "DOMAIN=CA_PEM[,name=HOST]")]
    pub partner: Vec<String>,
    /// File with one partner per line, same syntax as --partner; '#' starts a comment. Read
    /// again on SIGHUP: connections of a partner it no longer names are closed.
    #[arg(help_heading = LISTEN, long, value_name = "FILE")]
    pub partners_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate from --client-ca.
    #[arg(help_heading = LISTEN, long, requires = "client_ca")]
    pub require_client_cert: bool,
    /// Certificate revocation list (PEM), applied to client, back-end and peer certificates
    /// (repeatable).
    #[arg(help_heading = LISTEN, long = "crl", value_name = "PEM")]
    pub crl: Vec<PathBuf>,
    /// Refuse certificates whose CA published no CRL among the --crl files (by default a CRL
    /// applies to the chains of the CA that issued it, and chains of other CAs pass).
    #[arg(help_heading = LISTEN, long)]
    pub crl_required: bool,
    /// Back end: NAME=HOST:PORT[,weight=W]; NAME must be in the server's certificate (repeatable).
    #[arg(help_heading = BACKENDS, long = "backend", value_name = "NAME=HOST:PORT[,weight=W]")]
    pub backend: Vec<String>,
    /// File with one back end per line, same syntax as --backend; '#' starts a comment.
    #[arg(help_heading = BACKENDS, long, value_name = "FILE")]
    pub backends_file: Option<PathBuf>,
    /// CA (PEM) that back-end certificates must chain to.
    #[arg(help_heading = BACKENDS, long, value_name = "PEM")]
    pub backend_ca: Option<PathBuf>,
    /// Client certificate siplb shows to back ends (default: --cert).
    #[arg(help_heading = BACKENDS, long, value_name = "PEM", requires = "backend_key")]
    pub backend_cert: Option<PathBuf>,
    /// Key for --backend-cert (default: --key).
    #[arg(help_heading = BACKENDS, long, value_name = "PEM", requires = "backend_cert")]
    pub backend_key: Option<PathBuf>,
    /// Address where back-end servers may open MTLS connections of their own to siplb.
    #[arg(help_heading = BACKENDS, long, value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// HOST[:PORT] clients reach siplb at, written into Via and Record-Route towards clients
    /// (default: the first --listen).
    #[arg(help_heading = LISTEN, long, value_name = "HOST[:PORT]")]
    pub advertise: Option<String>,
    /// HOST[:PORT] servers reach siplb at (the --peer-listen side): written into the Via, the
    /// server-facing Record-Route and the Path of requests to servers (default: the --advertise
    /// host with the --peer-listen port).
    #[arg(help_heading = BACKENDS, long, value_name = "HOST[:PORT]", requires = "peer_listen")]
    pub peer_advertise: Option<String>,
    /// When a REGISTER gets a Path (with Require: path): only if the UA says Supported: path
    /// (RFC 3327), or always.
    #[arg(help_heading = BACKENDS, long, value_enum, default_value_t = PathMode::Supported)]
    pub path: PathMode,
    /// The secret behind every routing token and branch (at least 32 bytes, readable by its
    /// owner only; `siplb keygen FILE` writes one). Instances given the same file accept each
    /// other's pins; read again on SIGHUP, a changed key keeps accepting the previous one for
    /// 10 minutes. Without it, a random key per process.
    #[arg(help_heading = BACKENDS, long, value_name = "FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Share the listening ports with other processes that ask for it too (several instances on
    /// one port, the kernel spreading connections); without it a port in use is refused.
    #[arg(help_heading = LISTEN, long)]
    pub reuse_port: bool,
    /// Worker threads, each with its own event loop, listener and back-end pool [default: the
    /// number of CPUs]
    #[arg(help_heading = OPERATIONS, long, value_name = "N")]
    pub workers: Option<usize>,
    /// MTLS connections per back end per worker.
    #[arg(help_heading = BACKENDS, long, value_name = "N", default_value_t = 1)]
    pub pool_size: usize,
    /// What keeps a dialog on one back end: the hash key for new dialogs.
    #[arg(help_heading = BACKENDS, long, value_enum, default_value_t = BalanceKey::CallId)]
    pub balance: BalanceKey,
    /// Times an initial INVITE or other out-of-dialog request is sent to another back end when
    /// its own answers 503 (and takes no new dialogs for its Retry-After), does not answer in time
    /// (--backend-answer-timeout) or loses its connection, while nothing beyond 100 Trying reached
    /// the caller; 0: the caller gets what the server said.
    #[arg(help_heading = BACKENDS, long, value_name = "N", default_value_t = 2)]
    pub max_retries: u8,
    /// Transactions a back end may have forwarded and unanswered (an INVITE counting 1.75, all
    /// workers together) before it takes no new dialogs; its dialogs, CANCELs and ACKs still go
    /// to it. For servers that fall behind without saying so (a 503). 0: no limit.
    #[arg(help_heading = BACKENDS, long, value_name = "N", default_value_t = 0)]
    pub max_outstanding: u32,
    /// Seconds a back end has to answer an initial request at all (even 100 Trying); past it the
    /// request goes to the next back end (within --max-retries), and a back end that has answered
    /// nothing at all since takes no new dialogs for 10 s.
    #[arg(help_heading = BACKENDS, long, value_name = "SECS", default_value_t = 2.0,
          value_parser = positive_secs)]
    pub backend_answer_timeout: f64,
    /// Seconds between SIP OPTIONS health probes to each back end.
    #[arg(help_heading = HEALTH, long, value_name = "SECS", default_value_t = 5)]
    pub health_interval: u64,
    /// Seconds between probes while a back end is coming back (after a (re)connection).
    #[arg(help_heading = HEALTH, long, value_name = "SECS", default_value_t = 0.25)]
    pub health_fast_interval: f64,
    /// Passed probes in a row that bring a back end back (a back end never seen up is admitted
    /// on its first).
    #[arg(help_heading = HEALTH, long, value_name = "N", default_value_t = 2)]
    pub health_rise: u32,
    /// Failed probes in a row that take a back end out of new dialogs.
    #[arg(help_heading = HEALTH, long, value_name = "N", default_value_t = 2)]
    pub health_fall: u32,
    /// The health check: SIP OPTIONS (any final answer below 500 passes), or tls (an accepted MTLS
    /// connection is the check, for servers that do not answer OPTIONS).
    #[arg(help_heading = HEALTH, long, value_enum, default_value_t = HealthCheck::Options)]
    pub health_check: HealthCheck,
    /// Seconds SIGTERM/SIGINT waits for dialogs in flight to end before siplb exits.
    #[arg(help_heading = OPERATIONS, long, value_name = "SECS", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Largest SIP message accepted from a client; larger ones get 513 and the connection is
    /// closed.
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Largest SIP message accepted from a server (pool and peer connections); a larger one is
    /// skipped by its Content-Length and answered 513 (the request it answers gets 513 from
    /// siplb); only bytes that cannot be framed close a server's connection.
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 262_144)]
    pub max_backend_message_bytes: usize,
    /// Bytes of output a worker may hold for clients that do not read fast enough; past it the
    /// client holding the most is closed (output for servers meets backpressure instead).
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 64 << 20)]
    pub max_output_bytes: usize,
    /// Seconds a connection (client, peer or pool) may take to finish its TLS handshake.
    #[arg(help_heading = LIMITS, long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Seconds a message may take to arrive whole once its first byte has (Kamailio's
    /// tcp_msg_read_timeout); a peer that is slower loses its connection.
    #[arg(help_heading = LIMITS, long, value_name = "SECS", default_value_t = 10)]
    pub message_timeout: u64,
    /// Seconds of silence after which a connection is closed (keep-alives count; a pool
    /// connection is then opened again).
    #[arg(help_heading = LIMITS, long, value_name = "SECS", default_value_t = 180)]
    pub idle_timeout: u64,
    /// Connections open at once over all workers: clients, and servers on the peer listener.
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Serve the runtime admin API (HTTP) at ADDR: a loopback HOST:PORT or a Unix socket path
    /// (see `siplb ctl --help`).
    #[arg(help_heading = OPERATIONS, long, value_name = "ADDR")]
    pub admin: Option<crate::admin::AdminAddr>,
    /// Allow --admin on an address other than loopback.
    #[arg(help_heading = OPERATIONS, long, requires = "admin")]
    pub admin_allow_remote: bool,
    /// Serve Prometheus metrics over HTTP at ADDR, path /metrics.
    #[arg(help_heading = OPERATIONS, long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Client connections open at once from one source address (0: no limit).
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Out-of-dialog requests a second from one source address, all workers together (burst: N;
    /// in-dialog requests, ACK and CANCEL never count); the excess gets 503 with Retry-After from
    /// siplb and never reaches a server. 0: no limit. Clients behind one NAT share the limit.
    #[arg(help_heading = LIMITS, long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::limit::MAX_RATE)))]
    pub rate_limit_per_ip: u32,
    /// Log level (RUST_LOG, when set, refines it per module).
    #[arg(help_heading = OPERATIONS, long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    pub log: LogLevel,
    /// Log lines as text (coloured on a terminal only) or JSON objects, one per line.
    #[arg(help_heading = OPERATIONS, long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A refusal of `flag`.
fn flag(flag: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Flag {
        flag,
        why: why.into(),
    }
}

/// Everything the balancer needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// `--listen-wss`, and the `--advertise-wss` `host:port` (when not given, the balancer sets
    /// it at start: the advertised host with the real port of the first WebSocket listener).
    pub listen_wss: Vec<SocketAddr>,
    pub advertise_wss: Option<String>,
    pub wss_origins: Vec<String>,
    /// Every certificate, key, CA and CRL file (read again on reload).
    pub tls: TlsFiles,
    /// Back ends as started: `--backend` flags, then the `--backends-file` lines.
    pub backends: Vec<Backend>,
    /// The `--backend` flags alone (a reload re-reads only the file).
    pub flag_backends: Vec<Backend>,
    /// The `--partner` flags, and the `--partners-file` read with them at start and on reload.
    pub flag_partners: Vec<PartnerSpec>,
    pub partners_file: Option<PathBuf>,
    pub backends_file: Option<PathBuf>,
    pub peer_listen: Option<SocketAddr>,
    /// `host:port` as written into Via / Record-Route towards clients.
    pub advertise: String,
    /// `host:port` written towards servers (with a peer listener); `None`: `advertise` with the
    /// peer listener's port, once bound.
    pub peer_advertise: Option<String>,
    pub path: PathMode,
    pub workers: usize,
    pub pool_size: usize,
    pub balance: BalanceKey,
    pub max_retries: u8,
    pub max_outstanding: u32,
    pub backend_answer_timeout: Duration,
    /// Health checks and pool size (`--health-*`, `--pool-size`).
    pub health: Policy,
    pub drain_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_backend_message_bytes: usize,
    pub max_output_bytes: usize,
    pub handshake_timeout: Duration,
    pub message_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub rate_limit_per_ip: u32,
    pub metrics: Option<SocketAddr>,
    pub token_key_file: Option<PathBuf>,
    pub reuse_port: bool,
    pub admin: Option<crate::admin::AdminAddr>,
    pub admin_allow_remote: bool,
}

impl Config {
    /// The size limit for messages from a server or from a client.
    pub fn message_limit(&self, from_server: bool) -> usize {
        if from_server {
            self.max_backend_message_bytes
        } else {
            self.max_message_bytes
        }
    }

    /// The back ends now: the flags, plus the back-ends file read again.
    pub fn current_backends(&self) -> Result<Vec<Backend>, ConfigError> {
        let mut all = self.flag_backends.clone();
        if let Some(file) = &self.backends_file {
            all.extend(read_backends_file(file)?);
        }
        check_backends(&all)?;
        Ok(all)
    }

    /// The partners now: the `--partner` flags and the `--partners-file` as it reads now.
    pub fn current_partners(&self) -> Result<Vec<PartnerSpec>, ConfigError> {
        let mut all = self.flag_partners.clone();
        if let Some(file) = &self.partners_file {
            all.extend(partner::read_partners_file(file)?);
        }
        partner::check_partners(&all).map_err(|why| match &self.partners_file {
            Some(f) => ConfigError::File(format!("{}: {why}", f.display())),
            None => flag("--partner", why),
        })?;
        Ok(all)
    }
}

fn check_backends(backends: &[Backend]) -> Result<(), ConfigError> {
    if backends.is_empty() {
        return Err(flag(
            "--backend",
            "at least one back end is required (or --backends-file)",
        ));
    }
    for (i, b) in backends.iter().enumerate() {
        if backends[..i].iter().any(|o| o.name == b.name) {
            return Err(flag(
                "--backend",
                format!("back end name '{}' is given twice", b.name),
            ));
        }
    }
    Ok(())
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        // Every missing required flag in one answer, not one per run.
        let missing: Vec<&str> = [
            (self.cert.is_none(), "--cert"),
            (self.key.is_none(), "--key"),
            (self.backend_ca.is_none(), "--backend-ca"),
            (
                self.backend.is_empty() && self.backends_file.is_none(),
                "--backend (or --backends-file)",
            ),
        ]
        .into_iter()
        .filter_map(|(miss, name)| miss.then_some(name))
        .collect();
        let (Some(cert), Some(key), Some(backend_ca), true) =
            (self.cert, self.key, self.backend_ca, missing.is_empty())
        else {
            return Err(ConfigError::Missing(missing.join(", ")));
        };
        let listen = if self.listen.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 5061))]
        } else {
            self.listen
        };
        let mut flag_backends = Vec::new();
        for spec in &self.backend {
            flag_backends.push(parse_backend(spec).map_err(|why| flag("--backend", why))?);
        }
        let mut backends = flag_backends.clone();
        if let Some(file) = &self.backends_file {
            backends.extend(read_backends_file(file)?);
        }
        check_backends(&backends)?;
        let mut flag_partners = Vec::new();
        for spec in &self.partner {
            flag_partners.push(partner::parse_partner(spec).map_err(|why| flag("--partner", why))?);
        }
        partner::check_partners(&flag_partners).map_err(|why| flag("--partner", why))?;
        let mut sni = Vec::new();
        for spec in &self.sni_cert {
            let (c, k) = spec
                .rsplit_once(':')
                .filter(|(c, k)| !c.is_empty() && !k.is_empty())
                .ok_or_else(|| flag("--sni-cert", format!("'{spec}' is not CERT:KEY")))?;
            sni.push((PathBuf::from(c), PathBuf::from(k)));
        }
        let workers = match self.workers {
            Some(0) => return Err(flag("--workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if workers > usize::from(u16::MAX) {
            return Err(flag("--workers", "is too large"));
        }
        if self.pool_size == 0 {
            return Err(flag("--pool-size", "must be at least 1"));
        }
        if !(512..=u32::MAX as usize / 2).contains(&self.max_message_bytes) {
            return Err(flag("--max-message-bytes", "must be between 512 and 2147483647"));
        }
        if !(512..=u32::MAX as usize / 2).contains(&self.max_backend_message_bytes) {
            return Err(flag(
                "--max-backend-message-bytes",
                "must be between 512 and 2147483647",
            ));
        }
        if self.health_interval == 0 {
            return Err(flag("--health-interval", "must be at least 1 second"));
        }
        if !(0.01..=3600.0).contains(&self.health_fast_interval) {
            return Err(flag(
                "--health-fast-interval",
                "must be between 0.01 and 3600 seconds",
            ));
        }
        if self.message_timeout == 0 {
            return Err(flag("--message-timeout", "must be at least 1 second"));
        }
        if self.health_rise == 0 {
            return Err(flag("--health-rise", "must be at least 1"));
        }
        if self.health_fall == 0 {
            return Err(flag("--health-fall", "must be at least 1"));
        }
        let peer_advertise = match self.peer_advertise {
            Some(a) => Some(normalise_advertise(&a).map_err(|why| flag("--peer-advertise", why))?),
            None => None,
        };
        let advertise = match self.advertise {
            Some(a) => normalise_advertise(&a).map_err(|why| flag("--advertise", why))?,
            None => {
                let l = listen[0];
                if l.ip().is_unspecified() {
                    return Err(flag(
                        "--advertise",
                        "is required when --listen is a wildcard address: name the host clients reach",
                    ));
                }
                l.to_string()
            }
        };
        let advertise_wss = match self.advertise_wss {
            Some(a) => Some(normalise_advertise(&a).map_err(|why| flag("--advertise-wss", why))?),
            None => None,
        };
        Ok(Config {
            listen,
            listen_wss: self.listen_wss,
            advertise_wss,
            wss_origins: self.wss_allow_origin,
            tls: TlsFiles {
                backend_cert: self.backend_cert.unwrap_or_else(|| cert.clone()),
                backend_key: self.backend_key.unwrap_or_else(|| key.clone()),
                cert,
                key,
                sni,
                client_ca: self.client_ca,
                require_client_cert: self.require_client_cert,
                crls: self.crl,
                crl_required: self.crl_required,
                backend_ca,
                peer: self.peer_listen.is_some(),
            },
            backends,
            flag_backends,
            flag_partners,
            partners_file: self.partners_file,
            backends_file: self.backends_file,
            peer_listen: self.peer_listen,
            advertise,
            peer_advertise,
            path: self.path,
            workers,
            pool_size: self.pool_size,
            balance: self.balance,
            max_retries: self.max_retries,
            max_outstanding: self.max_outstanding,
            backend_answer_timeout: Duration::from_secs_f64(self.backend_answer_timeout),
            health: Policy {
                check: self.health_check,
                interval: Duration::from_secs(self.health_interval),
                fast_interval: Duration::from_secs_f64(self.health_fast_interval),
                rise: self.health_rise,
                fall: self.health_fall,
                size: self.pool_size,
            },
            drain_timeout: Duration::from_secs(self.drain_timeout),
            max_message_bytes: self.max_message_bytes,
            max_backend_message_bytes: self.max_backend_message_bytes,
            max_output_bytes: self.max_output_bytes,
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            message_timeout: Duration::from_secs(self.message_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            rate_limit_per_ip: self.rate_limit_per_ip,
            metrics: self.metrics,
            token_key_file: self.token_key_file,
            reuse_port: self.reuse_port,
            admin: self.admin,
            admin_allow_remote: self.admin_allow_remote,
        })
    }
}

/// `HOST` or `HOST:PORT` (IPv6 in brackets); the port defaults to 5061.
fn normalise_advertise(a: &str) -> Result<String, String> {
    let (host, port) = match crate::sip::via::split_host_port(a.as_bytes()) {
        Some((h, p)) => (h, p),
        None => return Err(format!("'{a}' is not HOST or HOST:PORT")),
    };
    let host = std::str::from_utf8(host).map_err(|_| "host is not text".to_string())?;
    let port = match port {
        None => 5061,
        Some(p) => std::str::from_utf8(p)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{a}' has a bad port"))?,
    };
    Ok(format!("{host}:{port}"))
}

/// `NAME=HOST:PORT[,weight=W]`.
pub fn parse_backend(spec: &str) -> Result<Backend, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("'{spec}' is not NAME=HOST:PORT[,weight=W]"))?;
    let name = name.trim();
    if name.is_empty() || crate::tls::server_name(name).is_err() {
        return Err(format!(
            "'{name}' is not a valid back-end name (it must be a DNS name in its certificate)"
        ));
    }
    let mut parts = rest.split(',');
    let hostport = parts.next().unwrap_or("").trim();
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("'{hostport}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{hostport}' resolves to no address"))?;
    let mut weight = 100;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("weight", w)) => {
                weight = w
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("weight '{w}' is not a whole number"))?;
            }
            _ => return Err(format!("unknown option '{p}' (only weight=W)")),
        }
    }
    Ok(Backend::new(name.to_string(), addr, weight))
}

pub fn read_backends_file(path: &std::path::Path) -> Result<Vec<Backend>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            parse_backend(line)
                .map_err(|why| ConfigError::File(format!("{}:{}: {why}", path.display(), n + 1)))?,
        );
    }
    Ok(out)
}

/// A number of seconds above zero and at most a day (`--backend-answer-timeout`).
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds above 0 (at most 86400)"
        )),
    }
}

#[cfg(test)]
mod tests;
