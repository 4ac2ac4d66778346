//! Intentions as Envoy RBAC filters, for the ingress gateway's per-service filter chains:
//! `envoy.filters.network.rbac` for `tcp` services, `envoy.filters.http.rbac` (with L7
//! permissions) for `http`, `http2` and `grpc` ones.
//!
//! Intentions are an ordered list (highest precedence first, first match decides, then the
//! default); Envoy's RBAC is a set of policies under one action, `ALLOW` (allowed iff some
//! policy matches) or `DENY` (denied iff some policy matches). The list is flattened the way
//! Consul's `agent/xds/rbac.go` does it:
//!
//! * default deny → an `ALLOW` filter listing what is allowed; default allow → a `DENY` filter
//!   listing what is denied. Intentions (and permissions) whose action equals the default say
//!   nothing the default does not already say and produce no policy;
//! * precedence between sources is removed by subtracting: each intention's principal is its
//!   source `AND NOT` every higher-precedence source it covers (`* => api` allow under a
//!   `web => api` deny becomes "any service but web"). Higher sources are subtracted even when
//!   their intention produced no policy — that is what keeps their callers out;
//! * precedence between one intention's permissions is removed the same way: each permission
//!   becomes `AND NOT` every earlier permission; an L7 intention left without permissions
//!   produces no policy;
//! * every L4 principal goes into one policy `consul-intentions-layer4` (permission `any`);
//!   each L7 intention is a policy `consul-intentions-layer7-<i>` of its own. (Consul's names,
//!   so that stats read the same.)
//!
//! A principal is the caller's SPIFFE ID, the URI SAN of its client certificate, matched by
//! `authenticated.principal_name` with an RE2 `safe_regex`
//! `^spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>$` (a wildcard is `[^/]+`).
//! Consul never checks the datacenter; meshgate's gateways add the exported-services
//! restriction ([`Consumers`]) there: only callers whose `dc/` segment names a consuming
//! datacenter may connect at all. In an `ALLOW` filter that is the `dc` part of every
//! allowed principal; in a `DENY` filter a policy `meshgate-consumers` denies every other caller.
//!
//! Output is deterministic: Envoy's RBAC policies are a proto map, which prost keeps in a
//! `HashMap`, so the filter's config is encoded here with the policies in name order: the same
//! input gives byte-identical bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, permission, principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::model::entries::{HeaderPermission, HttpPermission};
use crate::model::intentions::{
    self, DefaultPolicy, HeaderKind, Rule, RuleAction, WILDCARD, header_kind,
};
use crate::model::{ConfigEntries, DEFAULT_NAMESPACE};

pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// The network filter's stat prefix, as Consul names it.
pub const STAT_PREFIX: &str = "connect_authz";
pub const LAYER4_POLICY: &str = "consul-intentions-layer4";
pub const LAYER7_POLICY_PREFIX: &str = "consul-intentions-layer7-";
pub const CONSUMERS_POLICY: &str = "meshgate-consumers";

/// Which datacenters may call a service through the gateway at all (from exported-services),
/// on top of its intentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumers {
    /// No restriction beyond intentions.
    Any,
    /// Only callers whose SPIFFE ID names one of these datacenters (none: nobody).
    Datacenters(BTreeSet<String>),
}

impl Consumers {
    /// Nobody (a service the exported-services entry does not name).
    pub fn none() -> Consumers {
        Consumers::Datacenters(BTreeSet::new())
    }

    /// [`Consumers::exported`] of every service the exported-services entry names, in one
    /// pass over the entry.
    pub fn index(entries: &ConfigEntries) -> HashMap<&str, Consumers> {
        let mut out: HashMap<&str, BTreeSet<String>> = HashMap::new();
        if let Some(exported) = &entries.exported_services {
            for s in &exported.entry.services {
                out.entry(s.name.as_str()).or_default().extend(
                    s.consumers
                        .iter()
                        .filter(|c| !c.peer.is_empty())
                        .map(|c| c.peer.clone()),
                );
            }
        }
        out.into_iter()
            .map(|(name, dcs)| (name, Consumers::Datacenters(dcs)))
            .collect()
    }

    /// The consumers the `exported-services` entry gives `service`: its consumers' `Peer`
    /// names, which name datacenters in meshgate. A service not exported has none.
    pub fn exported(entries: &ConfigEntries, service: &str) -> Consumers {
        let mut dcs = BTreeSet::new();
        if let Some(exported) = &entries.exported_services {
            for s in exported.entry.services.iter().filter(|s| s.name == service) {
                dcs.extend(
                    s.consumers
                        .iter()
                        .filter(|c| !c.peer.is_empty())
                        .map(|c| c.peer.clone()),
                );
            }
        }
        Consumers::Datacenters(dcs)
    }
}

/// The network RBAC filter of a `tcp` destination (L7 intentions count as deny here).
pub fn network_rbac(
    entries: &ConfigEntries,
    destination: &str,
    trust_domain: &str,
    consumers: &Consumers,
    default: DefaultPolicy,
) -> Filter {
    let (action, policies) = rules(
        entries,
        destination,
        trust_domain,
        consumers,
        default,
        false,
    );
    let mut value = encode_rules_field(action, &policies);
    NetworkRbac {
        stat_prefix: STAT_PREFIX.to_owned(),
        ..Default::default()
    }
    .encode(&mut value)
    .expect("a Vec grows");
    Filter {
        name: NETWORK_RBAC_FILTER.to_owned(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value,
        })),
    }
}

/// The HTTP RBAC filter of an `http`, `http2` or `grpc` destination, with L7 permissions.
pub fn http_rbac(
    entries: &ConfigEntries,
    destination: &str,
    trust_domain: &str,
    consumers: &Consumers,
    default: DefaultPolicy,
) -> HttpFilter {
    let (action, policies) = rules(entries, destination, trust_domain, consumers, default, true);
    HttpFilter {
        name: HTTP_RBAC_FILTER.to_owned(),
        config_type: Some(HttpFilterConfig::TypedConfig(Any {
            type_url: HttpRbac::type_url(),
            value: encode_rules_field(action, &policies),
        })),
        ..Default::default()
    }
}

/// The RBAC action and policies for a destination.
pub fn rules(
    entries: &ConfigEntries,
    destination: &str,
    trust_domain: &str,
    consumers: &Consumers,
    default: DefaultPolicy,
    l7: bool,
) -> (RbacAction, BTreeMap<String, Policy>) {
    let action = match default {
        DefaultPolicy::Deny => RbacAction::Allow,
        DefaultPolicy::Allow => RbacAction::Deny,
    };
    let mut policies = BTreeMap::new();
    // In an allow-list, the consumer restriction is the dc part of every allowed principal.
    let dc = match (default, consumers) {
        (DefaultPolicy::Deny, Consumers::Datacenters(dcs)) if dcs.is_empty() => {
            return (action, policies);
        }
        (DefaultPolicy::Deny, Consumers::Datacenters(dcs)) => format!(
            "(?:{})",
            dcs.iter()
                .map(|d| re2_escape(d))
                .collect::<Vec<_>>()
                .join("|")
        ),
        _ => ANY_SEGMENT.to_owned(),
    };

    let list = intentions::rules_for(entries, destination);
    let mut layer4 = Vec::new();
    let mut layer7 = Vec::new();
    for (i, rule) in list.iter().enumerate() {
        let principal = || {
            let higher: Vec<&Rule> = list[..i].iter().filter(|h| rule.covers(h)).collect();
            source_principal(rule, &higher, trust_domain, &dc)
        };
        match (&rule.action, l7) {
            (RuleAction::Permissions(permissions), true) => {
                let flat = flatten_permissions(permissions, default);
                if !flat.is_empty() {
                    layer7.push(Policy {
                        permissions: flat,
                        principals: vec![principal()],
                        ..Default::default()
                    });
                }
            }
            _ => {
                if rule.l4_action() != default.action() {
                    layer4.push(principal());
                }
            }
        }
    }
    if !layer4.is_empty() {
        policies.insert(
            LAYER4_POLICY.to_owned(),
            Policy {
                permissions: vec![any_permission()],
                principals: layer4,
                ..Default::default()
            },
        );
    }
    for (i, policy) in layer7.into_iter().enumerate() {
        policies.insert(format!("{LAYER7_POLICY_PREFIX}{i}"), policy);
    }
    // In a deny-list, a policy of its own denies callers from other datacenters.
    if let (DefaultPolicy::Allow, Consumers::Datacenters(dcs)) = (default, consumers) {
        let principal = if dcs.is_empty() {
            Principal {
                identifier: Some(principal::Identifier::Any(true)),
            }
        } else {
            let pattern = format!(
                "^spiffe://{}/ns/{}/dc/(?:{})/svc/{ANY_SEGMENT}$",
                re2_escape(trust_domain),
                re2_escape(DEFAULT_NAMESPACE),
                dcs.iter()
                    .map(|d| re2_escape(d))
                    .collect::<Vec<_>>()
                    .join("|")
            );
            not_principal(authenticated(pattern))
        };
        policies.insert(
            CONSUMERS_POLICY.to_owned(),
            Policy {
                permissions: vec![any_permission()],
                principals: vec![principal],
                ..Default::default()
            },
        );
    }
    (action, policies)
}

/// `text` as a literal in an RE2 (and Rust `regex`) pattern, outside character classes: every
/// metacharacter gets a backslash (RE2 takes any escaped punctuation as itself), nothing else
/// does, so that names stay readable in the config (`web\.v2`, `dc-1`).
pub fn re2_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One path segment of a SPIFFE ID, for wildcards.
const ANY_SEGMENT: &str = "[^/]+";

fn spiffe_pattern(namespace: &str, service: &str, trust_domain: &str, dc: &str) -> String {
    let part = |s: &str| {
        if s == WILDCARD {
            ANY_SEGMENT.to_owned()
        } else {
            re2_escape(s)
        }
    };
    format!(
        "^spiffe://{}/ns/{}/dc/{dc}/svc/{}$",
        re2_escape(trust_domain),
        part(namespace),
        part(service)
    )
}

/// The rule's source, minus the callers of the higher-precedence rules it covers.
fn source_principal(rule: &Rule, higher: &[&Rule], trust_domain: &str, dc: &str) -> Principal {
    let own = authenticated(spiffe_pattern(
        &rule.source_namespace,
        &rule.source,
        trust_domain,
        dc,
    ));
    // A higher source covered by another higher source needs no subtraction of its own
    // (sources are unique in `rules_for`, so "covers" between two of them is strict).
    let minus: Vec<&Rule> = higher
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            !higher
                .iter()
                .enumerate()
                .any(|(j, other)| j != *i && other.covers(h))
        })
        .map(|(_, h)| *h)
        .collect();
    if minus.is_empty() {
        return own;
    }
    let mut ids = vec![own];
    ids.extend(minus.iter().map(|h| {
        not_principal(authenticated(spiffe_pattern(
            &h.source_namespace,
            &h.source,
            trust_domain,
            ANY_SEGMENT,
        )))
    }));
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn authenticated(pattern: String) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(regex_matcher(pattern))),
                    ignore_case: false,
                }),
            },
        )),
    }
}

fn not_principal(p: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(p))),
    }
}

fn regex_matcher(regex: String) -> RegexMatcher {
    // No engine named: Envoy's default (and only) engine is RE2.
    RegexMatcher {
        regex,
        engine_type: None,
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn and_permissions(mut parts: Vec<Permission>) -> Permission {
    match parts.len() {
        0 => any_permission(),
        1 => parts.remove(0),
        _ => Permission {
            rule: Some(permission::Rule::AndRules(permission::Set { rules: parts })),
        },
    }
}

/// First match → a set: each permission AND NOT every earlier one; those with the default's
/// action dropped.
fn flatten_permissions(
    permissions: &[crate::model::entries::Permission],
    default: DefaultPolicy,
) -> Vec<Permission> {
    let converted: Vec<Permission> = permissions
        .iter()
        .map(|p| match &p.http {
            Some(http) => http_permission(http),
            None => any_permission(),
        })
        .collect();
    let mut out = Vec::new();
    for (i, p) in permissions.iter().enumerate() {
        if p.action == default.action() {
            continue;
        }
        let mut parts = vec![converted[i].clone()];
        parts.extend(converted[..i].iter().map(|earlier| Permission {
            rule: Some(permission::Rule::NotRule(Box::new(earlier.clone()))),
        }));
        out.push(and_permissions(parts));
    }
    out
}

fn http_permission(http: &HttpPermission) -> Permission {
    let mut parts = Vec::new();
    let path = if !http.path_exact.is_empty() {
        Some(MatchPattern::Exact(http.path_exact.clone()))
    } else if !http.path_prefix.is_empty() {
        Some(MatchPattern::Prefix(http.path_prefix.clone()))
    } else if !http.path_regex.value.is_empty() {
        Some(MatchPattern::SafeRegex(regex_matcher(
            http.path_regex.value.clone(),
        )))
    } else {
        None
    };
    if let Some(pattern) = path {
        parts.push(Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case: false,
                })),
            })),
        });
    }
    for h in &http.header {
        if let Some(matcher) = header_matcher(&h.value) {
            parts.push(Permission {
                rule: Some(permission::Rule::Header(matcher)),
            });
        }
    }
    if !http.methods.is_empty() {
        let methods: Vec<String> = http
            .methods
            .iter()
            .map(|m| re2_escape(&m.to_ascii_uppercase()))
            .collect();
        parts.push(Permission {
            rule: Some(permission::Rule::Header(HeaderMatcher {
                name: ":method".to_owned(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(regex_matcher(methods.join("|")))),
                    ignore_case: false,
                })),
                ..Default::default()
            })),
        });
    }
    and_permissions(parts)
}

fn header_matcher(h: &HeaderPermission) -> Option<HeaderMatcher> {
    let string = |pattern: MatchPattern, ignore_case: bool| {
        Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case,
        }))
    };
    let specifier = match header_kind(h) {
        HeaderKind::Exact => string(MatchPattern::Exact(h.exact.clone()), h.ignore_case),
        // Envoy ignores ignore_case for regexes; RE2's (?i) says it.
        HeaderKind::Regex => string(
            MatchPattern::SafeRegex(regex_matcher(if h.ignore_case {
                format!("(?i){}", h.regex)
            } else {
                h.regex.clone()
            })),
            false,
        ),
        HeaderKind::Prefix => string(MatchPattern::Prefix(h.prefix.clone()), h.ignore_case),
        HeaderKind::Suffix => string(MatchPattern::Suffix(h.suffix.clone()), h.ignore_case),
        HeaderKind::Contains => string(MatchPattern::Contains(h.contains.clone()), h.ignore_case),
        HeaderKind::Present => Some(HeaderMatchSpecifier::PresentMatch(true)),
        // Nothing to match on (refused by validation): Consul skips it.
        HeaderKind::None => return None,
    };
    Some(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        header_match_specifier: specifier,
        invert_match: h.invert,
        ..Default::default()
    })
}

/// Field 1 (`rules`, an `envoy.config.rbac.v3.RBAC`) of both RBAC filter configs, encoded
/// with its policies map in name order.
fn encode_rules_field(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Vec<u8> {
    use prost::encoding::{WireType, btree_map, encode_key, encode_varint, int32, message, string};
    let mut rules = Vec::new();
    let action = action as i32;
    if action != 0 {
        int32::encode(1, &action, &mut rules);
    }
    btree_map::encode(
        string::encode,
        string::encoded_len,
        message::encode,
        message::encoded_len,
        2,
        policies,
        &mut rules,
    );
    let mut out = Vec::with_capacity(rules.len() + 8);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(rules.len() as u64, &mut out);
    out.extend_from_slice(&rules);
    out
}

#[cfg(test)]
mod tests;
