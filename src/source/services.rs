//! Service instances as operators write them for Consul: agent service definitions
//! (`service { ... }` / `services [ ... ]`, as in an agent's config directory) and catalog
//! registrations (`/v1/catalog/register` bodies), and the ServiceEntry JSON that Consul's
//! `/v1/health/service/:name` returns.
//!
//! Every field Consul accepts is accepted; meshgate types the ones it uses. Consul does not
//! run in directory mode and meshgate runs no checks, so a check's `Status` is taken as
//! written (Consul's default for a new check is `critical`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::model::spanned::Spanned;
use crate::model::{
    Check, Health, Instance, Node, Proxy, ServiceAddress, ServiceKind, Upstream, Weights,
};

type Opaque = Option<serde_json::Value>;

/// A service as an agent definition or inside a catalog registration. The name is `Name`
/// in an agent definition and `Service` in a catalog registration.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceDef {
    #[serde(default, rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub service: Option<Spanned<String>>,
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    #[serde(default)]
    pub socket_path: String,
    #[serde(default)]
    pub weights: Option<WeightsDef>,
    #[serde(default)]
    pub proxy: Option<ProxyDef>,
    #[serde(default)]
    pub connect: Option<ConnectDef>,
    #[serde(default)]
    pub check: Option<CheckDef>,
    #[serde(default)]
    pub checks: Vec<CheckDef>,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub locality: Opaque,
    #[serde(default)]
    pub peer_name: String,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl ServiceDef {
    /// The service name, from `Name` (agent) or `Service` (catalog).
    pub fn service_name(&self) -> Option<&Spanned<String>> {
        self.name.as_ref().or(self.service.as_ref())
    }
}

/// `{ Address, Port }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TaggedAddress {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WeightsDef {
    #[serde(default = "one")]
    pub passing: u32,
    #[serde(default = "one")]
    pub warning: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ProxyDef {
    #[serde(default)]
    pub destination_service_name: String,
    #[serde(default, rename = "DestinationServiceID")]
    pub destination_service_id: String,
    #[serde(default)]
    pub local_service_address: String,
    #[serde(default)]
    pub local_service_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub local_service_socket_path: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub transparent_proxy: Opaque,
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<UpstreamDef>>,
    #[serde(default)]
    pub mesh_gateway: Opaque,
    #[serde(default)]
    pub expose: Opaque,
    #[serde(default)]
    pub access_logs: Opaque,
    #[serde(default)]
    pub envoy_extensions: Opaque,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct UpstreamDef {
    #[serde(default)]
    pub destination_type: String,
    #[serde(default)]
    pub destination_peer: String,
    #[serde(default)]
    pub destination_namespace: String,
    #[serde(default)]
    pub destination_partition: String,
    pub destination_name: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub local_bind_address: String,
    #[serde(default)]
    pub local_bind_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub local_bind_socket_path: String,
    #[serde(default)]
    pub local_bind_socket_mode: String,
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub mesh_gateway: Opaque,
    #[serde(default)]
    pub centrally_configured: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ConnectDef {
    #[serde(default)]
    pub native: bool,
    #[serde(default)]
    pub sidecar_service: Option<Box<ServiceDef>>,
    #[serde(default)]
    pub proxy: Opaque,
}

/// A check definition. meshgate reads its identity and `Status`; how it would be run is
/// accepted and ignored.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CheckDef {
    #[serde(default, rename = "ID")]
    pub id: String,
    #[serde(default, rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: Option<Spanned<String>>,
    #[serde(default, rename = "ServiceID")]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub service_tags: Opaque,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub output: String,
    #[serde(default, rename = "Type")]
    pub check_type: String,
    #[serde(default)]
    pub definition: Opaque,
    #[serde(default)]
    pub interval: Opaque,
    #[serde(default)]
    pub timeout: Opaque,
    #[serde(default, rename = "TTL")]
    pub ttl: Opaque,
    #[serde(default, rename = "HTTP")]
    pub http: Opaque,
    #[serde(default)]
    pub header: Opaque,
    #[serde(default)]
    pub method: Opaque,
    #[serde(default)]
    pub body: Opaque,
    #[serde(default, rename = "TCP")]
    pub tcp: Opaque,
    #[serde(default, rename = "TCPUseTLS")]
    pub tcp_use_tls: Opaque,
    #[serde(default, rename = "UDP")]
    pub udp: Opaque,
    #[serde(default, rename = "GRPC")]
    pub grpc: Opaque,
    #[serde(default, rename = "GRPCUseTLS")]
    pub grpc_use_tls: Opaque,
    #[serde(default, rename = "H2PING")]
    pub h2ping: Opaque,
    #[serde(default, rename = "H2PingUseTLS")]
    pub h2ping_use_tls: Opaque,
    #[serde(default)]
    pub args: Opaque,
    #[serde(default)]
    pub script_args: Opaque,
    #[serde(default, rename = "DockerContainerID")]
    pub docker_container_id: Opaque,
    #[serde(default)]
    pub shell: Opaque,
    #[serde(default, rename = "OSService")]
    pub os_service: Opaque,
    #[serde(default)]
    pub alias_node: Opaque,
    #[serde(default)]
    pub alias_service: Opaque,
    #[serde(default, rename = "TLSServerName")]
    pub tls_server_name: Opaque,
    #[serde(default, rename = "TLSSkipVerify")]
    pub tls_skip_verify: Opaque,
    #[serde(default)]
    pub deregister_critical_service_after: Opaque,
    #[serde(default)]
    pub success_before_passing: Opaque,
    #[serde(default)]
    pub failures_before_warning: Opaque,
    #[serde(default)]
    pub failures_before_critical: Opaque,
    #[serde(default)]
    pub output_max_size: Opaque,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub exposed_port: Opaque,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// An agent definition document: `service { ... }` or `services [ ... ]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct AgentDefinition {
    #[serde(default)]
    pub service: Option<Spanned<ServiceDef>>,
    #[serde(default)]
    pub services: Vec<Spanned<ServiceDef>>,
}

/// A `/v1/catalog/register` body.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CatalogRegistration {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default)]
    pub node_meta: BTreeMap<String, String>,
    #[serde(default)]
    pub service: Option<Spanned<ServiceDef>>,
    #[serde(default)]
    pub check: Option<CheckDef>,
    #[serde(default)]
    pub checks: Vec<CheckDef>,
    #[serde(default)]
    pub skip_node_update: bool,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub locality: Opaque,
}

/// A ServiceEntry of `/v1/health/service/:name`, decoded leniently (Consul adds fields
/// across versions) with the names Consul emits.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: NodeEntry,
    pub service: ApiService,
    #[serde(default)]
    pub checks: Vec<ApiCheck>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeEntry {
    #[serde(default, rename = "ID")]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiService {
    #[serde(default)]
    pub kind: String,
    #[serde(default, rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, ApiTaggedAddress>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub weights: Option<ApiWeights>,
    #[serde(default)]
    pub proxy: Option<ApiProxy>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct ApiTaggedAddress {
    #[serde(default, alias = "address")]
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(default, alias = "port")]
    #[serde(rename = "Port")]
    pub port: u16,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiWeights {
    #[serde(default)]
    pub passing: u32,
    #[serde(default)]
    pub warning: u32,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiProxy {
    #[serde(default)]
    pub destination_service_name: String,
    #[serde(default, rename = "DestinationServiceID")]
    pub destination_service_id: String,
    #[serde(default)]
    pub local_service_address: String,
    #[serde(default)]
    pub local_service_port: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub config: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub upstreams: Vec<ApiUpstream>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiUpstream {
    #[serde(default)]
    pub destination_name: String,
    #[serde(default)]
    pub destination_namespace: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub local_bind_address: String,
    #[serde(default)]
    pub local_bind_port: u16,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiCheck {
    #[serde(default, rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, rename = "ServiceID")]
    pub service_id: String,
}

/// Consul writes `null` for empty lists and maps.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A problem found while turning a definition into instances: the line and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub line: u32,
    pub message: String,
}

fn err(line: u32, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        line,
        message: message.into(),
    }
}

/// Checks that a port is in 1–65535.
pub fn port(value: &Spanned<i64>, what: &str) -> Result<u16, DefinitionError> {
    match u16::try_from(value.value) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(err(
            value.line,
            format!("{what} {} is outside 1-65535", value.value),
        )),
    }
}

fn optional_port(value: &Option<Spanned<i64>>, what: &str) -> Result<u16, DefinitionError> {
    value.as_ref().map_or(Ok(0), |p| port(p, what))
}

fn status(check: &CheckDef) -> Result<Health, DefinitionError> {
    match &check.status {
        None => Ok(Health::Critical),
        Some(s) if s.value.is_empty() => Ok(Health::Critical),
        Some(s) => Health::parse(&s.value).ok_or_else(|| {
            err(
                s.line,
                format!(
                    "check status {:?} is not one of passing, warning, critical, maintenance",
                    s.value
                ),
            )
        }),
    }
}

fn check_id(check: &CheckDef, fallback: String) -> String {
    if !check.check_id.is_empty() {
        check.check_id.clone()
    } else if !check.id.is_empty() {
        check.id.clone()
    } else if !check.name.is_empty() {
        check.name.clone()
    } else {
        fallback
    }
}

/// Builds the instances a service definition registers on `node`: the service itself, and
/// its sidecar when it declares `Connect.SidecarService` (named `<name>-sidecar-proxy`, as
/// Consul names it). `node_checks` are the node's own checks, which apply to every instance.
pub fn instances(
    def: &ServiceDef,
    line: u32,
    node: &Arc<Node>,
    node_checks: &[Check],
    extra_checks: &[CheckDef],
) -> Result<Vec<Instance>, DefinitionError> {
    let name = def
        .service_name()
        .ok_or_else(|| err(line, "service has no Name"))?;
    if name.value.is_empty() {
        return Err(err(name.line, "service Name is empty"));
    }
    let id = if def.id.is_empty() {
        name.value.clone()
    } else {
        def.id.clone()
    };
    let kind = match &def.kind {
        None => ServiceKind::Typical,
        Some(k) => ServiceKind::parse(&k.value).ok_or_else(|| {
            err(
                k.line,
                format!(
                    "service Kind {:?} is not one of connect-proxy, mesh-gateway, terminating-gateway, ingress-gateway, api-gateway",
                    k.value
                ),
            )
        })?,
    };
    let port = optional_port(&def.port, "port")?;
    let mut tagged_addresses = BTreeMap::new();
    for (tag, address) in &def.tagged_addresses {
        tagged_addresses.insert(
            tag.clone(),
            ServiceAddress {
                address: address.address.clone(),
                port: optional_port(&address.port, &format!("tagged address {tag:?} port"))?,
            },
        );
    }
    let mut checks = node_checks.to_vec();
    let own = def.check.iter().chain(&def.checks).chain(extra_checks);
    for (i, c) in own.enumerate() {
        checks.push(Check {
            id: check_id(c, format!("service:{id}:{}", i + 1)),
            name: c.name.clone(),
            status: status(c)?,
            service_id: id.clone(),
        });
    }
    let proxy = match &def.proxy {
        Some(p) => Some(proxy(p)?),
        None => None,
    };
    let weights = def
        .weights
        .as_ref()
        .map_or_else(Weights::default, |w| Weights {
            passing: w.passing,
            warning: w.warning,
        });
    let instance = Instance {
        node: node.clone(),
        id: id.clone(),
        service: name.value.clone(),
        kind,
        address: def.address.clone(),
        port,
        tagged_addresses,
        tags: def.tags.clone(),
        meta: def.meta.clone(),
        weights,
        checks,
        proxy,
    };
    let mut out = vec![instance];
    if let Some(sidecar) = def
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_deref())
    {
        out.push(sidecar_instance(sidecar, line, &out[0], node, node_checks)?);
    }
    Ok(out)
}

/// Consul's defaults for `connect { sidecar_service {} }`.
fn sidecar_instance(
    def: &ServiceDef,
    line: u32,
    parent: &Instance,
    node: &Arc<Node>,
    node_checks: &[Check],
) -> Result<Instance, DefinitionError> {
    let mut def = def.clone();
    if def.service_name().is_none() {
        def.name = Some(Spanned {
            line,
            value: format!("{}-sidecar-proxy", parent.service),
        });
    }
    if def.id.is_empty() {
        def.id = format!("{}-sidecar-proxy", parent.id);
    }
    if def.kind.is_none() {
        def.kind = Some(Spanned {
            line,
            value: "connect-proxy".into(),
        });
    }
    if def.port.is_none() {
        // Consul assigns from 21000-21255; meshgate has no agent, so take the first.
        def.port = Some(Spanned { line, value: 21000 });
    }
    let mut proxy = def.proxy.take().unwrap_or_default();
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.service.clone();
    }
    if proxy.destination_service_id.is_empty() {
        proxy.destination_service_id = parent.id.clone();
    }
    if proxy.local_service_port.is_none() && parent.port != 0 {
        proxy.local_service_port = Some(Spanned {
            line,
            value: i64::from(parent.port),
        });
    }
    def.proxy = Some(proxy);
    let mut instances = instances(&def, line, node, node_checks, &[])?;
    Ok(instances.remove(0))
}

fn proxy(def: &ProxyDef) -> Result<Proxy, DefinitionError> {
    let mut upstreams = Vec::with_capacity(def.upstreams.len());
    for u in &def.upstreams {
        if u.value.destination_name.is_empty() {
            return Err(err(u.line, "upstream has no DestinationName"));
        }
        upstreams.push(Upstream {
            destination_name: u.value.destination_name.clone(),
            destination_namespace: u.value.destination_namespace.clone(),
            datacenter: u.value.datacenter.clone(),
            local_bind_address: u.value.local_bind_address.clone(),
            local_bind_port: optional_port(&u.value.local_bind_port, "LocalBindPort")?,
        });
    }
    Ok(Proxy {
        destination_service_name: def.destination_service_name.clone(),
        destination_service_id: def.destination_service_id.clone(),
        local_service_address: def.local_service_address.clone(),
        local_service_port: optional_port(&def.local_service_port, "LocalServicePort")?,
        upstreams,
        config: def.config.clone(),
    })
}

/// The node checks of a catalog registration (checks without a `ServiceID`), and the
/// service checks.
pub fn split_checks(
    checks: &[&CheckDef],
    node: &str,
) -> Result<(Vec<Check>, Vec<CheckDef>), DefinitionError> {
    let mut node_checks = Vec::new();
    let mut service_checks = Vec::new();
    for c in checks {
        if c.service_id.is_empty() {
            node_checks.push(Check {
                id: check_id(c, format!("node:{node}")),
                name: c.name.clone(),
                status: status(c)?,
                service_id: String::new(),
            });
        } else {
            service_checks.push((*c).clone());
        }
    }
    Ok((node_checks, service_checks))
}

/// Turns one ServiceEntry from Consul's health endpoint into an instance.
pub fn from_service_entry(entry: &ServiceEntry, datacenter: &str) -> Result<Instance, String> {
    let node = Arc::new(Node {
        name: entry.node.node.clone(),
        id: entry.node.id.clone(),
        address: entry.node.address.clone(),
        datacenter: if entry.node.datacenter.is_empty() {
            datacenter.to_owned()
        } else {
            entry.node.datacenter.clone()
        },
        tagged_addresses: entry.node.tagged_addresses.clone(),
        meta: entry.node.meta.clone(),
    });
    let svc = &entry.service;
    let kind = ServiceKind::parse(&svc.kind)
        .ok_or_else(|| format!("service {:?} has unknown Kind {:?}", svc.service, svc.kind))?;
    let mut checks = Vec::with_capacity(entry.checks.len());
    for c in &entry.checks {
        checks.push(Check {
            id: c.check_id.clone(),
            name: c.name.clone(),
            status: Health::parse(&c.status).ok_or_else(|| {
                format!("check {:?} has unknown Status {:?}", c.check_id, c.status)
            })?,
            service_id: c.service_id.clone(),
        });
    }
    // Consul sends an empty Proxy block for every service; only proxies and gateways have one.
    let proxy = match (&svc.proxy, kind) {
        (Some(p), k) if k != ServiceKind::Typical => Some(Proxy {
            destination_service_name: p.destination_service_name.clone(),
            destination_service_id: p.destination_service_id.clone(),
            local_service_address: p.local_service_address.clone(),
            local_service_port: p.local_service_port,
            upstreams: p
                .upstreams
                .iter()
                .map(|u| Upstream {
                    destination_name: u.destination_name.clone(),
                    destination_namespace: u.destination_namespace.clone(),
                    datacenter: u.datacenter.clone(),
                    local_bind_address: u.local_bind_address.clone(),
                    local_bind_port: u.local_bind_port,
                })
                .collect(),
            config: p.config.clone(),
        }),
        _ => None,
    };
    Ok(Instance {
        node,
        id: if svc.id.is_empty() {
            svc.service.clone()
        } else {
            svc.id.clone()
        },
        service: svc.service.clone(),
        kind,
        address: svc.address.clone(),
        port: svc.port,
        tagged_addresses: svc
            .tagged_addresses
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    ServiceAddress {
                        address: a.address.clone(),
                        port: a.port,
                    },
                )
            })
            .collect(),
        tags: svc.tags.clone(),
        meta: svc.meta.clone(),
        weights: svc
            .weights
            .as_ref()
            .map_or_else(Weights::default, |w| Weights {
                passing: w.passing,
                warning: w.warning,
            }),
        checks,
        proxy,
    })
}
