//! The `siplb` binary: flags to configuration, start the workers, stop on SIGTERM/SIGINT.
//! Refusals are one line on stderr: exit 2 for flags, 1 for files and certificates.

use std::process::ExitCode;

use clap::Parser;
use siplb::config::{Args, Command};
use siplb::worker::Balancer;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return ExitCode::from(siplb::config::flag_error(&e, "siplb") as u8),
    };
    if let Some(Command::Ctl { admin, action }) = &args.command {
        let (method, path) = action.request();
        return match siplb::admin::request(admin, method, &path) {
            Ok((ok, body)) => {
                print!("{body}");
                ExitCode::from(if ok { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("siplb ctl: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Keygen { file }) = &args.command {
        return match siplb::config::keygen(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("siplb keygen: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    if let Some(Command::Demo(demo)) = args.command {
        siplb::logging::init(demo.log.as_str());
        return match siplb::demo::run(demo) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("siplb demo: {e}");
                ExitCode::from(1)
            }
        };
    }
    siplb::logging::init(args.run.log.as_str());
    let cfg = match args.run.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("siplb: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let lb = match Balancer::start(cfg) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("siplb: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let stop = lb.stopper();
    let drain = lb.drainer();
    let reload = lb.reloader();
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
    std::thread::spawn(move || {
        let mut draining = false;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                tracing::info!("SIGHUP: reloading certificates, keys, CRLs and the back-ends file");
                // A failed reload keeps the running configuration; reload() has logged why.
                let _ = reload();
                continue;
            }
            if draining {
                tracing::info!(signal = sig, "second signal: stopping now");
                stop();
                break;
            }
            tracing::info!(
                signal = sig,
                "stopping: no new connections or dialogs; waiting for dialogs in flight"
            );
            drain();
            draining = true;
        }
    });
    lb.join();
    ExitCode::SUCCESS
}
