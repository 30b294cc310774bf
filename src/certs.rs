//! Throwaway certificates for the demo and the tests, made with rcgen: a CA, and leaf
//! certificates carrying DNS names, good for both TLS server and client authentication (a pooled
//! SIP server is both: it answers siplb's MTLS and may connect to the peer listener). Nothing here
//! is meant for production keys.

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, date_time_ymd,
};

/// Serial numbers, unique within the process (so CRLs can name one certificate).
static SERIAL: AtomicU64 = AtomicU64::new(1000);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {why}")]
    Write { path: String, why: std::io::Error },
}

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: u64,
}

/// Paths of a leaf written to disk.
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca { params, key, pem })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names or IP addresses), for server and client use.
    pub fn issue(&self, names: &[&str]) -> Result<Leaf, CertError> {
        self.issue_with(names, false)
    }

    /// A leaf whose validity ended in 2001 (for tests of expiry checks).
    pub fn issue_expired(&self, names: &[&str]) -> Result<Leaf, CertError> {
        self.issue_with(names, true)
    }

    /// A CRL, signed by this CA, revoking the given serial numbers.
    pub fn crl(&self, revoked: &[u64]) -> Result<String, CertError> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        Ok(params.signed_by(&issuer)?.pem()?)
    }

    fn issue_with(&self, names: &[&str], expired: bool) -> Result<Leaf, CertError> {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or("siplb"));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Strict verifiers (`openssl verify -x509_strict`, Python 3.13's default context) require
        // the Authority Key Identifier that ties a leaf to its CA's key.
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    pub fn write_pem(&self, path: &Path) -> Result<(), CertError> {
        write(path, &self.pem)
    }

    /// Writes a CRL revoking `revoked` to `path`.
    pub fn write_crl(&self, path: &Path, revoked: &[u64]) -> Result<(), CertError> {
        write(path, &self.crl(revoked)?)
    }
}

impl Leaf {
    /// Writes `<dir>/<stem>.crt.pem` and `<dir>/<stem>.key.pem`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<LeafFiles, CertError> {
        let cert = dir.join(format!("{stem}.crt.pem"));
        let key = dir.join(format!("{stem}.key.pem"));
        write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok(LeafFiles { cert, key })
    }
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    std::fs::write(path, text).map_err(|why| CertError::Write {
        path: path.display().to_string(),
        why,
    })
}

/// Writes a private key readable by its owner only (mode 0600), also when the file was there.
fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |why| CertError::Write {
        path: path.display().to_string(),
        why,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|_| f.write_all(text.as_bytes()))
        .map_err(fail)
}
