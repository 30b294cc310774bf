//! The `siplb` command line as a whole: the subcommands (demo, keygen, ctl, completions,
//! manpage) around the balancer's own flags (`config::RunArgs`), and how a refused command line
//! is reported. Completions and the manual page come from these same definitions.

use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "siplb",
    version,
    about = "Load balancer for SIP over TLS: terminates client TLS, forwards over MTLS to a pool of SIP \
             servers, and keeps each dialog on the server that took its first request.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole balancer on this machine: throwaway CA, three sipload back ends, siplb and a
    /// caller; print calls per back end, failures and latency.
    Demo(crate::demo::DemoArgs),
    /// Write a new random token key (64 hex characters, mode 0600) to FILE for
    /// --token-key-file; refuses to overwrite.
    Keygen {
        /// Where to write the key (must not exist yet).
        file: PathBuf,
    },
    /// Print a shell completion script for siplb (bash, zsh, fish, elvish or powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print siplb's manual page (roff), made from these flag definitions.
    Manpage,
    /// Talk to a running balancer's admin API (--admin): list back ends, drain, enable,
    /// disable, or set a weight.
    Ctl {
        /// The balancer's --admin address (HOST:PORT or a Unix socket path).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5070")]
        admin: crate::admin::AdminAddr,
        #[command(subcommand)]
        action: CtlAction,
    },
}

/// What `siplb ctl` asks.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlAction {
    /// List the back ends (JSON): address, weight, admin state, health per worker, dialogs,
    /// last probe round trip.
    Backends,
    /// List the federation partners (JSON): domain, connections open and accepted, requests,
    /// refusals by reason.
    Partners,
    /// Take no new dialogs; dialogs in flight go on.
    Drain {
        /// The back end's NAME (as in --backend NAME=...).
        name: String,
    },
    /// Take traffic again.
    Enable {
        /// The back end's NAME (as in --backend NAME=...).
        name: String,
    },
    /// Take nothing at all (in-dialog requests get 503).
    Disable {
        /// The back end's NAME (as in --backend NAME=...).
        name: String,
    },
    /// Set the weight (0: no new dialogs).
    Weight {
        /// The back end's NAME (as in --backend NAME=...).
        name: String,
        /// The new weight (relative to the others; 100 is the default).
        weight: u32,
    },
}

impl CtlAction {
    /// The HTTP method and path of this action.
    pub fn request(&self) -> (&'static str, String) {
        match self {
            CtlAction::Backends => ("GET", "/backends".into()),
            CtlAction::Partners => ("GET", "/partners".into()),
            CtlAction::Drain { name } => ("POST", format!("/backends/{name}/drain")),
            CtlAction::Enable { name } => ("POST", format!("/backends/{name}/enable")),
            CtlAction::Disable { name } => ("POST", format!("/backends/{name}/disable")),
            CtlAction::Weight { name, weight } => ("POST", format!("/backends/{name}/weight/{weight}")),
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Args::command(), "siplb", out);
}

/// Writes the manual page (roff) to `out`.
pub fn manpage(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Args::command()).render(out)
}

/// A clap error as operators' scripts expect it: help and version printed in full (exit 0), anything else
/// as its one first line (exit 2).
pub fn flag_error(e: &clap::Error, program: &str) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad flags").trim_start_matches("error: ");
    // "required arguments were not provided:" names the flags on the next line.
    match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => eprintln!("{program}: {first} {next}"),
        _ => eprintln!("{program}: {first}"),
    }
    2
}
