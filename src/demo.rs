//! `siplb demo`: placeholder until the demo lands.
use crate::config::LogLevel;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Log level for the balancer and back ends.
    #[arg(long, value_enum, default_value_t = LogLevel::Warn)]
    pub log: LogLevel,
}

pub fn run(_args: DemoArgs) -> Result<(), String> {
    Err("not yet".into())
}
