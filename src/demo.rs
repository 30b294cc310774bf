//! `siplb demo`: the whole thing on one machine. Makes a throwaway CA and certificates (rcgen, in
//! a temporary directory that is removed afterwards), starts three sipload back ends and a
//! balancer in front of them, places calls over one persistent TLS connection and then with a
//! new connection per call, and prints calls per back end, failures and setup latency.

use std::time::{Duration, Instant};

use clap::Parser;

use crate::certs::Ca;
use crate::config::RunArgs;
use crate::load::caller::{self, CallOpts, CallReport};
use crate::load::server::{self, ByeOn, ServerHandle, ServerOpts};
use crate::logging::LogLevel;
use crate::tls::{self, Identity};
use crate::worker::Balancer;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Calls over one persistent TLS connection.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub calls: usize,
    /// Calls with a new TLS connection each.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub new_connection_calls: usize,
    /// Calls over one persistent WebSocket (SIP over WSS, RFC 7118, as browsers speak it).
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub ws_calls: usize,
    /// New calls per second over the persistent connection.
    #[arg(long, value_name = "R", default_value_t = 500.0)]
    pub rate: f64,
    /// New calls per second with a new TLS connection each (a full handshake per call costs far
    /// more than a call, so this phase has its own rate).
    #[arg(long, value_name = "R", default_value_t = 150.0)]
    pub new_connection_rate: f64,
    /// Calls in flight at most.
    #[arg(long, value_name = "L", default_value_t = 50)]
    pub concurrency: usize,
    /// Balancer workers (default: available cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Log level for the balancer and the back ends.
    #[arg(long, value_enum, default_value_t = LogLevel::Warn)]
    pub log: LogLevel,
}

/// The balancer's own flags, parsed as `siplb` would.
#[derive(Parser)]
struct BalancerFlags {
    #[command(flatten)]
    run: RunArgs,
}

const BACKENDS: [&str; 3] = ["alpha.pool.demo", "beta.pool.demo", "gamma.pool.demo"];
const LB_NAME: &str = "localhost";

pub fn run(args: DemoArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let ca = Ca::new("siplb demo CA (throwaway)").map_err(|e| err(&e))?;
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).map_err(|e| err(&e))?;
    let lb = ca
        .issue(&[LB_NAME, "127.0.0.1"])
        .map_err(|e| err(&e))?
        .write(dir.path(), "siplb")
        .map_err(|e| err(&e))?;
    let roots = tls::roots_from_pem(ca.pem()).map_err(|e| err(&e))?;
    println!(
        "siplb demo: throwaway CA and certificates in {}",
        dir.path().display()
    );

    let mut servers: Vec<ServerHandle> = Vec::new();
    for name in BACKENDS {
        let leaf = ca.issue(&[name]).map_err(|e| err(&e))?;
        let id = Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).map_err(|e| err(&e))?;
        let server_tls = tls::mtls_server_config(&id, roots.clone()).map_err(|e| err(&e))?;
        let h = server::spawn(ServerOpts {
            listen: "127.0.0.1:0".parse().map_err(|e| err(&e))?,
            name: name.to_string(),
            tls: server_tls,
            peer: None,
            bye_after: None,
            bye_on: ByeOn::Same,
            silent: false,
            crash_on_invite: false,
            record: true,
            faults: Default::default(),
        })
        .map_err(|e| format!("back end {name}: {e}"))?;
        println!("  back end {name} on {} (sipload server, MTLS)", h.addr);
        servers.push(h);
    }

    let mut flags = vec![
        "siplb".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--listen-wss".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        lb.cert.display().to_string(),
        "--key".into(),
        lb.key.display().to_string(),
        "--backend-ca".into(),
        ca_path.display().to_string(),
        "--log".into(),
        args.log.as_str().into(),
    ];
    if let Some(w) = args.workers {
        flags.extend(["--workers".into(), w.to_string()]);
    }
    for s in &servers {
        flags.extend(["--backend".into(), format!("{}={}", s.name, s.addr)]);
    }
    let cfg = BalancerFlags::try_parse_from(&flags)
        .map_err(|e| e.to_string())?
        .run
        .into_config()
        .map_err(|e| err(&e))?;
    let workers = cfg.workers;
    let lb = Balancer::start(cfg).map_err(|e| err(&e))?;
    if !lb.wait_ready(Duration::from_secs(10)) {
        return Err("the balancer did not reach its back ends within 10 s".into());
    }
    println!(
        "  siplb on {} (TLS) and {} (WSS) with {workers} workers, advertising {}",
        lb.listen_addrs[0],
        lb.wss_addrs[0],
        lb.advertise()
    );

    let base = CallOpts {
        target: lb.listen_addrs[0],
        server_name: tls::server_name(LB_NAME).map_err(|e| err(&e))?,
        tls: tls::client_config(roots, None).map_err(|e| err(&e))?,
        calls: args.calls,
        rate: args.rate,
        concurrency: args.concurrency,
        per_call_connection: false,
        hold: Duration::ZERO,
        remote_bye: false,
        timeout: Duration::from_secs(10),
        ruri: "sip:conference@pool.demo".into(),
        vary_user: false,
        from_domain: "sipload.invalid".into(),
        ws: false,
        progress: true,
        retry: false,
    };
    println!(
        "\nSetup latency is the time from sending an INVITE to receiving its 200, as the caller sees it."
    );
    let mut failed = 0;
    let mut reports = Vec::new();
    for (label, per_call, ws, calls, rate) in [
        (
            "one persistent TLS connection",
            false,
            false,
            args.calls,
            args.rate,
        ),
        (
            "a new TLS connection per call",
            true,
            false,
            args.new_connection_calls,
            args.new_connection_rate,
        ),
        (
            "one persistent WebSocket (WSS)",
            false,
            true,
            args.ws_calls,
            args.rate,
        ),
    ] {
        if calls == 0 {
            continue;
        }
        println!("\n{calls} calls (INVITE/100/180/200/ACK/BYE/200) at {rate} calls/s over {label}:");
        let started = Instant::now();
        let report = caller::run(CallOpts {
            calls,
            rate,
            per_call_connection: per_call,
            ws,
            target: if ws { lb.wss_addrs[0] } else { base.target },
            ..base.clone()
        })
        .map_err(|e| format!("caller: {e}"))?;
        println!("  {}", report.summary().replace('\n', "\n  "));
        println!(
            "  rate asked {rate:.0} calls/s, reached {:.1}; wall time {:.2}s",
            report.calls_per_sec(),
            started.elapsed().as_secs_f64()
        );
        failed += report.failed;
        reports.push(report);
    }

    // Let the last BYEs' answers land, stop the balancer, then read the servers' records.
    // Workers publish their counters every 250 ms.
    std::thread::sleep(Duration::from_millis(300));
    let mt = lb.metrics();
    let counters = format!(
        "siplb: {} requests and {} responses forwarded, {} answered by siplb itself, {} responses dropped",
        mt.forwarded_requests,
        mt.forwarded_responses,
        mt.answers.iter().sum::<u64>(),
        mt.dropped_responses
    );
    lb.shutdown();
    let stats: Vec<_> = servers.into_iter().map(|s| (s.name.clone(), s.stop())).collect();
    let all: Vec<&CallReport> = reports.iter().collect();
    let total: usize = all.iter().map(|r| r.call_ids.len()).sum();
    println!("\nCalls per back end (dialogs pinned to one back end each):");
    let mut split = 0;
    for (name, s) in &stats {
        let n = all
            .iter()
            .flat_map(|r| &r.call_ids)
            .filter(|id| s.calls.contains_key(*id))
            .count();
        println!(
            "  {name:<18} {n:>6} calls ({:.1}%)",
            100.0 * n as f64 / total.max(1) as f64
        );
    }
    for id in all.iter().flat_map(|r| &r.call_ids) {
        if stats.iter().filter(|(_, s)| s.calls.contains_key(id)).count() > 1 {
            split += 1;
        }
    }
    println!("{counters}");
    if failed > 0 || split > 0 {
        return Err(format!(
            "{failed} calls failed, {split} dialogs touched more than one back end"
        ));
    }
    println!("\nDemo finished: every call completed and every dialog stayed on one back end.");
    Ok(())
}
