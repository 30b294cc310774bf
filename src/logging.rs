//! Logging: tracing to stderr at the level `--log` names (`RUST_LOG` refines it), as text —
//! coloured only when stderr is a terminal and `NO_COLOR` is unset — or as JSON lines for log
//! shippers (`--log-format json`). Owns the level and format flags of siplb and sipload.

use std::io::IsTerminal;

/// `--log`: how much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `--log-format`: one line of text per event, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the subscriber for `level` (an `EnvFilter` directive such as `warn` or
/// `info,siplb::worker=debug`); `RUST_LOG` wins when set. A second call does nothing.
pub fn init(level: &str, format: LogFormat) {
    // rustls logs per connection (a client sending an IP address as SNI makes a warning each
    // time): its events are for debugging (`--log debug`, or a `rustls=` directive); siplb
    // counts and summarises what matters.
    let level = if ["rustls", "debug", "trace"].iter().any(|w| level.contains(w)) {
        level.to_string()
    } else {
        format!("{level},rustls=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
}
