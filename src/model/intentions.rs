//! The intention engine: which caller may reach which service, decided from the
//! `service-intentions` config entries the way Consul decides it. Pure functions over
//! [`ConfigEntries`]; the gateway's RBAC filters (`translate::rbac`) and
//! `meshgate intention check` both build on [`rules_for`], so the two cannot disagree.
//!
//! # Consul's semantics, as established from its source and docs
//!
//! * **Precedence** (`agent/structs/intention.go` `UpdatePrecedence`, and
//!   `config_entry_intentions.go` for config entries): a destination with an exact namespace
//!   and name starts at 9, `ns/*` at 6, `*/*` at 3; every wildcard part of the source takes one
//!   off. With Consul CE's single namespace that gives `web => api` 9, `* => api` 8,
//!   `web => *` 6, `* => *` 5. Intentions of equal precedence are ordered by
//!   (source namespace, source name, destination namespace, destination name), ascending
//!   (`IntentionPrecedenceSorter`); only intentions whose sources cannot overlap ever tie.
//! * **The highest-precedence matching intention decides**, whatever its action: a `* => api`
//!   deny under a `web => api` allow does not stop `web`, and a `* => api` deny stops `web`
//!   even when a `web => *` allow exists (precedence 8 beats 6). Never "deny wins"
//!   (`agent/consul/state/intention.go` `IntentionDecision`: the first match in precedence
//!   order is taken).
//! * **No match**: the default policy (the agent's `default_intention_policy`, else the ACL
//!   default policy). meshgate is secure by default: `deny` unless told otherwise.
//! * **L7 intentions at L4**: an intention with `Permissions` cannot be decided without seeing
//!   the request, so `consul intention check` and the network RBAC of a `tcp` service count
//!   it as **deny** (`Intention.Check` passes `AllowPermissions: false`;
//!   `agent/xds/rbac.go` `intentionToIntermediateRBACForm` turns it into a deny on a
//!   non-HTTP service).
//! * **L7 evaluation**: the permissions of the one intention that matched the caller are tried
//!   in their written order and the first whose HTTP match applies decides (allow or deny). When
//!   none applies the request gets the **default policy** — evaluation does *not* fall through
//!   to lower-precedence intentions (docs "service-intentions", `Permissions`: traffic that
//!   matches none of an intention's permissions gets the default intention behaviour; in
//!   `rbac.go` every lower-precedence wildcard intention gets `AND NOT <this source>`, so a
//!   request that escapes every permission matches nothing but the default).
//! * Within one HTTP permission every given part must match: one of `PathExact`,
//!   `PathPrefix`, `PathRegex`; each `Header` (one of `Exact`, `Regex`, `Prefix`, `Suffix`,
//!   `Contains`, `Present`, optionally `IgnoreCase` and `Invert`); `Methods`. Regexes are RE2,
//!   matched against the whole value (Envoy's `safe_regex`). The path is matched without the
//!   query string. As in Envoy, a header that is absent matches nothing — not even an inverted
//!   matcher — except an inverted `Present`.
//!
//! # How rules are listed
//!
//! [`rules_for`] returns, for one destination, the intentions of its own entry and of the `*`
//! entry that can still decide something, highest precedence first. Two kinds of intention can
//! never decide and are left out, as Consul's `rbac.go` does for the first
//! (`removeSameSourceIntentions`): one whose source already appears in a higher-precedence
//! intention (`web => *` under `web => api`), and one whose source is wholly covered by a
//! higher-precedence wildcard source (`web => *` under `* => api`; Consul's RBAC generation
//! keeps this one and so lets `web` through where `consul intention check` says Denied —
//! meshgate follows the precedence rule above in both places).
//!
//! Sources meshgate does not serve are skipped: a `Peer` or `SamenessGroup` source (refused
//! by `meshgate validate`), a non-default partition, a namespace other than `default` or `*`.

use std::fmt;

use super::DEFAULT_NAMESPACE;
use super::entries::{Action, ConfigEntries, HeaderPermission, HttpPermission, Permission};

/// Consul's wildcard.
pub const WILDCARD: &str = "*";

/// What happens to a caller no intention matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DefaultPolicy {
    Allow,
    #[default]
    Deny,
}

impl DefaultPolicy {
    pub fn allows(self) -> bool {
        self == DefaultPolicy::Allow
    }

    /// The intention action equal to this default.
    pub fn action(self) -> Action {
        match self {
            DefaultPolicy::Allow => Action::Allow,
            DefaultPolicy::Deny => Action::Deny,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.action().as_str()
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<DefaultPolicy, String> {
        match s {
            "allow" => Ok(DefaultPolicy::Allow),
            "deny" => Ok(DefaultPolicy::Deny),
            other => Err(format!("{other:?} is not a default policy: allow or deny")),
        }
    }
}

/// The answer to "may this caller do this?", with the intention (or default) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// e.g. `intention web => api (allow), precedence 9` or `default policy deny`.
    pub reason: String,
}

/// What an intention does once it matched the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// An L4 intention: `Action = "allow"` or `"deny"`.
    Action(Action),
    /// An L7 intention: its `Permissions`, first match decides.
    Permissions(Vec<Permission>),
}

/// One source intention as it applies to a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The source namespace: `default` or `*`.
    pub source_namespace: String,
    /// The source service, or `*`.
    pub source: String,
    /// The destination the entry names: the service itself, or `*`.
    pub destination: String,
    /// Consul's precedence (9, 8, 6, 5 in Consul CE).
    pub precedence: u32,
    pub action: RuleAction,
}

impl Rule {
    /// Whether the source is a wildcard (any service).
    pub fn wildcard_source(&self) -> bool {
        self.source == WILDCARD
    }

    /// Whether a caller named `service` (in the default namespace) is this rule's source.
    pub fn matches_source(&self, service: &str) -> bool {
        self.source == WILDCARD || self.source == service
    }

    /// Whether every caller of `other` is also a caller of `self`.
    pub fn covers(&self, other: &Rule) -> bool {
        (self.source_namespace == WILDCARD || self.source_namespace == other.source_namespace)
            && (self.source == WILDCARD || self.source == other.source)
    }

    /// The action at L4, where an L7 intention counts as deny.
    pub fn l4_action(&self) -> Action {
        match &self.action {
            RuleAction::Action(a) => *a,
            RuleAction::Permissions(_) => Action::Deny,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source_namespace == DEFAULT_NAMESPACE {
            write!(f, "intention {} => {}", self.source, self.destination)
        } else {
            write!(
                f,
                "intention {}/{} => {}",
                self.source_namespace, self.source, self.destination
            )
        }
    }
}

/// An HTTP request, for [`check_request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// As sent: Envoy compares `:method` case-sensitively with the upper-cased `Methods`.
    pub method: String,
    /// The request target: path, and maybe `?query` (ignored by path matchers).
    pub path: String,
    /// Header names are matched case-insensitively; repeated headers are joined with `,`
    /// before matching, as Envoy does.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> HttpRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The value Envoy's header matchers see: every value of `name` joined with `,`, or `None`
    /// when the header is absent. `:method` and `:path` are the pseudo-headers.
    pub fn header_value(&self, name: &str) -> Option<String> {
        if name.eq_ignore_ascii_case(":method") {
            return Some(self.method.clone());
        }
        if name.eq_ignore_ascii_case(":path") {
            return Some(self.path.clone());
        }
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The path without query string or fragment (what Envoy's `url_path` matches).
    pub fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }
}

/// Consul's precedence of an intention from (`source_ns`, `source`) to
/// (`destination_ns`, `destination`).
pub fn precedence(source_ns: &str, source: &str, destination_ns: &str, destination: &str) -> u32 {
    fn exact(ns: &str, name: &str) -> u32 {
        if ns == WILDCARD {
            0
        } else if name == WILDCARD {
            1
        } else {
            2
        }
    }
    let max = 3 * (exact(destination_ns, destination) + 1);
    max - (2 - exact(source_ns, source))
}

fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() { DEFAULT_NAMESPACE } else { ns }
}

/// Every source intention that can decide for `destination`, highest precedence first (see
/// the module documentation for what is left out).
pub fn rules_for(entries: &ConfigEntries, destination: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    let names: &[&str] = if destination == WILDCARD {
        &[WILDCARD]
    } else {
        &[destination, WILDCARD]
    };
    for name in names {
        let Some(stored) = entries.service_intentions.get(*name) else {
            continue;
        };
        let entry = &*stored.entry;
        let dest_ns = namespace_or_default(&entry.namespace);
        if dest_ns != DEFAULT_NAMESPACE && dest_ns != WILDCARD {
            continue;
        }
        if !entry.partition.is_empty() && entry.partition != "default" {
            continue;
        }
        for source in &entry.sources {
            let s = &source.value;
            if !s.peer.is_empty() || !s.sameness_group.is_empty() {
                continue;
            }
            if !s.partition.is_empty() && s.partition != "default" {
                continue;
            }
            let (ns, src) = match s.name.split_once('/') {
                Some((ns, name)) => (namespace_or_default(ns), name),
                None => (namespace_or_default(&s.namespace), s.name.as_str()),
            };
            if (ns != DEFAULT_NAMESPACE && ns != WILDCARD) || src.is_empty() {
                continue;
            }
            let action = match (&s.action, s.permissions.is_empty()) {
                (_, false) => {
                    RuleAction::Permissions(s.permissions.iter().map(|p| p.value.clone()).collect())
                }
                (Some(a), true) => RuleAction::Action(*a),
                // Neither Action nor Permissions: invalid, refused by validation; never match.
                (None, true) => continue,
            };
            rules.push(Rule {
                source_namespace: ns.to_owned(),
                source: src.to_owned(),
                destination: entry.name.clone(),
                precedence: precedence(ns, src, dest_ns, &entry.name),
                action,
            });
        }
    }
    rules.sort_by(|a, b| {
        b.precedence
            .cmp(&a.precedence)
            .then_with(|| a.source_namespace.cmp(&b.source_namespace))
            .then_with(|| a.source.cmp(&b.source))
            .then_with(|| a.destination.cmp(&b.destination))
    });
    // Keep only the rules no higher-precedence rule takes every caller from.
    let mut kept: Vec<Rule> = Vec::with_capacity(rules.len());
    for rule in rules {
        if !kept.iter().any(|higher| higher.covers(&rule)) {
            kept.push(rule);
        }
    }
    kept
}

/// The rule that decides for caller `source`, if any.
fn deciding_rule(rules: Vec<Rule>, source: &str) -> Option<Rule> {
    rules.into_iter().find(|r| r.matches_source(source))
}

fn default_decision(default: DefaultPolicy) -> Decision {
    Decision {
        allowed: default.allows(),
        reason: format!("default policy {}", default.as_str()),
    }
}

/// Consul's L4 check (what `consul intention check` answers): the highest-precedence
/// intention matching (`source`, `destination`) decides; an intention with Permissions counts
/// as deny; no match gives the default policy.
pub fn check(
    entries: &ConfigEntries,
    source: &str,
    destination: &str,
    default: DefaultPolicy,
) -> Decision {
    match deciding_rule(rules_for(entries, destination), source) {
        None => default_decision(default),
        Some(rule) => match &rule.action {
            RuleAction::Action(a) => Decision {
                allowed: *a == Action::Allow,
                reason: format!("{rule} ({}), precedence {}", a.as_str(), rule.precedence),
            },
            RuleAction::Permissions(_) => Decision {
                allowed: false,
                reason: format!(
                    "{rule} has L7 permissions, which count as deny at L4, precedence {}",
                    rule.precedence
                ),
            },
        },
    }
}

/// L7 evaluation of one request, as the destination's gateway does it: the deciding
/// intention's action, or its first matching permission, or the default policy. A `tcp`
/// destination has no L7: there an L7 intention counts as deny (as [`check`]).
pub fn check_request(
    entries: &ConfigEntries,
    source: &str,
    destination: &str,
    request: &HttpRequest,
    default: DefaultPolicy,
) -> Decision {
    if !entries.protocol(destination).is_l7() {
        return check(entries, source, destination, default);
    }
    let Some(rule) = deciding_rule(rules_for(entries, destination), source) else {
        return default_decision(default);
    };
    match &rule.action {
        RuleAction::Action(a) => Decision {
            allowed: *a == Action::Allow,
            reason: format!("{rule} ({}), precedence {}", a.as_str(), rule.precedence),
        },
        RuleAction::Permissions(permissions) => {
            for (i, p) in permissions.iter().enumerate() {
                if permission_matches(p, request) {
                    return Decision {
                        allowed: p.action == Action::Allow,
                        reason: format!(
                            "{rule}, permission {} ({}), precedence {}",
                            i + 1,
                            p.action.as_str(),
                            rule.precedence
                        ),
                    };
                }
            }
            Decision {
                allowed: default.allows(),
                reason: format!(
                    "{rule}, no permission matched, default policy {}",
                    default.as_str()
                ),
            }
        }
    }
}

/// Whether one L7 permission applies to a request (all its parts must).
pub fn permission_matches(permission: &Permission, request: &HttpRequest) -> bool {
    match &permission.http {
        None => true,
        Some(http) => http_matches(http, request),
    }
}

fn http_matches(http: &HttpPermission, request: &HttpRequest) -> bool {
    let path = request.path_only();
    let path_ok = if !http.path_exact.is_empty() {
        path == http.path_exact
    } else if !http.path_prefix.is_empty() {
        path.starts_with(&http.path_prefix)
    } else if !http.path_regex.value.is_empty() {
        full_match(&http.path_regex.value, path)
    } else {
        true
    };
    path_ok
        && http
            .header
            .iter()
            .all(|h| header_matches(&h.value, request))
        && (http.methods.is_empty()
            || http
                .methods
                .iter()
                .any(|m| m.to_ascii_uppercase() == request.method))
}

/// Envoy's `HeaderMatcher` semantics (`treat_missing_header_as_empty` off).
pub fn header_matches(h: &HeaderPermission, request: &HttpRequest) -> bool {
    let Some(value) = request.header_value(&h.name) else {
        // Absent: only a (possibly inverted) `Present` matcher can say anything.
        let present_matcher = header_kind(h) == HeaderKind::Present;
        return present_matcher && h.invert;
    };
    let fold = |s: &str| {
        if h.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let matched = match header_kind(h) {
        HeaderKind::Exact => fold(&value) == fold(&h.exact),
        HeaderKind::Regex if h.ignore_case => full_match(&format!("(?i){}", h.regex), &value),
        HeaderKind::Regex => full_match(&h.regex, &value),
        HeaderKind::Prefix => fold(&value).starts_with(&fold(&h.prefix)),
        HeaderKind::Suffix => fold(&value).ends_with(&fold(&h.suffix)),
        HeaderKind::Contains => fold(&value).contains(&fold(&h.contains)),
        HeaderKind::Present => true,
        // Nothing to match on (refused by validation): Consul skips such a matcher.
        HeaderKind::None => return true,
    };
    matched != h.invert
}

/// Which matcher a header permission is, in Consul's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Exact,
    Regex,
    Prefix,
    Suffix,
    Contains,
    Present,
    None,
}

pub fn header_kind(h: &HeaderPermission) -> HeaderKind {
    if !h.exact.is_empty() {
        HeaderKind::Exact
    } else if !h.regex.is_empty() {
        HeaderKind::Regex
    } else if !h.prefix.is_empty() {
        HeaderKind::Prefix
    } else if !h.suffix.is_empty() {
        HeaderKind::Suffix
    } else if !h.contains.is_empty() {
        HeaderKind::Contains
    } else if h.present {
        HeaderKind::Present
    } else {
        HeaderKind::None
    }
}

/// Whether `pattern` matches the whole of `text` (an invalid pattern matches nothing).
fn full_match(pattern: &str, text: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(text))
}

#[cfg(test)]
pub(crate) mod tests;
