//! Flags to configuration: every refusal names its flag or file, with the right exit code.

use super::*;
use clap::Parser;

/// The balancer's flags alone, as `siplb` parses them.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
}

fn args(extra: &[&str]) -> Result<Config, ConfigError> {
    let mut v = vec![
        "siplb",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--backend-ca",
        "ca.pem",
    ];
    v.extend_from_slice(extra);
    Args::try_parse_from(v).expect("flags parse").run.into_config()
}

#[test]
fn backends_and_defaults() {
    let c = args(&[
        "--listen",
        "127.0.0.1:5071",
        "--backend",
        "b1.example=127.0.0.1:6001,weight=5",
    ])
    .unwrap();
    assert_eq!(c.backends[0].name, "b1.example");
    assert_eq!(c.backends[0].weight, 5);
    assert_eq!(c.advertise, "127.0.0.1:5071");
    assert_eq!(c.tls.backend_cert, PathBuf::from("c.pem"));
    assert_eq!(c.pool_size, 1);
}

#[test]
fn refusals_name_the_flag() {
    for (extra, flag_name) in [
        (&["--backend", "noequals"][..], "--backend"),
        (&["--backend", "b=127.0.0.1:1,color=red"], "--backend"),
        (
            &["--backend", "b=127.0.0.1:1", "--backend", "b=127.0.0.1:2"],
            "--backend",
        ),
        (&["--backend", "b=127.0.0.1:1"], "--advertise"),
        (
            &["--backend", "b=127.0.0.1:1", "--advertise", "h", "--workers", "0"],
            "--workers",
        ),
        (
            &["--backend", "b=127.0.0.1:1", "--advertise", "h:0"],
            "--advertise",
        ),
    ] {
        let e = args(extra).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with(flag_name), "{e}");
    }
    let e = args(&[]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--backend (or --backends-file)"), "{e}");
    // Every missing flag in one answer.
    let e = Args::try_parse_from(["siplb", "--backend", "b=127.0.0.1:1"])
        .expect("flags parse")
        .run
        .into_config()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "required flags missing: --cert, --key, --backend-ca (see --help)"
    );
    let e = args(&["--backends-file", "/nonexistent/siplb-backends"]).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("/nonexistent/siplb-backends"), "{e}");
}

#[test]
fn advertise_forms() {
    assert_eq!(normalise_advertise("lb.example").unwrap(), "lb.example:5061");
    assert_eq!(normalise_advertise("[::1]:5071").unwrap(), "[::1]:5071");
    assert!(normalise_advertise("a b").is_err());
}
