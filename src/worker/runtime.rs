//! What can change at run time and its loading: every file the configuration names (certificates,
//! keys, CAs, CRLs, the back-ends and partners files, the token key) read into a [`Runtime`] at start and again
//! on SIGHUP, and the hand-over of a new one to the workers. A load that fails says which file or
//! setting is wrong ([`RuntimeError`]) and leaves the running configuration in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::balance::Backend;
use crate::config::{Config, ConfigError};
use crate::sip::TokenKey;
use crate::sip::token::TokenError;
use crate::tls::{self, TlsError, trust::TlsSet};

/// Why the configuration could not be loaded (at start, on reload, or for the admin API).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A flag or file of the configuration (back ends, token key file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key, CA or CRL file, or a back-end name that cannot be a TLS server name.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot make the token key: {0}")]
    Key(TokenError),
    /// The admin API could not listen.
    #[error("{0}")]
    Admin(String),
}

impl RuntimeError {
    /// Exit code: 2 for what the flags say, 1 for files, certificates and the system.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Config(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// What can change at run time (SIGHUP): every TLS configuration and the back-end set. Workers
/// hold an `Arc` of the one they use and look for a newer one once per event-loop turn, never per
/// message.
pub struct Runtime {
    /// The token key (`--token-key-file`, or random per process), and a digest of the file's
    /// secret to tell a changed key on reload.
    pub key: Arc<TokenKey>,
    key_digest: Option<[u8; 32]>,
    pub tls: TlsSet,
    pub backends: Vec<Backend>,
    pub backend_names: Vec<ServerName<'static>>,
    pub backend_name_strings: Vec<String>,
}

impl Runtime {
    /// Reads every file the configuration names: certificates, keys, CAs, CRLs, back-ends file,
    /// token key. `prev` is the configuration running now (on reload): its key stays unless the
    /// key file changed, and then stays accepted for [`KEY_GRACE`].
    pub fn load(cfg: &Config, prev: Option<&Runtime>, instance: u32) -> Result<Runtime, RuntimeError> {
        let backends = cfg.current_backends()?;
        let backend_name_strings: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let backend_names = backends
            .iter()
            .map(|b| tls::server_name(&b.name))
            .collect::<Result<Vec<_>, _>>()?;
        let partners = cfg.current_partners()?;
        let tls = tls::trust::build(&cfg.tls, &backend_name_strings, &partners)?;
        let (key, key_digest) = match (&cfg.token_key_file, prev) {
            (Some(path), prev) => {
                let secret = crate::config::read_token_key(path)?;
                // SHA-256 is 32 bytes, whatever the secret.
                let mut digest = [0u8; 32];
                digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &secret).as_ref());
                match prev {
                    Some(p) if p.key_digest == Some(digest) => (Arc::clone(&p.key), Some(digest)),
                    Some(p) => {
                        tracing::info!("token key changed: the previous one is accepted for 10 minutes");
                        let k =
                            TokenKey::from_secret(&secret).rotated_from(&p.key, Instant::now() + KEY_GRACE);
                        (Arc::new(k), Some(digest))
                    }
                    None => (
                        Arc::new(TokenKey::from_secret(&secret).with_instance(instance)),
                        Some(digest),
                    ),
                }
            }
            (None, Some(p)) => (Arc::clone(&p.key), None),
            (None, None) => (
                Arc::new(
                    TokenKey::generate()
                        .map_err(RuntimeError::Key)?
                        .with_instance(instance),
                ),
                None,
            ),
        };
        Ok(Runtime {
            key,
            key_digest,
            tls,
            backends,
            backend_names,
            backend_name_strings,
        })
    }
}

/// How long a rotated-out token key is still accepted.
pub const KEY_GRACE: Duration = Duration::from_secs(600);
