//! The mesh model: plain Rust types for what the sources read (datacenters, nodes, service
//! instances with health, config entries), no protobuf and no I/O.
//!
//! A [`Snapshot`] is immutable and shared by `Arc`; sources build a new one for every accepted
//! change and number it with a rising generation. Instance lists are kept per service behind
//! their own `Arc`, so a change to one service shares every other list with the previous
//! snapshot, and the translator can tell what changed by pointer.

pub mod duration;
pub mod entries;
pub mod filter;
pub mod intentions;
pub mod spanned;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use duration::GoDuration;
pub use entries::{ConfigEntries, ConfigEntry, EntryKind};

/// The Consul namespace and partition meshgate works in (Consul CE has only these).
pub const DEFAULT_NAMESPACE: &str = "default";

/// One immutable state of the mesh.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub generation: u64,
    /// The datacenter meshgate serves (`--datacenter`).
    pub local_datacenter: String,
    /// Every datacenter known, by name (those with instances, and those Consul lists).
    pub datacenters: BTreeMap<String, Datacenter>,
    /// Config entries, mesh-wide (as after Consul's replication from the primary datacenter).
    pub entries: ConfigEntries,
    /// The trust bundle and trust domain, when the source provides them (Consul mode).
    pub ca_roots: Option<Arc<CaRoots>>,
}

impl Snapshot {
    pub fn datacenter(&self, name: &str) -> Option<&Datacenter> {
        self.datacenters.get(name)
    }

    /// The instances of `service` in `datacenter` (empty if none).
    pub fn instances(&self, datacenter: &str, service: &str) -> &[Instance] {
        self.datacenters
            .get(datacenter)
            .and_then(|dc| dc.services.get(service))
            .map(|s| &s[..])
            .unwrap_or(&[])
    }

    /// Replaces every instance list equal to the same service's list in `prev` by `prev`'s
    /// `Arc`, so that a snapshot read afresh (the directory source parses every file again)
    /// shares its unchanged lists with the previous one, as a snapshot from Consul does, and
    /// the translator tells what changed by pointer. Returns the number of lists shared.
    pub fn share_unchanged(&mut self, prev: &Snapshot) -> usize {
        let mut shared = 0;
        for (name, dc) in &mut self.datacenters {
            let Some(old) = prev.datacenters.get(name) else {
                continue;
            };
            for (service, list) in &mut dc.services {
                if let Some(old) = old.services.get(service)
                    && !Arc::ptr_eq(old, list)
                    && old == list
                {
                    *list = old.clone();
                    shared += 1;
                }
            }
        }
        shared
    }

    /// Counts for logs and `meshgate validate`.
    pub fn counts(&self) -> SnapshotCounts {
        let mut counts = SnapshotCounts::default();
        for dc in self.datacenters.values() {
            if !dc.services.is_empty() {
                counts.datacenters += 1;
            }
            counts.services += dc.services.len();
            counts.instances += dc.services.values().map(|s| s.len()).sum::<usize>();
        }
        for (kind, n) in self.entries.counts() {
            counts.entries.insert(kind, n);
        }
        counts
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCounts {
    /// Datacenters with at least one service instance.
    pub datacenters: usize,
    pub services: usize,
    pub instances: usize,
    pub entries: BTreeMap<&'static str, usize>,
}

/// One datacenter's catalog.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Datacenter {
    pub name: String,
    /// Service name → its instances, sorted by (node, service id).
    pub services: BTreeMap<String, Arc<[Instance]>>,
}

impl Datacenter {
    /// The instances of `Kind: mesh-gateway` in this datacenter.
    pub fn mesh_gateways(&self) -> impl Iterator<Item = &Instance> {
        self.services
            .values()
            .flat_map(|s| s.iter())
            .filter(|i| i.kind == ServiceKind::MeshGateway)
    }
}

/// A catalog node.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub id: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// What a service instance is, as Consul's `Kind` says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    #[default]
    Typical,
    ConnectProxy,
    MeshGateway,
    TerminatingGateway,
    IngressGateway,
    ApiGateway,
}

impl ServiceKind {
    /// Reads Consul's `Kind` string (`""` is a typical service).
    pub fn parse(kind: &str) -> Option<ServiceKind> {
        Some(match kind {
            "" | "typical" => ServiceKind::Typical,
            "connect-proxy" => ServiceKind::ConnectProxy,
            "mesh-gateway" => ServiceKind::MeshGateway,
            "terminating-gateway" => ServiceKind::TerminatingGateway,
            "ingress-gateway" => ServiceKind::IngressGateway,
            "api-gateway" => ServiceKind::ApiGateway,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Typical => "",
            ServiceKind::ConnectProxy => "connect-proxy",
            ServiceKind::MeshGateway => "mesh-gateway",
            ServiceKind::TerminatingGateway => "terminating-gateway",
            ServiceKind::IngressGateway => "ingress-gateway",
            ServiceKind::ApiGateway => "api-gateway",
        }
    }
}

/// A health check status, ordered from best to worst.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Health {
    pub fn parse(status: &str) -> Option<Health> {
        Some(match status {
            "passing" => Health::Passing,
            "warning" => Health::Warning,
            "critical" => Health::Critical,
            "maintenance" => Health::Maintenance,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Maintenance => "maintenance",
        }
    }
}

/// A check that applies to an instance: its own, or one of its node's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub status: Health,
    /// Empty for a node check.
    pub service_id: String,
}

/// An address and port from `TaggedAddresses` (`lan`, `wan`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// Load-balancing weights (Consul's `Weights`; default 1 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// The `Proxy` block of a `connect-proxy` (sidecar) or gateway instance.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Proxy {
    pub destination_service_name: String,
    pub destination_service_id: String,
    pub local_service_address: String,
    pub local_service_port: u16,
    pub upstreams: Vec<Upstream>,
    /// Opaque proxy configuration (`Proxy.Config`), e.g. `protocol`, `connect_timeout_ms`.
    pub config: BTreeMap<String, serde_json::Value>,
}

/// One upstream of a sidecar: where the workload dials, and what it reaches.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    pub destination_name: String,
    pub destination_namespace: String,
    /// Empty: the proxy's own datacenter.
    pub datacenter: String,
    pub local_bind_address: String,
    pub local_bind_port: u16,
}

/// One registered service instance, with its node and the checks that apply to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub node: Arc<Node>,
    pub id: String,
    pub service: String,
    pub kind: ServiceKind,
    /// The service address; empty means "the node's address" (see [`Instance::address`]).
    pub address: String,
    pub port: u16,
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub checks: Vec<Check>,
    pub proxy: Option<Proxy>,
}

impl Instance {
    /// The address to dial inside the instance's datacenter (service address, else node's).
    pub fn address(&self) -> &str {
        if self.address.is_empty() {
            &self.node.address
        } else {
            &self.address
        }
    }

    /// The address other datacenters dial: the service's `wan` tagged address, else the
    /// service address, else the node's `wan`, else the node's address (Consul's
    /// `BestAddress(wan=true)`).
    pub fn wan_address(&self) -> ServiceAddress {
        if let Some(wan) = self.tagged_addresses.get("wan") {
            return wan.clone();
        }
        let address = if !self.address.is_empty() {
            self.address.clone()
        } else if let Some(wan) = self.node.tagged_addresses.get("wan") {
            wan.clone()
        } else {
            self.node.address.clone()
        };
        ServiceAddress {
            address,
            port: self.port,
        }
    }

    /// The worst status among its checks and its node's (passing when it has none).
    pub fn health(&self) -> Health {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }
}

/// The CA's trust bundle, as `/v1/connect/ca/roots` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaRoots {
    pub trust_domain: String,
    pub active_root_id: String,
    /// PEM of every root (active first), with intermediates.
    pub roots_pem: Vec<String>,
}

/// Builds a snapshot from instances and entries.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    local_datacenter: String,
    services: BTreeMap<String, BTreeMap<String, Vec<Instance>>>,
    shared: BTreeMap<String, BTreeMap<String, Arc<[Instance]>>>,
    datacenters: Vec<String>,
    entries: ConfigEntries,
    ca_roots: Option<Arc<CaRoots>>,
}

impl SnapshotBuilder {
    pub fn new(local_datacenter: &str) -> Self {
        SnapshotBuilder {
            local_datacenter: local_datacenter.to_owned(),
            ..Default::default()
        }
    }

    /// Declares a datacenter that may have no instances (Consul's datacenter list).
    pub fn datacenter(&mut self, name: &str) {
        self.datacenters.push(name.to_owned());
    }

    pub fn add_instance(&mut self, instance: Instance) {
        self.services
            .entry(instance.node.datacenter.clone())
            .or_default()
            .entry(instance.service.clone())
            .or_default()
            .push(instance);
    }

    /// Adds an already-built, shared instance list (kept by pointer when unchanged).
    pub fn add_service(&mut self, datacenter: &str, service: &str, instances: Arc<[Instance]>) {
        self.shared
            .entry(datacenter.to_owned())
            .or_default()
            .insert(service.to_owned(), instances);
    }

    pub fn entries(&mut self) -> &mut ConfigEntries {
        &mut self.entries
    }

    pub fn set_ca_roots(&mut self, roots: Option<Arc<CaRoots>>) {
        self.ca_roots = roots;
    }

    pub fn build(self, generation: u64) -> Snapshot {
        fn dc<'a>(map: &'a mut BTreeMap<String, Datacenter>, name: &str) -> &'a mut Datacenter {
            map.entry(name.to_owned()).or_insert_with(|| Datacenter {
                name: name.to_owned(),
                services: BTreeMap::new(),
            })
        }
        let mut datacenters: BTreeMap<String, Datacenter> = BTreeMap::new();
        dc(&mut datacenters, &self.local_datacenter);
        for name in &self.datacenters {
            dc(&mut datacenters, name);
        }
        for (dc_name, services) in self.shared {
            dc(&mut datacenters, &dc_name).services.extend(services);
        }
        for (dc_name, services) in self.services {
            let dc = dc(&mut datacenters, &dc_name);
            for (name, mut instances) in services {
                instances.sort_by(|a, b| (&a.node.name, &a.id).cmp(&(&b.node.name, &b.id)));
                dc.services.insert(name, instances.into());
            }
        }
        Snapshot {
            generation,
            local_datacenter: self.local_datacenter,
            datacenters,
            entries: self.entries,
            ca_roots: self.ca_roots,
        }
    }
}

/// Instances are what resolver subset filters select from.
impl filter::Selectable for Instance {
    fn select(&self, selector: filter::Selector<'_>) -> filter::Value<'_> {
        use filter::{Selector as S, Value as V};
        match selector {
            S::ServiceId => V::Str(&self.id),
            S::ServiceName => V::Str(&self.service),
            S::ServiceKind => V::Str(self.kind.as_str()),
            S::ServiceAddress => V::Str(&self.address),
            S::ServicePort => V::Int(i64::from(self.port)),
            S::ServiceTags => V::List(&self.tags),
            S::ServiceMeta => V::Map(&self.meta),
            S::ServiceMetaKey(k) => self.meta.get(k).map_or(V::Missing, |v| V::Str(v)),
            S::NodeId => V::Str(&self.node.id),
            S::NodeName => V::Str(&self.node.name),
            S::NodeAddress => V::Str(&self.node.address),
            S::NodeDatacenter => V::Str(&self.node.datacenter),
            S::NodeMeta => V::Map(&self.node.meta),
            S::NodeMetaKey(k) => self.node.meta.get(k).map_or(V::Missing, |v| V::Str(v)),
            S::NodeTaggedAddresses => V::Map(&self.node.tagged_addresses),
            S::NodeTaggedAddressesKey(k) => self
                .node
                .tagged_addresses
                .get(k)
                .map_or(V::Missing, |v| V::Str(v)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for filter::Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        filter::Filter::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for filter::Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, port: u16) -> Instance {
        Instance {
            node: Arc::new(Node {
                name: format!("{service}-node"),
                datacenter: "dc1".into(),
                ..Default::default()
            }),
            id: service.into(),
            service: service.into(),
            kind: ServiceKind::Typical,
            address: "10.0.0.1".into(),
            port,
            tagged_addresses: Default::default(),
            tags: Vec::new(),
            meta: Default::default(),
            weights: Weights::default(),
            checks: Vec::new(),
            proxy: None,
        }
    }

    fn snapshot(api_port: u16) -> Snapshot {
        let mut b = SnapshotBuilder::new("dc1");
        b.add_instance(instance("api", api_port));
        b.add_instance(instance("db", 5432));
        b.build(1)
    }

    #[test]
    fn a_reread_snapshot_shares_unchanged_lists() {
        let prev = snapshot(8080);
        let mut next = snapshot(9090);
        let list = |s: &Snapshot, name: &str| s.datacenters["dc1"].services[name].clone();
        assert!(!Arc::ptr_eq(&list(&prev, "db"), &list(&next, "db")));
        assert_eq!(next.share_unchanged(&prev), 1);
        assert!(Arc::ptr_eq(&list(&prev, "db"), &list(&next, "db")));
        assert!(!Arc::ptr_eq(&list(&prev, "api"), &list(&next, "api")));
        assert_eq!(next.instances("dc1", "api")[0].port, 9090);
        // Sharing twice finds nothing more to share.
        assert_eq!(next.share_unchanged(&prev), 0);
    }
}
