use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;

use super::*;
use crate::model::intentions::tests::entries;
use crate::model::intentions::{HttpRequest, check, check_request};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

const MESH: &str = r#"
Kind: service-defaults
Name: api
Protocol: http
---
Kind: service-defaults
Name: db
Protocol: tcp
---
Kind: service-intentions
Name: api
Sources:
  - Name: web
    Permissions:
      - Action: deny
        HTTP: {PathExact: /admin}
      - Action: allow
        HTTP: {PathPrefix: /v1/, Methods: [GET, HEAD]}
      - Action: allow
        HTTP:
          PathRegex: "/v2/[a-z]+"
          Header:
            - {Name: X-Env, Exact: prod, IgnoreCase: true}
            - {Name: x-debug, Present: true, Invert: true}
  - {Name: batch, Action: deny}
  - {Name: "*", Action: allow}
---
Kind: service-intentions
Name: "*"
Sources:
  - {Name: ops, Action: allow}
  - {Name: web, Action: deny}
  - {Name: "*", Action: deny}
---
Kind: service-intentions
Name: db
Sources:
  - {Name: web, Action: allow}
  - Name: reporter
    Permissions:
      - Action: allow
        HTTP: {PathPrefix: /}
  - {Name: "*", Action: deny}
"#;

/// The `rules` of a filter's typed config, policies in name order.
fn decode(type_url: &str, value: &[u8]) -> (RbacAction, BTreeMap<String, Policy>) {
    let rules = if type_url == NetworkRbac::type_url() {
        let rbac = NetworkRbac::decode(value).expect("network RBAC decodes");
        assert_eq!(rbac.stat_prefix, STAT_PREFIX);
        rbac.rules
    } else {
        assert_eq!(type_url, HttpRbac::type_url());
        HttpRbac::decode(value).expect("HTTP RBAC decodes").rules
    }
    .expect("rules set");
    (
        RbacAction::try_from(rules.action).unwrap(),
        rules.policies.into_iter().collect(),
    )
}

fn network(f: &Filter) -> (RbacAction, BTreeMap<String, Policy>) {
    assert_eq!(f.name, NETWORK_RBAC_FILTER);
    let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
        panic!("typed config expected")
    };
    decode(&any.type_url, &any.value)
}

fn http(f: &HttpFilter) -> (RbacAction, BTreeMap<String, Policy>) {
    assert_eq!(f.name, HTTP_RBAC_FILTER);
    let Some(HttpFilterConfig::TypedConfig(any)) = &f.config_type else {
        panic!("typed config expected")
    };
    decode(&any.type_url, &any.value)
}

// ---------------------------------------------------------------------------------------------
// A small evaluator of Envoy's RBAC semantics over the decoded protos.

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let fold = |s: &str| {
        if m.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    match m.match_pattern.as_ref().expect("a pattern") {
        MatchPattern::Exact(e) => fold(value) == fold(e),
        MatchPattern::Prefix(p) => fold(value).starts_with(&fold(p)),
        MatchPattern::Suffix(s) => fold(value).ends_with(&fold(s)),
        MatchPattern::Contains(c) => fold(value).contains(&fold(c)),
        MatchPattern::SafeRegex(r) => {
            assert!(r.engine_type.is_none());
            regex::Regex::new(&format!("^(?:{})$", r.regex))
                .expect("valid regex")
                .is_match(value)
        }
        other => panic!("unexpected pattern {other:?}"),
    }
}

fn principal_matches(p: &Principal, uri: &str) -> bool {
    match p.identifier.as_ref().expect("an identifier") {
        principal::Identifier::Any(any) => *any,
        principal::Identifier::Authenticated(a) => {
            string_matches(a.principal_name.as_ref().unwrap(), uri)
        }
        principal::Identifier::AndIds(set) => set.ids.iter().all(|p| principal_matches(p, uri)),
        principal::Identifier::OrIds(set) => set.ids.iter().any(|p| principal_matches(p, uri)),
        principal::Identifier::NotId(p) => !principal_matches(p, uri),
        other => panic!("unexpected principal {other:?}"),
    }
}

fn header_matches(h: &HeaderMatcher, request: &HttpRequest) -> bool {
    assert!(!h.treat_missing_header_as_empty);
    let specifier = h.header_match_specifier.as_ref().expect("a specifier");
    let Some(value) = request.header_value(&h.name) else {
        return matches!(specifier, HeaderMatchSpecifier::PresentMatch(true)) && h.invert_match;
    };
    let matched = match specifier {
        HeaderMatchSpecifier::StringMatch(m) => string_matches(m, &value),
        HeaderMatchSpecifier::PresentMatch(present) => *present,
        other => panic!("unexpected header matcher {other:?}"),
    };
    matched != h.invert_match
}

fn permission_matches(p: &Permission, request: Option<&HttpRequest>) -> bool {
    match p.rule.as_ref().expect("a rule") {
        permission::Rule::Any(any) => *any,
        permission::Rule::AndRules(set) => set.rules.iter().all(|p| permission_matches(p, request)),
        permission::Rule::OrRules(set) => set.rules.iter().any(|p| permission_matches(p, request)),
        permission::Rule::NotRule(p) => !permission_matches(p, request),
        permission::Rule::UrlPath(m) => {
            let request = request.expect("an L7 permission in a network filter");
            let Some(path_matcher::Rule::Path(s)) = &m.rule else {
                panic!("path expected")
            };
            string_matches(s, request.path_only())
        }
        permission::Rule::Header(h) => {
            header_matches(h, request.expect("an L7 permission in a network filter"))
        }
        other => panic!("unexpected permission {other:?}"),
    }
}

/// Envoy's verdict for a caller (its SPIFFE ID) and, for HTTP, a request.
fn envoy_allows(
    (action, policies): &(RbacAction, BTreeMap<String, Policy>),
    uri: &str,
    request: Option<&HttpRequest>,
) -> bool {
    let matched = policies.values().any(|p| {
        assert!(!p.principals.is_empty() && !p.permissions.is_empty());
        p.principals.iter().any(|pr| principal_matches(pr, uri))
            && p.permissions
                .iter()
                .any(|pe| permission_matches(pe, request))
    });
    match action {
        RbacAction::Allow => matched,
        RbacAction::Deny => !matched,
        RbacAction::Log => panic!("LOG is never produced"),
    }
}

fn uri(service: &str, dc: &str) -> String {
    crate::translate::names::spiffe_id(service, dc, TD)
}

fn consumers_table() -> Vec<Consumers> {
    vec![
        Consumers::Any,
        Consumers::Datacenters(BTreeSet::from(["dc2".to_owned(), "dc-3.x".to_owned()])),
        Consumers::Datacenters(BTreeSet::new()),
    ]
}

fn consumer_ok(consumers: &Consumers, dc: &str) -> bool {
    match consumers {
        Consumers::Any => true,
        Consumers::Datacenters(dcs) => dcs.contains(dc),
    }
}

const CALLERS: [&str; 6] = ["web", "batch", "ops", "reporter", "other", "we"];
const DCS: [&str; 4] = ["dc1", "dc2", "dc-3.x", "dc-3yx"];

fn requests() -> Vec<HttpRequest> {
    vec![
        HttpRequest::new("GET", "/admin"),
        HttpRequest::new("GET", "/v1/users?x=1"),
        HttpRequest::new("POST", "/v1/users"),
        HttpRequest::new("PUT", "/v2/orders").header("x-env", "PROD"),
        HttpRequest::new("PUT", "/v2/orders")
            .header("x-env", "prod")
            .header("X-Debug", "1"),
        HttpRequest::new("PUT", "/v2/orders/7").header("x-env", "prod"),
        HttpRequest::new("GET", "/"),
    ]
}

/// The gateway's HTTP RBAC and the engine's L7 evaluation agree for every caller, datacenter,
/// request, consumer set and default policy.
#[test]
fn http_rbac_agrees_with_the_engine() {
    let e = entries(MESH);
    let mut checked = 0;
    for destination in ["api", "other-http"] {
        for default in [DefaultPolicy::Deny, DefaultPolicy::Allow] {
            for consumers in consumers_table() {
                let filter = http(&http_rbac(&e, destination, TD, &consumers, default));
                for caller in CALLERS {
                    for dc in DCS {
                        for request in requests() {
                            let want = consumer_ok(&consumers, dc)
                                && check_request(&e, caller, destination, &request, default)
                                    .allowed;
                            let got = envoy_allows(&filter, &uri(caller, dc), Some(&request));
                            assert_eq!(
                                got, want,
                                "{caller}@{dc} => {destination} {request:?}, default {default:?}, {consumers:?}: {filter:#?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        checked,
        2 * 2 * 3 * CALLERS.len() * DCS.len() * requests().len()
    );
}

/// The network RBAC and the L4 check agree (L7 intentions count as deny).
#[test]
fn network_rbac_agrees_with_the_check() {
    let e = entries(MESH);
    for destination in ["db", "api", "other-tcp"] {
        for default in [DefaultPolicy::Deny, DefaultPolicy::Allow] {
            for consumers in consumers_table() {
                let filter = network(&network_rbac(&e, destination, TD, &consumers, default));
                for policy in filter.1.values() {
                    assert!(
                        policy
                            .permissions
                            .iter()
                            .all(|p| matches!(p.rule, Some(permission::Rule::Any(true)))),
                        "network policies match any bytes"
                    );
                }
                for caller in CALLERS {
                    for dc in DCS {
                        let want = consumer_ok(&consumers, dc)
                            && check(&e, caller, destination, default).allowed;
                        assert_eq!(
                            envoy_allows(&filter, &uri(caller, dc), None),
                            want,
                            "{caller}@{dc} => {destination}, default {default:?}, {consumers:?}: {filter:#?}"
                        );
                    }
                }
            }
        }
    }
    // The cases that matter, spelled out: reporter's L7 intention on tcp db is a deny.
    let e = entries(MESH);
    let f = network(&network_rbac(
        &e,
        "db",
        TD,
        &Consumers::Any,
        DefaultPolicy::Allow,
    ));
    assert!(!envoy_allows(&f, &uri("reporter", "dc1"), None));
    assert!(envoy_allows(&f, &uri("web", "dc1"), None));
    assert!(!envoy_allows(&f, &uri("other", "dc1"), None));
}

fn authenticated_regex(p: &Principal) -> &str {
    let Some(principal::Identifier::Authenticated(a)) = &p.identifier else {
        panic!("authenticated principal expected, got {p:?}")
    };
    let Some(MatchPattern::SafeRegex(r)) = &a.principal_name.as_ref().unwrap().match_pattern else {
        panic!("safe_regex expected")
    };
    &r.regex
}

#[test]
fn network_principals_are_spiffe_regexes() {
    let e = entries(MESH);
    // default deny: an allow-list; web is allowed, * => db deny is the default (no policy).
    let (action, policies) = network(&network_rbac(
        &e,
        "db",
        TD,
        &Consumers::Any,
        DefaultPolicy::Deny,
    ));
    assert_eq!(action, RbacAction::Allow);
    assert_eq!(policies.keys().collect::<Vec<_>>(), vec![LAYER4_POLICY]);
    let l4 = &policies[LAYER4_POLICY];
    assert_eq!(l4.principals.len(), 1);
    assert_eq!(
        authenticated_regex(&l4.principals[0]),
        r"^spiffe://11111111-2222-3333-4444-555555555555\.consul/ns/default/dc/[^/]+/svc/web$"
    );

    // default allow: a deny-list of reporter (L7 counts as deny) and "* but web and reporter".
    let (action, policies) = network(&network_rbac(
        &e,
        "db",
        TD,
        &Consumers::Any,
        DefaultPolicy::Allow,
    ));
    assert_eq!(action, RbacAction::Deny);
    let l4 = &policies[LAYER4_POLICY];
    assert_eq!(l4.principals.len(), 2);
    assert!(authenticated_regex(&l4.principals[0]).ends_with("/svc/reporter$"));
    let Some(principal::Identifier::AndIds(set)) = &l4.principals[1].identifier else {
        panic!("AND expected: {:?}", l4.principals[1])
    };
    assert!(authenticated_regex(&set.ids[0]).ends_with("/svc/[^/]+$"));
    let nots: Vec<&str> = set.ids[1..]
        .iter()
        .map(|p| {
            let Some(principal::Identifier::NotId(inner)) = &p.identifier else {
                panic!("NOT expected")
            };
            authenticated_regex(inner)
        })
        .collect();
    assert_eq!(nots.len(), 2);
    assert!(nots[0].ends_with("/svc/reporter$") && nots[1].ends_with("/svc/web$"));
}

#[test]
fn consumers_restrict_the_datacenter() {
    let e = entries(MESH);
    let consumers = Consumers::Datacenters(BTreeSet::from(["dc2".to_owned(), "dc3".to_owned()]));
    // allow-list: the dc part of the allowed principal
    let (_, policies) = network(&network_rbac(&e, "db", TD, &consumers, DefaultPolicy::Deny));
    assert!(
        authenticated_regex(&policies[LAYER4_POLICY].principals[0])
            .ends_with("/ns/default/dc/(?:dc2|dc3)/svc/web$")
    );
    // deny-list: a policy denying everyone outside dc2 and dc3
    let (_, policies) = network(&network_rbac(
        &e,
        "db",
        TD,
        &consumers,
        DefaultPolicy::Allow,
    ));
    let c = &policies[CONSUMERS_POLICY];
    let Some(principal::Identifier::NotId(inner)) = &c.principals[0].identifier else {
        panic!("NOT expected")
    };
    assert!(authenticated_regex(inner).ends_with("/dc/(?:dc2|dc3)/svc/[^/]+$"));
    // nobody: no policy in an allow-list, "any" in a deny-list
    let none = Consumers::Datacenters(BTreeSet::new());
    let (action, policies) = network(&network_rbac(&e, "db", TD, &none, DefaultPolicy::Deny));
    assert_eq!((action, policies.len()), (RbacAction::Allow, 0));
    let (_, policies) = network(&network_rbac(&e, "db", TD, &none, DefaultPolicy::Allow));
    assert_eq!(
        policies[CONSUMERS_POLICY].principals[0].identifier,
        Some(principal::Identifier::Any(true))
    );
}

#[test]
fn consumers_come_from_exported_services() {
    let e = entries(
        "Kind: exported-services\nName: default\nServices:\n  - Name: api\n    Consumers: [{Peer: dc2}, {Peer: dc3}]\n",
    );
    assert_eq!(
        Consumers::exported(&e, "api"),
        Consumers::Datacenters(BTreeSet::from(["dc2".to_owned(), "dc3".to_owned()]))
    );
    assert_eq!(
        Consumers::exported(&e, "db"),
        Consumers::Datacenters(BTreeSet::new())
    );
}

#[test]
fn l7_permissions_become_first_match_sets() {
    let e = entries(MESH);
    let (action, policies) = http(&http_rbac(
        &e,
        "api",
        TD,
        &Consumers::Any,
        DefaultPolicy::Deny,
    ));
    assert_eq!(action, RbacAction::Allow);
    assert_eq!(
        policies.keys().collect::<Vec<_>>(),
        vec![LAYER4_POLICY, "consul-intentions-layer7-0"]
    );
    let l7 = &policies["consul-intentions-layer7-0"];
    assert!(authenticated_regex(&l7.principals[0]).ends_with("/svc/web$"));
    // The deny of /admin is the default: it is left out, but subtracted from both allows.
    assert_eq!(l7.permissions.len(), 2);
    let Some(permission::Rule::AndRules(first)) = &l7.permissions[0].rule else {
        panic!("AND expected")
    };
    // /v1/ prefix AND :method GET|HEAD, AND NOT /admin
    let Some(permission::Rule::AndRules(v1)) = &first.rules[0].rule else {
        panic!("AND expected")
    };
    let Some(permission::Rule::UrlPath(path)) = &v1.rules[0].rule else {
        panic!("path expected")
    };
    assert_eq!(
        path.rule,
        Some(path_matcher::Rule::Path(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix("/v1/".into())),
            ignore_case: false
        }))
    );
    let Some(permission::Rule::Header(method)) = &v1.rules[1].rule else {
        panic!("header expected")
    };
    assert_eq!(method.name, ":method");
    let Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(r)),
        ..
    })) = &method.header_match_specifier
    else {
        panic!("regex expected")
    };
    assert_eq!(r.regex, "GET|HEAD");
    assert!(matches!(
        &first.rules[1].rule,
        Some(permission::Rule::NotRule(_))
    ));
    // The third permission: headers with ignore_case and an inverted Present.
    let Some(permission::Rule::AndRules(third)) = &l7.permissions[1].rule else {
        panic!("AND expected")
    };
    let Some(permission::Rule::AndRules(parts)) = &third.rules[0].rule else {
        panic!("AND expected")
    };
    let headers: Vec<&HeaderMatcher> = parts
        .rules
        .iter()
        .filter_map(|p| match &p.rule {
            Some(permission::Rule::Header(h)) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[0].name, "x-env");
    assert_eq!(
        headers[0].header_match_specifier,
        Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact("prod".into())),
            ignore_case: true
        }))
    );
    assert_eq!(
        (&headers[1].header_match_specifier, headers[1].invert_match),
        (&Some(HeaderMatchSpecifier::PresentMatch(true)), true)
    );
    // Two NOTs: the /admin deny and the /v1/ allow before it.
    assert_eq!(third.rules.len(), 3);
}

#[test]
fn the_same_input_gives_the_same_bytes() {
    let e = entries(MESH);
    let consumers = Consumers::Datacenters(BTreeSet::from(["dc2".to_owned()]));
    for default in [DefaultPolicy::Deny, DefaultPolicy::Allow] {
        let first = http_rbac(&e, "api", TD, &consumers, default).encode_to_vec();
        // More than one policy: a HashMap would reorder them from one build to the next.
        assert!(http(&http_rbac(&e, "api", TD, &consumers, default)).1.len() >= 2);
        for _ in 0..20 {
            assert_eq!(
                http_rbac(&e, "api", TD, &consumers, default).encode_to_vec(),
                first
            );
        }
        let first = network_rbac(&e, "db", TD, &consumers, default).encode_to_vec();
        for _ in 0..20 {
            assert_eq!(
                network_rbac(&e, "db", TD, &consumers, default).encode_to_vec(),
                first
            );
        }
    }
    // And it is what prost would write with the policies in name order.
    let filter = http_rbac(&e, "api", TD, &consumers, DefaultPolicy::Allow);
    let Some(HttpFilterConfig::TypedConfig(any)) = &filter.config_type else {
        panic!()
    };
    let decoded = HttpRbac::decode(&any.value[..]).unwrap();
    assert_eq!(decoded.encoded_len(), any.value.len());
}

#[test]
fn names_are_escaped_for_re2() {
    let e = entries(
        "Kind: service-intentions\nName: db\nSources:\n  - {Name: web.v2, Action: allow}\n",
    );
    let consumers = Consumers::Datacenters(BTreeSet::from(["dc+1".to_owned()]));
    let (_, policies) = network(&network_rbac(
        &e,
        "db",
        "td.consul",
        &consumers,
        DefaultPolicy::Deny,
    ));
    assert_eq!(
        authenticated_regex(&policies[LAYER4_POLICY].principals[0]),
        r"^spiffe://td\.consul/ns/default/dc/(?:dc\+1)/svc/web\.v2$"
    );
    let f = (RbacAction::Allow, policies);
    assert!(envoy_allows(
        &f,
        "spiffe://td.consul/ns/default/dc/dc+1/svc/web.v2",
        None
    ));
    assert!(!envoy_allows(
        &f,
        "spiffe://td.consul/ns/default/dc/dc11/svc/webxv2",
        None
    ));
}

/// A readable, ordered rendering of a filter's rules for golden files.
fn golden(rules: &(RbacAction, BTreeMap<String, Policy>)) -> String {
    format!("action: {:?}\npolicies: {:#?}\n", rules.0, rules.1)
}

#[test]
fn golden_network_rbac() {
    let e = entries(MESH);
    let consumers = Consumers::Datacenters(BTreeSet::from(["dc2".to_owned(), "dc3".to_owned()]));
    insta::assert_snapshot!(
        "network_db_default_deny_consumers",
        golden(&network(&network_rbac(
            &e,
            "db",
            TD,
            &consumers,
            DefaultPolicy::Deny
        )))
    );
    insta::assert_snapshot!(
        "network_db_default_allow_consumers",
        golden(&network(&network_rbac(
            &e,
            "db",
            TD,
            &consumers,
            DefaultPolicy::Allow
        )))
    );
}

#[test]
fn golden_http_rbac() {
    let e = entries(MESH);
    insta::assert_snapshot!(
        "http_api_default_deny",
        golden(&http(&http_rbac(
            &e,
            "api",
            TD,
            &Consumers::Any,
            DefaultPolicy::Deny
        )))
    );
    insta::assert_snapshot!(
        "http_api_default_allow",
        golden(&http(&http_rbac(
            &e,
            "api",
            TD,
            &Consumers::Any,
            DefaultPolicy::Allow
        )))
    );
}

#[test]
fn re2_escape_keeps_every_character_literal() {
    let all: String = (' '..='~').collect();
    for text in [all.as_str(), "web.v2", "dc-1", "a|b", r"\d", "(?i)x"] {
        let pattern = format!("^{}$", re2_escape(text));
        let re = regex::Regex::new(&pattern).expect(&pattern);
        assert!(re.is_match(text), "{pattern}");
        assert!(!re.is_match(&format!("{text}x")), "{pattern}");
    }
    assert_eq!(re2_escape("web.v2-x"), r"web\.v2-x");
}
