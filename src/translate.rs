//! Translation: a pure function from one model [`Snapshot`] and a node group to Envoy
//! resources. No I/O here; the pipeline ([`Translator`]) publishes the result into the
//! store, whose per-resource diff sends only what changed.
//!
//! Clusters and endpoints of the ingress gateway come first (this module); listeners,
//! RBAC, secrets, the egress gateway and sidecars build on them.

pub mod cluster;
pub mod endpoint;
pub mod gateway;
pub mod ingress;
pub mod listener;
pub mod names;
pub mod rbac;
pub mod route;
pub mod secret;
pub mod sidecar;
pub mod tls;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::watch;
use tracing::{debug, error};

use std::collections::{BTreeSet, HashMap};

use crate::ca::{CertManager, CertSet, Leaf};
use crate::model::Snapshot;
use crate::model::intentions::DefaultPolicy;
use crate::xds::{Entry, GroupKey, ResourceType, Role, Store, TypeUpdate, Update};

/// Settings translation needs beyond the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The SPIFFE trust domain (`<uuid>.consul`), used in SNIs and identities.
    pub trust_domain: String,
    /// What intentions decide when none matches (`--default-intention-policy`).
    pub default_policy: DefaultPolicy,
}

/// A typed config as Envoy takes it.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Configuration over the ADS stream itself.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Everything one group gets from one snapshot.
pub fn translate(snapshot: &Snapshot, group: &GroupKey, settings: &Settings) -> Update {
    let dc = &group.datacenter;
    match group.role {
        Role::Ingress => {
            let services = cluster::ingress_services(snapshot, dc);
            Update::new()
                .replace(cluster::ingress_clusters(
                    snapshot,
                    dc,
                    &services,
                    cluster::ingress_gateway_service(snapshot, dc).as_deref(),
                    settings,
                ))
                .replace(endpoint::ingress_assignments(
                    snapshot, dc, &services, settings,
                ))
                .with(
                    ResourceType::Listener,
                    TypeUpdate::Replace(
                        listener::ingress_listener(snapshot, dc, &services, settings)
                            .into_iter()
                            .collect(),
                    ),
                )
                .replace(route::ingress_routes(snapshot, dc, &services, settings))
        }
        Role::Egress => Update::new()
            .replace(cluster::egress_clusters(snapshot, dc, settings))
            .replace(endpoint::egress_assignments(snapshot, dc, settings))
            .replace(listener::egress_listener(snapshot, dc, settings)),
        Role::Sidecar => {
            let service = group.service.as_deref().unwrap_or_default();
            let r = sidecar::sidecar(snapshot, dc, service, settings);
            Update::new()
                .replace(r.clusters)
                .replace(r.assignments)
                .replace(r.listeners)
                .replace(r.routes)
        }
    }
}

/// The leaves a group's Envoys present: an ingress gateway the leaf of each service it
/// exports, a sidecar its own service's; an egress gateway passes TLS through and has none.
pub fn wanted_leaves(snapshot: &Snapshot, group: &GroupKey) -> BTreeSet<(String, String)> {
    let dc = group.datacenter.to_string();
    match group.role {
        Role::Ingress => cluster::ingress_services(snapshot, &dc)
            .into_iter()
            .map(|s| (s, dc.clone()))
            .collect(),
        Role::Sidecar => group
            .service
            .iter()
            .map(|s| (s.to_string(), dc.clone()))
            .collect(),
        Role::Egress => BTreeSet::new(),
    }
}

/// Publishes every snapshot's translation to the groups meshgate serves: the ingress and
/// egress gateways of every datacenter the snapshot knows (a directory describes the whole
/// mesh; from Consul, the local datacenter is the one with services), and the sidecars that
/// declare upstreams.
///
/// Ingress groups are translated incrementally ([`ingress::IngressCache`]): only the services
/// whose inputs changed are translated again, and the store gets a patch. Secrets are encoded
/// once per leaf and republished only when a leaf or the trust bundle changed.
pub struct Translator {
    pub store: Store,
    pub settings: Settings,
    pub datacenter: String,
    /// Leaves and the trust bundle; `None` serves no secrets (TLS listeners then wait).
    pub certs: Option<CertManager>,
    /// Set once the first snapshot is published (`/readyz`).
    pub published: Option<Arc<AtomicBool>>,
    /// What the last translation of each group left, to translate the next one incrementally.
    pub caches: Caches,
}

/// Per-group state kept between translations.
#[derive(Default)]
pub struct Caches {
    ingress: HashMap<GroupKey, ingress::IngressCache>,
    secrets: HashMap<GroupKey, SecretCache>,
}

/// A group's secrets — its leaves and, for every role that verifies peers, the trust bundle —
/// as last published, and the entries of its leaves by leaf.
#[derive(Default)]
struct SecretCache {
    leaves: HashMap<(String, String), (Arc<Leaf>, Arc<Entry>)>,
    bundle: Option<(String, Arc<Entry>)>,
    published: Option<Vec<Arc<Entry>>>,
}

impl SecretCache {
    /// The group's secret entries, encoding only leaves (and a bundle) not seen before.
    fn entries(
        &mut self,
        group: &GroupKey,
        wanted: &BTreeSet<(String, String)>,
        certs: &CertSet,
    ) -> Vec<Arc<Entry>> {
        if group.role == Role::Egress {
            return Vec::new();
        }
        let bundle = match &self.bundle {
            Some((roots, e)) if *roots == certs.roots_pem => e.clone(),
            _ => {
                let e = Entry::new(&secret::trust_bundle(certs));
                self.bundle = Some((certs.roots_pem.clone(), e.clone()));
                e
            }
        };
        let mut out = vec![bundle];
        let mut leaves = HashMap::with_capacity(wanted.len());
        for key in wanted {
            let Some(leaf) = certs.leaves.get(key) else {
                continue;
            };
            let entry = match self.leaves.remove(key) {
                Some((l, e)) if Arc::ptr_eq(&l, leaf) => e,
                _ => Entry::new(&secret::leaf_secret(leaf)),
            };
            out.push(entry.clone());
            leaves.insert(key.clone(), (leaf.clone(), entry));
        }
        self.leaves = leaves;
        out
    }

    /// Whether `entries` are exactly the last published ones.
    fn unchanged(&self, entries: &[Arc<Entry>]) -> bool {
        self.published.as_deref().is_some_and(|p| {
            p.len() == entries.len() && p.iter().zip(entries).all(|(a, b)| Arc::ptr_eq(a, b))
        })
    }
}

impl Translator {
    fn groups(&self, snapshot: &Snapshot) -> Vec<GroupKey> {
        let mut dcs: Vec<&str> = snapshot.datacenters.keys().map(String::as_str).collect();
        if !dcs.contains(&self.datacenter.as_str()) {
            dcs.push(&self.datacenter);
        }
        let mut groups: Vec<GroupKey> = dcs
            .iter()
            .flat_map(|dc| {
                [
                    GroupKey::new(Role::Ingress, dc, None),
                    GroupKey::new(Role::Egress, dc, None),
                ]
            })
            .collect();
        // A sidecar group per service whose sidecars declare upstreams.
        for (dc_name, dc) in &snapshot.datacenters {
            let mut services: Vec<&str> = dc
                .services
                .values()
                .flat_map(|s| s.iter())
                .filter_map(|i| i.proxy.as_ref())
                .filter(|p| !p.upstreams.is_empty())
                .map(|p| p.destination_service_name.as_str())
                .collect();
            services.sort_unstable();
            services.dedup();
            for s in services {
                groups.push(GroupKey::new(Role::Sidecar, dc_name, Some(s)));
            }
        }
        groups
    }

    /// Translates and publishes one snapshot.
    pub fn apply(&mut self, snapshot: &Arc<Snapshot>) {
        // Consul's CA names the trust domain when there is one.
        let settings = match &snapshot.ca_roots {
            Some(roots) => Settings {
                trust_domain: roots.trust_domain.clone(),
                ..self.settings.clone()
            },
            None => self.settings.clone(),
        };
        let groups = self.groups(snapshot);
        let wanted: Vec<BTreeSet<(String, String)>> =
            groups.iter().map(|g| wanted_leaves(snapshot, g)).collect();
        let certs = self.certs.as_ref().map(|c| {
            let all: BTreeSet<(String, String)> = wanted.iter().flatten().cloned().collect();
            c.ensure(&all)
        });
        // Groups no longer served keep their last state in the store, but not a cache.
        self.caches.ingress.retain(|g, _| groups.contains(g));
        self.caches.secrets.retain(|g, _| groups.contains(g));
        for (group, wanted) in groups.iter().zip(&wanted) {
            let started = std::time::Instant::now();
            let (mut update, stats) = match group.role {
                Role::Ingress => {
                    let cache = self.caches.ingress.entry(group.clone()).or_default();
                    let (update, stats) = cache.translate(snapshot, &group.datacenter, &settings);
                    (update, Some(stats))
                }
                _ => (translate(snapshot, group, &settings), None),
            };
            let mut secrets = None;
            if let Some(certs) = &certs {
                let cache = self.caches.secrets.entry(group.clone()).or_default();
                let entries = cache.entries(group, wanted, certs);
                if !cache.unchanged(&entries) {
                    update =
                        update.with(ResourceType::Secret, TypeUpdate::Replace(entries.clone()));
                    secrets = Some(entries);
                }
            }
            match self.store.publish(group, update) {
                Ok(generation) => {
                    if let Some(entries) = secrets {
                        self.caches
                            .secrets
                            .entry(group.clone())
                            .or_default()
                            .published = Some(entries);
                    }
                    debug!(
                        %group,
                        snapshot = snapshot.generation,
                        ?generation,
                        services_translated = stats.map(|s| s.services_translated),
                        resources_touched = stats.map(|s| s.resources_touched),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "translated"
                    );
                }
                // A translation that breaks the store's rules is a bug; keep the last state,
                // and translate the group in full next time.
                Err(e) => {
                    error!(%group, error = %e, "translation refused by the store");
                    if let Some(c) = self.caches.ingress.get_mut(group) {
                        c.reset();
                    }
                    self.caches.secrets.remove(group);
                }
            }
        }
    }

    /// Follows `snapshots` until the sender is dropped. `None` (a source not synced yet)
    /// publishes nothing: a stream of a group never published gets no response rather than
    /// an empty configuration.
    /// A rotated leaf republishes the secrets of the current snapshot.
    pub async fn run(mut self, mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>) {
        let mut rotations = self.certs.as_ref().map(|c| c.changes());
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                self.apply(&snapshot);
                if let Some(ready) = &self.published {
                    ready.store(true, Ordering::Release);
                }
            }
            let rotated = async {
                match rotations.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                alive = rotated => if !alive { rotations = None },
            }
        }
    }
}
