//! Certificates for the mesh: the trust bundle and one SPIFFE leaf per (service,
//! datacenter) the gateways present.
//!
//! Two modes behind one [`CertManager`]:
//! - **built-in** ([`CertManager::builtin`]): meshgate's own CA ([`Authority`]), its root kept
//!   in `--state-dir` or given as `--ca-cert`/`--ca-key`; leaves are signed here, on demand,
//!   and replaced at two thirds of their lifetime by a rotation task;
//! - **Consul** ([`CertManager::consul`]): the roots are the snapshot's `ca_roots` (read by the
//!   Consul source), each leaf comes from the local agent's
//!   `/v1/agent/connect/ca/leaf/:service` through its own blocking query; Consul rotates them.
//!
//! The translator asks for the leaves it needs with [`CertManager::ensure`] and republishes
//! secrets whenever [`CertManager::changes`] fires. Private keys stay inside [`Leaf`] and
//! [`Authority`]: their `Debug` output never shows one, and no log line quotes one.

pub mod authority;
mod consul;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, error, info};

pub use authority::{Authority, RootSource};
pub use consul::ConsulLeaves;

use crate::model::Snapshot;
use crate::source::consul::ConsulConfig;

/// Consul's default leaf lifetime (`LeafCertTTL`).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);
/// The default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = ".meshgate";

/// Where a leaf is in its life when the rotation task replaces it.
const ROTATE_NUM: u32 = 2;
const ROTATE_DEN: u32 = 3;
/// When signing a rotated leaf fails (it should not), try again after this long.
const ROTATE_RETRY: Duration = Duration::from_secs(10);

/// The SPIFFE ID of a service, as Consul writes it (default namespace and partition).
pub fn spiffe_service_id(trust_domain: &str, datacenter: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/default/dc/{datacenter}/svc/{service}")
}

/// The built-in CA's settings.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Where the root is created and kept (`ca.pem`, `ca-key.pem`).
    pub state_dir: PathBuf,
    /// `--ca-cert`: a CA certificate to sign with instead (read, never written).
    pub ca_cert: Option<PathBuf>,
    /// `--ca-key`: its private key.
    pub ca_key: Option<PathBuf>,
    pub trust_domain: String,
    /// Lifetime of a leaf, counted from its issue.
    pub leaf_ttl: Duration,
}

impl CaConfig {
    pub fn new(trust_domain: impl Into<String>) -> CaConfig {
        CaConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            ca_cert: None,
            ca_key: None,
            trust_domain: trust_domain.into(),
            leaf_ttl: DEFAULT_LEAF_TTL,
        }
    }

    fn root_source(&self) -> Result<RootSource, CaError> {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Ok(RootSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => Ok(RootSource::StateDir(self.state_dir.clone())),
            _ => Err(CaError::Config(
                "--ca-cert and --ca-key go together: give both or neither".into(),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the CA certificate {cert} and the key {key} do not belong together")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to create a new CA"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot sign a certificate: {0}")]
    Generate(String),
    #[error("{name:?} cannot be a certificate name: {reason}")]
    Name { name: String, reason: String },
    #[error("the certificate manager must be started inside a Tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Consul(#[from] crate::source::consul::ConsulError),
}

/// One service's certificate and key. Immutable; a rotation makes a new one.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    pub service: String,
    pub datacenter: String,
    /// The leaf, then any intermediate between it and the roots (PEM).
    pub cert_pem: String,
    key_pem: String,
    /// Colon-separated lowercase hex, as Consul writes serial numbers.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// The private key (PEM). Only the SDS secret built from it may carry it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("service", &self.service)
            .field("datacenter", &self.datacenter)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What the translator turns into secrets: the trust bundle and the wanted leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertSet {
    pub trust_domain: String,
    /// Every root (PEM, concatenated). Empty in Consul mode until Consul's roots are read.
    pub roots_pem: String,
    /// (service, datacenter) → leaf. Only leaves that exist yet: in Consul mode a leaf
    /// appears once the agent answered, and [`CertManager::changes`] fires then.
    pub leaves: BTreeMap<(String, String), Arc<Leaf>>,
}

/// Hands out leaves and keeps them fresh. Cheap to clone.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: String,
    changes: watch::Sender<u64>,
    mode: Mode,
}

enum Mode {
    Builtin(Arc<Builtin>),
    Consul(Arc<ConsulLeaves>),
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.inner.mode {
            Mode::Builtin(_) => "builtin",
            Mode::Consul(_) => "consul",
        };
        f.debug_struct("CertManager")
            .field("mode", &mode)
            .field("trust_domain", &self.inner.trust_domain)
            .finish()
    }
}

impl CertManager {
    /// The built-in CA: loads (or creates) the root and starts the rotation task on the
    /// current Tokio runtime.
    pub fn builtin(config: CaConfig) -> Result<CertManager, CaError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CaError::NoRuntime)?;
        if config.trust_domain.trim().is_empty() {
            return Err(CaError::Config(
                "the built-in CA needs a trust domain".into(),
            ));
        }
        if config.leaf_ttl < Duration::from_secs(1) {
            return Err(CaError::Config(format!(
                "the leaf lifetime {:?} is too short",
                config.leaf_ttl
            )));
        }
        let authority = Authority::open(&config.root_source()?, &config.trust_domain)?;
        let (changes, _) = watch::channel(0);
        let wake = Arc::new(Notify::new());
        let builtin = Arc::new(Builtin {
            authority,
            ttl: config.leaf_ttl,
            changes: changes.clone(),
            wake: wake.clone(),
            state: Mutex::new(BuiltinState::default()),
        });
        runtime.spawn(rotate(Arc::downgrade(&builtin), wake));
        Ok(CertManager {
            inner: Arc::new(Inner {
                trust_domain: config.trust_domain,
                changes,
                mode: Mode::Builtin(builtin),
            }),
        })
    }

    /// Consul's CA: roots from the snapshots' `ca_roots`, leaves from the agent at
    /// `config.addr` (its own datacenter's only: the agent signs for no other).
    /// `trust_domain` names the mesh until a snapshot brings Consul's.
    pub fn consul(
        config: &ConsulConfig,
        trust_domain: impl Into<String>,
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    ) -> Result<CertManager, CaError> {
        let (changes, _) = watch::channel(0);
        let leaves = ConsulLeaves::start(config, snapshots, changes.clone())?;
        Ok(CertManager {
            inner: Arc::new(Inner {
                trust_domain: trust_domain.into(),
                changes,
                mode: Mode::Consul(leaves),
            }),
        })
    }

    /// The leaves for these (service, datacenter) pairs: built-in, missing ones are signed
    /// now (ECDSA: fast); Consul, missing ones start being fetched and appear later. `wanted`
    /// is the complete set needed now: leaves outside it are no longer rotated (built-in) or
    /// watched (Consul), and are dropped.
    pub fn ensure(&self, wanted: &BTreeSet<(String, String)>) -> Arc<CertSet> {
        match &self.inner.mode {
            Mode::Builtin(b) => b.ensure(wanted, &self.inner.trust_domain),
            Mode::Consul(c) => c.ensure(wanted, &self.inner.trust_domain),
        }
    }

    /// Counts leaf replacements (a rotation, or a leaf that arrived from Consul): the
    /// translator calls [`CertManager::ensure`] again and republishes secrets.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }
}

/// Bumps the change counter (a send that no receiver listens to is fine).
fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n += 1);
}

struct Builtin {
    authority: Authority,
    ttl: Duration,
    changes: watch::Sender<u64>,
    /// Tells the rotation task that a deadline may have moved (or that the manager is gone).
    wake: Arc<Notify>,
    state: Mutex<BuiltinState>,
}

impl Drop for Builtin {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct BuiltinState {
    leaves: BTreeMap<(String, String), Issued>,
    /// The last set given to `ensure`.
    wanted: BTreeSet<(String, String)>,
}

struct Issued {
    leaf: Arc<Leaf>,
    rotate_at: Instant,
}

impl Builtin {
    fn sign(&self, service: &str, datacenter: &str) -> Result<Issued, CaError> {
        let leaf = self
            .authority
            .issue(service, datacenter, self.ttl, SystemTime::now())?;
        debug!(service, datacenter, serial = %leaf.serial, "signed a leaf certificate");
        Ok(Issued {
            leaf: Arc::new(leaf),
            rotate_at: Instant::now() + self.ttl * ROTATE_NUM / ROTATE_DEN,
        })
    }

    fn ensure(&self, wanted: &BTreeSet<(String, String)>, trust_domain: &str) -> Arc<CertSet> {
        let mut state = self.state.lock();
        let mut signed = false;
        let mut leaves = BTreeMap::new();
        for key in wanted {
            if !state.leaves.contains_key(key) {
                match self.sign(&key.0, &key.1) {
                    Ok(issued) => {
                        state.leaves.insert(key.clone(), issued);
                        signed = true;
                    }
                    // Left out of the set: its secret is not published, the chain that
                    // needs it is not served, the rest of the mesh is.
                    Err(e) => error!(service = %key.0, datacenter = %key.1, error = %e,
                        "cannot sign a leaf certificate"),
                }
            }
            if let Some(issued) = state.leaves.get(key) {
                leaves.insert(key.clone(), issued.leaf.clone());
            }
        }
        state.wanted = wanted.clone();
        drop(state);
        if signed {
            self.wake.notify_one();
        }
        Arc::new(CertSet {
            trust_domain: trust_domain.to_string(),
            roots_pem: self.authority.bundle_pem().to_string(),
            leaves,
        })
    }

    /// Replaces the wanted leaves that reached their rotation time, drops the unwanted
    /// ones; returns the next rotation time.
    fn rotate_due(&self, now: Instant) -> Option<Instant> {
        let due: Vec<(String, String)> = {
            let mut state = self.state.lock();
            let wanted = std::mem::take(&mut state.wanted);
            state.leaves.retain(|key, issued| {
                let keep = issued.rotate_at > now || wanted.contains(key);
                if !keep {
                    debug!(service = %key.0, datacenter = %key.1, "dropped an unwanted leaf");
                }
                keep
            });
            state.wanted = wanted;
            state
                .leaves
                .iter()
                .filter(|(_, issued)| issued.rotate_at <= now)
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut rotated = 0;
        for key in due {
            match self.sign(&key.0, &key.1) {
                Ok(issued) => {
                    info!(service = %key.0, datacenter = %key.1, serial = %issued.leaf.serial,
                        "rotated a leaf certificate");
                    self.state.lock().leaves.insert(key, issued);
                    rotated += 1;
                }
                Err(e) => {
                    error!(service = %key.0, datacenter = %key.1, error = %e,
                        "cannot rotate a leaf certificate; the current one is kept");
                    if let Some(issued) = self.state.lock().leaves.get_mut(&key) {
                        issued.rotate_at = now + ROTATE_RETRY;
                    }
                }
            }
        }
        if rotated > 0 {
            bump(&self.changes);
        }
        self.state.lock().leaves.values().map(|i| i.rotate_at).min()
    }
}

/// The rotation task: sleeps until the earliest rotation time (or a wake-up), rotates, and
/// ends once the manager is dropped. It holds the manager only while it works.
async fn rotate(builtin: Weak<Builtin>, wake: Arc<Notify>) {
    loop {
        let next = match builtin.upgrade() {
            Some(b) => b.rotate_due(Instant::now()),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use x509_parser::extensions::GeneralName;

    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn config(dir: &std::path::Path) -> CaConfig {
        let mut c = CaConfig::new(TD);
        c.state_dir = dir.to_path_buf();
        c
    }

    fn wanted(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.to_string()))
            .collect()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn authority(dir: &std::path::Path) -> Authority {
        Authority::open(&RootSource::StateDir(dir.to_path_buf()), TD).unwrap()
    }

    #[test]
    fn root_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = authority(&state);
        let cert_file = std::fs::read(state.join("ca.pem")).unwrap();
        let key_file = std::fs::read(state.join("ca-key.pem")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let second = authority(&state);
        assert_eq!(
            first.cert_der(),
            second.cert_der(),
            "same root after a restart"
        );
        assert_eq!(first.bundle_pem(), second.bundle_pem());
        assert_eq!(std::fs::read(state.join("ca.pem")).unwrap(), cert_file);
        assert_eq!(std::fs::read(state.join("ca-key.pem")).unwrap(), key_file);

        // What the root is.
        let (_, root) = x509_parser::parse_x509_certificate(first.cert_der()).unwrap();
        assert!(root.is_ca());
        assert_eq!(root.subject(), root.issuer());
        let cn = root.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), format!("meshgate CA {TD}"));
        let ku = root.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let sans = &root
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(sans, &vec![GeneralName::URI(&format!("spiffe://{TD}"))]);
        let v = root.validity();
        let years = (v.not_after.timestamp() - v.not_before.timestamp()) / (365 * 24 * 3600);
        assert_eq!(years, 10);
        assert!(
            root.public_key().algorithm.algorithm
                == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );

        // A leaf signed after the restart verifies against the first root.
        let leaf = second
            .issue("web", "dc1", DEFAULT_LEAF_TTL, SystemTime::now())
            .unwrap();
        verify(first.bundle_pem(), &leaf);
    }

    #[test]
    fn half_a_state_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        authority(dir.path());
        std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let e = Authority::open(&RootSource::StateDir(dir.path().to_path_buf()), TD).unwrap_err();
        assert!(matches!(e, CaError::Incomplete { .. }), "{e}");
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
        // Nothing was overwritten.
        assert!(dir.path().join("ca.pem").exists());
        assert!(!dir.path().join("ca-key.pem").exists());
    }

    #[test]
    fn root_from_operator_files_is_read_not_written() {
        let made = tempfile::tempdir().unwrap();
        let original = authority(made.path());
        let ops = tempfile::tempdir().unwrap();
        let cert = ops.path().join("mesh-ca.crt");
        let key = ops.path().join("mesh-ca.key");
        std::fs::copy(made.path().join("ca.pem"), &cert).unwrap();
        std::fs::copy(made.path().join("ca-key.pem"), &key).unwrap();
        let before: Vec<_> = std::fs::read_dir(ops.path()).unwrap().collect();

        let state = ops.path().join("state");
        let mut c = config(&state);
        c.ca_cert = Some(cert.clone());
        c.ca_key = Some(key.clone());
        let loaded = Authority::open(&c.root_source().unwrap(), TD).unwrap();
        assert_eq!(loaded.cert_der(), original.cert_der());
        assert!(!state.exists(), "the state dir is not used with --ca-cert");
        assert_eq!(std::fs::read_dir(ops.path()).unwrap().count(), before.len());
        let leaf = loaded
            .issue("web", "dc1", DEFAULT_LEAF_TTL, SystemTime::now())
            .unwrap();
        verify(original.bundle_pem(), &leaf);

        // Only one of the two is a configuration error.
        c.ca_key = None;
        assert!(matches!(c.root_source(), Err(CaError::Config(_))));
    }

    #[test]
    fn mismatched_pair_names_both_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        authority(a.path());
        authority(b.path());
        let cert = a.path().join("ca.pem");
        let key = b.path().join("ca-key.pem");
        let e = Authority::open(
            &RootSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            TD,
        )
        .unwrap_err();
        assert!(matches!(e, CaError::Mismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&cert.display().to_string()), "{text}");
        assert!(text.contains(&key.display().to_string()), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");

        // A key file that is not a key is named, and its content is not quoted.
        std::fs::write(b.path().join("junk.pem"), "secret-looking junk").unwrap();
        let e = Authority::open(
            &RootSource::Files {
                cert,
                key: b.path().join("junk.pem"),
            },
            TD,
        )
        .unwrap_err();
        assert!(e.to_string().contains("junk.pem"), "{e}");
        assert!(!e.to_string().contains("secret-looking"), "{e}");
    }

    /// Verifies the leaf's chain against `roots_pem` as a TLS peer would (webpki, through
    /// rustls' client verifier: signature, validity at now, clientAuth EKU).
    fn verify(roots_pem: &str, leaf: &Leaf) {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .expect("the leaf verifies against the root");
    }

    #[test]
    fn leaf_verifies_and_carries_consul_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path());
        let now = SystemTime::now();
        let ttl = Duration::from_secs(72 * 3600);
        let leaf = ca.issue("authentik", "authn", ttl, now).unwrap();
        verify(ca.bundle_pem(), &leaf);

        // A root of another CA does not accept it.
        let other = tempfile::tempdir().unwrap();
        let other = authority(other.path());
        let mut roots = RootCertStore::empty();
        roots.add(other.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&der(&leaf.cert_pem), &[], UnixTime::now())
                .is_err()
        );

        let d = der(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans,
            &vec![GeneralName::URI(&format!(
                "spiffe://{TD}/ns/default/dc/authn/svc/authentik"
            ))],
            "exactly the SPIFFE ID, no DNS SAN (as Consul)"
        );
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "authentik");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && eku.other.is_empty() && !eku.code_signing);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_agreement());
        assert!(ku.key_encipherment() && ku.data_encipherment());
        assert!(!ku.key_cert_sign());
        assert!(!cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        assert!(
            cert.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );

        // Lifetime: from one minute before issue to the TTL after it.
        let v = cert.validity();
        assert_eq!(v.not_before.timestamp() as u64, unix(now) - 60);
        assert_eq!(v.not_after.timestamp() as u64, unix(now) + ttl.as_secs());
        assert_eq!(unix(leaf.not_before), unix(now) - 60);
        assert_eq!(unix(leaf.not_after), unix(now) + ttl.as_secs());

        // Serial: random, and written as Consul writes it.
        assert_eq!(leaf.serial, cert.raw_serial_as_string());
        assert_eq!(leaf.serial.split(':').count(), 16);
        let again = ca.issue("authentik", "authn", ttl, now).unwrap();
        assert_ne!(again.serial, leaf.serial);
        assert_ne!(again.key_pem(), leaf.key_pem());

        // The key is the certificate's.
        let key = rcgen::KeyPair::from_pem(leaf.key_pem()).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
    }

    #[test]
    fn debug_output_has_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path());
        let leaf = ca
            .issue("web", "dc1", DEFAULT_LEAF_TTL, SystemTime::now())
            .unwrap();
        let key_line = leaf.key_pem().lines().nth(1).unwrap().to_string();
        let shown = format!("{leaf:?} {leaf:#?}");
        assert!(!shown.contains(&key_line), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("web") && shown.contains(&leaf.serial));
        let set = CertSet {
            trust_domain: TD.into(),
            roots_pem: ca.bundle_pem().into(),
            leaves: BTreeMap::from([(("web".into(), "dc1".into()), Arc::new(leaf))]),
        };
        assert!(!format!("{set:?}").contains(&key_line));

        let root_key = std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap();
        let root_line = root_key.lines().nth(1).unwrap();
        assert!(!format!("{ca:?}").contains(root_line));
    }

    #[tokio::test]
    async fn ensure_signs_once_and_keeps_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let m = CertManager::builtin(config(dir.path())).unwrap();
        assert_eq!(m.trust_domain(), TD);
        let w = wanted(&[("web", "dc1"), ("api", "dc1"), ("web", "dc2")]);
        let a = m.ensure(&w);
        assert_eq!(a.leaves.len(), 3);
        assert_eq!(a.trust_domain, TD);
        let b = m.ensure(&w);
        for (k, leaf) in &a.leaves {
            assert!(Arc::ptr_eq(leaf, &b.leaves[k]), "{k:?} signed again");
        }
        let web2 = &a.leaves[&("web".to_string(), "dc2".to_string())];
        let d = der(&web2.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans[0],
            GeneralName::URI(&format!("spiffe://{TD}/ns/default/dc/dc2/svc/web"))
        );
        // A smaller set returns only what it asks for.
        let c = m.ensure(&wanted(&[("api", "dc1")]));
        assert_eq!(c.leaves.len(), 1);
        verify(
            &c.roots_pem,
            &c.leaves[&("api".to_string(), "dc1".to_string())],
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leaves_rotate_at_two_thirds_of_their_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.leaf_ttl = Duration::from_secs(120);
        let m = CertManager::builtin(c).unwrap();
        let mut changes = m.changes();
        let w = wanted(&[("web", "dc1")]);
        let key = ("web".to_string(), "dc1".to_string());
        let first = m.ensure(&w).leaves[&key].clone();
        assert_eq!(
            first.not_after.duration_since(first.not_before).unwrap(),
            Duration::from_secs(180),
            "TTL after issue plus the minute of backdating"
        );
        let start = Instant::now();

        // Just before 80 s: nothing.
        tokio::time::sleep(Duration::from_millis(79_900)).await;
        assert!(!changes.has_changed().unwrap());
        assert!(Arc::ptr_eq(&m.ensure(&w).leaves[&key], &first));

        // At 80 s: a new leaf, announced.
        changes.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(80));
        assert_eq!(*changes.borrow_and_update(), 1);
        let second = m.ensure(&w).leaves[&key].clone();
        assert_ne!(second.serial, first.serial);
        assert_ne!(second.key_pem(), first.key_pem());

        // And again 80 s after that one.
        changes.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(160));
        let third = m.ensure(&w).leaves[&key].clone();
        assert_ne!(third.serial, second.serial);
    }

    #[tokio::test(start_paused = true)]
    async fn unwanted_leaves_are_dropped_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.leaf_ttl = Duration::from_secs(120);
        let m = CertManager::builtin(c).unwrap();
        let mut changes = m.changes();
        let both = wanted(&[("web", "dc1"), ("api", "dc1")]);
        let api = ("api".to_string(), "dc1".to_string());
        let first_api = m.ensure(&both).leaves[&api].clone();
        m.ensure(&wanted(&[("web", "dc1")]));

        changes.changed().await.unwrap();
        // Only web was rotated; api was dropped at its rotation time, so wanting it again
        // signs a new one.
        let again = m.ensure(&both);
        assert_ne!(again.leaves[&api].serial, first_api.serial);
        let Mode::Builtin(b) = &m.inner.mode else {
            unreachable!()
        };
        assert_eq!(b.state.lock().leaves.len(), 2);
    }

    #[tokio::test]
    async fn rotation_task_ends_with_the_manager() {
        let dir = tempfile::tempdir().unwrap();
        let m = CertManager::builtin(config(dir.path())).unwrap();
        m.ensure(&wanted(&[("web", "dc1")]));
        let Mode::Builtin(b) = &m.inner.mode else {
            unreachable!()
        };
        let weak = Arc::downgrade(b);
        drop(m);
        for _ in 0..100 {
            if weak.upgrade().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the rotation task keeps the manager alive");
    }

    #[test]
    fn builtin_needs_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CertManager::builtin(config(dir.path())),
            Err(CaError::NoRuntime)
        ));
    }
}
