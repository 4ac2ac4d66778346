//! Translation: a pure function from one model [`Snapshot`] and a node group to Envoy
//! resources. No I/O here; the pipeline ([`Translator`]) publishes the result into the
//! store, whose per-resource diff sends only what changed.
//!
//! Clusters and endpoints of the ingress gateway come first (this module); listeners,
//! RBAC, secrets, the egress gateway and sidecars build on them.

pub mod cluster;
pub mod endpoint;
pub mod names;
pub mod rbac;
pub mod secret;

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, error};

use crate::model::Snapshot;
use crate::xds::{GroupKey, Role, Store, Update};

/// Settings translation needs beyond the snapshot.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The SPIFFE trust domain (`<uuid>.consul`), used in SNIs and identities.
    pub trust_domain: String,
}

/// Everything one group gets from one snapshot.
pub fn translate(snapshot: &Snapshot, group: &GroupKey, settings: &Settings) -> Update {
    match group.role {
        Role::Ingress => {
            let services = cluster::ingress_services(snapshot, &group.datacenter);
            Update::new()
                .replace(cluster::ingress_clusters(snapshot, &services, settings))
                .replace(endpoint::ingress_assignments(snapshot, &services, settings))
        }
        // Egress and sidecar resources come with the gateways' listeners.
        Role::Egress | Role::Sidecar => Update::new(),
    }
}

/// Publishes every snapshot's translation to the groups meshgate serves: the ingress
/// gateways of its datacenter.
pub struct Translator {
    pub store: Store,
    pub settings: Settings,
    pub datacenter: String,
}

impl Translator {
    fn groups(&self) -> Vec<GroupKey> {
        vec![GroupKey::new(Role::Ingress, &self.datacenter, None)]
    }

    /// Translates and publishes one snapshot.
    pub fn apply(&self, snapshot: &Snapshot) {
        // Consul's CA names the trust domain when there is one.
        let settings = match &snapshot.ca_roots {
            Some(roots) => Settings {
                trust_domain: roots.trust_domain.clone(),
            },
            None => self.settings.clone(),
        };
        for group in self.groups() {
            let update = translate(snapshot, &group, &settings);
            match self.store.publish(&group, update) {
                Ok(Some(generation)) => debug!(
                    %group,
                    snapshot = snapshot.generation,
                    generation,
                    "published"
                ),
                Ok(None) => debug!(%group, snapshot = snapshot.generation, "nothing changed"),
                // A translation that breaks the store's rules is a bug; keep the last state.
                Err(e) => error!(%group, error = %e, "translation refused by the store"),
            }
        }
    }

    /// Follows `snapshots` until the sender is dropped. `None` (a source not synced yet)
    /// publishes nothing: a stream of a group never published gets no response rather than
    /// an empty configuration.
    pub async fn run(self, mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>) {
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                self.apply(&snapshot);
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }
}
