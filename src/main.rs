//! The `siplb` binary: flags to configuration, start the workers, stop on SIGTERM/SIGINT.
//! Refusals are one line on stderr: exit 2 for flags, 1 for files and certificates. A started
//! balancer logs "siplb started" once every listener is bound, and "siplb stopped" with the
//! reason as its last line.

use std::process::ExitCode;

use clap::Parser;
use siplb::cli::{Args, Command};
use siplb::worker::Balancer;

siplb::global_allocator!();

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return ExitCode::from(siplb::cli::flag_error(&e, "siplb") as u8),
    };
    match args.command {
        Some(Command::Ctl { admin, action }) => {
            let (method, path) = action.request();
            match siplb::admin::request(&admin, method, &path) {
                Ok((ok, body)) => {
                    print!("{body}");
                    ExitCode::from(if ok { 0 } else { 1 })
                }
                Err(e) => {
                    eprintln!("siplb ctl: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Keygen { file }) => match siplb::config::keygen(&file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("siplb keygen: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        },
        Some(Command::Completions { shell }) => {
            siplb::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Manpage) => match siplb::cli::manpage(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("siplb manpage: {e}");
                ExitCode::from(1)
            }
        },
        Some(Command::Demo(demo)) => {
            siplb::logging::init(demo.log.as_str(), siplb::logging::LogFormat::Text);
            match siplb::demo::run(demo) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("siplb demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        None => run(args.run),
    }
}

/// The balancer itself, until a signal stops it.
fn run(flags: siplb::config::RunArgs) -> ExitCode {
    siplb::logging::init(flags.log.as_str(), flags.log_format);
    let cfg = match flags.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("siplb: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    // Signals are caught before anything starts: a SIGTERM right after "siplb started" (or
    // READY=1) drains instead of killing the process.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("siplb: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let lb = match Balancer::start(cfg) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("siplb: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let collect = lb.collector();
    std::thread::spawn(move || summarise(collect.as_ref()));
    let stop = lb.stopper();
    let drain = lb.drainer();
    let reload = lb.reloader();
    // Ready only once a stop signal would be handled (a drain, not the default exit).
    sd_notify("READY=1");
    let (why_tx, why_rx) = std::sync::mpsc::channel::<&'static str>();
    // A signal is handled under this lock, and the last line takes it for good: nothing a signal
    // does (a reload's log line, say) can come after "siplb stopped".
    let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
    let signal_gate = std::sync::Arc::clone(&gate);
    std::thread::spawn(move || {
        let mut draining = false;
        for sig in signals.forever() {
            let _handling = signal_gate.lock();
            if sig == signal_hook::consts::SIGHUP {
                if draining {
                    tracing::info!("SIGHUP while stopping: not reloading");
                    continue;
                }
                tracing::info!("SIGHUP: reloading certificates, keys, CRLs and the back-ends file");
                // A failed reload keeps the running configuration; reload() has logged why.
                let _ = reload();
                continue;
            }
            let name = if sig == signal_hook::consts::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            if draining {
                tracing::info!(signal = name, "second signal: stopping now");
                let _ = why_tx.send("a second signal during the drain");
                stop();
                break;
            }
            tracing::info!(
                signal = name,
                "stopping: no new connections or dialogs; waiting for dialogs in flight"
            );
            let _ = why_tx.send(name);
            sd_notify("STOPPING=1");
            drain();
            draining = true;
        }
    });
    lb.join();
    let _last = gate.lock();
    let why = why_rx.try_iter().last().unwrap_or("the workers ended");
    tracing::info!(reason = why, "siplb stopped");
    ExitCode::SUCCESS
}

/// Connections come and go, and fail their handshakes or get refused, at `debug`; at `info` a
/// busy balancer says once a minute how many there were, by reason, instead of a line per
/// connection — a TLS scan or a flood costs a few lines a minute, not one per attempt.
fn summarise(collect: &(dyn Fn() -> siplb::metrics::Metrics + Send + Sync)) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    let mut last = collect();
    loop {
        std::thread::sleep(EVERY);
        let m = collect();
        let new = m.accepted.saturating_sub(last.accepted);
        if new > 0 {
            tracing::info!(
                accepted = new,
                open = m.connections_open,
                "client connections in the last 60 s"
            );
        }
        if let Some(reasons) = deltas(&m.handshake_failures, &last.handshake_failures) {
            tracing::info!(%reasons, "TLS handshakes failed in the last 60 s");
        }
        if let Some(reasons) = deltas(&m.refused, &last.refused) {
            tracing::warn!(%reasons, "connections refused in the last 60 s");
        }
        last = m;
    }
}

/// `reason: count` for every reason that grew from `before` to `now`, or `None` if none did.
fn deltas(
    now: &std::collections::BTreeMap<String, u64>,
    before: &std::collections::BTreeMap<String, u64>,
) -> Option<String> {
    let grew: Vec<String> = now
        .iter()
        .filter_map(|(why, &n)| {
            let d = n.saturating_sub(before.get(why).copied().unwrap_or(0));
            (d > 0).then(|| format!("{why}: {d}"))
        })
        .collect();
    (!grew.is_empty()).then(|| grew.join(", "))
}

/// Tells systemd (`Type=notify`) how the service is doing, when it runs under systemd.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    // An abstract socket is named with a leading '@'.
    let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}
