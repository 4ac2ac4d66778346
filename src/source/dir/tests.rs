//! The directory source's reading: every entry kind in every format and spelling, the
//! three kinds of documents, and every problem `meshgate validate` reports, at its line.

use super::*;
use crate::model::entries::{Action, ConfigEntries, Protocol};
use crate::model::{Health, ServiceKind};

fn ok(files: &[(&str, &str)]) -> Snapshot {
    let loaded = load_files(files, "dc1", 1);
    let errors: Vec<String> = loaded.errors().map(|p| p.to_string()).collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    loaded.snapshot
}

fn problems(files: &[(&str, &str)]) -> Vec<String> {
    load_files(files, "dc1", 1)
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// Asserts that `expected` is among the problems (and shows them all when not).
fn has(files: &[(&str, &str)], expected: &str) {
    let found = problems(files);
    assert!(
        found.iter().any(|p| p == expected),
        "expected {expected:?} among {found:#?}"
    );
}

// ---- the same entries in HCL, JSON and YAML, CamelCase and snake_case ---------------------

const RESOLVER_HCL: &str = r#"
Kind          = "service-resolver"
Name          = "api"
DefaultSubset = "v1"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = {
    Filter      = "Service.Meta.version == v2"
    OnlyPassing = true
  }
}
ConnectTimeout = "15s"
RequestTimeout = "1m30s"
Failover = {
  "*" = { Datacenters = ["dc2", "dc3"] }
}
LoadBalancer = {
  Policy = "least_request"
  LeastRequestConfig = { ChoiceCount = 5 }
}
"#;

const RESOLVER_JSON_SNAKE: &str = r#"{
  "kind": "service-resolver",
  "name": "api",
  "default_subset": "v1",
  "subsets": {
    "v1": {"filter": "Service.Meta.version == v1"},
    "v2": {"filter": "Service.Meta.version == v2", "only_passing": true}
  },
  "connect_timeout": "15s",
  "request_timeout": "1m30s",
  "failover": {"*": {"datacenters": ["dc2", "dc3"]}},
  "load_balancer": {"policy": "least_request", "least_request_config": {"choice_count": 5}}
}"#;

const RESOLVER_YAML: &str = r#"
Kind: service-resolver
Name: api
DefaultSubset: v1
Subsets:
  v1:
    Filter: "Service.Meta.version == v1"
  v2:
    Filter: "Service.Meta.version == v2"
    OnlyPassing: true
ConnectTimeout: 15s
RequestTimeout: 1m30s
Failover:
  "*":
    Datacenters: [dc2, dc3]
LoadBalancer:
  Policy: least_request
  LeastRequestConfig:
    ChoiceCount: 5
"#;

const RESOLVER_YAML_SNAKE: &str = r#"
kind: service-resolver
name: api
default_subset: v1
subsets:
  v1: {filter: "Service.Meta.version == v1"}
  v2: {filter: "Service.Meta.version == v2", only_passing: true}
connect_timeout: 15s
request_timeout: 1m30s
failover:
  "*": {datacenters: [dc2, dc3]}
load_balancer: {policy: least_request, least_request_config: {choice_count: 5}}
"#;

#[test]
fn a_resolver_reads_the_same_in_every_format_and_spelling() {
    let read = |name: &str, text: &str| {
        let s = ok(&[(name, text)]);
        s.entries.service_resolvers["api"].entry.clone()
    };
    let hcl = read("api.hcl", RESOLVER_HCL);
    assert_eq!(hcl.default_subset.as_ref().unwrap().value, "v1");
    assert_eq!(hcl.subsets.len(), 2);
    assert!(hcl.subsets["v2"].only_passing);
    assert_eq!(
        hcl.subsets["v1"].filter.as_ref().unwrap().as_str(),
        "Service.Meta.version == v1"
    );
    assert_eq!(
        hcl.connect_timeout.unwrap().get(),
        std::time::Duration::from_secs(15)
    );
    assert_eq!(
        hcl.request_timeout.unwrap().get(),
        std::time::Duration::from_secs(90)
    );
    let dcs: Vec<&str> = hcl.failover["*"]
        .value
        .datacenters
        .iter()
        .map(|d| d.value.as_str())
        .collect();
    assert_eq!(dcs, ["dc2", "dc3"]);
    let lb = hcl.load_balancer.as_ref().unwrap();
    assert_eq!(lb.policy.value, "least_request");
    assert_eq!(lb.least_request_config.as_ref().unwrap().choice_count, 5);
    for (name, text) in [
        ("api.json", RESOLVER_JSON_SNAKE),
        ("api.yaml", RESOLVER_YAML),
        ("api.yml", RESOLVER_YAML_SNAKE),
    ] {
        assert_eq!(read(name, text), hcl, "{name} reads differently from HCL");
    }
}

#[test]
fn every_entry_kind_reads_from_every_format() {
    // (file, text, kind, name) — each kind at least once in each format.
    let cases: &[(&str, &str)] = &[
        (
            "sd.hcl",
            "Kind = \"service-defaults\"\nName = \"web\"\nProtocol = \"http\"\nUpstreamConfig = {\n  Defaults = {\n    Limits = { MaxConnections = 100 }\n    PassiveHealthCheck = { Interval = \"10s\", MaxFailures = 5 }\n  }\n}\n",
        ),
        (
            "sd.json",
            r#"{"kind": "service-defaults", "name": "api", "protocol": "grpc", "upstream_config": {"defaults": {"limits": {"max_connections": 100}, "passive_health_check": {"interval": "10s", "max_failures": 5}}}}"#,
        ),
        (
            "sd.yaml",
            "Kind: service-defaults\nName: db\nProtocol: tcp\nUpstreamConfig:\n  Defaults:\n    Limits: {MaxConnections: 100}\n    PassiveHealthCheck: {Interval: 10s, MaxFailures: 5}\n",
        ),
        (
            "pd.hcl",
            "Kind = \"proxy-defaults\"\nName = \"global\"\nConfig {\n  protocol = \"http\"\n  connect_timeout_ms = 5000\n}\nMeshGateway = { Mode = \"local\" }\n",
        ),
        (
            "intentions.hcl",
            r#"Kind = "service-intentions"
Name = "web"
Sources = [
  { Name = "frontend", Action = "allow" },
  {
    Name = "admin"
    Permissions = [
      { Action = "deny", HTTP = { PathExact = "/secret" } },
      {
        Action = "allow"
        HTTP = {
          PathPrefix = "/v1"
          Methods    = ["GET", "HEAD"]
          Header     = [{ Name = "x-env", Exact = "prod" }, { Name = "x-debug", Present = true, Invert = true }]
        }
      },
    ]
  },
  { Name = "*", Action = "deny" },
]
"#,
        ),
        (
            "intentions.json",
            r#"{"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "ops", "Permissions": [{"Action": "allow", "HTTP": {"PathRegex": "^/v[12]/.*", "Header": [{"Name": "x-a", "Suffix": "z"}]}}]}]}"#,
        ),
        (
            "intentions.yaml",
            "kind: service-intentions\nname: db\nsources:\n  - name: api\n    action: allow\n  - name: '*'\n    action: deny\n",
        ),
        (
            "exports.yaml",
            "Kind: exported-services\nName: default\nServices:\n  - Name: web\n    Consumers:\n      - Peer: dc2\n  - Name: api\n    Consumers: [{Peer: dc2}, {Peer: dc3}]\n",
        ),
        (
            "mesh.json",
            r#"{"Kind": "mesh", "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}}, "HTTP": {"SanitizeXForwardedClientCert": true}}"#,
        ),
        ("resolver.hcl", RESOLVER_HCL),
    ];
    let s = ok(cases);
    let e = &s.entries;
    assert_eq!(e.protocol("web"), Protocol::Http);
    assert_eq!(e.protocol("api"), Protocol::Grpc);
    assert_eq!(e.protocol("db"), Protocol::Tcp);
    // Not defined: proxy-defaults' Config.protocol.
    assert_eq!(e.protocol("other"), Protocol::Http);
    for name in ["web", "api", "db"] {
        let d = e.service_defaults[name]
            .entry
            .upstream_config
            .clone()
            .unwrap();
        let d = d.defaults.unwrap();
        assert_eq!(d.limits.unwrap().max_connections, Some(100), "{name}");
        assert_eq!(d.passive_health_check.unwrap().max_failures, 5, "{name}");
    }
    let pd = &e.proxy_defaults.as_ref().unwrap().entry;
    assert_eq!(pd.config["connect_timeout_ms"], serde_json::json!(5000));
    assert_eq!(pd.mesh_gateway.mode, "local");
    let web = &e.service_intentions["web"].entry;
    assert_eq!(web.sources.len(), 3);
    assert_eq!(web.sources[0].value.action, Some(Action::Allow));
    let admin = &web.sources[1].value;
    assert_eq!(admin.permissions.len(), 2);
    let http = admin.permissions[1].value.http.as_ref().unwrap();
    assert_eq!(http.path_prefix, "/v1");
    assert_eq!(http.methods, ["GET", "HEAD"]);
    assert_eq!(http.header[0].value.exact, "prod");
    assert!(http.header[1].value.present && http.header[1].value.invert);
    let api = &e.service_intentions["api"].entry;
    let regex = &api.sources[1].value.permissions[0]
        .value
        .http
        .as_ref()
        .unwrap();
    assert_eq!(regex.path_regex.value, "^/v[12]/.*");
    assert_eq!(regex.header[0].value.suffix, "z");
    assert_eq!(e.service_intentions["db"].entry.sources[1].value.name, "*");
    let exports = &e.exported_services.as_ref().unwrap().entry;
    assert_eq!(exports.services.len(), 2);
    assert_eq!(exports.services[1].value.consumers[1].peer, "dc3");
    let mesh = &e.mesh.as_ref().unwrap().entry;
    assert!(mesh.http.as_ref().unwrap().sanitize_x_forwarded_client_cert);
    assert_eq!(
        mesh.tls
            .as_ref()
            .unwrap()
            .incoming
            .as_ref()
            .unwrap()
            .tls_min_version,
        "TLSv1_2"
    );
    // Where each entry came from.
    assert_eq!(
        e.service_intentions["web"].origin.to_string(),
        "intentions.hcl:1"
    );
}

// ---- services ------------------------------------------------------------------------------

#[test]
fn agent_definitions_and_catalog_registrations_become_instances() {
    let s = ok(&[
        (
            "web.hcl",
            r#"
service {
  name = "web"
  id   = "web-1"
  port = 8080
  tags = ["v1"]
  meta = { version = "1" }
  checks = [{ id = "web-http", http = "http://localhost:8080/health", interval = "10s", status = "passing" }]
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "api", datacenter = "dc2", local_bind_port = 9191 }]
      }
    }
  }
}
"#,
        ),
        (
            "more.json",
            r#"{"services": [{"name": "api", "port": 9000, "address": "10.0.0.5", "weights": {"passing": 3, "warning": 1}}, {"name": "db", "port": 5432, "checks": [{"check_id": "db-tcp", "tcp": "localhost:5432", "status": "warning"}]}]}"#,
        ),
        (
            "dc2.yaml",
            r#"
Datacenter: dc2
Node: gw-node
Address: 10.2.0.1
TaggedAddresses: {lan: 10.2.0.1, wan: 198.18.2.1}
NodeMeta: {zone: b}
Service:
  Kind: mesh-gateway
  Service: mesh-gateway
  Port: 8443
  TaggedAddresses:
    lan: {Address: 10.2.0.1, Port: 8443}
    wan: {Address: 198.18.2.1, Port: 443}
  Meta: {meshgate-role: ingress}
Checks:
  - CheckID: serfHealth
    Status: passing
  - CheckID: gw-alive
    ServiceID: mesh-gateway
    Status: critical
---
Datacenter: dc2
Node: api-node
Address: 10.2.0.7
Service: {Service: api, Port: 9000}
"#,
        ),
    ]);
    let web = &s.instances("dc1", "web")[0];
    assert_eq!(web.id, "web-1");
    assert_eq!(web.port, 8080);
    assert_eq!(web.address(), AGENT_ADDRESS);
    assert_eq!(web.node.name, AGENT_NODE);
    assert_eq!(web.meta["version"], "1");
    assert_eq!(web.health(), Health::Passing);
    let sidecar = &s.instances("dc1", "web-sidecar-proxy")[0];
    assert_eq!(sidecar.kind, ServiceKind::ConnectProxy);
    assert_eq!(sidecar.id, "web-1-sidecar-proxy");
    assert_eq!(sidecar.port, 21000);
    let proxy = sidecar.proxy.as_ref().unwrap();
    assert_eq!(proxy.destination_service_name, "web");
    assert_eq!(proxy.local_service_port, 8080);
    assert_eq!(proxy.upstreams[0].destination_name, "api");
    assert_eq!(proxy.upstreams[0].datacenter, "dc2");
    assert_eq!(proxy.upstreams[0].local_bind_port, 9191);
    let api = &s.instances("dc1", "api")[0];
    assert_eq!(api.address(), "10.0.0.5");
    assert_eq!(api.weights.passing, 3);
    assert_eq!(s.instances("dc1", "db")[0].health(), Health::Warning);
    let gw = &s.instances("dc2", "mesh-gateway")[0];
    assert_eq!(gw.kind, ServiceKind::MeshGateway);
    assert_eq!(gw.node.datacenter, "dc2");
    assert_eq!(gw.node.meta["zone"], "b");
    assert_eq!(gw.wan_address().address, "198.18.2.1");
    assert_eq!(gw.wan_address().port, 443);
    assert_eq!(gw.health(), Health::Critical, "a critical service check");
    assert_eq!(gw.checks.len(), 2, "node check + service check");
    assert_eq!(s.instances("dc2", "api")[0].address(), "10.2.0.7");
    assert_eq!(s.datacenter("dc2").unwrap().mesh_gateways().count(), 1);
}

// ---- problems, each at its line --------------------------------------------------------

#[test]
fn syntax_errors_name_the_line_in_each_format() {
    let hcl = problems(&[("a.hcl", "Kind = \"mesh\"\nName = \n")]);
    assert!(hcl[0].starts_with("a.hcl:2: "), "{hcl:?}");
    let json = problems(&[("a.json", "{\n  \"Kind\": \"mesh\",\n  \"Name\" \"x\"\n}")]);
    assert!(json[0].starts_with("a.json:3: "), "{json:?}");
    let yaml = problems(&[("a.yaml", "Kind: mesh\nTLS:\n  - a\n  b: c\n")]);
    assert!(yaml[0].starts_with("a.yaml:"), "{yaml:?}");
}

#[test]
fn unknown_kind() {
    has(
        &[("x.hcl", "\nKind = \"service-resolvr\"\nName = \"a\"\n")],
        "x.hcl:2: unknown Kind \"service-resolvr\" (meshgate reads service-defaults, proxy-defaults, service-resolver, service-intentions, exported-services, mesh)",
    );
    let found = problems(&[("x.yaml", "Kind: service-router\nName: a\n")]);
    assert!(
        found[0].starts_with(
            "x.yaml:1: Kind \"service-router\" is a Consul config entry meshgate does not read yet"
        ),
        "{found:?}"
    );
}

#[test]
fn unknown_and_mistyped_fields() {
    let found = problems(&[(
        "web.hcl",
        "Kind = \"service-defaults\"\nName = \"web\"\nProtcol = \"http\"\n",
    )]);
    assert!(
        found[0].starts_with("web.hcl:3: service-defaults \"web\": ")
            && found[0].contains("Protcol"),
        "{found:?}"
    );
    let found = problems(&[(
        "r.yaml",
        "Kind: service-resolver\nName: api\nSubsets:\n  v1:\n    OnlyPassing: \"yes\"\n",
    )]);
    assert!(
        found[0].starts_with("r.yaml:5: service-resolver \"api\": "),
        "{found:?}"
    );
    let found = problems(&[(
        "p.json",
        "{\"Kind\": \"service-defaults\",\n \"Name\": \"web\",\n \"Protocol\": \"htp\"}",
    )]);
    assert!(found[0].starts_with("p.json:3: "), "{found:?}");
}

#[test]
fn bad_durations() {
    let found = problems(&[(
        "r.hcl",
        "Kind = \"service-resolver\"\nName = \"api\"\n\nConnectTimeout = \"15sec\"\n",
    )]);
    assert!(
        found[0].starts_with("r.hcl:4: service-resolver \"api\": ")
            && found[0].contains("invalid duration \"15sec\""),
        "{found:?}"
    );
}

#[test]
fn redirect_and_failover_together() {
    has(
        &[(
            "r.hcl",
            "Kind = \"service-resolver\"\nName = \"api\"\nRedirect = { Service = \"other\" }\nFailover = { \"*\" = { Datacenters = [\"dc2\"] } }\n",
        )],
        "r.hcl:3: service-resolver \"api\": Redirect and Failover cannot both be set",
    );
}

#[test]
fn failover_mixing_targets_with_datacenters() {
    has(
        &[(
            "r.yaml",
            "Kind: service-resolver\nName: api\nFailover:\n  \"*\":\n    Datacenters: [dc2]\n    Targets:\n      - Datacenter: dc3\n",
        )],
        "r.yaml:5: service-resolver \"api\": Failover[\"*\"] cannot combine Targets with Datacenters, Service or ServiceSubset",
    );
}

#[test]
fn redirect_cycles_name_every_entry() {
    has(
        &[
            (
                "a.hcl",
                "Kind = \"service-resolver\"\nName = \"a\"\nRedirect = { Service = \"b\" }\n",
            ),
            (
                "b.hcl",
                "Kind = \"service-resolver\"\nName = \"b\"\nRedirect = { Service = \"c\" }\n",
            ),
            (
                "c.hcl",
                "Kind = \"service-resolver\"\nName = \"c\"\nRedirect = { Service = \"a\" }\n",
            ),
        ],
        "a.hcl:3: redirect cycle: service-resolver \"a\" → service-resolver \"b\" → service-resolver \"c\" → service-resolver \"a\"",
    );
}

#[test]
fn missing_subsets() {
    let text = "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v3\"\nSubsets = {\n  v1 = { Filter = \"Service.Meta.version == v1\" }\n}\nFailover = {\n  v2 = { Datacenters = [\"dc2\"] }\n  v1 = { ServiceSubset = \"v9\" }\n}\n";
    let files = [("r.hcl", text)];
    has(
        &files,
        "r.hcl:3: service-resolver \"api\": DefaultSubset \"v3\" is not one of its Subsets (v1)",
    );
    has(
        &files,
        "r.hcl:8: service-resolver \"api\": Failover for subset \"v2\", which is not one of its Subsets (v1)",
    );
    has(
        &files,
        "r.hcl:9: service-resolver \"api\": failover ServiceSubset \"v9\" is not a subset of \"api\" (v1)",
    );
}

#[test]
fn filters_that_do_not_parse() {
    let found = problems(&[(
        "r.yaml",
        "Kind: service-resolver\nName: api\nSubsets:\n  v1:\n    Filter: \"Service.Meta.version = v1\"\n",
    )]);
    assert!(
        found[0].starts_with("r.yaml:5: service-resolver \"api\": "),
        "{found:?}"
    );
}

#[test]
fn intention_sources() {
    let text = r#"Kind = "service-intentions"
Name = "api"
Sources = [
  { Name = "*/web", Action = "allow" },
  { Name = "web", Action = "allow" },
  { Name = "web", Action = "deny" },
  {
    Name = "ops"
    Action = "allow"
    Permissions = [{ Action = "allow", HTTP = { PathPrefix = "/" } }]
  },
]
"#;
    let files = [("i.hcl", text)];
    has(
        &files,
        "i.hcl:4: service-intentions \"api\": source \"*/web\": a wildcard namespace needs a wildcard name (\"*/*\"), a specific service cannot be named in every namespace",
    );
    has(
        &files,
        "i.hcl:6: service-intentions \"api\": source \"web\" appears twice (first at line 5)",
    );
    has(
        &files,
        "i.hcl:7: service-intentions \"api\": source \"ops\" has both Action and Permissions; use one",
    );
}

#[test]
fn the_same_entry_in_two_files() {
    has(
        &[
            ("a/web.hcl", "Kind = \"service-defaults\"\nName = \"web\"\n"),
            ("b/web.yaml", "\nKind: service-defaults\nName: web\n"),
        ],
        "b/web.yaml:2: service-defaults \"web\" is defined twice: here and at a/web.hcl:1",
    );
}

#[test]
fn exported_services_not_named_default() {
    has(
        &[(
            "e.yaml",
            "Kind: exported-services\nName: mine\nServices: []\n",
        )],
        "e.yaml:2: exported-services must be named \"default\" (one per partition; Consul CE has only the default partition), not \"mine\"",
    );
}

#[test]
fn ports_out_of_range() {
    has(
        &[("s.hcl", "service {\n  name = \"web\"\n  port = 70000\n}\n")],
        "s.hcl:3: service \"web\": port 70000 is outside 1-65535",
    );
    has(
        &[(
            "s.json",
            "{\"service\": {\"name\": \"web\", \"port\": 80,\n \"connect\": {\"sidecar_service\": {\"proxy\": {\"upstreams\": [\n {\"destination_name\": \"api\", \"local_bind_port\": 0}]}}}}}",
        )],
        "s.json:3: service \"web\": LocalBindPort 0 is outside 1-65535",
    );
}

#[test]
fn warnings_do_not_refuse() {
    let files = [
        (
            "sd.hcl",
            "Kind = \"service-defaults\"\nName = \"db\"\nProtocol = \"tcp\"\n",
        ),
        (
            "i.yaml",
            "Kind: service-intentions\nName: db\nSources:\n  - Name: web\n    Permissions:\n      - Action: allow\n        HTTP: {PathPrefix: /}\n",
        ),
        (
            "r.hcl",
            "Kind = \"service-resolver\"\nName = \"db\"\nFailover = {\n  \"*\" = { Datacenters = [\"dc9\"] }\n}\n",
        ),
    ];
    let loaded = load_files(&files, "dc1", 1);
    assert!(!loaded.has_errors(), "{:#?}", loaded.problems);
    let found: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
    assert!(found.contains(&"i.yaml:4: warning: service-intentions \"db\": source \"web\" has L7 Permissions but \"db\" speaks tcp: they count as deny".to_owned()), "{found:#?}");
    assert!(found.contains(&"r.hcl:4: warning: service-resolver \"db\": failover datacenter \"dc9\" has no instance of \"db\"".to_owned()), "{found:#?}");
}

#[test]
fn documents_of_no_known_shape() {
    has(
        &[("x.yaml", "Name: web\nPort: 80\n")],
        "x.yaml:1: not a config entry (no Kind), a catalog registration (Node and Service) or an agent service definition (service or services)",
    );
}

// ---- every kind, every format, both spellings ---------------------------------------------

/// Keys whose values are maps of user data: their keys are never re-spelled.
const MAP_KEYS: [&str; 4] = ["Meta", "Subsets", "Failover", "Config"];

fn snake(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        let prev_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
        let acronym_end = i > 0
            && chars[i - 1].is_uppercase()
            && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        if c.is_uppercase() && (prev_lower || acronym_end) {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Re-spells struct keys in snake_case, leaving user map keys alone.
fn to_snake(value: &serde_json::Value, in_map: bool) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        J::Object(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let key = if in_map { k.clone() } else { snake(k) };
                    let child_is_map = !in_map && MAP_KEYS.contains(&k.as_str());
                    (key, to_snake(v, child_is_map))
                })
                .collect(),
        ),
        J::Array(items) => J::Array(items.iter().map(|v| to_snake(v, false)).collect()),
        other => other.clone(),
    }
}

fn hcl(value: &serde_json::Value, indent: usize) -> String {
    use serde_json::Value as J;
    let pad = "  ".repeat(indent);
    match value {
        J::Object(fields) => {
            let mut out = String::from("{\n");
            for (k, v) in fields {
                out.push_str(&format!("{pad}  {:?} = {}\n", k, hcl(v, indent + 1)));
            }
            out.push_str(&format!("{pad}}}"));
            out
        }
        J::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| hcl(v, indent + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn yaml(value: &serde_json::Value, indent: usize) -> String {
    use serde_json::Value as J;
    let pad = "  ".repeat(indent);
    match value {
        J::Object(fields) => fields
            .iter()
            .map(|(k, v)| match v {
                J::Object(_) => format!("{pad}{:?}:\n{}", k, yaml(v, indent + 1)),
                J::Array(items) if !items.is_empty() => {
                    let items: String = items
                        .iter()
                        .map(|item| match item {
                            J::Object(_) => {
                                let inner = yaml(item, indent + 2);
                                format!("{pad}  -\n{inner}")
                            }
                            scalar => format!("{pad}  - {scalar}\n"),
                        })
                        .collect();
                    format!("{pad}{:?}:\n{items}", k)
                }
                scalar => format!("{pad}{:?}: {scalar}\n", k),
            })
            .collect(),
        other => format!("{pad}{other}\n"),
    }
}

/// The top level of an HCL file is a body: `key = value` lines, no braces.
fn hcl_body(value: &serde_json::Value) -> String {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {}\n", hcl(v, 0)))
        .collect()
}

#[test]
fn every_kind_is_the_same_entry_in_hcl_json_and_yaml_camel_and_snake() {
    use serde_json::json;
    let entries = [
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http", "MeshGateway": {"Mode": "local"},
               "UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 2000, "Limits": {"MaxConnections": 10, "MaxPendingRequests": 5},
                                                "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 3}}},
               "Meta": {"Owner_Team": "media", "tier": "1"}}),
        json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http", "connect_timeout_ms": 5000},
               "MeshGateway": {"Mode": "remote"}}),
        json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2_canary": {"Filter": "Service.Tags contains canary", "OnlyPassing": true}},
               "ConnectTimeout": "15s", "RequestTimeout": "30s",
               "Failover": {"*": {"Targets": [{"Datacenter": "dc2"}, {"Service": "api-backup", "Datacenter": "dc3"}]}},
               "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 1024, "MaximumRingSize": 8192},
                                "HashPolicies": [{"Field": "header", "FieldValue": "x-user", "Terminal": true}]}}),
        json!({"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "web-v2", "Datacenter": "dc2"}}),
        json!({"Kind": "service-intentions", "Name": "api",
               "Sources": [{"Name": "web", "Action": "allow", "Description": "front end"},
                           {"Name": "admin", "Permissions": [
                               {"Action": "deny", "HTTP": {"PathExact": "/v1/secret"}},
                               {"Action": "allow", "HTTP": {"PathRegex": "^/v1/.*", "Methods": ["GET", "HEAD"],
                                  "Header": [{"Name": "x-env", "Exact": "prod"}, {"Name": "x-debug", "Present": true, "Invert": true},
                                             {"Name": "x-b", "Prefix": "a"}, {"Name": "x-c", "Suffix": "z"}, {"Name": "x-d", "Regex": "^[a-f]+$"}]}}]},
                           {"Name": "*", "Action": "deny"}]}),
        json!({"Kind": "exported-services", "Name": "default",
               "Services": [{"Name": "api", "Consumers": [{"Peer": "dc2"}, {"Peer": "dc3"}]}, {"Name": "web", "Consumers": [{"Peer": "dc2"}]}]}),
        json!({"Kind": "mesh", "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2", "CipherSuites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]}},
               "HTTP": {"SanitizeXForwardedClientCert": true}, "AllowEnablingPermissiveMutualTLS": false}),
    ];
    for entry in &entries {
        let kind = entry["Kind"].as_str().unwrap();
        let snake_entry = to_snake(entry, false);
        let spellings = [
            ("camel.json", serde_json::to_string_pretty(entry).unwrap()),
            (
                "snake.json",
                serde_json::to_string_pretty(&snake_entry).unwrap(),
            ),
            ("camel.hcl", hcl_body(entry)),
            ("snake.hcl", hcl_body(&snake_entry)),
            ("camel.yaml", yaml(entry, 0)),
            ("snake.yaml", yaml(&snake_entry, 0)),
        ];
        let mut reference: Option<ConfigEntries> = None;
        for (file, text) in &spellings {
            let loaded = load_files(&[(file, text)], "dc1", 1);
            assert!(
                !loaded.has_errors(),
                "{kind} as {file} does not read:\n{text}\n{:#?}",
                loaded.problems
            );
            let entries = loaded.snapshot.entries;
            assert_eq!(
                entries.counts().values().sum::<usize>(),
                1,
                "{kind} as {file}"
            );
            match &reference {
                None => reference = Some(entries),
                Some(r) => assert_eq!(
                    format!("{:?}", strip_origins(r)),
                    format!("{:?}", strip_origins(&entries)),
                    "{kind} as {file} reads differently from camel.json:\n{text}"
                ),
            }
        }
    }
}

/// The entries without where they came from (files differ; content must not).
fn strip_origins(e: &ConfigEntries) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(
        e.service_defaults
            .values()
            .map(|s| format!("{:?}", s.entry)),
    );
    out.extend(e.proxy_defaults.iter().map(|s| format!("{:?}", s.entry)));
    out.extend(
        e.service_resolvers
            .values()
            .map(|s| format!("{:?}", s.entry)),
    );
    out.extend(
        e.service_intentions
            .values()
            .map(|s| format!("{:?}", s.entry)),
    );
    out.extend(e.exported_services.iter().map(|s| format!("{:?}", s.entry)));
    out.extend(e.mesh.iter().map(|s| format!("{:?}", s.entry)));
    // Spanned values print their lines; equality of content is what matters here.
    out.iter().map(|s| strip_lines(s)).collect()
}

fn strip_lines(debug: &str) -> String {
    let re = regex::Regex::new(r"line: \d+, ").unwrap();
    re.replace_all(debug, "").into_owned()
}

#[test]
fn a_reread_parses_only_the_files_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("a.json", r#"{"service": {"name": "a", "port": 8080}}"#);
    write("b.hcl", "service {\n  name = \"b\"\n  port = 8080\n}\n");
    write("broken.yaml", "Kind: service-defaults\nName: [\n");
    let mut cache = ParseCache::default();
    let first = load_cached(dir.path(), "dc1", 1, &mut cache);
    let parsed = |cache: &ParseCache, f: &str| cache.files.get(f).unwrap().1.clone();
    let (a, b) = (parsed(&cache, "a.json"), parsed(&cache, "b.hcl"));

    write("b.hcl", "service {\n  name = \"b\"\n  port = 9090\n}\n");
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    write("c.yaml", "service: {name: c, port: 7070}\n");
    let second = load_cached(dir.path(), "dc1", 2, &mut cache);
    // The unchanged file was not parsed again; the edited one was; the removed one is gone.
    assert!(Arc::ptr_eq(&a, &parsed(&cache, "a.json")));
    assert!(!Arc::ptr_eq(&b, &parsed(&cache, "b.hcl")));
    assert_eq!(cache.files.len(), 3);
    // What it read is what a read from scratch reads.
    let fresh = load(dir.path(), "dc1", 2);
    let ports = |l: &Loaded, s: &str| -> Vec<u16> {
        l.snapshot
            .instances("dc1", s)
            .iter()
            .map(|i| i.port)
            .collect()
    };
    for s in ["a", "b", "c"] {
        assert_eq!(ports(&second, s), ports(&fresh, s), "service {s}");
    }
    assert_eq!(ports(&second, "b"), [9090]);
    assert_eq!(second.digest, fresh.digest);
    // A broken file keeps its problem when it comes from the cache.
    assert!(first.has_errors());
    assert!(!second.has_errors());
    write("broken.yaml", "Kind: service-defaults\nName: [\n");
    load_cached(dir.path(), "dc1", 3, &mut cache);
    let again = load_cached(dir.path(), "dc1", 4, &mut cache);
    let shown: Vec<String> = again.errors().map(|p| p.to_string()).collect();
    assert_eq!(
        shown,
        first.errors().map(|p| p.to_string()).collect::<Vec<_>>()
    );
}
