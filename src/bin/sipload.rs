//! The `sipload` binary: see `siplb::load::cli`.

use clap::Parser;

siplb::global_allocator!();

fn main() {
    let args = match siplb::load::cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => std::process::exit(siplb::cli::flag_error(&e, "sipload")),
    };
    std::process::exit(siplb::load::cli::main(args));
}
