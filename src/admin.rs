//! The runtime admin API (`--admin ADDR`): what `kamcmd dispatcher.set_state`, OpenSIPS
//! `lb_status` and HAProxy's runtime API do for their users. HTTP on a loopback address or a Unix
//! socket: `GET /backends` lists the back ends as JSON, `GET /partners` the federation partners; `POST /backends/NAME/drain|enable|disable`
//! and `POST /backends/NAME/weight/N` change one, applied by every worker within one event-loop
//! turn. Admin states are kept by name, so they survive a SIGHUP reload for back ends that stay.
//! `siplb ctl` is its command line.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What an operator said about a back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Enabled,
    /// No new dialogs; its dialogs and transactions go on.
    Draining,
    /// Nothing at all.
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// An operator's settings for one back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub state: AdminState,
    /// Replaces the configured weight.
    pub weight: Option<u32>,
}

/// Settings by back-end name.
pub type Overrides = BTreeMap<String, Override>;

/// Where the admin API listens: a TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for AdminAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<AdminAddr, String> {
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(AdminAddr::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>()
            .map(AdminAddr::Tcp)
            .map_err(|_| format!("'{s}' is neither HOST:PORT nor a Unix socket path"))
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => write!(f, "{a}"),
            AdminAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::State(s) => f.write_str(s.as_str()),
            Change::Weight(w) => write!(f, "weight {w}"),
        }
    }
}

/// What the API needs from the running balancer.
pub trait Control: Send + Sync {
    /// The back ends as JSON.
    fn list(&self) -> String;
    /// The federation partners and their connections as JSON.
    fn partners(&self) -> String;
    /// Applies `change` to back end `name`; false if there is none of that name.
    fn set(&self, name: &str, change: Change) -> bool;
}

/// One change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    State(AdminState),
    Weight(u32),
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Backends,
    Partners,
    Change(String, Change),
}

/// Parses `METHOD PATH` into what to do.
fn parse(line: &str) -> Result<Request, &'static str> {
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET", ["backends"]) => Ok(Request::Backends),
        ("GET", ["partners"]) => Ok(Request::Partners),
        ("POST", ["backends", name, "drain"]) => Ok(Request::Change(
            name.to_string(),
            Change::State(AdminState::Draining),
        )),
        ("POST", ["backends", name, "enable"]) => Ok(Request::Change(
            name.to_string(),
            Change::State(AdminState::Enabled),
        )),
        ("POST", ["backends", name, "disable"]) => Ok(Request::Change(
            name.to_string(),
            Change::State(AdminState::Disabled),
        )),
        ("POST", ["backends", name, "weight", w]) => w
            .parse::<u32>()
            .map(|w| Request::Change(name.to_string(), Change::Weight(w)))
            .map_err(|_| "weight is not a whole number"),
        _ => Err(
            "unknown request: GET /backends, GET /partners, POST /backends/NAME/drain|enable|disable|weight/N",
        ),
    }
}

fn handle(line: &str, ctl: &dyn Control) -> crate::http::Reply {
    let (status, body) = match parse(line) {
        Ok(Request::Backends) => ("200 OK", ctl.list()),
        Ok(Request::Partners) => ("200 OK", ctl.partners()),
        Ok(Request::Change(name, change)) if ctl.set(&name, change) => {
            ("200 OK", "{\"ok\":true}\n".to_string())
        }
        Ok(Request::Change(name, _)) => (
            "404 Not Found",
            format!("{{\"error\":\"no back end named {}\"}}\n", json_str(&name)),
        ),
        Err(why) => ("400 Bad Request", format!("{{\"error\":\"{why}\"}}\n")),
    };
    crate::http::Reply {
        status,
        content_type: "application/json",
        body,
    }
}

/// Serves the API on its own thread; returns the bound TCP address (if TCP). A non-loopback
/// address is refused unless `remote` says otherwise.
pub fn serve(addr: &AdminAddr, remote: bool, ctl: Arc<dyn Control>) -> Result<Option<SocketAddr>, String> {
    match addr {
        AdminAddr::Tcp(a) => {
            if !a.ip().is_loopback() && !remote {
                return Err(format!(
                    "--admin {a}: not a loopback address (add --admin-allow-remote to mean it)"
                ));
            }
            let l = std::net::TcpListener::bind(a).map_err(|e| format!("--admin {a}: {e}"))?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            crate::http::serve("siplb-admin", move || l.incoming().flatten().next(), handler(ctl))
                .map_err(|e| e.to_string())?;
            Ok(Some(local))
        }
        AdminAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = std::os::unix::net::UnixListener::bind(p)
                .map_err(|e| format!("--admin {}: {e}", p.display()))?;
            crate::http::serve("siplb-admin", move || l.incoming().flatten().next(), handler(ctl))
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
    }
}

fn handler(ctl: Arc<dyn Control>) -> crate::http::Handler {
    Arc::new(move |line: &str| handle(line, ctl.as_ref()))
}

/// `siplb ctl`: sends one request and returns (HTTP success, body).
pub fn request(addr: &AdminAddr, method: &str, path: &str) -> Result<(bool, String), String> {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: siplb\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    match addr {
        AdminAddr::Tcp(a) => {
            let mut s = std::net::TcpStream::connect(a).map_err(|e| format!("{a}: {e}"))?;
            s.write_all(req.as_bytes())
                .and_then(|_| s.read_to_end(&mut out))
                .map_err(|e| e.to_string())?;
        }
        AdminAddr::Unix(p) => {
            let mut s =
                std::os::unix::net::UnixStream::connect(p).map_err(|e| format!("{}: {e}", p.display()))?;
            s.write_all(req.as_bytes())
                .and_then(|_| s.read_to_end(&mut out))
                .map_err(|e| e.to_string())?;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let ok = text.starts_with("HTTP/1.1 200");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((ok, body))
}

/// A JSON string body (back-end names are DNS names; quotes and backslashes escaped anyway).
pub fn json_str(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => vec![],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse("GET /backends HTTP/1.1"), Ok(Request::Backends));
        assert_eq!(parse("GET /partners HTTP/1.1"), Ok(Request::Partners));
        assert_eq!(
            parse("POST /backends/fe1.example.com/drain HTTP/1.1"),
            Ok(Request::Change(
                "fe1.example.com".into(),
                Change::State(AdminState::Draining)
            ))
        );
        assert_eq!(
            parse("POST /backends/b/weight/250 HTTP/1.1"),
            Ok(Request::Change("b".into(), Change::Weight(250)))
        );
        assert!(parse("POST /backends/b/weight/x HTTP/1.1").is_err());
        assert!(parse("DELETE /backends HTTP/1.1").is_err());
        assert_eq!(
            "/tmp/a.sock".parse::<AdminAddr>(),
            Ok(AdminAddr::Unix("/tmp/a.sock".into()))
        );
        assert!("nonsense".parse::<AdminAddr>().is_err());
    }
}
