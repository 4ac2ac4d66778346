//! Consul config entries, field for field as `consul config write` takes them.
//!
//! Every field Consul accepts is accepted here (Consul refuses unknown keys, and so does
//! meshgate); fields meshgate acts on are typed, the others are kept as opaque JSON so that a
//! file valid for Consul stays valid for meshgate. Field names match ignoring case and
//! underscores (`DefaultSubset`, `default_subset`), see `source::document`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::duration::GoDuration;
use super::filter::Filter;
use super::spanned::Spanned;

type Opaque = Option<serde_json::Value>;
type Meta = BTreeMap<String, String>;

/// The config entry kinds meshgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum EntryKind {
    #[serde(rename = "service-defaults")]
    ServiceDefaults,
    #[serde(rename = "proxy-defaults")]
    ProxyDefaults,
    #[serde(rename = "service-resolver")]
    ServiceResolver,
    #[serde(rename = "service-intentions")]
    ServiceIntentions,
    #[serde(rename = "exported-services")]
    ExportedServices,
    #[serde(rename = "mesh")]
    Mesh,
}

impl EntryKind {
    pub const ALL: [EntryKind; 6] = [
        EntryKind::ServiceDefaults,
        EntryKind::ProxyDefaults,
        EntryKind::ServiceResolver,
        EntryKind::ServiceIntentions,
        EntryKind::ExportedServices,
        EntryKind::Mesh,
    ];

    pub fn parse(kind: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::ServiceDefaults => "service-defaults",
            EntryKind::ProxyDefaults => "proxy-defaults",
            EntryKind::ServiceResolver => "service-resolver",
            EntryKind::ServiceIntentions => "service-intentions",
            EntryKind::ExportedServices => "exported-services",
            EntryKind::Mesh => "mesh",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an entry came from: a file and line, or Consul.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The file (relative to the config directory), or `consul`.
    pub file: Arc<str>,
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// An L4/L7 protocol, as `service-defaults` `Protocol` and `proxy-defaults` `Config.protocol`
/// name it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Protocol> {
        Some(match text {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            _ => return None,
        })
    }

    /// Whether the gateway sees requests (HTTP connection manager), not only bytes.
    pub fn is_l7(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// `MeshGateway { Mode }`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshGatewayConfig {
    #[serde(rename = "Mode", default)]
    pub mode: String,
}

// ---------------------------------------------------------------------------------------------
// service-defaults

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceDefaults {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub protocol: Option<Spanned<Protocol>>,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub transparent_proxy: Opaque,
    #[serde(default, rename = "MutualTLSMode")]
    pub mutual_tls_mode: String,
    #[serde(default)]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(default)]
    pub expose: Opaque,
    #[serde(default, rename = "ExternalSNI")]
    pub external_sni: String,
    #[serde(default)]
    pub upstream_config: Option<UpstreamConfig>,
    #[serde(default)]
    pub destination: Opaque,
    #[serde(default)]
    pub max_inbound_connections: u32,
    #[serde(default)]
    pub local_connect_timeout_ms: u32,
    #[serde(default)]
    pub local_request_timeout_ms: u32,
    #[serde(default)]
    pub balance_inbound_connections: String,
    #[serde(default)]
    pub rate_limits: Opaque,
    #[serde(default)]
    pub envoy_extensions: Opaque,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// `UpstreamConfig { Defaults, Overrides }`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpstreamConfig {
    #[serde(default)]
    pub defaults: Option<UpstreamSettings>,
    #[serde(default)]
    pub overrides: Vec<UpstreamSettings>,
}

/// Per-upstream settings: circuit breakers (`Limits`) and passive health checks.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpstreamSettings {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub envoy_listener_json: String,
    #[serde(default)]
    pub envoy_cluster_json: String,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub connect_timeout_ms: u32,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub passive_health_check: Option<PassiveHealthCheck>,
    #[serde(default)]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(default)]
    pub balance_outbound_connections: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Limits {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    #[serde(default)]
    pub max_concurrent_requests: Option<u32>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PassiveHealthCheck {
    #[serde(default)]
    pub interval: Option<GoDuration>,
    #[serde(default)]
    pub max_failures: u32,
    #[serde(default)]
    pub enforcing_consecutive5xx: Option<u32>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub base_ejection_time: Option<GoDuration>,
}

// ---------------------------------------------------------------------------------------------
// proxy-defaults

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ProxyDefaults {
    pub kind: String,
    pub name: Spanned<String>,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub transparent_proxy: Opaque,
    #[serde(default, rename = "MutualTLSMode")]
    pub mutual_tls_mode: String,
    /// Opaque proxy configuration; meshgate reads `protocol` and `connect_timeout_ms`.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(default)]
    pub expose: Opaque,
    #[serde(default)]
    pub access_logs: Opaque,
    #[serde(default)]
    pub envoy_extensions: Opaque,
    #[serde(default)]
    pub failover_policy: Opaque,
    #[serde(default)]
    pub prioritize_by_locality: Opaque,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl ProxyDefaults {
    /// `Config.protocol`, if it names a protocol.
    pub fn protocol(&self) -> Option<Protocol> {
        self.config
            .get("protocol")
            .and_then(|p| p.as_str())
            .and_then(Protocol::parse)
    }
}

// ---------------------------------------------------------------------------------------------
// service-resolver

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceResolver {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub default_subset: Option<Spanned<String>>,
    #[serde(default)]
    pub subsets: BTreeMap<String, Subset>,
    #[serde(default)]
    pub redirect: Option<Spanned<Redirect>>,
    #[serde(default)]
    pub failover: BTreeMap<String, Spanned<Failover>>,
    #[serde(default)]
    pub connect_timeout: Option<GoDuration>,
    #[serde(default)]
    pub request_timeout: Option<GoDuration>,
    #[serde(default)]
    pub prioritize_by_locality: Opaque,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Subset {
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub only_passing: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Redirect {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub sameness_group: String,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Failover {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub datacenters: Vec<Spanned<String>>,
    #[serde(default)]
    pub targets: Vec<Spanned<FailoverTarget>>,
    #[serde(default)]
    pub policy: Opaque,
    #[serde(default)]
    pub sameness_group: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FailoverTarget {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub peer: String,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub policy: Spanned<String>,
    #[serde(default)]
    pub ring_hash_config: Option<RingHashConfig>,
    #[serde(default)]
    pub least_request_config: Option<LeastRequestConfig>,
    #[serde(default)]
    pub hash_policies: Vec<HashPolicy>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RingHashConfig {
    #[serde(default)]
    pub minimum_ring_size: u64,
    #[serde(default)]
    pub maximum_ring_size: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LeastRequestConfig {
    #[serde(default)]
    pub choice_count: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HashPolicy {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub field_value: String,
    #[serde(default)]
    pub cookie_config: Option<CookieConfig>,
    #[serde(default, rename = "SourceIP")]
    pub source_ip: bool,
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CookieConfig {
    #[serde(default)]
    pub session: bool,
    #[serde(default, rename = "TTL")]
    pub ttl: Option<GoDuration>,
    #[serde(default)]
    pub path: String,
}

/// The load-balancer policies Consul accepts (`""` leaves Envoy's round robin).
pub const LB_POLICIES: [&str; 6] = [
    "",
    "round_robin",
    "least_request",
    "random",
    "ring_hash",
    "maglev",
];

// ---------------------------------------------------------------------------------------------
// service-intentions

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceIntentions {
    pub kind: String,
    /// The destination service, or `*`.
    pub name: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub sources: Vec<Spanned<IntentionSource>>,
    #[serde(default, rename = "JWT")]
    pub jwt: Opaque,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct IntentionSource {
    pub name: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub sameness_group: String,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub permissions: Vec<Spanned<Permission>>,
    #[serde(default)]
    pub precedence: u32,
    #[serde(default, rename = "Type")]
    pub source_type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "LegacyID")]
    pub legacy_id: String,
    #[serde(default)]
    pub legacy_meta: Meta,
    #[serde(default)]
    pub legacy_create_time: Opaque,
    #[serde(default)]
    pub legacy_update_time: Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Permission {
    pub action: Action,
    #[serde(default, rename = "HTTP")]
    pub http: Option<HttpPermission>,
    #[serde(default, rename = "JWT")]
    pub jwt: Opaque,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HttpPermission {
    #[serde(default)]
    pub path_exact: String,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub path_regex: Spanned<String>,
    #[serde(default)]
    pub header: Vec<Spanned<HeaderPermission>>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HeaderPermission {
    pub name: String,
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub exact: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
    #[serde(default)]
    pub contains: String,
    #[serde(default)]
    pub regex: String,
    #[serde(default)]
    pub invert: bool,
    #[serde(default)]
    pub ignore_case: bool,
}

// ---------------------------------------------------------------------------------------------
// exported-services

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ExportedServices {
    pub kind: String,
    pub name: Spanned<String>,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub services: Vec<Spanned<ExportedService>>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ExportedService {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub consumers: Vec<Consumer>,
}

/// Who may consume an exported service. In meshgate a consumer `Peer` names a datacenter
/// (each datacenter is a peer cluster of the others).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Consumer {
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub sameness_group: String,
}

// ---------------------------------------------------------------------------------------------
// mesh

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Mesh {
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub transparent_proxy: Opaque,
    #[serde(default, rename = "AllowEnablingPermissiveMutualTLS")]
    pub allow_enabling_permissive_mutual_tls: bool,
    #[serde(default)]
    pub validate_clusters: bool,
    #[serde(default, rename = "TLS")]
    pub tls: Option<MeshTls>,
    #[serde(default, rename = "HTTP")]
    pub http: Option<MeshHttp>,
    #[serde(default)]
    pub peering: Opaque,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MeshTls {
    #[serde(default)]
    pub incoming: Option<MeshDirectionalTls>,
    #[serde(default)]
    pub outgoing: Option<MeshDirectionalTls>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MeshDirectionalTls {
    #[serde(default, rename = "TLSMinVersion")]
    pub tls_min_version: String,
    #[serde(default, rename = "TLSMaxVersion")]
    pub tls_max_version: String,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MeshHttp {
    #[serde(default)]
    pub sanitize_x_forwarded_client_cert: bool,
    #[serde(default)]
    pub incoming: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// the set

/// One decoded entry of any kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConfigEntry {
    ServiceDefaults(Box<ServiceDefaults>),
    ProxyDefaults(Box<ProxyDefaults>),
    ServiceResolver(Box<ServiceResolver>),
    ServiceIntentions(Box<ServiceIntentions>),
    ExportedServices(Box<ExportedServices>),
    Mesh(Box<Mesh>),
}

impl ConfigEntry {
    pub fn kind(&self) -> EntryKind {
        match self {
            ConfigEntry::ServiceDefaults(_) => EntryKind::ServiceDefaults,
            ConfigEntry::ProxyDefaults(_) => EntryKind::ProxyDefaults,
            ConfigEntry::ServiceResolver(_) => EntryKind::ServiceResolver,
            ConfigEntry::ServiceIntentions(_) => EntryKind::ServiceIntentions,
            ConfigEntry::ExportedServices(_) => EntryKind::ExportedServices,
            ConfigEntry::Mesh(_) => EntryKind::Mesh,
        }
    }

    /// The entry's name (`mesh` for the mesh entry, whatever its file says).
    pub fn name(&self) -> &str {
        match self {
            ConfigEntry::ServiceDefaults(e) => &e.name,
            ConfigEntry::ProxyDefaults(e) => &e.name,
            ConfigEntry::ServiceResolver(e) => &e.name,
            ConfigEntry::ServiceIntentions(e) => &e.name,
            ConfigEntry::ExportedServices(e) => &e.name,
            ConfigEntry::Mesh(_) => "mesh",
        }
    }
}

/// A stored entry and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Stored<T> {
    pub origin: Origin,
    pub entry: Arc<T>,
}

/// All config entries of the mesh, by kind and name.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConfigEntries {
    pub service_defaults: BTreeMap<String, Stored<ServiceDefaults>>,
    pub proxy_defaults: Option<Stored<ProxyDefaults>>,
    pub service_resolvers: BTreeMap<String, Stored<ServiceResolver>>,
    pub service_intentions: BTreeMap<String, Stored<ServiceIntentions>>,
    pub exported_services: Option<Stored<ExportedServices>>,
    pub mesh: Option<Stored<Mesh>>,
}

impl ConfigEntries {
    /// Stores an entry; returns the origin of an entry of the same kind and name that was
    /// already stored (and is now replaced), so a caller can report the duplicate.
    pub fn insert(&mut self, entry: ConfigEntry, origin: Origin) -> Option<Origin> {
        fn put<T>(
            map: &mut BTreeMap<String, Stored<T>>,
            name: String,
            entry: T,
            origin: Origin,
        ) -> Option<Origin> {
            map.insert(
                name,
                Stored {
                    origin,
                    entry: Arc::new(entry),
                },
            )
            .map(|old| old.origin)
        }
        fn put_one<T>(slot: &mut Option<Stored<T>>, entry: T, origin: Origin) -> Option<Origin> {
            slot.replace(Stored {
                origin,
                entry: Arc::new(entry),
            })
            .map(|old| old.origin)
        }
        match entry {
            ConfigEntry::ServiceDefaults(e) => {
                put(&mut self.service_defaults, e.name.clone(), *e, origin)
            }
            ConfigEntry::ProxyDefaults(e) => put_one(&mut self.proxy_defaults, *e, origin),
            ConfigEntry::ServiceResolver(e) => {
                put(&mut self.service_resolvers, e.name.clone(), *e, origin)
            }
            ConfigEntry::ServiceIntentions(e) => {
                put(&mut self.service_intentions, e.name.clone(), *e, origin)
            }
            ConfigEntry::ExportedServices(e) => put_one(&mut self.exported_services, *e, origin),
            ConfigEntry::Mesh(e) => put_one(&mut self.mesh, *e, origin),
        }
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        let mut add = |kind: EntryKind, n: usize| {
            if n > 0 {
                counts.insert(kind.as_str(), n);
            }
        };
        add(EntryKind::ServiceDefaults, self.service_defaults.len());
        add(EntryKind::ProxyDefaults, self.proxy_defaults.iter().count());
        add(EntryKind::ServiceResolver, self.service_resolvers.len());
        add(EntryKind::ServiceIntentions, self.service_intentions.len());
        add(
            EntryKind::ExportedServices,
            self.exported_services.iter().count(),
        );
        add(EntryKind::Mesh, self.mesh.iter().count());
        counts
    }

    /// The protocol of a service: its `service-defaults`, else `proxy-defaults`
    /// `Config.protocol`, else `tcp` (Consul's order).
    pub fn protocol(&self, service: &str) -> Protocol {
        self.service_defaults
            .get(service)
            .and_then(|s| s.entry.protocol.as_ref().map(|p| p.value))
            .or_else(|| {
                self.proxy_defaults
                    .as_ref()
                    .and_then(|p| p.entry.protocol())
            })
            .unwrap_or_default()
    }
}
