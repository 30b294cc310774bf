//! Federation partners (`--partner`, `--partners-file`): each with its own CA and the names its
//! edges may carry. Owns the rule "a certificate from a partner's CA is that partner's, and must
//! pass all of that partner's checks": a chain is attributed to a partner by its issuer (the name
//! of the partner's CA), never by what it claims to be, then verified against that CA alone (with
//! the CRLs) and its names checked against the partner's list. A chain attributed to a partner
//! that fails is refused, with the partner and the reason; it never falls back to being an
//! ordinary client. Chains from no partner's CA are left to the `--client-ca` rules.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, DistinguishedName, OtherError};

use super::{TlsError, load_roots, provider};
use crate::sip::identity::in_domain;

/// A partner as configured: `DOMAIN=CA_PEM[,name=HOST]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerSpec {
    /// Lower case, no trailing dot.
    pub domain: String,
    pub ca: PathBuf,
    /// Names its edges' certificates may carry; empty: the domain itself and any name under it.
    pub names: Vec<String>,
}

/// Why a partner's certificate was refused (the `reason` label of logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    Expired,
    NotYetValid,
    Revoked,
    /// Issued in the partner CA's name but not signed by it (a forged CA of the same name).
    BadSignature,
    /// The certificate carries none of the partner's names.
    Name,
    /// Any other failure of the chain (wrong key usage, unknown critical extension, ...).
    Invalid,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not-yet-valid",
            Refusal::Revoked => "revoked",
            Refusal::BadSignature => "bad-signature",
            Refusal::Name => "name-not-allowed",
            Refusal::Invalid => "invalid-chain",
        }
    }

    fn of(e: &rustls::Error) -> Refusal {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Refusal::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Refusal::NotYetValid
                }
                CertificateError::Revoked => Refusal::Revoked,
                CertificateError::BadSignature | CertificateError::UnknownIssuer => Refusal::BadSignature,
                _ => Refusal::Invalid,
            },
            _ => Refusal::Invalid,
        }
    }
}

/// A partner certificate refused at the handshake: carried inside rustls' error so the worker
/// can log and count it by partner and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRefused {
    pub partner: Arc<str>,
    pub reason: Refusal,
}

impl fmt::Display for PartnerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partner {} certificate refused: {}",
            self.partner,
            self.reason.as_str()
        )
    }
}

impl std::error::Error for PartnerRefused {}

impl PartnerRefused {
    /// As a rustls error (the client gets a bad_certificate alert).
    pub fn into_tls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    /// The refusal inside a rustls error made by [`PartnerRefused::into_tls`].
    pub fn from_tls(e: &rustls::Error) -> Option<&PartnerRefused> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<PartnerRefused>()
            }
            _ => None,
        }
    }
}

/// What a client's certificate chain makes of it, as far as partners go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerClass {
    /// Issued by no partner's CA: an ordinary client (the `--client-ca` rules apply).
    NotPartner,
    /// A partner's edge: verified against its CA and carrying one of its names.
    Partner(Arc<str>),
    Refused(PartnerRefused),
}

/// One partner, ready to check certificates.
struct Partner {
    domain: Arc<str>,
    names: Vec<String>,
    /// The subject names of its CA certificates (a chain is the partner's if it names one as
    /// its issuer).
    subjects: Vec<Vec<u8>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Every configured partner.
#[derive(Default)]
pub struct Partners {
    list: Vec<Partner>,
}

impl fmt::Debug for Partners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.list.iter().map(|p| &*p.domain).collect();
        write!(f, "Partners({names:?})")
    }
}

impl Partners {
    /// Loads every partner's CA; the CRLs apply to partner chains as to any other.
    pub fn build(
        specs: &[PartnerSpec],
        crls: &[CertificateRevocationListDer<'static>],
        crl_required: bool,
    ) -> Result<Partners, TlsError> {
        let mut list = Vec::new();
        for s in specs {
            let roots = load_roots(&s.ca)?;
            let subjects = roots.roots.iter().map(|a| a.subject.as_ref().to_vec()).collect();
            let verifier = super::client_revocation(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()),
                crls,
                crl_required,
            )
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", s.ca.display())))?;
            list.push(Partner {
                domain: Arc::from(s.domain.as_str()),
                names: s.names.clone(),
                subjects,
                verifier,
            });
        }
        Ok(Partners { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The partners' domains, in configuration order.
    pub fn domains(&self) -> impl Iterator<Item = &Arc<str>> {
        self.list.iter().map(|p| &p.domain)
    }

    /// The subject names of every partner CA (hints for clients choosing a certificate).
    pub fn hints(&self) -> Vec<DistinguishedName> {
        self.list
            .iter()
            .flat_map(|p| p.subjects.iter())
            .map(|s| DistinguishedName::in_sequence(s))
            .collect()
    }

    /// Attributes `end_entity` (with `intermediates`) to a partner by its issuer and checks it.
    pub fn classify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> PartnerClass {
        let Some(p) = self.claimed_by(end_entity, intermediates) else {
            return PartnerClass::NotPartner;
        };
        let refused = |reason| {
            PartnerClass::Refused(PartnerRefused {
                partner: Arc::clone(&p.domain),
                reason,
            })
        };
        if let Err(e) = p.verifier.verify_client_cert(end_entity, intermediates, now) {
            return refused(Refusal::of(&e));
        }
        if !names_allowed(end_entity, &p.domain, &p.names) {
            return refused(Refusal::Name);
        }
        PartnerClass::Partner(Arc::clone(&p.domain))
    }

    /// The partner whose CA the chain names as an issuer (of the leaf or of an intermediate).
    fn claimed_by(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<&Partner> {
        // Without partners, a client's certificate is not parsed here at all.
        if self.list.is_empty() {
            return None;
        }
        let issuers: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|c| {
                webpki::EndEntityCert::try_from(c)
                    .ok()
                    .map(|ee| ee.issuer().to_vec())
            })
            .collect();
        self.list
            .iter()
            .find(|p| p.subjects.iter().any(|s| issuers.iter().any(|i| i == s)))
    }
}

/// Whether the certificate carries one of the partner's names: one of `names` if any are
/// configured, else `domain` itself or a DNS name under it (among its subject alternative names).
fn names_allowed(cert: &CertificateDer<'_>, domain: &str, names: &[String]) -> bool {
    if !names.is_empty() {
        let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        return names.iter().any(|n| {
            ServerName::try_from(n.as_str()).is_ok_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
        });
    }
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| match g {
        x509_parser::extensions::GeneralName::DNSName(n) => {
            in_domain(n.strip_prefix("*.").unwrap_or(n).as_bytes(), domain)
        }
        _ => false,
    })
}
