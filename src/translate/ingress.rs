//! Incremental translation of an ingress gateway group.
//!
//! An ingress group holds, per exported service, its clusters, assignments, routes and filter
//! chains, and one listener over every chain. What a service contributes depends only on its
//! instances in the group's datacenter, its own `service-defaults`, `service-resolver` and
//! `service-intentions`, its consumers in `exported-services`, and group-wide inputs (the
//! settings, `proxy-defaults`, the `*` intentions, the ingress gateways). [`IngressCache`]
//! keeps every service's encoded resources from the last snapshot; a new snapshot is compared
//! with that one input by input — instance lists and entries by pointer first (the Consul
//! source keeps unchanged ones by pointer), by value when the pointers differ (the directory
//! source re-reads files) — and only the services whose inputs changed are translated again.
//! The result is a patch of the resources whose versions changed; the listener is encoded
//! again only when a chain, the set of services or the bind address changed.
//!
//! The cache mirrors what the store holds for the group; a publish the store refuses (a bug)
//! must [`IngressCache::reset`] it, so the next translation is a full replace.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::Settings;
use super::cluster::{has_local_instances, ingress_clusters, ingress_services};
use super::endpoint::ingress_assignments;
use super::gateway::{GatewayRole, bind_address, gateways};
use super::listener::{encode_chains, ingress_chains, ingress_listener_entry, ingress_route_names};
use super::rbac::Consumers;
use super::route::ingress_routes;
use crate::model::entries::{ConfigEntries, Stored};
use crate::model::intentions::WILDCARD;
use crate::model::{Instance, ServiceKind, Snapshot};
use crate::xds::{Entry, ResourceType, TypeUpdate, Update, XdsResource};

/// What one exported service contributes to its datacenter's ingress gateways, encoded.
struct ServiceParts {
    consumers: Consumers,
    clusters: Vec<Arc<Entry>>,
    assignments: Vec<Arc<Entry>>,
    routes: Vec<Arc<Entry>>,
    /// Its filter chains, encoded as listener fields ([`encode_chains`]).
    chains: Vec<u8>,
    /// The RDS names its chains use.
    route_names: Vec<String>,
}

/// The last translation of one ingress group, and the snapshot it came from.
#[derive(Default)]
pub struct IngressCache {
    last: Option<Last>,
}

struct Last {
    snapshot: Arc<Snapshot>,
    settings: Settings,
    bind: Option<(String, u16)>,
    gateway: Option<String>,
    services: BTreeMap<String, ServiceParts>,
    listener: Option<Arc<Entry>>,
}

/// Counts of one translation, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressStats {
    /// Exported services translated again (all of them on a full translation).
    pub services_translated: usize,
    /// Resources added, changed or removed by the update.
    pub resources_touched: usize,
    /// Whether the update replaces the group's resources (no usable cache).
    pub full: bool,
}

/// Which services' inputs changed between two snapshots.
enum Dirty<'a> {
    All,
    Some(HashSet<&'a str>),
}

impl Dirty<'_> {
    fn contains(&self, service: &str) -> bool {
        match self {
            Dirty::All => true,
            Dirty::Some(set) => set.contains(service),
        }
    }
}

/// What one translation did so far.
#[derive(Default)]
struct Work {
    /// The ingress gateways' service name: the caller whose upstream settings apply.
    gateway: Option<String>,
    clusters: Patch,
    assignments: Patch,
    routes: Patch,
    translated: usize,
    chains_changed: bool,
}

impl Work {
    /// Translates `service` again and records what changed against `prev`.
    fn translate(
        &mut self,
        snapshot: &Snapshot,
        dc: &str,
        settings: &Settings,
        service: &str,
        consumers: Consumers,
        prev: Option<&ServiceParts>,
    ) -> ServiceParts {
        self.translated += 1;
        let one = [service.to_owned()];
        let parts = ServiceParts {
            clusters: entries(ingress_clusters(
                snapshot,
                dc,
                &one,
                self.gateway.as_deref(),
                settings,
            )),
            assignments: entries(ingress_assignments(snapshot, dc, &one, settings)),
            routes: entries(ingress_routes(snapshot, dc, &one, settings)),
            chains: encode_chains(&ingress_chains(snapshot, dc, service, &consumers, settings)),
            route_names: ingress_route_names(snapshot, dc, service, settings),
            consumers,
        };
        let empty = ServiceParts::empty();
        let prev = prev.unwrap_or(&empty);
        self.clusters.diff(&prev.clusters, &parts.clusters);
        self.assignments.diff(&prev.assignments, &parts.assignments);
        self.routes.diff(&prev.routes, &parts.routes);
        self.chains_changed |= prev.chains != parts.chains || prev.chains.is_empty();
        parts
    }

    /// Records that `gone` is no longer served.
    fn removed(&mut self, gone: &ServiceParts) {
        self.clusters.diff(&gone.clusters, &[]);
        self.assignments.diff(&gone.assignments, &[]);
        self.routes.diff(&gone.routes, &[]);
        self.chains_changed = true;
    }
}

impl ServiceParts {
    fn empty() -> ServiceParts {
        ServiceParts {
            consumers: Consumers::none(),
            clusters: Vec::new(),
            assignments: Vec::new(),
            routes: Vec::new(),
            chains: Vec::new(),
            route_names: Vec::new(),
        }
    }
}

/// Whether `service`'s instances in `dc` include a mesh gateway.
fn has_gateways(snapshot: &Snapshot, dc: &str, service: &str) -> bool {
    snapshot
        .instances(dc, service)
        .iter()
        .any(|i| i.kind == ServiceKind::MeshGateway)
}

/// The consumers of `service` if the exported-services entry names it.
fn consumers_of(entries: &ConfigEntries, service: &str) -> Option<Consumers> {
    let exported = entries.exported_services.as_ref()?;
    exported
        .entry
        .services
        .iter()
        .any(|s| s.name == service)
        .then(|| Consumers::exported(entries, service))
}

/// Per type: the entries to add or change, the names to remove.
#[derive(Default)]
struct Patch {
    upsert: Vec<Arc<Entry>>,
    remove: Vec<String>,
}

impl Patch {
    /// Records the difference between a service's old and new entries of one type.
    fn diff(&mut self, old: &[Arc<Entry>], new: &[Arc<Entry>]) {
        for e in new {
            match old.iter().find(|o| o.name == e.name) {
                Some(o) if o.version == e.version => {}
                _ => self.upsert.push(e.clone()),
            }
        }
        for o in old {
            if !new.iter().any(|e| e.name == o.name) {
                self.remove.push(o.name.to_string());
            }
        }
    }

    fn len(&self) -> usize {
        self.upsert.len() + self.remove.len()
    }
}

impl IngressCache {
    /// Forgets the last translation: the next one replaces everything.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The update that brings the group of `dc` from the last translation to `snapshot`.
    pub fn translate(
        &mut self,
        snapshot: &Arc<Snapshot>,
        dc: &str,
        settings: &Settings,
    ) -> (Update, IngressStats) {
        let last = self.last.take().filter(|l| l.settings == *settings);
        let full = last.is_none();
        let prev_snapshot = last.as_ref().map(|l| l.snapshot.clone());
        let (dirty, exports_changed) = match &prev_snapshot {
            Some(prev) => (
                dirty(prev, snapshot, dc),
                !same_stored(
                    &prev.entries.exported_services,
                    &snapshot.entries.exported_services,
                ),
            ),
            None => (Dirty::All, true),
        };
        let (mut old_services, old_listener, old_gateway) = match last {
            Some(l) => (l.services, l.listener, Some((l.bind, l.gateway))),
            None => (BTreeMap::new(), None, None),
        };
        // Where the listener binds, and the gateways' service name, change only with the
        // gateways' own instances.
        let (bind, gateway) = match (&dirty, &prev_snapshot, &old_gateway) {
            (Dirty::Some(changed), Some(prev), Some(old))
                if !changed
                    .iter()
                    .any(|s| has_gateways(prev, dc, s) || has_gateways(snapshot, dc, s)) =>
            {
                old.clone()
            }
            _ => {
                let gws = gateways(snapshot, dc, GatewayRole::Ingress);
                (bind_address(&gws), gws.first().map(|g| g.service.clone()))
            }
        };
        let (old_bind, old_gateway) = old_gateway.unzip();
        let old_bind = old_bind.flatten();
        // The gateways' own service-defaults (their upstream settings) concern every cluster.
        let dirty = match (&prev_snapshot, dirty) {
            (Some(prev), Dirty::Some(_))
                if old_gateway.flatten() != gateway
                    || gateway.as_deref().is_some_and(|g| {
                        !same_optional(
                            prev.entries.service_defaults.get(g),
                            snapshot.entries.service_defaults.get(g),
                        )
                    }) =>
            {
                Dirty::All
            }
            (_, dirty) => dirty,
        };

        let mut work = Work {
            gateway: gateway.clone(),
            ..Work::default()
        };
        let services = match dirty {
            // Only the services whose inputs changed can enter, leave or change.
            Dirty::Some(changed) if !exports_changed => {
                let mut services = old_services;
                for name in changed {
                    let prev = services.remove(name);
                    let consumers = match &prev {
                        Some(p) => Some(p.consumers.clone()),
                        None => consumers_of(&snapshot.entries, name),
                    };
                    match consumers {
                        Some(consumers) if has_local_instances(snapshot, dc, name) => {
                            let parts = work.translate(
                                snapshot,
                                dc,
                                settings,
                                name,
                                consumers,
                                prev.as_ref(),
                            );
                            services.insert(name.to_owned(), parts);
                        }
                        _ => {
                            if let Some(gone) = prev {
                                work.removed(&gone);
                            }
                        }
                    }
                }
                services
            }
            // Every exported service is visited; unchanged ones are kept.
            dirty => {
                let index = exports_changed.then(|| Consumers::index(&snapshot.entries));
                let consumers_of = |name: &str| {
                    index
                        .as_ref()
                        .map(|i| i.get(name).cloned().unwrap_or_else(Consumers::none))
                        .unwrap_or_else(|| Consumers::exported(&snapshot.entries, name))
                };
                let mut services = BTreeMap::new();
                for name in ingress_services(snapshot, dc) {
                    let prev = old_services.remove(&name);
                    let parts = match prev {
                        Some(p) if !exports_changed && !dirty.contains(&name) => p,
                        prev => {
                            let consumers = match &prev {
                                Some(p) if !exports_changed => p.consumers.clone(),
                                _ => consumers_of(&name),
                            };
                            match prev {
                                Some(p) if !dirty.contains(&name) && p.consumers == consumers => p,
                                prev => work.translate(
                                    snapshot,
                                    dc,
                                    settings,
                                    &name,
                                    consumers,
                                    prev.as_ref(),
                                ),
                            }
                        }
                    };
                    services.insert(name, parts);
                }
                for gone in old_services.into_values() {
                    work.removed(&gone);
                }
                services
            }
        };
        let Work {
            clusters,
            assignments,
            routes,
            translated,
            chains_changed,
            ..
        } = work;

        let listener = if full || chains_changed || bind != old_bind {
            bind.as_ref().and_then(|b| {
                let chains = services.values().map(|p| p.chains.as_slice());
                let routes = services
                    .values()
                    .flat_map(|p| p.route_names.iter().cloned());
                ingress_listener_entry(b, chains, routes.collect())
            })
        } else {
            old_listener.clone()
        };
        let mut listeners = Patch::default();
        listeners.diff(old_listener.as_slice(), listener.as_slice());

        let mut update = Update::new();
        let stats = if full {
            let all = |f: fn(&ServiceParts) -> &[Arc<Entry>]| -> Vec<Arc<Entry>> {
                services
                    .values()
                    .flat_map(|p| f(p).iter().cloned())
                    .collect()
            };
            let replace = [
                (ResourceType::Cluster, all(|p| &p.clusters)),
                (ResourceType::Endpoint, all(|p| &p.assignments)),
                (ResourceType::Listener, listener.iter().cloned().collect()),
                (ResourceType::Route, all(|p| &p.routes)),
            ];
            let touched = replace.iter().map(|(_, e)| e.len()).sum();
            for (ty, entries) in replace {
                update = update.with(ty, TypeUpdate::Replace(entries));
            }
            IngressStats {
                services_translated: translated,
                resources_touched: touched,
                full: true,
            }
        } else {
            let patches = [
                (ResourceType::Cluster, clusters),
                (ResourceType::Endpoint, assignments),
                (ResourceType::Listener, listeners),
                (ResourceType::Route, routes),
            ];
            let touched = patches.iter().map(|(_, p)| p.len()).sum();
            for (ty, p) in patches {
                if p.len() > 0 {
                    update = update.with(
                        ty,
                        TypeUpdate::Patch {
                            upsert: p.upsert,
                            remove: p.remove,
                        },
                    );
                }
            }
            IngressStats {
                services_translated: translated,
                resources_touched: touched,
                full: false,
            }
        };
        self.last = Some(Last {
            snapshot: snapshot.clone(),
            settings: settings.clone(),
            bind,
            gateway,
            services,
            listener,
        });
        (update, stats)
    }
}

fn entries<R: XdsResource>(items: Vec<R>) -> Vec<Arc<Entry>> {
    items.iter().map(Entry::new).collect()
}

/// The services whose inputs differ between `prev` and `next` in `dc`; all of them when a
/// group-wide input changed.
fn dirty<'a>(prev: &'a Snapshot, next: &'a Snapshot, dc: &str) -> Dirty<'a> {
    let (p, n) = (&prev.entries, &next.entries);
    let wildcard_same = match (
        p.service_intentions.get(WILDCARD),
        n.service_intentions.get(WILDCARD),
    ) {
        (None, None) => true,
        (Some(a), Some(b)) => same_entry(a, b),
        _ => false,
    };
    if !wildcard_same || !same_stored(&p.proxy_defaults, &n.proxy_defaults) {
        return Dirty::All;
    }
    let (Some(pdc), Some(ndc)) = (prev.datacenter(dc), next.datacenter(dc)) else {
        return Dirty::All;
    };
    let mut out = HashSet::new();
    changed_keys(
        &p.service_defaults,
        &n.service_defaults,
        same_entry,
        &mut out,
    );
    changed_keys(
        &p.service_resolvers,
        &n.service_resolvers,
        same_entry,
        &mut out,
    );
    changed_keys(
        &p.service_intentions,
        &n.service_intentions,
        same_entry,
        &mut out,
    );
    changed_keys(
        &pdc.services,
        &ndc.services,
        |a: &Arc<[Instance]>, b: &Arc<[Instance]>| Arc::ptr_eq(a, b) || a == b,
        &mut out,
    );
    Dirty::Some(out)
}

/// Whether two optional stored entries hold the same entry.
fn same_optional<T: PartialEq>(a: Option<&Stored<T>>, b: Option<&Stored<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_entry(a, b),
        _ => false,
    }
}

/// Whether two stored entries hold the same entry (pointer, then value).
fn same_entry<T: PartialEq>(a: &Stored<T>, b: &Stored<T>) -> bool {
    Arc::ptr_eq(&a.entry, &b.entry) || a.entry == b.entry
}

/// Whether two optional stored entries hold the same entry (pointer, then value).
fn same_stored<T: PartialEq>(a: &Option<Stored<T>>, b: &Option<Stored<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(&a.entry, &b.entry) || a.entry == b.entry,
        _ => false,
    }
}

/// Adds to `out` the keys whose values differ between two sorted maps (present in one only,
/// or `same` says they differ), walking both once.
fn changed_keys<'a, V>(
    a: &'a BTreeMap<String, V>,
    b: &'a BTreeMap<String, V>,
    same: impl Fn(&V, &V) -> bool,
    out: &mut HashSet<&'a str>,
) {
    let mut a = a.iter().peekable();
    let mut b = b.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((ka, _)), None) => {
                out.insert(ka.as_str());
                a.next();
            }
            (None, Some((kb, _))) => {
                out.insert(kb.as_str());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert(ka.as_str());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert(kb.as_str());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same(va, vb) {
                        out.insert(kb.as_str());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}
