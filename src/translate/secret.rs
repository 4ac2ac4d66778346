//! SDS secrets: one `leaf:<service>` per leaf certificate the gateways present, and the
//! `trust-bundle` they verify peers against. Certificates and keys travel inline: meshgate
//! never writes them to a file an Envoy would have to share.
//!
//! A secret carries a private key, so nothing meshgate shows may render one: the store's
//! entries (`xds::Entry`) print name, version and size only; `/debug/groups` and
//! `/debug/streams` list names, versions and counts; the version is a 64-bit hash of the
//! canonical form, not the form itself. The tests below hold that.

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use crate::ca::{CertSet, Leaf};

/// The name of the trust bundle secret.
pub const TRUST_BUNDLE: &str = "trust-bundle";

/// The name of a service's leaf secret.
pub fn leaf_secret_name(service: &str) -> String {
    format!("leaf:{service}")
}

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.to_string())),
        ..Default::default()
    })
}

/// The leaf's certificate chain and private key, as a `TlsCertificate` secret.
pub fn leaf_secret(leaf: &Leaf) -> Secret {
    Secret {
        name: leaf_secret_name(&leaf.service),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&leaf.cert_pem),
            private_key: inline(leaf.key_pem()),
            ..Default::default()
        })),
    }
}

/// The mesh's roots, as a `CertificateValidationContext` secret.
pub fn trust_bundle(set: &CertSet) -> Secret {
    Secret {
        name: TRUST_BUNDLE.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(&set.roots_pem),
                ..Default::default()
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::admin::{AdminState, router};
    use crate::ca::{CaConfig, CertManager};
    use crate::metrics::Metrics;
    use crate::source::SourceHandle;
    use crate::xds::stream::StreamRegistry;
    use crate::xds::{Debounce, Entry, GroupKey, ResourceType, Role, Store, Update};

    fn key_body(pem: &str) -> String {
        // The base64 line that is surely unique to this key.
        pem.lines()
            .find(|l| !l.starts_with("-----"))
            .expect("a PEM body")
            .to_string()
    }

    async fn issued() -> (tempfile::TempDir, Arc<CertSet>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CaConfig::new("11111111-2222-3333-4444-555555555555.consul");
        config.state_dir = dir.path().to_path_buf();
        let manager = CertManager::builtin(config).unwrap();
        let wanted = BTreeSet::from([("authentik".to_string(), "authn".to_string())]);
        let set = manager.ensure(&wanted);
        (dir, set)
    }

    #[tokio::test]
    async fn leaf_secret_carries_chain_and_key_inline() {
        let (_dir, set) = issued().await;
        let leaf = &set.leaves[&("authentik".to_string(), "authn".to_string())];
        let s = leaf_secret(leaf);
        assert_eq!(s.name, "leaf:authentik");
        let Some(secret::Type::TlsCertificate(tls)) = &s.r#type else {
            panic!("not a TlsCertificate: {:?}", s.name);
        };
        let text = |d: &Option<DataSource>| match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineString(s)) => s.clone(),
            _ => panic!("not inline"),
        };
        assert_eq!(text(&tls.certificate_chain), leaf.cert_pem);
        assert_eq!(text(&tls.private_key), leaf.key_pem());

        let b = trust_bundle(&set);
        assert_eq!(b.name, TRUST_BUNDLE);
        let Some(secret::Type::ValidationContext(vc)) = &b.r#type else {
            panic!("not a validation context");
        };
        assert_eq!(text(&vc.trusted_ca), set.roots_pem);
        assert!(set.roots_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    /// A published secret shows up in the admin pages by name and version only.
    #[tokio::test]
    async fn admin_pages_and_debug_output_never_show_a_key() {
        let (_dir, set) = issued().await;
        let leaf = set.leaves.values().next().unwrap().clone();
        let key = key_body(leaf.key_pem());
        let secret = leaf_secret(&leaf);
        // The prost rendering does hold the key: that is why nothing may log a Secret.
        assert!(format!("{secret:?}").contains(&key));

        assert!(!format!("{leaf:?}").contains(&key));
        assert!(!format!("{set:?}").contains(&key));
        let entry = Entry::new(&secret);
        assert!(!format!("{entry:?}").contains(&key));
        assert_eq!(entry.version.len(), 16, "{}", entry.version);
        let update = Update::new().replace([secret.clone(), trust_bundle(&set)]);
        assert!(!format!("{update:?}").contains(&key));

        let metrics = Arc::new(Metrics::new());
        let store = Store::new(Debounce::NONE, metrics.clone());
        let group = GroupKey::new(Role::Ingress, "authn", None);
        store.publish(&group, update).unwrap();
        let state = AdminState {
            metrics,
            streams: Arc::new(StreamRegistry::default()),
            store: store.clone(),
            ready: Arc::new(AtomicBool::new(true)),
            sources: SourceHandle::None,
        };
        let app = router(state);
        let mut seen_groups = String::new();
        for path in [
            "/debug/groups",
            "/debug/streams",
            "/debug/sources",
            "/metrics",
        ] {
            let resp = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{path}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&body).to_string();
            assert!(!body.contains(&key), "{path} shows the key");
            assert!(!body.contains("PRIVATE KEY"), "{path}");
            if path == "/debug/groups" {
                seen_groups = body;
            }
        }
        // The page does list the secrets, by count and version.
        let groups: serde_json::Value = serde_json::from_str(&seen_groups).unwrap();
        let sds = groups[0]["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == ResourceType::Secret.short())
            .unwrap();
        assert_eq!(sds["resources"], 2);
    }
}
