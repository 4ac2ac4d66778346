//! Golden files of the translation, one per feature: a small mesh written as operators write
//! it (catalog registrations and config entries in Consul's formats), translated for one
//! group, and rendered readably — typed configs (`Any`) decoded in place, maps sorted, fields
//! left at their proto default omitted, secrets by name only. Before the rendering, the
//! resources are checked against each other as Envoy needs them: every cluster a filter or a
//! route names exists, every EDS cluster has its assignment, every RDS name its route
//! configuration, every SDS name a secret the group is served.
//!
//! A changed golden must be read against Consul's conventions and Envoy's expectations
//! before it is accepted (`INSTA_UPDATE=always cargo test ... translate`, then read the
//! `.snap` files, or `cargo insta review`).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::*;
use crate::ca::{CaConfig, CertManager};
use crate::model::Instance;
use crate::model::intentions::DefaultPolicy;
use crate::xds::{GroupKey, ResourceType, Role, TypeUpdate};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateClusterConfig;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Struct;
use prost::Name;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn settings() -> Settings {
    Settings {
        trust_domain: TD.to_owned(),
        default_policy: DefaultPolicy::Deny,
    }
}

fn mesh(files: &[(&str, &str)]) -> Snapshot {
    let loaded = crate::source::dir::load_files(files, "dc1", 1);
    let errors: Vec<String> = loaded.errors().map(|p| p.to_string()).collect();
    assert!(errors.is_empty(), "the fixture has errors: {errors:#?}");
    loaded.snapshot
}

// ---- the gateways ------------------------------------------------------------------------

const DC1_INGRESS: &str = r#"
Datacenter: dc1
Node: dc1-gw-1
Address: 10.1.0.10
Service:
  Kind: mesh-gateway
  ID: dc1-ingress
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    lan: {Address: 10.1.0.10, Port: 8443}
    wan: {Address: 198.18.1.10, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: passing}
"#;

const DC1_EGRESS: &str = r#"
Datacenter: dc1
Node: dc1-gw-1
Address: 10.1.0.10
Service:
  Kind: mesh-gateway
  ID: dc1-egress
  Service: mesh-gateway-egress
  Port: 8444
  Meta: {meshgate-role: egress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: passing}
"#;

const DC2_INGRESS: &str = r#"
Datacenter: dc2
Node: dc2-gw-1
Address: 10.2.0.10
Service:
  Kind: mesh-gateway
  ID: dc2-ingress
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    wan: {Address: 198.18.2.10, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: passing}
---
Datacenter: dc2
Node: dc2-gw-2
Address: 10.2.0.11
Service:
  Kind: mesh-gateway
  ID: dc2-ingress-2
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    wan: {Address: 198.18.2.11, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: passing}
"#;

/// dc3's gateway is reached by a host name (a cloud load balancer in front of it).
const DC3_INGRESS_HOSTNAME: &str = r#"
Datacenter: dc3
Node: dc3-gw-1
Address: 10.3.0.10
Service:
  Kind: mesh-gateway
  ID: dc3-ingress
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    wan: {Address: gw.dc3.example.com, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: passing}
"#;

// ---- rendering ---------------------------------------------------------------------------

/// A value of a prost `Debug` rendering.
#[derive(Debug, Clone)]
enum Node {
    /// A number, a bool, an enum variant, `None`, or a struct without fields.
    Word(String),
    /// A string literal, quotes and escapes kept.
    Str(String),
    Seq(Vec<Node>),
    Tuple(String, Vec<Node>),
    Struct(String, Vec<(String, Node)>),
    Map(Vec<(Node, Node)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> u8 {
        while self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
        self.s[self.i]
    }

    fn eat(&mut self, c: u8) -> bool {
        let yes = self.peek() == c;
        if yes {
            self.i += 1;
        }
        yes
    }

    fn word(&mut self) -> String {
        self.peek();
        let from = self.i;
        while self.s[self.i].is_ascii_alphanumeric() || b"_.-+#".contains(&self.s[self.i]) {
            self.i += 1;
        }
        assert!(self.i > from, "unexpected {:?}", self.s[self.i] as char);
        String::from_utf8_lossy(&self.s[from..self.i]).into_owned()
    }

    /// Items up to `close`, comma-separated.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let mut out = Vec::new();
        while !self.eat(close) {
            if !out.is_empty() {
                assert!(self.eat(b','), "expected ','");
                if self.eat(close) {
                    break;
                }
            }
            out.push(item(self));
        }
        out
    }

    fn value(&mut self) -> Node {
        match self.peek() {
            b'"' => {
                let from = self.i;
                self.i += 1;
                while self.s[self.i] != b'"' {
                    self.i += if self.s[self.i] == b'\\' { 2 } else { 1 };
                }
                self.i += 1;
                Node::Str(String::from_utf8_lossy(&self.s[from..self.i]).into_owned())
            }
            b'[' => {
                self.i += 1;
                Node::Seq(self.items(b']', Self::value))
            }
            b'{' => {
                self.i += 1;
                Node::Map(self.items(b'}', |p| {
                    let k = p.value();
                    assert!(p.eat(b':'), "expected ':'");
                    (k, p.value())
                }))
            }
            _ => {
                let word = self.word();
                if self.i < self.s.len() && self.eat(b'{') {
                    let fields = self.items(b'}', |p| {
                        let f = p.word();
                        assert!(
                            p.eat(b':'),
                            "expected ':' after {f} at {:?}",
                            String::from_utf8_lossy(&p.s[p.i.saturating_sub(80)..p.i + 20])
                        );
                        (f, p.value())
                    });
                    Node::Struct(word, fields)
                } else if self.i < self.s.len() && self.eat(b'(') {
                    Node::Tuple(word, self.items(b')', Self::value))
                } else {
                    Node::Word(word)
                }
            }
        }
    }
}

fn parse(debug: &str) -> Node {
    // A trailing space lets the parser peek past the last token.
    let text = format!("{debug} ");
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    simplify(p.value())
}

/// Decodes `Any` payloads, drops `Some(..)` and fields at their proto default.
fn simplify(node: Node) -> Node {
    match node {
        Node::Tuple(name, mut items) if name == "Some" && items.len() == 1 => {
            simplify(items.remove(0))
        }
        Node::Tuple(name, items) => Node::Tuple(name, items.into_iter().map(simplify).collect()),
        Node::Seq(items) => Node::Seq(items.into_iter().map(simplify).collect()),
        Node::Map(entries) => {
            let mut entries: Vec<(Node, Node)> = entries
                .into_iter()
                .map(|(k, v)| (simplify(k), simplify(v)))
                .collect();
            entries.sort_by_key(|(k, _)| render(k, 0));
            Node::Map(entries)
        }
        Node::Struct(name, fields) if name == "Any" => {
            let field = |n: &str| fields.iter().find(|(f, _)| f == n).map(|(_, v)| v);
            let Some(Node::Str(url)) = field("type_url") else {
                panic!("an Any without type_url");
            };
            let url = url.trim_matches('"').to_owned();
            let bytes: Vec<u8> = match field("value") {
                Some(Node::Seq(b)) => b
                    .iter()
                    .map(|b| match b {
                        Node::Word(w) => w.parse().unwrap(),
                        _ => panic!("not a byte"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let decoded =
                decode_any(&url, &bytes).unwrap_or_else(|| panic!("an Any of unknown type {url}"));
            Node::Struct(
                name,
                vec![
                    ("type_url".into(), Node::Str(format!("{url:?}"))),
                    ("value".into(), parse(&decoded)),
                ],
            )
        }
        Node::Struct(name, fields) => Node::Struct(
            name,
            fields
                .into_iter()
                .map(|(f, v)| (f, simplify(v)))
                .filter(|(f, v)| !is_default(f, v))
                .collect(),
        ),
        other => other,
    }
}

/// Enum fields at their proto default (value 0), as prost names them.
const DEFAULT_ENUMS: &[(&str, &str)] = &[
    ("cluster_not_found_response_code", "ServiceUnavailable"),
    ("codec_type", "Auto"),
    ("dns_lookup_family", "Auto"),
    ("drain_type", "Default"),
    ("enforcement_type", "OneTimeOnFirstByte"),
    ("format", "Text"),
    ("forward_client_cert_details", "Sanitize"),
    ("internal_redirect_action", "PassThroughInternalRedirect"),
    ("lb_policy", "RoundRobin"),
    ("ocsp_staple_policy", "LenientStapling"),
    ("priority", "Default"),
    ("protocol", "Tcp"),
    ("protocol_selection", "UseConfiguredProtocol"),
    ("proxy_protocol_tlv_merge_policy", "AddIfAbsent"),
    ("server_header_transformation", "Overwrite"),
    ("source_type", "Any"),
    ("tls_maximum_protocol_version", "TlsAuto"),
    ("tls_minimum_protocol_version", "TlsAuto"),
    ("traffic_direction", "Unspecified"),
    ("trust_chain_verification", "VerifyTrustChain"),
    ("upstream_connect_mode", "Immediate"),
];

/// A field prost renders but Envoy's own config dumps leave out. Wrapper types
/// (`BoolValue { value: false }`) keep their `value`: there presence is the point.
fn is_default(field: &str, v: &Node) -> bool {
    match v {
        Node::Word(w) => {
            w == "None"
                || (field != "value" && (w == "0" || w == "false"))
                || DEFAULT_ENUMS.contains(&(field, w.as_str()))
        }
        Node::Str(s) => s == "\"\"",
        Node::Seq(items) => items.is_empty(),
        Node::Map(entries) => entries.is_empty(),
        _ => false,
    }
}

/// `{:#?}`-like, with short values kept on one line.
fn render(node: &Node, indent: usize) -> String {
    let pad = "    ".repeat(indent + 1);
    let end = "    ".repeat(indent);
    let block = |open: &str, close: &str, items: Vec<String>| {
        let one_line = items.join(", ");
        if items.iter().all(|i| !i.contains('\n')) && one_line.len() + open.len() <= 90 {
            let inner = if open.ends_with('{') {
                format!(" {one_line} ")
            } else {
                one_line
            };
            format!("{open}{inner}{close}")
        } else {
            let mut out = format!("{open}\n");
            for i in items {
                out.push_str(&format!("{pad}{i},\n"));
            }
            out.push_str(&format!("{end}{close}"));
            out
        }
    };
    match node {
        Node::Word(w) | Node::Str(w) => w.clone(),
        Node::Seq(items) if items.is_empty() => "[]".into(),
        Node::Seq(items) => block(
            "[",
            "]",
            items.iter().map(|i| render(i, indent + 1)).collect(),
        ),
        Node::Tuple(name, items) => block(
            &format!("{name}("),
            ")",
            items.iter().map(|i| render(i, indent + 1)).collect(),
        ),
        Node::Struct(name, fields) if fields.is_empty() => name.clone(),
        Node::Struct(name, fields) => block(
            &format!("{name} {{"),
            "}",
            fields
                .iter()
                .map(|(f, v)| format!("{f}: {}", render(v, indent + 1)))
                .collect(),
        ),
        Node::Map(entries) => block(
            "{",
            "}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", render(k, indent + 1), render(v, indent + 1)))
                .collect(),
        ),
    }
}

/// The string values of every `field` of every `Name` struct in the tree (`Name.field`).
fn collect(node: &Node, name: &str, field: &str, out: &mut BTreeSet<String>) {
    fn strings(v: &Node, out: &mut BTreeSet<String>) {
        match v {
            Node::Str(s) => {
                out.insert(s.trim_matches('"').to_owned());
            }
            Node::Seq(items) | Node::Tuple(_, items) => items.iter().for_each(|i| {
                if let Node::Str(s) = i {
                    out.insert(s.trim_matches('"').to_owned());
                }
            }),
            _ => {}
        }
    }
    match node {
        Node::Struct(n, fields) => {
            for (f, v) in fields {
                if n == name && f == field {
                    strings(v, out);
                }
                collect(v, name, field, out);
            }
        }
        Node::Seq(items) | Node::Tuple(_, items) => {
            items.iter().for_each(|i| collect(i, name, field, out))
        }
        Node::Map(entries) => entries
            .iter()
            .for_each(|(_, v)| collect(v, name, field, out)),
        _ => {}
    }
}

/// The names of the secrets the group is served (their content is never rendered).
fn secret_names(snapshot: &Snapshot, group: &GroupKey) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CaConfig::new(TD);
    config.state_dir = dir.path().to_path_buf();
    let manager = CertManager::builtin(config).unwrap();
    let wanted = wanted_leaves(snapshot, group);
    let certs = manager.ensure(&wanted);
    SecretCache::default()
        .entries(group, &wanted, &certs)
        .into_iter()
        .map(|e| e.name.to_string())
        .collect()
}

const TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::Route,
];

/// Translates `snapshot` for `group`, checks the references between the resources, and
/// renders the resources of the types in `show` (and the secrets' names).
fn golden(snapshot: &Snapshot, group: &GroupKey, show: &[ResourceType]) -> String {
    let update = translate(snapshot, group, &settings());
    // A version is the hash of the encoding (xds::resource): translating the same snapshot
    // again must give every resource the same version. A proto map of two or more entries
    // built from a `HashMap` would not (its order is random per map), nearly surely within
    // these rounds.
    let versions = |u: &Update| -> Vec<(ResourceType, String, String)> {
        u.types()
            .iter()
            .flat_map(|(ty, u)| match u {
                TypeUpdate::Replace(entries) => entries
                    .iter()
                    .map(|e| (*ty, e.name.to_string(), e.version.to_string()))
                    .collect::<Vec<_>>(),
                TypeUpdate::Patch { .. } => panic!("translate patches {ty}"),
            })
            .collect()
    };
    let first = versions(&update);
    for _ in 0..8 {
        assert_eq!(
            versions(&translate(snapshot, group, &settings())),
            first,
            "a translation encodes differently from one run to the next"
        );
    }
    let mut resources: Vec<(ResourceType, String, Node)> = Vec::new();
    for (ty, u) in update.types() {
        let TypeUpdate::Replace(entries) = u else {
            panic!("translate patches {ty}");
        };
        for e in entries {
            let any = Any::decode(e.sotw.clone()).unwrap();
            assert_eq!(any.type_url, ty.type_url());
            // An entry assembled from encoded parts warms what the resource names.
            if *ty == ResourceType::Listener {
                let l = Listener::decode(any.value.as_slice()).unwrap();
                let warms: Vec<String> = e.warms.iter().map(|w| w.to_string()).collect();
                let mut expected = crate::xds::XdsResource::warms(&l);
                let mut got = warms.clone();
                expected.sort();
                got.sort();
                assert_eq!(got, expected, "listener {} warms", e.name);
            }
            let debug = decode_any(&any.type_url, &any.value).unwrap();
            resources.push((*ty, e.name.to_string(), parse(&debug)));
        }
    }
    let secrets = secret_names(snapshot, group);

    // The references Envoy resolves.
    let names = |t: ResourceType| -> BTreeSet<String> {
        resources
            .iter()
            .filter(|(ty, ..)| *ty == t)
            .map(|(_, n, _)| n.clone())
            .collect()
    };
    let refs = |name: &str, field: &str| {
        let mut out = BTreeSet::new();
        for (_, _, n) in &resources {
            collect(n, name, field, &mut out);
        }
        out
    };
    let clusters = names(ResourceType::Cluster);
    let mut named_clusters = refs("TcpProxy", "cluster_specifier");
    named_clusters.extend(refs("RouteAction", "cluster_specifier"));
    named_clusters.extend(refs("ClusterConfig", "clusters"));
    assert!(
        named_clusters.is_subset(&clusters),
        "clusters named but not defined: {:?}",
        named_clusters.difference(&clusters).collect::<Vec<_>>()
    );
    let eds: BTreeSet<String> = resources
        .iter()
        .filter(|(ty, _, n)| {
            *ty == ResourceType::Cluster
                && render(n, 0).contains("cluster_discovery_type: Type(Eds)")
        })
        .map(|(_, name, _)| name.clone())
        .collect();
    assert_eq!(
        eds,
        names(ResourceType::Endpoint),
        "EDS clusters and assignments differ"
    );
    assert_eq!(
        refs("Rds", "route_config_name"),
        names(ResourceType::Route),
        "RDS names and route configurations differ"
    );
    let sds = refs("SdsSecretConfig", "name");
    let served: BTreeSet<String> = secrets.iter().cloned().collect();
    assert!(
        sds.is_subset(&served),
        "secrets named but not served: {:?}",
        sds.difference(&served).collect::<Vec<_>>()
    );

    let mut out = String::new();
    for ty in TYPES {
        let of_type: Vec<&(ResourceType, String, Node)> =
            resources.iter().filter(|(t, ..)| *t == ty).collect();
        out.push_str(&format!(
            "# {ty}: {:?}\n",
            of_type.iter().map(|(_, n, _)| n).collect::<Vec<_>>()
        ));
        if show.contains(&ty) {
            for (_, _, node) in of_type {
                out.push_str(&render(node, 0));
                out.push('\n');
            }
        }
    }
    out.push_str(&format!("# secrets (names only): {secrets:?}\n"));
    out
}

fn ingress(dc: &str) -> GroupKey {
    GroupKey::new(Role::Ingress, dc, None)
}

// ---- ingress gateway ----------------------------------------------------------------------

#[test]
fn ingress_tcp_service() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "db.yaml",
            r#"
Datacenter: dc1
Node: dc1-db-1
Address: 10.1.1.1
Service: {ID: db-1, Service: db, Port: 5432}
Checks:
  - {CheckID: db-1-tcp, ServiceID: db-1, Status: passing}
"#,
        ),
        (
            "entries.hcl",
            r#"
Kind     = "service-defaults"
Name     = "db"
Protocol = "tcp"
"#,
        ),
        (
            "exported.hcl",
            r#"
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "db", Consumers = [{ Peer = "dc2" }] },
]
"#,
        ),
        (
            "intentions.hcl",
            r#"
Kind = "service-intentions"
Name = "db"
Sources = [
  { Name = "web", Action = "allow" },
  { Name = "*",   Action = "deny" },
]
"#,
        ),
    ]);
    insta::assert_snapshot!("ingress_tcp", golden(&s, &ingress("dc1"), &TYPES));
}

#[test]
fn ingress_http_service() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "api.yaml",
            r#"
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.2
Service: {ID: api-1, Service: api, Port: 8080}
Checks:
  - {CheckID: api-1-http, ServiceID: api-1, Status: passing}
"#,
        ),
        (
            "entries.hcl",
            r#"
Kind     = "service-defaults"
Name     = "api"
Protocol = "http"
"#,
        ),
        (
            "resolver.hcl",
            r#"
Kind           = "service-resolver"
Name           = "api"
ConnectTimeout = "2s"
RequestTimeout = "30s"
"#,
        ),
        (
            "exported.hcl",
            r#"
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "api", Consumers = [{ Peer = "dc2" }] },
]
"#,
        ),
        (
            "intentions.hcl",
            r#"
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name = "web"
    Permissions = [
      { Action = "deny",  HTTP = { PathPrefix = "/admin" } },
      { Action = "allow", HTTP = { PathPrefix = "/v1/", Methods = ["GET", "POST"] } },
    ]
  },
  { Name = "batch", Action = "allow" },
]
"#,
        ),
    ]);
    insta::assert_snapshot!("ingress_http", golden(&s, &ingress("dc1"), &TYPES));
}

#[test]
fn ingress_subsets() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "cache.yaml",
            r#"
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.3
Service: {ID: cache-1, Service: cache, Port: 6379, Meta: {version: v1}}
Checks:
  - {CheckID: cache-1-tcp, ServiceID: cache-1, Status: passing}
---
Datacenter: dc1
Node: dc1-app-2
Address: 10.1.1.4
Service: {ID: cache-2, Service: cache, Port: 6379, Meta: {version: v2}}
Checks:
  - {CheckID: cache-2-tcp, ServiceID: cache-2, Status: passing}
---
Datacenter: dc1
Node: dc1-app-3
Address: 10.1.1.5
Service: {ID: cache-3, Service: cache, Port: 6379, Meta: {version: v2}}
Checks:
  - {CheckID: cache-3-tcp, ServiceID: cache-3, Status: warning}
"#,
        ),
        (
            "resolver.yaml",
            r#"
Kind: service-resolver
Name: cache
DefaultSubset: v1
Subsets:
  v1:
    Filter: "Service.Meta.version == v1"
  v2:
    Filter: "Service.Meta.version == v2"
    OnlyPassing: true
"#,
        ),
        (
            "exported.yaml",
            "Kind: exported-services\nName: default\nServices:\n  - {Name: cache, Consumers: [{Peer: dc2}]}\n",
        ),
        (
            "intentions.yaml",
            "Kind: service-intentions\nName: cache\nSources:\n  - {Name: web, Action: allow}\n",
        ),
    ]);
    insta::assert_snapshot!("ingress_subsets", golden(&s, &ingress("dc1"), &TYPES));
}

#[test]
fn health_and_weights() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "web.yaml",
            r#"
# passing: the passing weight
Datacenter: dc1
Node: dc1-web-1
Address: 10.1.2.1
Service: {ID: web-1, Service: web, Port: 80, Weights: {Passing: 5, Warning: 1}}
Checks:
  - {CheckID: web-1-http, ServiceID: web-1, Status: passing}
---
# warning: healthy, with the warning weight
Datacenter: dc1
Node: dc1-web-2
Address: 10.1.2.2
Service: {ID: web-2, Service: web, Port: 80, Weights: {Passing: 5, Warning: 2}}
Checks:
  - {CheckID: web-2-http, ServiceID: web-2, Status: warning}
---
# critical: sent as UNHEALTHY, not removed
Datacenter: dc1
Node: dc1-web-3
Address: 10.1.2.3
Service: {ID: web-3, Service: web, Port: 80}
Checks:
  - {CheckID: web-3-http, ServiceID: web-3, Status: critical}
---
# a warning weight of 0: unhealthy, weight 1
Datacenter: dc1
Node: dc1-web-4
Address: 10.1.2.4
Service: {ID: web-4, Service: web, Port: 80, Weights: {Passing: 1, Warning: 0}}
Checks:
  - {CheckID: web-4-http, ServiceID: web-4, Status: warning}
---
# a weight above 128 is capped
Datacenter: dc1
Node: dc1-web-5
Address: 10.1.2.5
Service: {ID: web-5, Service: web, Port: 80, Weights: {Passing: 500, Warning: 1}}
Checks:
  - {CheckID: web-5-http, ServiceID: web-5, Status: passing}
---
# a check registered without a status starts critical, as in Consul
Datacenter: dc1
Node: dc1-web-6
Address: 10.1.2.6
Service: {ID: web-6, Service: web, Port: 80}
Checks:
  - {CheckID: web-6-http, ServiceID: web-6}
---
# a failing node check makes the instance critical
Datacenter: dc1
Node: dc1-web-7
Address: 10.1.2.7
Service: {ID: web-7, Service: web, Port: 80}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: critical}
  - {CheckID: web-7-http, ServiceID: web-7, Status: passing}
"#,
        ),
        (
            "exported.yaml",
            "Kind: exported-services\nName: default\nServices:\n  - {Name: web, Consumers: [{Peer: dc2}]}\n",
        ),
    ]);
    insta::assert_snapshot!(
        "health_and_weights",
        golden(&s, &ingress("dc1"), &[ResourceType::Endpoint])
    );
}

#[test]
fn circuit_breakers_and_passive_health_checks() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "orders.json",
            r#"{
  "Datacenter": "dc1",
  "Node": "dc1-app-1",
  "Address": "10.1.1.6",
  "Service": {"ID": "orders-1", "Service": "orders", "Port": 8080},
  "Checks": [{"CheckID": "orders-1-http", "ServiceID": "orders-1", "Status": "passing"}]
}"#,
        ),
        (
            "orders-defaults.json",
            r#"{"Kind": "service-defaults", "Name": "orders", "Protocol": "http"}"#,
        ),
        (
            // The gateway is the caller: its own UpstreamConfig sets its clusters' limits,
            // the override for `orders` over the defaults, field by field.
            "gateway-defaults.json",
            r#"{
  "Kind": "service-defaults",
  "Name": "mesh-gateway",
  "UpstreamConfig": {
    "Defaults": {
      "Limits": {"MaxConnections": 100},
      "PassiveHealthCheck": {
        "Interval": "10s",
        "MaxFailures": 5,
        "EnforcingConsecutive5xx": 80,
        "MaxEjectionPercent": 50,
        "BaseEjectionTime": "30s"
      }
    },
    "Overrides": [
      {"Name": "orders", "Limits": {"MaxConnections": 512, "MaxPendingRequests": 256, "MaxConcurrentRequests": 1024}},
      {"Name": "orders", "Peer": "elsewhere", "Limits": {"MaxConnections": 1}}
    ]
  }
}"#,
        ),
        (
            "exported.json",
            r#"{"Kind": "exported-services", "Name": "default", "Services": [{"Name": "orders", "Consumers": [{"Peer": "dc2"}]}]}"#,
        ),
    ]);
    insta::assert_snapshot!(
        "circuit_breakers_and_passive_health_checks",
        golden(&s, &ingress("dc1"), &[ResourceType::Cluster])
    );
}

#[test]
fn http2_and_grpc_upstreams() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "services.yaml",
            r#"
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.7
Service: {ID: auth-1, Service: auth, Port: 9090}
Checks:
  - {CheckID: auth-1-grpc, ServiceID: auth-1, Status: passing}
---
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.7
Service: {ID: stream-1, Service: stream, Port: 8443}
Checks:
  - {CheckID: stream-1-h2, ServiceID: stream-1, Status: passing}
"#,
        ),
        (
            "defaults.hcl",
            r#"
Kind     = "service-defaults"
Name     = "auth"
Protocol = "grpc"
"#,
        ),
        (
            "defaults-stream.hcl",
            r#"
Kind     = "service-defaults"
Name     = "stream"
Protocol = "http2"
"#,
        ),
        (
            "exported.hcl",
            r#"
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "auth",   Consumers = [{ Peer = "dc2" }] },
  { Name = "stream", Consumers = [{ Peer = "dc2" }] },
]
"#,
        ),
    ]);
    insta::assert_snapshot!(
        "http2_and_grpc_upstreams",
        golden(&s, &ingress("dc1"), &[ResourceType::Cluster])
    );
}

#[test]
fn load_balancer_policies() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "services.yaml",
            r#"
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.8
Service: {ID: search-1, Service: search, Port: 9200}
Checks:
  - {CheckID: search-1, ServiceID: search-1, Status: passing}
---
Datacenter: dc1
Node: dc1-app-1
Address: 10.1.1.8
Service: {ID: sessions-1, Service: sessions, Port: 9300}
Checks:
  - {CheckID: sessions-1, ServiceID: sessions-1, Status: passing}
"#,
        ),
        (
            "resolvers.hcl",
            r#"
Kind = "service-resolver"
Name = "search"
LoadBalancer = {
  Policy             = "least_request"
  LeastRequestConfig = { ChoiceCount = 5 }
}
"#,
        ),
        (
            "resolver-sessions.hcl",
            r#"
Kind = "service-resolver"
Name = "sessions"
LoadBalancer = {
  Policy         = "ring_hash"
  RingHashConfig = { MinimumRingSize = 1024, MaximumRingSize = 8192 }
  HashPolicies   = [{ Field = "header", FieldValue = "x-user-id" }]
}
"#,
        ),
        (
            "exported.hcl",
            r#"
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "search",   Consumers = [{ Peer = "dc2" }] },
  { Name = "sessions", Consumers = [{ Peer = "dc2" }] },
]
"#,
        ),
    ]);
    insta::assert_snapshot!(
        "load_balancer_policies",
        golden(&s, &ingress("dc1"), &[ResourceType::Cluster])
    );
}

#[test]
fn service_not_exported() {
    let s = mesh(&[
        ("gateways.yaml", DC1_INGRESS),
        (
            "services.yaml",
            r#"
Datacenter: dc1
Node: dc1-db-1
Address: 10.1.1.1
Service: {ID: db-1, Service: db, Port: 5432}
Checks:
  - {CheckID: db-1-tcp, ServiceID: db-1, Status: passing}
---
Datacenter: dc1
Node: dc1-vault-1
Address: 10.1.1.9
Service: {ID: vault-1, Service: vault, Port: 8200}
Checks:
  - {CheckID: vault-1, ServiceID: vault-1, Status: passing}
"#,
        ),
        (
            "exported.hcl",
            r#"
# vault is not exported; ledger is, but has no instance in dc1.
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "db",     Consumers = [{ Peer = "dc2" }] },
  { Name = "ledger", Consumers = [{ Peer = "dc2" }] },
]
"#,
        ),
        (
            "intentions.hcl",
            r#"
Kind = "service-intentions"
Name = "vault"
Sources = [{ Name = "*", Action = "allow" }]
"#,
        ),
    ]);
    let out = golden(&s, &ingress("dc1"), &[ResourceType::Listener]);
    assert!(!out.contains("vault"), "{out}");
    assert!(!out.contains("ledger"), "{out}");
    insta::assert_snapshot!("service_not_exported", out);
}

// ---- egress gateway -----------------------------------------------------------------------

#[test]
fn egress_by_remote_datacenter() {
    let s = mesh(&[
        ("dc1.yaml", &format!("{DC1_INGRESS}---{DC1_EGRESS}")),
        (
            "dc2.yaml",
            &format!(
                "{DC2_INGRESS}---{}",
                r#"
# a critical gateway is not a target
Datacenter: dc2
Node: dc2-gw-3
Address: 10.2.0.12
Service:
  Kind: mesh-gateway
  ID: dc2-ingress-3
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    wan: {Address: 198.18.2.12, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - {CheckID: serfHealth, Name: Serf Health Status, Status: critical}
"#
            ),
        ),
        ("dc3.yaml", DC3_INGRESS_HOSTNAME),
    ]);
    insta::assert_snapshot!(
        "egress",
        golden(&s, &GroupKey::new(Role::Egress, "dc1", None), &TYPES)
    );
}

// ---- sidecars -----------------------------------------------------------------------------

/// `web` in dc1, whose sidecar has the given upstreams (YAML flow mappings, one a line).
fn web_sidecar(upstreams: &str) -> String {
    format!(
        r#"
Datacenter: dc1
Node: dc1-web-1
Address: 10.1.2.1
Service: {{ID: web-1, Service: web, Port: 8080}}
Checks:
  - {{CheckID: web-1-http, ServiceID: web-1, Status: passing}}
---
Datacenter: dc1
Node: dc1-web-1
Address: 10.1.2.1
Service:
  Kind: connect-proxy
  ID: web-1-sidecar-proxy
  Service: web-sidecar-proxy
  Port: 21000
  Proxy:
    DestinationServiceName: web
    DestinationServiceID: web-1
    LocalServicePort: 8080
    Upstreams:
{upstreams}"#
    )
}

const DC2_SERVICES: &str = r#"
Datacenter: dc2
Node: dc2-app-1
Address: 10.2.1.1
Service: {ID: db-1, Service: db, Port: 5432}
Checks:
  - {CheckID: db-1-tcp, ServiceID: db-1, Status: passing}
---
Datacenter: dc2
Node: dc2-app-1
Address: 10.2.1.1
Service: {ID: api-1, Service: api, Port: 8080}
Checks:
  - {CheckID: api-1-http, ServiceID: api-1, Status: passing}
"#;

const API_HTTP: &str = r#"
Kind           = "service-defaults"
Name           = "api"
Protocol       = "http"
"#;

fn sidecar_group() -> GroupKey {
    GroupKey::new(Role::Sidecar, "dc1", Some("web"))
}

#[test]
fn sidecar_tcp_and_http_via_local_egress() {
    let web = web_sidecar(
        "      - {DestinationName: db, Datacenter: dc2, LocalBindPort: 19001}\n      - {DestinationName: api, Datacenter: dc2, LocalBindPort: 19002}\n      - {DestinationName: auth, Datacenter: dc2, LocalBindPort: 19003}\n",
    );
    let s = mesh(&[
        (
            "gateways.yaml",
            &format!("{DC1_INGRESS}---{DC1_EGRESS}---{DC2_INGRESS}"),
        ),
        ("web.yaml", &web),
        ("dc2.yaml", DC2_SERVICES),
        ("api.hcl", API_HTTP),
        (
            "api-resolver.hcl",
            "Kind = \"service-resolver\"\nName = \"api\"\nRequestTimeout = \"20s\"\n",
        ),
        (
            "auth.yaml",
            r#"
Datacenter: dc2
Node: dc2-app-2
Address: 10.2.1.2
Service: {ID: auth-1, Service: auth, Port: 9090}
Checks:
  - {CheckID: auth-1-grpc, ServiceID: auth-1, Status: passing}
---
Kind: service-defaults
Name: auth
Protocol: grpc
"#,
        ),
    ]);
    insta::assert_snapshot!(
        "sidecar_via_local_egress",
        golden(&s, &sidecar_group(), &TYPES)
    );
}

/// A sidecar's clusters for an upstream carry the caller's upstream settings for it (its
/// own `service-defaults` `UpstreamConfig`: the override named for the upstream over the
/// defaults), and nothing for an upstream with neither.
#[test]
fn sidecar_upstream_limits_come_from_the_caller() {
    let web = web_sidecar(
        "      - {DestinationName: db, Datacenter: dc2, LocalBindPort: 19001}\n      - {DestinationName: api, Datacenter: dc2, LocalBindPort: 19002}\n",
    );
    let s = mesh(&[
        (
            "gateways.yaml",
            &format!("{DC1_INGRESS}---{DC1_EGRESS}---{DC2_INGRESS}"),
        ),
        ("web.yaml", &web),
        ("dc2.yaml", DC2_SERVICES),
        ("api.hcl", API_HTTP),
        (
            "web-defaults.hcl",
            r#"
Kind = "service-defaults"
Name = "web"
UpstreamConfig {
  Defaults {
    PassiveHealthCheck {
      Interval    = "5s"
      MaxFailures = 3
    }
  }
  Overrides = [
    { Name = "db", Limits = { MaxConnections = 64 } },
  ]
}
"#,
        ),
    ]);
    let update = translate(&s, &sidecar_group(), &settings());
    let clusters: BTreeMap<String, Cluster> = update
        .types()
        .iter()
        .filter(|(ty, _)| *ty == ResourceType::Cluster)
        .flat_map(|(_, u)| match u {
            TypeUpdate::Replace(entries) => entries.clone(),
            TypeUpdate::Patch { .. } => panic!("translate patches"),
        })
        .map(|e| {
            let any = Any::decode(e.sotw.clone()).unwrap();
            (
                e.name.to_string(),
                Cluster::decode(any.value.as_slice()).unwrap(),
            )
        })
        .collect();
    let of = |service: &str| {
        clusters
            .iter()
            .find(|(name, _)| name.starts_with(&format!("{service}.")))
            .unwrap_or_else(|| panic!("no cluster for {service} in {:?}", clusters.keys()))
            .1
    };
    let max_connections = |c: &Cluster| {
        c.circuit_breakers
            .as_ref()
            .and_then(|b| b.thresholds.first())
            .and_then(|t| t.max_connections.as_ref())
            .map(|v| v.value)
    };
    let interval = |c: &Cluster| {
        c.outlier_detection
            .as_ref()
            .and_then(|o| o.interval.as_ref())
            .map(|d| d.seconds)
    };
    assert_eq!(max_connections(of("db")), Some(64));
    assert_eq!(interval(of("db")), Some(5));
    assert_eq!(max_connections(of("api")), None);
    assert_eq!(interval(of("api")), Some(5));
}

#[test]
fn sidecar_via_remote_ingress_without_local_egress() {
    let web = web_sidecar("      - {DestinationName: db, Datacenter: dc2, LocalBindPort: 19001}\n");
    let s = mesh(&[
        ("gateways.yaml", &format!("{DC1_INGRESS}---{DC2_INGRESS}")),
        ("web.yaml", &web),
        ("dc2.yaml", DC2_SERVICES),
    ]);
    insta::assert_snapshot!(
        "sidecar_via_remote_ingress",
        golden(
            &s,
            &sidecar_group(),
            &[ResourceType::Cluster, ResourceType::Endpoint]
        )
    );
}

#[test]
fn sidecar_redirect() {
    let web = web_sidecar("      - {DestinationName: db, Datacenter: dc2, LocalBindPort: 19001}\n");
    let s = mesh(&[
        (
            "gateways.yaml",
            &format!("{DC1_EGRESS}---{DC2_INGRESS}---{DC3_INGRESS_HOSTNAME}"),
        ),
        ("web.yaml", &web),
        ("dc2.yaml", DC2_SERVICES),
        (
            "dc3.yaml",
            r#"
Datacenter: dc3
Node: dc3-app-1
Address: 10.3.1.1
Service: {ID: db-replica-1, Service: db-replica, Port: 5432}
Checks:
  - {CheckID: db-replica-1, ServiceID: db-replica-1, Status: passing}
"#,
        ),
        (
            "db-resolver.hcl",
            r#"
Kind = "service-resolver"
Name = "db"
Redirect {
  Service    = "db-replica"
  Datacenter = "dc3"
}
"#,
        ),
    ]);
    insta::assert_snapshot!("sidecar_redirect", golden(&s, &sidecar_group(), &TYPES));
}

#[test]
fn sidecar_failover() {
    let web = web_sidecar("      - {DestinationName: db, Datacenter: dc2, LocalBindPort: 19001}\n");
    let s = mesh(&[
        (
            "gateways.yaml",
            &format!("{DC1_EGRESS}---{DC2_INGRESS}---{DC3_INGRESS_HOSTNAME}"),
        ),
        ("web.yaml", &web),
        (
            "db.yaml",
            r#"
# every db instance of dc2 is down; dc3's is up
Datacenter: dc2
Node: dc2-app-1
Address: 10.2.1.1
Service: {ID: db-1, Service: db, Port: 5432}
Checks:
  - {CheckID: db-1-tcp, ServiceID: db-1, Status: critical}
---
Datacenter: dc3
Node: dc3-app-1
Address: 10.3.1.1
Service: {ID: db-1, Service: db, Port: 5432}
Checks:
  - {CheckID: db-1-tcp, ServiceID: db-1, Status: passing}
"#,
        ),
        (
            "db-resolver.yaml",
            r#"
Kind: service-resolver
Name: db
ConnectTimeout: 3s
Failover:
  "*":
    Datacenters: [dc3]
"#,
        ),
    ]);
    insta::assert_snapshot!("sidecar_failover", golden(&s, &sidecar_group(), &TYPES));
}

// ---- incremental ingress translation ------------------------------------------------------

/// A store's resources of the gateway types, as (type, name) → version.
fn published(
    store: &crate::xds::Store,
    group: &GroupKey,
) -> BTreeMap<(ResourceType, String), String> {
    let state = store.current(group).expect("the group was published");
    let mut out = BTreeMap::new();
    for ty in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        for (name, e) in &state.set(ty).resources {
            out.insert((ty, name.to_string()), e.version.to_string());
        }
    }
    out
}

const INCR_EXPORTS: &str = r#"
Kind = "exported-services"
Name = "default"
Services = [
  { Name = "db",  Consumers = [{ Peer = "dc2" }] },
  { Name = "api", Consumers = [{ Peer = "dc2" }, { Peer = "dc3" }] },
  { Name = "web", Consumers = [{ Peer = "dc2" }] },
]
"#;

fn incr_instance(service: &str, n: u32, status: &str) -> String {
    format!(
        "Datacenter: dc1\nNode: dc1-{service}-{n}\nAddress: 10.1.{n}.{}\nService: {{ID: {service}-{n}, Service: {service}, Port: 8080, Meta: {{version: v{n}}}}}\nChecks:\n  - {{CheckID: {service}-{n}-alive, ServiceID: {service}-{n}, Status: {status}}}\n",
        service.len()
    )
}

/// The incremental translation leaves the store exactly as a full translation of the same
/// snapshot would, through a sequence of changes to every kind of input, and translates again
/// only the services a change concerns.
#[test]
fn incremental_ingress_matches_full_translation() {
    use crate::metrics::Metrics;
    use crate::xds::{Debounce, Store};
    use std::collections::BTreeMap as Files;

    let mut files: Files<&str, String> = Files::new();
    files.insert("gateways.yaml", DC1_INGRESS.to_owned());
    for service in ["db", "api", "web"] {
        for n in 1..=2 {
            files.insert(
                Box::leak(format!("{service}-{n}.yaml").into_boxed_str()),
                incr_instance(service, n, "passing"),
            );
        }
    }
    files.insert("exports.hcl", INCR_EXPORTS.to_owned());
    files.insert(
        "defaults.hcl",
        "Kind = \"service-defaults\"\nName = \"api\"\nProtocol = \"http\"\n".to_owned(),
    );
    files.insert(
        "intentions.hcl",
        "Kind = \"service-intentions\"\nName = \"db\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n"
            .to_owned(),
    );

    // (what changes, the change, services translated again; None: not checked)
    type Step = (
        &'static str,
        Box<dyn Fn(&mut Files<&str, String>)>,
        Option<usize>,
    );
    let steps: Vec<Step> = vec![
        ("nothing", Box::new(|_| {}), Some(0)),
        (
            "one instance critical",
            Box::new(|f| {
                f.insert("db-1.yaml", incr_instance("db", 1, "critical"));
            }),
            Some(1),
        ),
        (
            "an intention of db",
            Box::new(|f| {
                f.insert("intentions.hcl", "Kind = \"service-intentions\"\nName = \"db\"\nSources = [{ Name = \"web\", Action = \"deny\" }]\n".to_owned());
            }),
            Some(1),
        ),
        (
            "a resolver with subsets for api",
            Box::new(|f| {
                f.insert("resolver.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v1\"\nSubsets = { v1 = { Filter = \"Service.Meta.version == v1\" }, v2 = { Filter = \"Service.Meta.version == v2\" } }\n".to_owned());
            }),
            Some(1),
        ),
        (
            "api's consumers",
            Box::new(|f| {
                f.insert(
                    "exports.hcl",
                    INCR_EXPORTS.replace(
                        "{ Peer = \"dc2\" }, { Peer = \"dc3\" }",
                        "{ Peer = \"dc3\" }",
                    ),
                );
            }),
            Some(1),
        ),
        (
            "web no longer exported",
            Box::new(|f| {
                let now = f["exports.hcl"].replace(
                    "  { Name = \"web\", Consumers = [{ Peer = \"dc2\" }] },\n",
                    "",
                );
                f.insert("exports.hcl", now);
            }),
            Some(0),
        ),
        (
            "a new exported service",
            Box::new(|f| {
                let now = f["exports.hcl"].replace(
                    "\n]\n",
                    "\n  { Name = \"cache\", Consumers = [{ Peer = \"dc2\" }] },\n]\n",
                );
                f.insert("exports.hcl", now);
                f.insert("cache-1.yaml", incr_instance("cache", 1, "passing"));
            }),
            Some(1),
        ),
        (
            "db's only instances gone",
            Box::new(|f| {
                f.remove("db-1.yaml");
                f.remove("db-2.yaml");
            }),
            Some(0),
        ),
        (
            "proxy-defaults protocol (every service)",
            Box::new(|f| {
                f.insert("proxy.hcl", "Kind = \"proxy-defaults\"\nName = \"global\"\nConfig { protocol = \"http\" }\n".to_owned());
            }),
            None,
        ),
        (
            "wildcard intentions (every service)",
            Box::new(|f| {
                f.insert("star.hcl", "Kind = \"service-intentions\"\nName = \"*\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n".to_owned());
            }),
            None,
        ),
        (
            "the gateway's upstream settings (every cluster)",
            Box::new(|f| {
                f.insert("gw-defaults.hcl", "Kind = \"service-defaults\"\nName = \"mesh-gateway\"\nUpstreamConfig {\n  Defaults {\n    Limits {\n      MaxConnections = 10\n    }\n  }\n}\n".to_owned());
            }),
            None,
        ),
        (
            "the gateway's port",
            Box::new(|f| {
                f.insert(
                    "gateways.yaml",
                    DC1_INGRESS.replace(
                        "Port: 8443\n  TaggedAddresses",
                        "Port: 9443\n  TaggedAddresses",
                    ),
                );
            }),
            Some(0),
        ),
    ];

    let group = ingress("dc1");
    let incremental = Store::new(Debounce::NONE, Arc::new(Metrics::new()));
    let mut cache = ingress::IngressCache::default();
    let load = |files: &Files<&str, String>| {
        let list: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Arc::new(mesh(&list))
    };
    let first = load(&files);
    let (update, stats) = cache.translate(&first, "dc1", &settings());
    assert!(stats.full);
    assert_eq!(stats.services_translated, 3);
    incremental.publish(&group, update).unwrap();

    for (what, change, expect_translated) in steps {
        change(&mut files);
        let snapshot = load(&files);
        let (update, stats) = cache.translate(&snapshot, "dc1", &settings());
        assert!(!stats.full, "{what}: a full translation");
        incremental.publish(&group, update).unwrap();
        let full = Store::new(Debounce::NONE, Arc::new(Metrics::new()));
        full.publish(&group, translate(&snapshot, &group, &settings()))
            .unwrap();
        assert_eq!(
            published(&incremental, &group),
            published(&full, &group),
            "{what}: the incremental translation differs from the full one"
        );
        if let Some(n) = expect_translated {
            assert_eq!(
                stats.services_translated, n,
                "{what}: services translated again"
            );
        }
    }
    // A change of settings translates everything again.
    let snapshot = load(&files);
    let other = Settings {
        default_policy: DefaultPolicy::Allow,
        ..settings()
    };
    let (_, stats) = cache.translate(&snapshot, "dc1", &other);
    assert!(stats.full);
}

/// From the Consul source, unchanged services keep their instance lists by pointer: one
/// instance's health changes one assignment, and nothing else is encoded again.
#[test]
fn one_health_change_touches_one_assignment() {
    let mut files = vec![
        ("gateways.yaml", DC1_INGRESS.to_owned()),
        ("exports.hcl", INCR_EXPORTS.to_owned()),
    ];
    for service in ["db", "api", "web"] {
        files.push((
            Box::leak(format!("{service}.yaml").into_boxed_str()),
            incr_instance(service, 1, "passing"),
        ));
    }
    let list: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = mesh(&list);
    // The next snapshot as the Consul source builds it: the same `Arc`s but for `web`.
    let mut datacenters = before.datacenters.clone();
    let dc1 = datacenters.get_mut("dc1").unwrap();
    let mut web: Vec<Instance> = dc1.services["web"].to_vec();
    web[0].checks[0].status = crate::model::Health::Critical;
    dc1.services.insert("web".into(), Arc::from(web));
    let after = Snapshot {
        generation: 2,
        local_datacenter: before.local_datacenter.clone(),
        datacenters,
        entries: before.entries.clone(),
        ca_roots: None,
    };
    let mut cache = ingress::IngressCache::default();
    let (_, stats) = cache.translate(&Arc::new(before), "dc1", &settings());
    assert_eq!(stats.services_translated, 3);
    let (update, stats) = cache.translate(&Arc::new(after), "dc1", &settings());
    assert_eq!(stats.services_translated, 1);
    assert_eq!(stats.resources_touched, 1);
    let types: Vec<ResourceType> = update.types().iter().map(|(t, _)| *t).collect();
    assert_eq!(types, vec![ResourceType::Endpoint]);
}

/// Decodes the payload of an `Any` of a type translation produces into its `Debug` rendering,
/// for the golden files.
fn decode_any(type_url: &str, bytes: &[u8]) -> Option<String> {
    macro_rules! known {
        ($($t:ty),* $(,)?) => {
            $(if type_url == <$t>::type_url() {
                return <$t>::decode(bytes).ok().map(|m| format!("{m:?}"));
            })*
        };
    }
    known!(
        Cluster,
        ClusterLoadAssignment,
        Listener,
        RouteConfiguration,
        Secret,
        HttpConnectionManager,
        Router,
        HttpRbac,
        NetworkRbac,
        TcpProxy,
        TlsInspector,
        SniCluster,
        DownstreamTlsContext,
        UpstreamTlsContext,
        AggregateClusterConfig,
        HttpProtocolOptions,
        Struct,
    );
    None
}
