//! The built-in CA: one root (created once in the state directory, or given as PEM files)
//! and the leaves it signs.
//!
//! Leaves follow what Consul's built-in CA signs (`agent/connect/ca/provider_consul.go`,
//! `ConsulProvider.Sign`; the CSR from `agent/leafcert/generate.go`): an ECDSA P-256 key, the
//! SPIFFE service ID as the only URI SAN and no DNS SAN (Consul adds DNS SANs only when a
//! caller asks for them), key usages digitalSignature, keyEncipherment, dataEncipherment and
//! keyAgreement, extended key usages serverAuth and clientAuth, CA:FALSE, subject and
//! authority key identifiers, and a NotBefore one minute in the past for clock drift.
//! Two differences, on purpose: the subject is `CN=<service>` (Consul's current leaves have
//! an empty subject, which RFC 5280 allows only with a critical SAN; a CN keeps tools that
//! print subjects readable and changes nothing for SPIFFE matching), and the lifetime counts
//! from the moment of issue rather than from the backdated NotBefore, so a leaf is usable
//! for the full configured TTL.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{CaError, Leaf, spiffe_service_id};

/// How long a root created here is valid.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far NotBefore is set in the past, for clocks that differ a little (as Consul does).
pub const CLOCK_DRIFT: Duration = Duration::from_secs(60);

/// The file names in the state directory.
pub const ROOT_CERT_FILE: &str = "ca.pem";
pub const ROOT_KEY_FILE: &str = "ca-key.pem";

/// Where the root comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// Created on first start in this directory, loaded from it afterwards.
    StateDir(PathBuf),
    /// Operator-provided files: read, never written.
    Files { cert: PathBuf, key: PathBuf },
}

/// The signing side of the built-in CA. Holds the root's private key: its `Debug` shows the
/// certificate's identity only.
pub struct Authority {
    trust_domain: String,
    /// The signing certificate, DER.
    cert_der: CertificateDer<'static>,
    /// Every certificate of the CA file (the signing one first): the trust bundle.
    bundle_pem: String,
    /// PEM appended to each leaf: the signing certificate when it is not a self-signed root
    /// (an intermediate), else nothing.
    chain_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("cert_bytes", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Authority {
    /// Loads the root from `source`, creating it first in a state directory that has none.
    pub fn open(source: &RootSource, trust_domain: &str) -> Result<Authority, CaError> {
        match source {
            RootSource::Files { cert, key } => Authority::load(cert, key, trust_domain),
            RootSource::StateDir(dir) => {
                let cert = dir.join(ROOT_CERT_FILE);
                let key = dir.join(ROOT_KEY_FILE);
                match (cert.exists(), key.exists()) {
                    (true, true) => Authority::load(&cert, &key, trust_domain),
                    (false, false) => Authority::create(dir, trust_domain),
                    // Half a CA: creating a new root would silently replace the identity of
                    // the mesh; let the operator decide.
                    (true, false) => Err(CaError::Incomplete {
                        present: cert,
                        missing: key,
                    }),
                    (false, true) => Err(CaError::Incomplete {
                        present: key,
                        missing: cert,
                    }),
                }
            }
        }
    }

    /// Creates a root and writes it to `dir` (the key file readable by its owner only).
    fn create(dir: &Path, trust_domain: &str) -> Result<Authority, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("meshgate CA {trust_domain}"));
        params.subject_alt_names = vec![SanType::URI(ia5(format!("spiffe://{trust_domain}"))?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset_time(now - CLOCK_DRIFT)?;
        params.not_after = offset_time(now + ROOT_LIFETIME)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Generate(e.to_string()))?;

        fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        // The key first: a crash between the two writes leaves a key without a certificate,
        // which `open` reports rather than overwrites.
        write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        info!(
            cert = %cert_path.display(),
            key = %key_path.display(),
            trust_domain,
            "created the mesh CA root"
        );
        let cert_der = cert.der().clone();
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            bundle_pem: cert.pem(),
            chain_pem: String::new(),
            issuer: Issuer::new(params, key),
            cert_der,
        })
    }

    /// Reads a CA certificate (the first one of the file signs; all of them are the trust
    /// bundle) and its key, and checks that they belong together.
    fn load(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<Authority, CaError> {
        let cert_text = read_text(cert_path)?;
        let key_text = read_text(key_path)?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_text.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CaError::BadFile {
                    path: cert_path.to_path_buf(),
                    reason: format!("not a PEM certificate file: {e}"),
                })?;
        let Some(cert_der) = certs.first().cloned() else {
            return Err(CaError::BadFile {
                path: cert_path.to_path_buf(),
                reason: "no certificate in the file".into(),
            });
        };
        // Never quote the key file's content or the parser's view of it.
        let key = KeyPair::from_pem(&key_text).map_err(|_| CaError::BadFile {
            path: key_path.to_path_buf(),
            reason: "not a PEM private key (PKCS#8, SEC1 or PKCS#1)".into(),
        })?;

        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CaError::BadFile {
                path: cert_path.to_path_buf(),
                reason: format!("cannot parse the certificate: {e}"),
            })?;
        if !parsed.is_ca() {
            return Err(CaError::BadFile {
                path: cert_path.to_path_buf(),
                reason: "the certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
            });
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Mismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        if let Some(td) = spiffe_trust_domain(&parsed)
            && td != trust_domain
        {
            warn!(
                cert = %cert_path.display(),
                ca_trust_domain = %td,
                trust_domain,
                "the CA certificate names another trust domain; leaves use the configured one"
            );
        }
        let self_signed = parsed.subject() == parsed.issuer();
        let chain_pem = if self_signed {
            String::new()
        } else {
            pem_of(&cert_der)
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::BadFile {
            path: cert_path.to_path_buf(),
            reason: format!("cannot use the certificate as an issuer: {e}"),
        })?;
        let bundle_pem = certs.iter().map(pem_of).collect::<String>();
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            cert_der,
            bundle_pem,
            chain_pem,
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle (PEM, one or more certificates).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The signing certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs a new leaf for `service` in `datacenter`, valid from `now - 1 min` to
    /// `now + ttl`.
    pub fn issue(
        &self,
        service: &str,
        datacenter: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Leaf, CaError> {
        let spiffe = spiffe_service_id(&self.trust_domain, datacenter, service);
        let key = KeyPair::generate().map_err(|e| CaError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, service);
        params.subject_alt_names = vec![SanType::URI(ia5(spiffe)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let not_before = truncate_to_seconds(now - CLOCK_DRIFT);
        let not_after = truncate_to_seconds(now + ttl);
        params.not_before = offset_time(not_before)?;
        params.not_after = offset_time(not_after)?;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(Leaf {
            service: service.to_string(),
            datacenter: datacenter.to_string(),
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            serial: serial.to_string(),
            not_before,
            not_after,
        })
    }
}

/// 16 random bytes, positive and without a leading zero byte, so that the DER integer is
/// exactly these bytes and the hex form is the same everywhere.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn ia5(s: String) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s.clone()).map_err(|e| CaError::Name {
        name: s,
        reason: e.to_string(),
    })
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn offset_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::Generate("the clock is before 1970".into()))?
        .as_secs();
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| CaError::Generate(format!("time out of range: {e}")))
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let pem = pem_encode("CERTIFICATE", der.as_ref());
    debug_assert!(pem.ends_with('\n'));
    pem
}

/// PEM armour with 64-character lines (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The trust domain of a CA certificate's `spiffe://<td>` URI SAN, if it has one.
fn spiffe_trust_domain(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://")
            .map(|rest| rest.split('/').next().unwrap_or_default().to_string()),
        _ => None,
    })
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a new file (never replacing one); `private` makes it mode 0600 on Unix.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_pki_types() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }
}
