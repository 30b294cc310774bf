//! The `--token-key-file`: reading it (owner-only, at least 32 bytes) and `siplb keygen`, which
//! writes a new random one (mode 0600, never over an existing file).

use super::error::ConfigError;

/// Reads a `--token-key-file`: only its owner may read it, and it holds at least 32 bytes (white
/// space around them aside).
pub fn read_token_key(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let file = |why: String| ConfigError::File(format!("{}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| file(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file("group or others may read it; chmod 600 it".into()));
    }
    let raw = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    let secret = raw.trim_ascii();
    if secret.len() < 32 {
        return Err(file(format!(
            "holds {} bytes; a token key needs at least 32",
            secret.len()
        )));
    }
    Ok(secret.to_vec())
}

/// Writes a new random token key to `path` (mode 0600), refusing to overwrite a file.
pub fn keygen(path: &std::path::Path) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = |why: String| ConfigError::File(format!("{}: {why}", path.display()));
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| file("the system random generator failed".into()))?;
    let mut hex = [0u8; 64];
    crate::sip::token::hex_into(&secret, &mut hex);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file(e.to_string()))?;
    f.write_all(&hex)
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| file(e.to_string()))
}
