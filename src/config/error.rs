//! How a configuration is refused: a flag (exit 2), a missing required flag (exit 2), or a file
//! that cannot be read or is invalid (exit 1), each one line naming the flag or file and what is
//! wrong.

/// Why siplb refuses to start. `exit_code` is 2 for flags, 1 for files and certificates.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {why}")]
    Flag { flag: &'static str, why: String },
    #[error("{0}")]
    File(String),
    #[error("required flags missing: {0} (see --help)")]
    Missing(String),
}

impl ConfigError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Flag { .. } | ConfigError::Missing(_) => 2,
            ConfigError::File(_) => 1,
        }
    }
}
