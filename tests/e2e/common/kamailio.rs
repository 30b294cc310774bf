//! A real registrar for interop tests: Kamailio (Debian's `kamailio` and `kamailio-tls-modules`)
//! configured the way its documentation writes a registrar with Path, TLS only, client
//! certificates required and verified; stopped on drop.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Pki;

/// Why Kamailio cannot run here, if it cannot.
pub fn kamailio_installed() -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", "command -v kamailio"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found || !Path::new(MODULES).join("tls.so").exists() {
        return Err(
            "kamailio or its TLS module is not installed (apt-get install kamailio kamailio-tls-modules)"
                .into(),
        );
    }
    Ok(())
}

pub const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/// A Kamailio process group, stopped on drop.
pub struct Kamailio {
    child: Child,
    pub log: PathBuf,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM to the main process, which stops its children; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Kamailio `name` on `port` with a registrar configured the plain RFC way, or with
/// connection reuse; `log_route` is script run first for every request (xlog lines a test reads).
pub fn kamailio(pki: &Pki, name: &str, port: u16, reuse: bool, log_route: &str) -> Kamailio {
    let dir = pki.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let leaf = pki
        .ca
        .issue(&[name, "127.0.0.1"])
        .expect("cert")
        .write(&dir, "k")
        .expect("write cert");
    let tls_cfg = dir.join("tls.cfg");
    let side = |s: &str| {
        format!(
            "[{s}:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             private_key = {}\ncertificate = {}\nca_list = {}\n\n",
            leaf.key.display(),
            leaf.cert.display(),
            pki.ca_path.display()
        )
    };
    std::fs::write(&tls_cfg, side("server") + &side("client")).expect("tls.cfg");
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(&cfg, config(name, port, reuse, &tls_cfg, log_route)).expect("kamailio.cfg");
    let log = dir.join("kamailio.log");
    // Its own session: Kamailio signals its whole process group when it stops.
    // Readable by the unprivileged user Kamailio runs as (throwaway test keys).
    for p in [pki.dir.path(), &dir] {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    }
    for p in [&leaf.key, &leaf.cert, &pki.ca_path, &tls_cfg, &cfg] {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644));
    }
    // Never as root, and in its own session: Kamailio signals its process group when it stops,
    // and a child that crashes must not take anything of ours with it.
    let child = Command::new("setsid")
        .arg("kamailio")
        .args([
            "-f",
            &cfg.display().to_string(),
            "-DD",
            "-E",
            "-m",
            "64",
            "-M",
            "16",
        ])
        .args(["-u", "nobody", "-g", "nogroup"])
        .args(["-Y", &dir.display().to_string(), "-w", &dir.display().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("kamailio starts");
    let k = Kamailio { child, log };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "kamailio did not listen:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    k
}

impl Kamailio {
    /// The last 40 lines of its log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A registrar as the Kamailio documentation writes it: Path saved and used, loose routing,
/// record-routing, OPTIONS to itself answered (siplb's health probe).
fn config(name: &str, port: u16, reuse: bool, tls_cfg: &Path, log_route: &str) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
alias="pool.test"
alias="{name}"
listen=tls:127.0.0.1:{port}
enable_tls=yes
tcp_accept_aliases={reuse}
mpath="{MODULES}"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "path.so"
loadmodule "xlog.so"
modparam("tls", "config", "{tls}")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)

request_route {{
    {log_route}
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("OPTIONS") && uri==myself && $rU==$null) {{ sl_send_reply("200", "Keepalive"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    if (is_method("REGISTER")) {{ if (!save("location")) {{ sl_reply_error(); }} exit; }}
    if (is_method("INVITE|SUBSCRIBE")) {{ record_route(); }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    xlog("L_NOTICE", "RELAY $rm to $ru via $du\n");
    t_relay();
}}
"#,
        reuse = if reuse { "yes" } else { "no" },
        tls = tls_cfg.display(),
    )
}
