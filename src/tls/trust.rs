//! Who is trusted, built from files into one [`TlsSet`] (rebuilt as a whole on SIGHUP):
//! - front: the `--cert` pair, plus `--sni-cert` pairs chosen by the name a client asks for
//!   ([`SniResolver`]); federation partners' edges checked against their own CA and names
//!   ([`super::partner`]), other client certificates optional (`--client-ca`) or required
//!   (`--require-client-cert`), all checked against CRLs ([`ListenerVerifier`]);
//! - back: MTLS to the pool, each server checked against `--backend-ca`, its configured NAME and
//!   the CRLs (validity dates are checked by webpki);
//! - peer listener: certificates from `--backend-ca` that name a configured back end, refused at
//!   the handshake otherwise (the same [`ListenerVerifier`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::partner::{PartnerClass, PartnerRefused, PartnerSpec, Partners};
use super::{Identity, TlsError, client_revocation, load_roots, peer_name_allowed, provider};

/// The files behind a [`TlsSet`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<(PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    pub crls: Vec<PathBuf>,
    /// Refuse a chain whose CA published none of the CRLs (`--crl-required`); by default a CRL
    /// applies to the chains its issuer signed and other chains pass.
    pub crl_required: bool,
    pub backend_ca: PathBuf,
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
    /// Build the peer listener's config.
    pub peer: bool,
}

/// Every TLS configuration of a running balancer.
pub struct TlsSet {
    pub front: Arc<ServerConfig>,
    pub backend: Arc<ClientConfig>,
    pub peer: Option<Arc<ServerConfig>>,
    /// The strict client verifier (`--client-ca` and CRLs), to tell verified clients from
    /// unverified ones after the handshake when client certificates are optional.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    pub partners: Arc<Partners>,
}

/// Who a client is, by the certificate it showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientClass {
    /// No certificate, or one from no CA siplb was told to trust (when certificates are
    /// optional).
    Unverified,
    /// A certificate that passes `--client-ca` and the CRLs.
    Verified,
    /// A federation partner's edge.
    Partner(Arc<str>),
    /// A partner's certificate that fails that partner's checks.
    Refused(PartnerRefused),
}

impl TlsSet {
    /// What a client's certificate chain (as the handshake left it) makes of the client.
    pub fn classify_client(&self, chain: &[CertificateDer<'_>]) -> ClientClass {
        let Some((ee, rest)) = chain.split_first() else {
            return ClientClass::Unverified;
        };
        let now = UnixTime::now();
        match self.partners.classify(ee, rest, now) {
            PartnerClass::Partner(p) => return ClientClass::Partner(p),
            PartnerClass::Refused(r) => return ClientClass::Refused(r),
            PartnerClass::NotPartner => {}
        }
        match &self.client_verifier {
            Some(v) if v.verify_client_cert(ee, rest, now).is_ok() => ClientClass::Verified,
            _ => ClientClass::Unverified,
        }
    }
}

pub fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for p in paths {
        let err = |why: String| TlsError::Crl {
            path: p.display().to_string(),
            why,
        };
        let crls = CertificateRevocationListDer::pem_file_iter(p)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if crls.is_empty() {
            return Err(err("no CRL found (expected PEM 'BEGIN X509 CRL' blocks)".into()));
        }
        out.extend(crls);
    }
    Ok(out)
}

fn certified(id: &Identity) -> Result<Arc<CertifiedKey>, TlsError> {
    id.certified().map(Arc::new).map_err(TlsError::Config)
}

/// Builds every configuration from `files`; `backend_names` are the NAMEs the peer listener
/// accepts, `partners` the federation partners the front listener knows.
pub fn build(
    files: &TlsFiles,
    backend_names: &[String],
    partners: &[PartnerSpec],
) -> Result<TlsSet, TlsError> {
    let crls = load_crls(&files.crls)?;
    let partners = Arc::new(Partners::build(partners, &crls, files.crl_required)?);
    let front_id = Identity::load(&files.cert, &files.key)?;
    let mut named = Vec::new();
    for (c, k) in &files.sni {
        named.push(certified(&Identity::load(c, k)?)?);
    }
    let resolver = Arc::new(SniResolver {
        fallback: certified(&front_id)?,
        named,
    });
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let client_verifier = match &files.client_ca {
        Some(ca) => Some(
            client_revocation(
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider()),
                &crls,
                files.crl_required,
            )
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?,
        ),
        None => None,
    };
    let mut front = if client_verifier.is_some() || !partners.is_empty() {
        let mut hints = partners.hints();
        if let Some(v) = &client_verifier {
            hints.extend(v.root_hint_subjects().iter().cloned());
        }
        let v = ListenerVerifier {
            rule: Rule::Front {
                partners: Arc::clone(&partners),
                client: client_verifier.clone(),
                required: files.require_client_cert,
            },
            hints,
            algs: provider().signature_verification_algorithms,
        };
        builder
            .with_client_cert_verifier(Arc::new(v))
            .with_cert_resolver(resolver)
    } else {
        builder.with_no_client_auth().with_cert_resolver(resolver)
    };
    front.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_err)?;
    super::prefer_ours(&mut front);

    let roots = Arc::new(load_roots(&files.backend_ca)?);
    let back_id = Identity::load(&files.backend_cert, &files.backend_key)?;
    let mut server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider()).with_crls(crls.clone());
    if !files.crl_required {
        server_verifier = server_verifier.allow_unknown_revocation_status();
    }
    let server_verifier = server_verifier
        .build()
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.backend_ca.display())))?;
    let backend = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(back_id.chain.clone(), back_id.key.clone_key())
        .map_err(config_err)?;

    let peer = if files.peer {
        let inner = client_revocation(
            WebPkiClientVerifier::builder_with_provider(roots, provider()),
            &crls,
            files.crl_required,
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(ListenerVerifier {
            hints: inner.root_hint_subjects().to_vec(),
            rule: Rule::Peers {
                inner,
                names: backend_names.to_vec(),
            },
            algs: provider().signature_verification_algorithms,
        });
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(front_id.chain.clone(), front_id.key.clone_key())
            .map_err(config_err)?;
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_err)?;
        super::prefer_ours(&mut cfg);
        Some(Arc::new(cfg))
    } else {
        None
    };
    Ok(TlsSet {
        front: Arc::new(front),
        backend: Arc::new(backend),
        peer,
        client_verifier,
        partners,
    })
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Chooses the front certificate by SNI: the first `--sni-cert` valid for the requested name,
/// else the `--cert` pair (clients without SNI, or asking for a name we have no certificate for).
pub struct SniResolver {
    fallback: Arc<CertifiedKey>,
    named: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} named certificates)", self.named.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wanted = hello.server_name().and_then(|n| ServerName::try_from(n).ok());
        if let Some(name) = wanted {
            for ck in &self.named {
                let valid = ck
                    .end_entity_cert()
                    .ok()
                    .and_then(|c| webpki::EndEntityCert::try_from(c).ok());
                if valid.is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok()) {
                    return Some(Arc::clone(ck));
                }
            }
        }
        Some(Arc::clone(&self.fallback))
    }
}

/// Client certificates on siplb's two listeners, one rule each:
/// - front: a chain from a partner's CA is that partner's edge or refused at the handshake
///   ([`Partners::classify`]); any other chain is checked against `--client-ca` — required with
///   `--require-client-cert`, else a chain that fails is treated as no certificate (the worker
///   labels the client unverified);
/// - peer: a webpki verifier (`--backend-ca`, CRLs) whose certificate must also name one of the
///   configured back ends.
///
/// The handshake signature is always checked, so a client cannot claim a certificate it has no
/// key for.
struct ListenerVerifier {
    rule: Rule,
    hints: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

enum Rule {
    Front {
        partners: Arc<Partners>,
        client: Option<Arc<dyn ClientCertVerifier>>,
        required: bool,
    },
    Peers {
        inner: Arc<dyn ClientCertVerifier>,
        names: Vec<String>,
    },
}

impl fmt::Debug for ListenerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Front {
                partners,
                client,
                required,
            } => write!(
                f,
                "front verifier ({partners:?}, client CA: {}, required: {required})",
                client.is_some()
            ),
            Rule::Peers { names, .. } => write!(f, "peer verifier ({names:?})"),
        }
    }
}

impl ClientCertVerifier for ListenerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        match &self.rule {
            Rule::Front { required, .. } => *required,
            Rule::Peers { .. } => true,
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.rule {
            Rule::Front {
                partners,
                client,
                required,
            } => match partners.classify(end_entity, intermediates, now) {
                PartnerClass::Partner(_) => Ok(ClientCertVerified::assertion()),
                PartnerClass::Refused(r) => Err(r.into_tls()),
                PartnerClass::NotPartner => match client {
                    Some(v) if *required => v.verify_client_cert(end_entity, intermediates, now),
                    None if *required => {
                        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                    }
                    _ => Ok(ClientCertVerified::assertion()),
                },
            },
            Rule::Peers { inner, names } => {
                let ok = inner.verify_client_cert(end_entity, intermediates, now)?;
                if peer_name_allowed(end_entity, names).is_none() {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ));
                }
                Ok(ok)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
