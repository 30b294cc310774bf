//! The `sipload` binary: see `siplb::load::cli`.

use clap::Parser;

fn main() {
    let args = match siplb::load::cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(siplb::load::cli::main(args));
}
