//! Parsing of `--partner DOMAIN=CA_PEM[,name=HOST]...` and of `--partners-file` (the same, one
//! per line, `#` comments). Pure text in, [`PartnerSpec`]s or a message naming what is wrong out;
//! the CA files are read later, with the rest of the TLS configuration.

use std::path::{Path, PathBuf};

use super::error::ConfigError;
use crate::tls::partner::PartnerSpec;

const SYNTAX: &str = "DOMAIN=CA_PEM[,name=HOST]...";

/// One partner: `DOMAIN=CA_PEM[,name=HOST]...`.
pub fn parse_partner(spec: &str) -> Result<PartnerSpec, String> {
    let (domain, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("'{spec}' is not {SYNTAX}"))?;
    let domain = dns_name(domain.trim()).map_err(|why| format!("partner domain {why}"))?;
    let mut parts = rest.split(',');
    let ca = parts.next().unwrap_or("").trim();
    if ca.is_empty() {
        return Err(format!("'{spec}' names no CA file ({SYNTAX})"));
    }
    let mut names = Vec::new();
    for p in parts {
        match p.trim().split_once('=') {
            Some(("name", n)) => {
                let n = dns_name(n.trim()).map_err(|why| format!("edge name {why}"))?;
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            _ => return Err(format!("unknown option '{}' (only name=HOST)", p.trim())),
        }
    }
    Ok(PartnerSpec {
        domain,
        ca: PathBuf::from(ca),
        names,
    })
}

/// A DNS name as siplb compares it: lower case, without a trailing dot, no wildcard.
fn dns_name(s: &str) -> Result<String, String> {
    let n = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && n.parse::<std::net::IpAddr>().is_err();
    if ok {
        Ok(n)
    } else {
        Err(format!("'{s}' is not a DNS name"))
    }
}

/// Every partner of a partners file's text; an error names the line.
pub fn parse_partners(text: &str) -> Result<Vec<PartnerSpec>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_partner(line).map_err(|why| (n + 1, why))?);
    }
    Ok(out)
}

pub fn read_partners_file(path: &Path) -> Result<Vec<PartnerSpec>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
    parse_partners(&text)
        .map_err(|(line, why)| ConfigError::File(format!("{}:{line}: {why}", path.display())))
}

/// A domain given twice (by flags and file together) is refused: which CA would count?
pub fn check_partners(partners: &[PartnerSpec]) -> Result<(), String> {
    for (i, p) in partners.iter().enumerate() {
        if partners[..i].iter().any(|o| o.domain == p.domain) {
            return Err(format!("partner domain '{}' is given twice", p.domain));
        }
    }
    Ok(())
}

/// Arbitrary bytes as a partners file, for the fuzzer and the unit tests' mutation sweep: the
/// parser never panics, everything it accepts is a DNS name as siplb compares it (lower case, no
/// trailing dot, no wildcard), and what it accepts reads back the same once written out again.
pub fn exercise(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(specs) = parse_partners(&text) else {
        return;
    };
    let _ = check_partners(&specs);
    let mut again = String::new();
    for p in &specs {
        for n in std::iter::once(&p.domain).chain(&p.names) {
            assert!(!n.is_empty() && !n.ends_with('.') && !n.contains('*'), "{n:?}");
            assert_eq!(n, &n.to_ascii_lowercase());
            assert!(n.parse::<std::net::IpAddr>().is_err(), "{n:?}");
        }
        again.push_str(&format!("{}={}", p.domain, p.ca.display()));
        for n in &p.names {
            again.push_str(&format!(",name={n}"));
        }
        again.push('\n');
    }
    assert_eq!(parse_partners(&again).ok().as_ref(), Some(&specs), "{again:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_with_and_without_names() {
        let p = parse_partner("A.Example.=/etc/siplb/a-ca.pem").unwrap();
        assert_eq!(p.domain, "a.example");
        assert_eq!(p.ca, PathBuf::from("/etc/siplb/a-ca.pem"));
        assert!(p.names.is_empty());
        let p = parse_partner("a.example=ca.pem, name=edge1.a.example ,name=EDGE2.a.example").unwrap();
        assert_eq!(p.names, vec!["edge1.a.example", "edge2.a.example"]);
    }

    #[test]
    fn bad_partners_say_what_is_wrong() {
        for (spec, says) in [
            ("a.example", "is not DOMAIN=CA_PEM"),
            ("=ca.pem", "partner domain '' is not a DNS name"),
            ("a.example=", "names no CA file"),
            ("a.example=ca.pem,weight=3", "unknown option 'weight=3'"),
            ("a.example=ca.pem,name=", "edge name '' is not a DNS name"),
            ("*.a.example=ca.pem", "is not a DNS name"),
            ("192.0.2.1=ca.pem", "is not a DNS name"),
            ("a..example=ca.pem", "is not a DNS name"),
            ("a.example=ca.pem,name=-x.a.example", "is not a DNS name"),
        ] {
            let e = parse_partner(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn seeds_and_their_mutations() {
        let seed = b"# partners\na.example=/etc/a.pem,name=sbc.a.example # A\nB.example.=b.pem\n";
        exercise(seed);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut d = seed.to_vec();
            let at = (rng as usize) % d.len();
            let bytes = b"\n#=,. *-aZ0\xff:";
            d[at] = bytes[(rng >> 32) as usize % bytes.len()];
            if rng & (1 << 40) != 0 {
                d.truncate(at + 1);
            }
            exercise(&d);
        }
    }

    #[test]
    fn a_file_with_comments_and_the_line_of_an_error() {
        let text = "# partners\n\na.example=a.pem # A Corp\n b.example=b.pem,name=sbc.b.example\n";
        let ps = parse_partners(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].names, vec!["sbc.b.example"]);
        assert_eq!(parse_partners("a.example=a.pem\nnonsense\n").unwrap_err().0, 2);
        let twice = parse_partners("a.example=a.pem\nA.example=b.pem\n").unwrap();
        assert!(check_partners(&twice).unwrap_err().contains("twice"));
    }
}
