//! TLS for every hop, rustls with the ring provider only: loading PEM files ([`load_certs`],
//! [`load_key`]), the three configurations siplb needs — front (clients verify us), back (MTLS to
//! the pool, each server verified against `--backend-ca` and its configured NAME) and peer
//! (servers that connect to us with a certificate carrying a configured NAME), federation
//! partners with their own CA ([`partner`]) — and the
//! non-blocking [`stream::TlsStream`] every connection, balancer or load tool, runs on.

pub mod partner;
pub mod stream;
pub mod trust;
pub mod wire;

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {why}")]
    Certs { path: String, why: String },
    #[error("{path}: no certificate found (expected PEM 'BEGIN CERTIFICATE' blocks)")]
    NoCerts { path: String },
    #[error("{path}: cannot read a private key: {why}")]
    Key { path: String, why: String },
    #[error("{path}: not a usable CA certificate: {why}")]
    Ca { path: String, why: String },
    #[error("{path}: cannot read the CRL: {why}")]
    Crl { path: String, why: String },
    #[error("certificate and key do not work together: {0}")]
    Config(String),
    #[error("{key} does not go with the certificate in {cert}: {why}")]
    Mismatch { cert: String, key: String, why: String },
    #[error("'{0}' is not a valid server name for certificate checks")]
    ServerName(String),
}

/// The only crypto provider siplb uses: ring's, with AES-128-GCM preferred within each protocol
/// version (measured cheaper per call than AES-256-GCM first, rustls' default order; see
/// perf/README.md). The policy is unchanged: TLS 1.2 and 1.3, AEAD suites only. siplb's servers
/// choose by this order, not the client's ([`prefer_ours`]).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        let tls12 = matches!(s, rustls::SupportedCipherSuite::Tls12(_));
        let aes128 = matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (tls12, !aes128)
    });
    Arc::new(p)
}

/// Server side: pick the first suite of our order the client offers.
pub(crate) fn prefer_ours(cfg: &mut ServerConfig) {
    cfg.ignore_client_order = true;
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let p = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Certs {
            path: p.clone(),
            why: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certs {
            path: p.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts { path: p });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Trust anchors from PEM text.
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|e| TlsError::Ca {
            path: "(memory)".into(),
            why: e.to_string(),
        })?;
        roots.add(c).map_err(|e| TlsError::Ca {
            path: "(memory)".into(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Ca {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A certificate chain and its key, as read from disk.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a certificate chain and its key, and checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let id = Identity {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        };
        id.certified().map_err(|why| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            why,
        })?;
        Ok(id)
    }

    /// The chain with its key loaded for signing, once the key is known to be the one of the
    /// chain's first certificate.
    pub(crate) fn certified(&self) -> Result<rustls::sign::CertifiedKey, String> {
        let signing = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| format!("the key cannot sign: {e}"))?;
        let ck = rustls::sign::CertifiedKey::new(self.chain.clone(), signing);
        ck.keys_match()
            .map_err(|_| "the key is not the certificate's (their public keys differ)".to_string())?;
        Ok(ck)
    }

    /// From PEM text (certificates made in memory for the demo and tests).
    pub fn from_pem(cert: &str, key: &str) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certs {
                path: "(memory)".into(),
                why: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| TlsError::Key {
            path: "(memory)".into(),
            why: e.to_string(),
        })?;
        Ok(Identity { chain, key })
    }

    fn clone_parts(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The CRLs on a client-certificate verifier: each applies to the chains of the CA that issued
/// it; a chain whose CA published no CRL passes unless `required`.
pub(crate) fn client_revocation(
    b: rustls::server::ClientCertVerifierBuilder,
    crls: &[rustls::pki_types::CertificateRevocationListDer<'static>],
    required: bool,
) -> rustls::server::ClientCertVerifierBuilder {
    let b = b.with_crls(crls.iter().cloned());
    if required {
        b
    } else {
        b.allow_unknown_revocation_status()
    }
}

/// sipload servers: a server config that requires a client certificate from `roots`.
pub fn mtls_server_config(id: &Identity, roots: RootCertStore) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = id.clone_parts();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_err)?;
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_err)?;
    prefer_ours(&mut cfg);
    Ok(Arc::new(cfg))
}

/// A plain TLS client config trusting `roots` (sipload callers; tests).
pub fn client_config(roots: RootCertStore, id: Option<&Identity>) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots);
    let cfg = match id {
        Some(id) => {
            let (chain, key) = id.clone_parts();
            b.with_client_auth_cert(chain, key).map_err(config_err)?
        }
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// Which of `names` the verified end-entity certificate `cert` is valid for, if any. The chain
/// was already verified against the CA during the handshake; this is the "only servers named in
/// the configuration" check of the peer listener.
pub fn peer_name_allowed<'n>(cert: &CertificateDer<'_>, names: &'n [String]) -> Option<&'n str> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    names
        .iter()
        .map(String::as_str)
        .find(|n| ServerName::try_from(*n).is_ok_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok()))
}
