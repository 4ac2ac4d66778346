//! `meshgate bootstrap`: the Envoy bootstrap (YAML) that connects an ingress gateway, an egress
//! gateway or a sidecar to meshgate by delta ADS — what `consul connect envoy -bootstrap` is to
//! Consul.
//!
//! Pure: [`Options`] in, YAML out ([`render`]). The document is built as an ordered tree
//! ([`Yaml`]) and written by a small block-style emitter, so the output is stable byte for byte
//! and keeps the field order of Envoy's documentation.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::xds::Role;

/// The name of the static cluster that points at meshgate.
pub const XDS_CLUSTER: &str = "meshgate";
/// The admin address when none is given (Envoy's and Consul's usual one).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:19000";
/// The limit on active downstream connections (Envoy's edge best-practice figure). Envoy 1.40
/// warns at start when none is set, and takes it from the overload manager's
/// `envoy.resource_monitors.global_downstream_max_connections` monitor: the older runtime key
/// `overload.global_downstream_max_connections` is deprecated there and does not silence the
/// warning (it adds a deprecation warning instead).
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

/// Everything a bootstrap is made from (the flags of `meshgate bootstrap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub role: Role,
    pub datacenter: String,
    /// The service a sidecar belongs to (required for sidecars; optional for gateways).
    pub service: Option<String>,
    pub node_id: String,
    /// meshgate's xDS address, `HOST:PORT` (an IP gives a STATIC cluster, a name STRICT_DNS).
    pub xds_addr: String,
    /// Envoy's admin listener, `IP:PORT` (default [`DEFAULT_ADMIN_ADDR`]).
    pub admin_addr: Option<String>,
    /// Where the gateway listens (informational: the listener comes over LDS); recorded in
    /// `node.metadata.listen_addr`.
    pub listen_addr: Option<String>,
    /// `node.cluster` (default: the service for sidecars, else `<role>-gateway`).
    pub cluster: Option<String>,
    /// TLS towards meshgate's xDS listener (`--xds-tls-*`).
    pub tls: Option<XdsTls>,
}

/// TLS to meshgate: the CA that signed meshgate's certificate, and optionally the Envoy's own
/// client certificate (for a listener started with `--xds-tls-client-ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsTls {
    /// PEM CA bundle file.
    pub ca: String,
    pub client: Option<ClientCert>,
}

/// A PEM certificate chain file and its private key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: String,
    pub key: String,
}

/// Why no bootstrap can be made; each names the flag to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("--role sidecar needs --service: the service this sidecar belongs to")]
    SidecarWithoutService,
    #[error("--{flag} must not be empty")]
    Empty { flag: &'static str },
    #[error("--{flag} {value:?}: {reason}")]
    BadAddress {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where Envoy finds meshgate: by IP (a STATIC cluster) or by name (STRICT_DNS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdsHost {
    Ip(IpAddr),
    Name(String),
}

impl XdsHost {
    fn address(&self) -> String {
        match self {
            XdsHost::Ip(ip) => ip.to_string(),
            XdsHost::Name(n) => n.clone(),
        }
    }
}

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6): an IP or a DNS name, and a port 1–65535.
pub fn parse_host_port(flag: &'static str, value: &str) -> Result<(XdsHost, u16), BootstrapError> {
    let bad = |reason| BootstrapError::BadAddress {
        flag,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(BootstrapError::Empty { flag });
    }
    if let Ok(sa) = value.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad("the port must be 1-65535"));
        }
        return Ok((XdsHost::Ip(sa.ip()), sa.port()));
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad("the port must be 1-65535")),
    };
    if host.contains(':') {
        return Err(bad("write an IPv6 address in brackets: [ADDR]:PORT"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad("the host must be an IP address or a DNS name"));
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("not a valid IP address"));
    }
    Ok((XdsHost::Name(host.to_owned()), port))
}

/// Parses the admin address: Envoy binds it, so it must be an IP (port 0: Envoy picks one).
fn parse_admin(value: &str) -> Result<SocketAddr, BootstrapError> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| BootstrapError::BadAddress {
            flag: "admin-addr",
            value: value.to_owned(),
            reason: "expected IP:PORT (Envoy binds it; a name is not resolved)",
        })
}

/// The `node.cluster` a bootstrap gets: `--cluster`, else the service for sidecars, else
/// `<role>-gateway`.
pub fn default_cluster(role: Role, service: Option<&str>) -> String {
    match (role, service) {
        (Role::Sidecar, Some(s)) => s.to_owned(),
        _ => format!("{}-gateway", role.as_str()),
    }
}

/// The bootstrap as an ordered tree, after checking the options.
pub fn document(o: &Options) -> Result<Yaml, BootstrapError> {
    for (flag, v) in [("datacenter", &o.datacenter), ("node-id", &o.node_id)] {
        if v.trim().is_empty() {
            return Err(BootstrapError::Empty { flag });
        }
    }
    let service = o.service.as_deref().filter(|s| !s.trim().is_empty());
    if o.service.is_some() && service.is_none() {
        return Err(BootstrapError::Empty { flag: "service" });
    }
    if o.role == Role::Sidecar && service.is_none() {
        return Err(BootstrapError::SidecarWithoutService);
    }
    if let Some(c) = &o.cluster
        && c.trim().is_empty()
    {
        return Err(BootstrapError::Empty { flag: "cluster" });
    }
    let (xds_host, xds_port) = parse_host_port("xds-addr", &o.xds_addr)?;
    let admin = parse_admin(o.admin_addr.as_deref().unwrap_or(DEFAULT_ADMIN_ADDR))?;
    if let Some(l) = &o.listen_addr {
        parse_host_port("listen-addr", l)?;
    }
    if let Some(tls) = &o.tls {
        if tls.ca.is_empty() {
            return Err(BootstrapError::Empty { flag: "xds-tls-ca" });
        }
        if let Some(c) = &tls.client {
            if c.cert.is_empty() {
                return Err(BootstrapError::Empty {
                    flag: "xds-tls-cert",
                });
            }
            if c.key.is_empty() {
                return Err(BootstrapError::Empty {
                    flag: "xds-tls-key",
                });
            }
        }
    }

    let mut metadata = vec![
        ("role", s(o.role.as_str())),
        ("datacenter", s(&o.datacenter)),
    ];
    if let Some(svc) = service {
        metadata.push(("service", s(svc)));
    }
    if let Some(l) = &o.listen_addr {
        metadata.push(("listen_addr", s(l)));
    }
    let cluster = o
        .cluster
        .clone()
        .unwrap_or_else(|| default_cluster(o.role, service));
    let node = map([
        ("id", s(&o.node_id)),
        ("cluster", Yaml::Str(cluster)),
        ("metadata", map(metadata)),
    ]);

    let ads_source = || map([("ads", map([])), ("resource_api_version", s("V3"))]);
    let dynamic_resources = map([
        ("lds_config", ads_source()),
        ("cds_config", ads_source()),
        (
            "ads_config",
            map([
                ("api_type", s("DELTA_GRPC")),
                ("transport_api_version", s("V3")),
                (
                    "grpc_services",
                    Yaml::Seq(vec![map([(
                        "envoy_grpc",
                        map([("cluster_name", s(XDS_CLUSTER))]),
                    )])]),
                ),
                ("set_node_on_first_message_only", Yaml::Bool(true)),
            ]),
        ),
    ]);

    // The admin layer lets an operator change runtime values through /runtime_modify.
    let layered_runtime = map([(
        "layers",
        Yaml::Seq(vec![map([("name", s("admin")), ("admin_layer", map([]))])]),
    )]);
    let overload_manager = map([(
        "resource_monitors",
        Yaml::Seq(vec![map([
            (
                "name",
                s("envoy.resource_monitors.global_downstream_max_connections"),
            ),
            (
                "typed_config",
                map([
                    (
                        "@type",
                        s("type.googleapis.com/envoy.extensions.resource_monitors.\
                           downstream_connections.v3.DownstreamConnectionsConfig"),
                    ),
                    (
                        "max_active_downstream_connections",
                        Yaml::Int(MAX_DOWNSTREAM_CONNECTIONS),
                    ),
                ]),
            ),
        ])]),
    )]);

    let admin = map([(
        "address",
        socket_address(&admin.ip().to_string(), admin.port()),
    )]);

    Ok(map([
        ("node", node),
        (
            "static_resources",
            map([(
                "clusters",
                Yaml::Seq(vec![xds_cluster(&xds_host, xds_port, o.tls.as_ref())]),
            )]),
        ),
        ("dynamic_resources", dynamic_resources),
        ("layered_runtime", layered_runtime),
        ("admin", admin),
        ("overload_manager", overload_manager),
    ]))
}

/// The bootstrap as YAML text.
pub fn render(o: &Options) -> Result<String, BootstrapError> {
    let doc = document(o)?;
    let mut out = format!(
        "# Envoy bootstrap for meshgate: {} {} in datacenter {}.\n# Generated by `meshgate bootstrap`; \
         do not edit by hand.\n",
        o.role.as_str(),
        o.node_id,
        o.datacenter
    );
    doc.write_to(&mut out);
    Ok(out)
}

/// The static `meshgate` cluster: HTTP/2 to the xDS address, optionally over TLS.
fn xds_cluster(host: &XdsHost, port: u16, tls: Option<&XdsTls>) -> Yaml {
    let mut c = vec![
        ("name", s(XDS_CLUSTER)),
        (
            "type",
            s(match host {
                XdsHost::Ip(_) => "STATIC",
                XdsHost::Name(_) => "STRICT_DNS",
            }),
        ),
        ("connect_timeout", s("1s")),
        (
            "load_assignment",
            map([
                ("cluster_name", s(XDS_CLUSTER)),
                (
                    "endpoints",
                    Yaml::Seq(vec![map([(
                        "lb_endpoints",
                        Yaml::Seq(vec![map([(
                            "endpoint",
                            map([("address", socket_address(&host.address(), port))]),
                        )])]),
                    )])]),
                ),
            ]),
        ),
        (
            "typed_extension_protocol_options",
            map([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                map([
                    (
                        "@type",
                        s(
                            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        ),
                    ),
                    (
                        "explicit_http_config",
                        map([("http2_protocol_options", map([]))]),
                    ),
                ]),
            )]),
        ),
    ];
    if let XdsHost::Name(_) = host {
        c.push(("dns_lookup_family", s("V4_PREFERRED")));
    }
    if let Some(tls) = tls {
        c.push(("transport_socket", tls_socket(host, tls)));
    }
    Yaml::Map(c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// The `UpstreamTlsContext` towards meshgate: ALPN h2, meshgate's certificate verified against
/// the CA and its name (DNS or IP SAN), and the client certificate when given.
fn tls_socket(host: &XdsHost, tls: &XdsTls) -> Yaml {
    let file = |f: &str| map([("filename", s(f))]);
    let san = match host {
        XdsHost::Ip(ip) => map([
            ("san_type", s("IP_ADDRESS")),
            ("matcher", map([("exact", Yaml::Str(ip.to_string()))])),
        ]),
        XdsHost::Name(n) => map([
            ("san_type", s("DNS")),
            ("matcher", map([("exact", s(n.trim_end_matches('.')))])),
        ]),
    };
    let mut common = vec![("alpn_protocols", Yaml::Seq(vec![s("h2")]))];
    if let Some(c) = &tls.client {
        common.push((
            "tls_certificates",
            Yaml::Seq(vec![map([
                ("certificate_chain", file(&c.cert)),
                ("private_key", file(&c.key)),
            ])]),
        ));
    }
    common.push((
        "validation_context",
        map([
            ("trusted_ca", file(&tls.ca)),
            ("match_typed_subject_alt_names", Yaml::Seq(vec![san])),
        ]),
    ));
    let mut ctx = vec![
        (
            "@type",
            s("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        ),
        ("common_tls_context", map(common)),
    ];
    if let XdsHost::Name(n) = host {
        ctx.push(("sni", s(n.trim_end_matches('.'))));
    }
    map([
        ("name", s("envoy.transport_sockets.tls")),
        ("typed_config", map(ctx)),
    ])
}

fn socket_address(address: &str, port: u16) -> Yaml {
    map([(
        "socket_address",
        map([
            ("address", s(address)),
            ("port_value", Yaml::Int(u64::from(port))),
        ]),
    )])
}

fn s(v: &str) -> Yaml {
    Yaml::Str(v.to_owned())
}

fn map(entries: impl IntoIterator<Item = (&'static str, Yaml)>) -> Yaml {
    Yaml::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// An ordered YAML tree: maps keep their insertion order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
    Int(u64),
    Bool(bool),
}

impl Yaml {
    /// Writes the tree in block style (sequences at their key's indentation, two spaces per
    /// level, `{}` and `[]` for empty collections).
    pub fn write_to(&self, out: &mut String) {
        match self {
            Yaml::Map(entries) if !entries.is_empty() => write_map(out, entries, 0, false),
            Yaml::Seq(items) if !items.is_empty() => write_seq(out, items, 0),
            other => {
                write_inline(out, other);
                out.push('\n');
            }
        }
    }

    /// The tree as YAML text.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }

    /// The tree as JSON (for tests and tools that want it).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Yaml::Map(e) => {
                serde_json::Value::Object(e.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Yaml::Seq(i) => serde_json::Value::Array(i.iter().map(Yaml::to_json).collect()),
            Yaml::Str(s) => serde_json::Value::String(s.clone()),
            Yaml::Int(n) => serde_json::Value::from(*n),
            Yaml::Bool(b) => serde_json::Value::Bool(*b),
        }
    }

    fn is_block(&self) -> bool {
        match self {
            Yaml::Map(e) => !e.is_empty(),
            Yaml::Seq(i) => !i.is_empty(),
            _ => false,
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// `first_inline`: the first key follows a `- ` already written.
fn write_map(out: &mut String, entries: &[(String, Yaml)], at: usize, first_inline: bool) {
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, at);
        }
        write_scalar(out, k);
        out.push(':');
        match v {
            Yaml::Map(e) if !e.is_empty() => {
                out.push('\n');
                write_map(out, e, at + 2, false);
            }
            Yaml::Seq(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, at);
            }
            other => {
                out.push(' ');
                write_inline(out, other);
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Yaml], at: usize) {
    for item in items {
        indent(out, at);
        out.push_str("- ");
        match item {
            Yaml::Map(e) if item.is_block() => write_map(out, e, at + 2, true),
            Yaml::Seq(i) if item.is_block() => {
                out.push('\n');
                write_seq(out, i, at + 2);
            }
            other => {
                write_inline(out, other);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection.
fn write_inline(out: &mut String, v: &Yaml) {
    match v {
        Yaml::Str(s) => write_scalar(out, s),
        Yaml::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Yaml::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Yaml::Map(_) => out.push_str("{}"),
        Yaml::Seq(_) => out.push_str("[]"),
    }
}

/// A string plain when YAML reads it back as the same string, else double-quoted (JSON's
/// escapes are valid in YAML's double-quoted style).
fn write_scalar(out: &mut String, s: &str) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else {
        out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
    }
}

fn is_plain_safe(s: &str) -> bool {
    const RESERVED: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "nan", "inf",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return false;
    }
    if RESERVED.iter().any(|r| s.eq_ignore_ascii_case(r)) {
        return false;
    }
    if first.is_ascii_alphabetic() || first == '/' {
        return true;
    }
    // A dotted quad (an IPv4 address) or a duration (`1s`, `250ms`) is no number in YAML;
    // other strings starting with a digit might be (1e3, 0x1f, 1_000, 1.5).
    let duration = s
        .strip_suffix("ms")
        .or_else(|| s.strip_suffix('s'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    first.is_ascii_digit() && (duration || s.parse::<std::net::Ipv4Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::document::{self, Format, Kind};
    use serde_json::{Value, json};

    fn opts(role: Role) -> Options {
        Options {
            role,
            datacenter: "authn".into(),
            service: None,
            node_id: "gw-1".into(),
            xds_addr: "127.0.0.1:18000".into(),
            admin_addr: None,
            listen_addr: None,
            cluster: None,
            tls: None,
        }
    }

    /// A document read back as YAML (with the project's saphyr-based reader, core schema).
    fn to_json(v: &document::Value) -> Value {
        match &v.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => json!(b),
            Kind::Int(n) => json!(n),
            Kind::Float(f) => json!(f),
            Kind::Str(s) => json!(s),
            Kind::Array(items) => Value::Array(items.iter().map(to_json).collect()),
            Kind::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|f| (f.key.clone(), to_json(&f.value)))
                    .collect(),
            ),
        }
    }

    /// Renders, reads the YAML back, and checks it is exactly the tree that was built.
    fn parsed(o: &Options) -> Value {
        let yaml = render(o).expect("renders");
        let docs = document::parse(&yaml, Format::Yaml).expect("valid YAML");
        assert_eq!(docs.len(), 1, "{yaml}");
        let back = to_json(&docs[0].value);
        assert_eq!(back, document(o).unwrap().to_json(), "{yaml}");
        back
    }

    #[test]
    fn an_ingress_gateway_connects_by_delta_ads_with_its_node() {
        let mut o = opts(Role::Ingress);
        o.listen_addr = Some("0.0.0.0:8443".into());
        let b = parsed(&o);
        assert_eq!(
            b["node"],
            json!({
                "id": "gw-1",
                "cluster": "ingress-gateway",
                "metadata": {"role": "ingress", "datacenter": "authn", "listen_addr": "0.0.0.0:8443"},
            })
        );
        let ads = json!({"ads": {}, "resource_api_version": "V3"});
        assert_eq!(b["dynamic_resources"]["cds_config"], ads);
        assert_eq!(b["dynamic_resources"]["lds_config"], ads);
        let ads_config = &b["dynamic_resources"]["ads_config"];
        assert_eq!(ads_config["api_type"], "DELTA_GRPC");
        assert_eq!(ads_config["transport_api_version"], "V3");
        assert_eq!(
            ads_config["grpc_services"],
            json!([{"envoy_grpc": {"cluster_name": "meshgate"}}])
        );
        assert_eq!(
            b["admin"],
            json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19000}}})
        );
        assert_eq!(
            b["overload_manager"],
            json!({"resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }]})
        );
        assert_eq!(
            b["layered_runtime"],
            json!({"layers": [{"name": "admin", "admin_layer": {}}]})
        );
        // Top-level fields in the order of Envoy's Bootstrap documentation, as written.
        let docs = document::parse(&render(&o).unwrap(), Format::Yaml).unwrap();
        let Kind::Object(fields) = &docs[0].value.kind else {
            panic!("a mapping")
        };
        assert_eq!(
            fields.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
            [
                "node",
                "static_resources",
                "dynamic_resources",
                "layered_runtime",
                "admin",
                "overload_manager"
            ]
        );
    }

    #[test]
    fn the_meshgate_cluster_speaks_http2_to_a_static_ip() {
        let b = parsed(&opts(Role::Egress));
        assert_eq!(b["node"]["cluster"], "egress-gateway");
        assert_eq!(
            b["node"]["metadata"],
            json!({"role": "egress", "datacenter": "authn"})
        );
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1);
        let c = &clusters[0];
        assert_eq!(c["name"], "meshgate");
        assert_eq!(c["type"], "STATIC");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 18000})
        );
        let http = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            http["@type"],
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        assert_eq!(
            http["explicit_http_config"],
            json!({"http2_protocol_options": {}})
        );
        assert!(c.get("dns_lookup_family").is_none());
        assert!(
            c.get("transport_socket").is_none(),
            "no TLS without the flags"
        );
    }

    #[test]
    fn an_xds_address_by_name_is_resolved_by_dns_and_ipv6_is_static() {
        let mut o = opts(Role::Ingress);
        o.xds_addr = "meshgate.service.consul:18000".into();
        let b = parsed(&o);
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(c["dns_lookup_family"], "V4_PREFERRED");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({"address": "meshgate.service.consul", "port_value": 18000})
        );

        o.xds_addr = "[::1]:18000".into();
        let b = parsed(&o);
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "::1"
        );
    }

    #[test]
    fn bad_addresses_are_refused_naming_the_flag() {
        for (xds, reason) in [
            ("127.0.0.1", "expected HOST:PORT"),
            ("meshgate", "expected HOST:PORT"),
            ("127.0.0.1:0", "the port must be 1-65535"),
            ("meshgate:99999", "the port must be 1-65535"),
            ("meshgate:http", "the port must be 1-65535"),
            ("::1:18000", "IPv6 address in brackets"),
            ("mesh gate:18000", "an IP address or a DNS name"),
            ("-bad.example:18000", "an IP address or a DNS name"),
            ("999.1.1.1:18000", "not a valid IP address"),
        ] {
            let mut o = opts(Role::Ingress);
            o.xds_addr = xds.into();
            let e = render(&o).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--xds-addr {xds:?}")), "{xds}: {e}");
            assert!(e.contains(reason), "{xds}: {e}");
        }
        let mut o = opts(Role::Ingress);
        o.admin_addr = Some("localhost:19000".into());
        let e = render(&o).unwrap_err().to_string();
        assert!(e.starts_with("--admin-addr \"localhost:19000\""), "{e}");
        let mut o = opts(Role::Ingress);
        o.listen_addr = Some("8443".into());
        let e = render(&o).unwrap_err().to_string();
        assert!(e.starts_with("--listen-addr \"8443\""), "{e}");
    }

    type Change = fn(&mut Options);

    #[test]
    fn required_values_must_not_be_empty() {
        let cases: [(Change, &str); 4] = [
            (
                |o| o.datacenter = String::new(),
                "--datacenter must not be empty",
            ),
            (|o| o.node_id = " ".into(), "--node-id must not be empty"),
            (
                |o| o.xds_addr = String::new(),
                "--xds-addr must not be empty",
            ),
            (
                |o| o.cluster = Some(String::new()),
                "--cluster must not be empty",
            ),
        ];
        for (change, want) in cases {
            let mut o = opts(Role::Ingress);
            change(&mut o);
            assert_eq!(render(&o).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn a_sidecar_needs_its_service_and_is_named_after_it() {
        let mut o = opts(Role::Sidecar);
        assert_eq!(
            render(&o).unwrap_err(),
            BootstrapError::SidecarWithoutService
        );
        assert_eq!(
            render(&o).unwrap_err().to_string(),
            "--role sidecar needs --service: the service this sidecar belongs to"
        );
        o.service = Some(String::new());
        assert_eq!(
            render(&o).unwrap_err(),
            BootstrapError::Empty { flag: "service" }
        );
        o.service = Some("logic-router".into());
        o.datacenter = "media-core".into();
        let b = parsed(&o);
        assert_eq!(
            b["node"],
            json!({
                "id": "gw-1",
                "cluster": "logic-router",
                "metadata": {"role": "sidecar", "datacenter": "media-core", "service": "logic-router"},
            })
        );
        o.cluster = Some("media".into());
        assert_eq!(parsed(&o)["node"]["cluster"], "media");
    }

    #[test]
    fn tls_to_meshgate_only_with_the_flags() {
        let mut o = opts(Role::Ingress);
        o.tls = Some(XdsTls {
            ca: "certs/ca.pem".into(),
            client: None,
        });
        let b = parsed(&o);
        let ts = &b["static_resources"]["clusters"][0]["transport_socket"];
        assert_eq!(ts["name"], "envoy.transport_sockets.tls");
        let ctx = &ts["typed_config"];
        assert_eq!(
            ctx["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        assert_eq!(ctx["common_tls_context"]["alpn_protocols"], json!(["h2"]));
        assert_eq!(
            ctx["common_tls_context"]["validation_context"],
            json!({
                "trusted_ca": {"filename": "certs/ca.pem"},
                "match_typed_subject_alt_names": [
                    {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
                ],
            })
        );
        assert!(ctx["common_tls_context"].get("tls_certificates").is_none());
        assert!(ctx.get("sni").is_none(), "no SNI for an IP");

        o.xds_addr = "meshgate.internal:18000".into();
        o.tls = Some(XdsTls {
            ca: "/etc/meshgate/ca.pem".into(),
            client: Some(ClientCert {
                cert: "/etc/envoy/client.pem".into(),
                key: "/etc/envoy/client-key.pem".into(),
            }),
        });
        let b = parsed(&o);
        let ctx = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert_eq!(ctx["sni"], "meshgate.internal");
        assert_eq!(
            ctx["common_tls_context"]["tls_certificates"],
            json!([{
                "certificate_chain": {"filename": "/etc/envoy/client.pem"},
                "private_key": {"filename": "/etc/envoy/client-key.pem"},
            }])
        );
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([{"san_type": "DNS", "matcher": {"exact": "meshgate.internal"}}])
        );
    }

    #[test]
    fn odd_strings_are_quoted_and_read_back_unchanged() {
        let mut o = opts(Role::Sidecar);
        o.service = Some("true".into());
        o.node_id = "node: \"7\"\n#x".into();
        o.datacenter = "0x1f".into();
        o.cluster = Some("1e3".into());
        let b = parsed(&o);
        assert_eq!(b["node"]["id"], "node: \"7\"\n#x");
        assert_eq!(b["node"]["metadata"]["service"], "true");
        assert_eq!(b["node"]["metadata"]["datacenter"], "0x1f");
        assert_eq!(b["node"]["cluster"], "1e3");
    }

    #[test]
    fn the_output_is_block_yaml_in_a_stable_shape() {
        let mut o = opts(Role::Ingress);
        o.listen_addr = Some("127.0.0.1:8443".into());
        let yaml = render(&o).unwrap();
        assert_eq!(render(&o).unwrap(), yaml, "stable");
        assert!(
            yaml.contains(
                "node:\n  id: gw-1\n  cluster: ingress-gateway\n  metadata:\n    role: ingress\n    \
                 datacenter: authn\n    listen_addr: \"127.0.0.1:8443\"\n"
            ),
            "{yaml}"
        );
        assert!(
            yaml.contains("static_resources:\n  clusters:\n  - name: meshgate\n    type: STATIC\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  lds_config:\n    ads: {}\n    resource_api_version: V3\n"),
            "{yaml}"
        );
    }

    #[test]
    fn plain_scalars_only_when_yaml_reads_them_back_as_strings() {
        for plain in [
            "ingress",
            "127.0.0.1",
            "/etc/ca.pem",
            "media-core",
            "a.b_c",
            "1s",
            "250ms",
        ] {
            assert!(is_plain_safe(plain), "{plain}");
        }
        for quoted in [
            "",
            "@type",
            "true",
            "No",
            "null",
            "~",
            "1.5",
            "18000",
            "0x1f",
            "1e3",
            ".inf",
            "a b",
            "a: b",
            "127.0.0.1:18000",
            "-x",
            "1_000",
            "1.5s",
        ] {
            assert!(!is_plain_safe(quoted), "{quoted}");
        }
    }

    /// The files in `envoy-bootstrap/` are what the commands in its README print today.
    #[test]
    fn the_shipped_bootstraps_are_current() {
        use clap::Parser as _;

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy-bootstrap");
        let readme =
            std::fs::read_to_string(dir.join("README.md")).expect("envoy-bootstrap/README.md");
        let mut listed = Vec::new();
        for line in readme
            .lines()
            .filter(|l| l.starts_with("meshgate bootstrap "))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [argv @ .., ">", target] = words.as_slice() else {
                panic!(
                    "README line is not `meshgate bootstrap ... > envoy-bootstrap/FILE`: {line}"
                );
            };
            let file = target
                .strip_prefix("envoy-bootstrap/")
                .unwrap_or_else(|| panic!("{line}: the output goes to envoy-bootstrap/"));
            let cli = crate::cli::Cli::try_parse_from(argv.iter().copied())
                .unwrap_or_else(|e| panic!("{line}:\n{e}"));
            let crate::cli::Command::Bootstrap(args) = cli.command else {
                panic!("{line}: not a bootstrap command");
            };
            let want = render(&args.options()).unwrap_or_else(|e| panic!("{line}: {e}"));
            let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                have == want,
                "envoy-bootstrap/{file} is not what `meshgate bootstrap` prints now; regenerate \
                 every shipped bootstrap with `make bootstraps`, or this one with:\n  \
                 cargo run -q --bin meshgate -- {}",
                line.strip_prefix("meshgate ").unwrap_or(line)
            );
            listed.push(file.to_owned());
        }
        listed.sort();
        let mut expected = vec![
            "authn-egress.yaml",
            "authn-ingress.yaml",
            "media-core-egress.yaml",
            "media-core-ingress.yaml",
            "media-core-logic-router-sidecar.yaml",
            "platform-config-ingress.yaml",
        ];
        expected.sort();
        assert_eq!(listed, expected, "the README's commands");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        assert_eq!(
            on_disk, listed,
            "every .yaml in envoy-bootstrap/ has its command in the README"
        );
    }
}
