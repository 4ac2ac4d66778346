//! Semantic checks of a snapshot, beyond what decoding already refuses (unknown or
//! mistyped fields, bad durations, filters that do not parse, ports out of range). Run by
//! both sources and by `meshgate validate`; errors refuse the state, warnings are reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Problem;
use crate::model::Snapshot;
use crate::model::entries::{
    ConfigEntries, HttpPermission, LB_POLICIES, Origin, Protocol, ServiceIntentions,
    ServiceResolver, Stored,
};
use crate::model::spanned::Spanned;

/// Every problem of a snapshot's entries, against its catalog.
pub fn check(snapshot: &Snapshot) -> Vec<Problem> {
    let mut out = Vec::new();
    let entries = &snapshot.entries;
    for stored in entries.service_resolvers.values() {
        resolver(stored, entries, snapshot, &mut out);
    }
    redirect_cycles(entries, &mut out);
    for stored in entries.service_intentions.values() {
        intentions(stored, entries, &mut out);
    }
    if let Some(stored) = &entries.exported_services {
        let name = &stored.entry.name;
        if name.value != "default" {
            out.push(at(
                &stored.origin,
                name.line,
                format!(
                    "exported-services must be named \"default\" (one per partition; Consul CE has only the default partition), not {:?}",
                    name.value
                ),
            ));
        }
    }
    if let Some(stored) = &entries.proxy_defaults {
        let name = &stored.entry.name;
        if name.value != "global" {
            out.push(at(
                &stored.origin,
                name.line,
                format!(
                    "proxy-defaults must be named \"global\", not {:?}",
                    name.value
                ),
            ));
        }
    }
    out
}

/// A problem at `line` of an entry's file, or at the entry's own line when `line` is 0.
fn at(origin: &Origin, line: u32, message: String) -> Problem {
    let line = if line == 0 { origin.line } else { line };
    Problem::error(&origin.file, line, message)
}

fn warn(origin: &Origin, line: u32, message: String) -> Problem {
    let line = if line == 0 { origin.line } else { line };
    Problem::warning(&origin.file, line, message)
}

/// The subsets a service's resolver defines (none without a resolver).
fn subsets<'a>(entries: &'a ConfigEntries, service: &str) -> BTreeSet<&'a str> {
    entries
        .service_resolvers
        .get(service)
        .map(|r| r.entry.subsets.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn resolver(
    stored: &Stored<ServiceResolver>,
    entries: &ConfigEntries,
    snapshot: &Snapshot,
    out: &mut Vec<Problem>,
) {
    let r = &*stored.entry;
    let o = &stored.origin;
    let me = format!("service-resolver {:?}", r.name);
    if let (Some(redirect), false) = (&r.redirect, r.failover.is_empty()) {
        out.push(at(
            o,
            redirect.line,
            format!("{me}: Redirect and Failover cannot both be set"),
        ));
    }
    if let Some(default) = &r.default_subset
        && !default.value.is_empty()
        && !r.subsets.contains_key(&default.value)
    {
        out.push(at(
            o,
            default.line,
            format!(
                "{me}: DefaultSubset {:?} is not one of its Subsets ({})",
                default.value,
                list(r.subsets.keys())
            ),
        ));
    }
    if let Some(lb) = &r.load_balancer
        && !LB_POLICIES.contains(&lb.policy.value.as_str())
    {
        out.push(at(
            o,
            lb.policy.line,
            format!(
                "{me}: LoadBalancer Policy {:?} is not one of round_robin, least_request, random, ring_hash, maglev",
                lb.policy.value
            ),
        ));
    }
    if let Some(redirect) = &r.redirect {
        let target = if redirect.value.service.is_empty() {
            &r.name
        } else {
            &redirect.value.service
        };
        let subset = &redirect.value.service_subset;
        if !subset.is_empty() && !subsets(entries, target).contains(subset.as_str()) {
            out.push(at(
                o,
                redirect.line,
                format!(
                    "{me}: Redirect ServiceSubset {subset:?} is not a subset of {target:?} ({})",
                    list(subsets(entries, target))
                ),
            ));
        }
        if !redirect.value.peer.is_empty() || !redirect.value.sameness_group.is_empty() {
            out.push(at(
                o,
                redirect.line,
                format!("{me}: Redirect to a Peer or SamenessGroup is not supported by meshgate"),
            ));
        }
    }
    for (key, failover) in &r.failover {
        let f = &failover.value;
        if key != "*" && !r.subsets.contains_key(key) {
            out.push(at(
                o,
                failover.line,
                format!(
                    "{me}: Failover for subset {key:?}, which is not one of its Subsets ({})",
                    list(r.subsets.keys())
                ),
            ));
        }
        if !f.targets.is_empty()
            && (!f.datacenters.is_empty() || !f.service.is_empty() || !f.service_subset.is_empty())
        {
            out.push(at(
                o,
                failover.line,
                format!(
                    "{me}: Failover[{key:?}] cannot combine Targets with Datacenters, Service or ServiceSubset"
                ),
            ));
        }
        if f.targets.is_empty()
            && f.datacenters.is_empty()
            && f.service.is_empty()
            && f.service_subset.is_empty()
            && f.sameness_group.is_empty()
        {
            out.push(at(
                o,
                failover.line,
                format!("{me}: Failover[{key:?}] names no target (Service, ServiceSubset, Datacenters or Targets)"),
            ));
        }
        if !f.sameness_group.is_empty() {
            out.push(at(
                o,
                failover.line,
                format!("{me}: Failover SamenessGroup is not supported by meshgate"),
            ));
        }
        // The (service, subset, datacenters) each failover target resolves to.
        let mut targets: Vec<FailoverTargetRef> = Vec::new();
        let service = if f.service.is_empty() {
            &r.name
        } else {
            &f.service
        };
        if f.targets.is_empty() {
            let dcs = f
                .datacenters
                .iter()
                .map(|d| (d.line, d.value.as_str()))
                .collect();
            targets.push((failover.line, service, &f.service_subset, dcs));
        }
        for t in &f.targets {
            let service = if t.value.service.is_empty() {
                &r.name
            } else {
                &t.value.service
            };
            let dcs = if t.value.datacenter.is_empty() {
                Vec::new()
            } else {
                vec![(t.line, t.value.datacenter.as_str())]
            };
            if !t.value.peer.is_empty() {
                out.push(at(
                    o,
                    t.line,
                    format!("{me}: failover Target with a Peer is not supported by meshgate"),
                ));
            }
            targets.push((t.line, service, &t.value.service_subset, dcs));
        }
        for (line, service, subset, dcs) in targets {
            if !subset.is_empty() && !subsets(entries, service).contains(subset) {
                out.push(at(
                    o,
                    line,
                    format!(
                        "{me}: failover ServiceSubset {subset:?} is not a subset of {service:?} ({})",
                        list(subsets(entries, service))
                    ),
                ));
            }
            for (line, dc) in dcs {
                if snapshot.instances(dc, service).is_empty() {
                    out.push(warn(
                        o,
                        line,
                        format!("{me}: failover datacenter {dc:?} has no instance of {service:?}"),
                    ));
                }
            }
        }
    }
}

/// A failover target as checked: its line, service, subset, and (line, datacenter) pairs.
type FailoverTargetRef<'a> = (u32, &'a str, &'a str, Vec<(u32, &'a str)>);

fn list<'a>(items: impl IntoIterator<Item = &'a (impl AsRef<str> + ?Sized + 'a)>) -> String {
    let items: Vec<&str> = items.into_iter().map(|s| s.as_ref()).collect();
    if items.is_empty() {
        "it has none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Redirect cycles among resolvers: `a` → `b` → `a`, each named.
fn redirect_cycles(entries: &ConfigEntries, out: &mut Vec<Problem>) {
    let next = |name: &str| -> Option<&str> {
        let r = entries.service_resolvers.get(name)?;
        let redirect = r.entry.redirect.as_ref()?;
        let to = redirect.value.service.as_str();
        // A redirect to another datacenter or subset of itself is not a loop.
        (!to.is_empty() && to != name).then_some(to)
    };
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    for start in entries.service_resolvers.keys() {
        let mut path: Vec<&str> = vec![start];
        let mut current = start.as_str();
        while let Some(to) = next(current) {
            if let Some(pos) = path.iter().position(|p| *p == to) {
                let cycle = &path[pos..];
                if cycle.iter().any(|c| reported.contains(c)) {
                    break;
                }
                reported.extend(cycle.iter().copied());
                // Reported once, at the first entry of the cycle in name order.
                let first = cycle.iter().min().expect("a cycle has members");
                let i = cycle.iter().position(|c| c == first).expect("member");
                let mut names: Vec<String> = cycle[i..]
                    .iter()
                    .chain(&cycle[..i])
                    .map(|c| format!("service-resolver {c:?}"))
                    .collect();
                names.push(format!("service-resolver {first:?}"));
                let stored = &entries.service_resolvers[*first];
                let line = stored.entry.redirect.as_ref().map_or(0, |r| r.line);
                out.push(at(
                    &stored.origin,
                    line,
                    format!("redirect cycle: {}", names.join(" → ")),
                ));
                break;
            }
            path.push(to);
            current = to;
        }
    }
}

fn intentions(stored: &Stored<ServiceIntentions>, entries: &ConfigEntries, out: &mut Vec<Problem>) {
    let e = &*stored.entry;
    let o = &stored.origin;
    let me = format!("service-intentions {:?}", e.name);
    let protocol = if e.name == "*" {
        None
    } else {
        Some(entries.protocol(&e.name))
    };
    let mut seen: BTreeMap<(String, &str, &str, &str), u32> = BTreeMap::new();
    for source in &e.sources {
        let s = &source.value;
        let (namespace, name) = match s.name.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (s.namespace.as_str(), s.name.as_str()),
        };
        if s.name.is_empty() {
            out.push(at(o, source.line, format!("{me}: a source has no Name")));
            continue;
        }
        if namespace == "*" && name != "*" {
            out.push(at(
                o,
                source.line,
                format!(
                    "{me}: source {:?}: a wildcard namespace needs a wildcard name (\"*/*\"), a specific service cannot be named in every namespace",
                    s.name
                ),
            ));
        }
        let key = (
            format!(
                "{}/{}",
                if namespace.is_empty() {
                    "default"
                } else {
                    namespace
                },
                name
            ),
            s.partition.as_str(),
            s.peer.as_str(),
            s.sameness_group.as_str(),
        );
        if let Some(first) = seen.get(&key) {
            out.push(at(
                o,
                source.line,
                format!(
                    "{me}: source {:?} appears twice (first at line {first})",
                    s.name
                ),
            ));
        } else {
            seen.insert(key, source.line);
        }
        match (&s.action, s.permissions.is_empty()) {
            (Some(_), false) => out.push(at(
                o,
                source.line,
                format!(
                    "{me}: source {:?} has both Action and Permissions; use one",
                    s.name
                ),
            )),
            (None, true) => out.push(at(
                o,
                source.line,
                format!(
                    "{me}: source {:?} has neither Action nor Permissions",
                    s.name
                ),
            )),
            _ => {}
        }
        if !s.peer.is_empty() || !s.sameness_group.is_empty() {
            out.push(at(
                o,
                source.line,
                format!(
                    "{me}: source {:?}: Peer and SamenessGroup sources are not supported by meshgate (name the calling service; its datacenter is checked by exported-services)",
                    s.name
                ),
            ));
        }
        for permission in &s.permissions {
            let Some(http) = &permission.value.http else {
                out.push(at(
                    o,
                    permission.line,
                    format!("{me}: source {:?}: a permission needs HTTP", s.name),
                ));
                continue;
            };
            http_permission(http, permission.line, &me, o, out);
        }
        if !s.permissions.is_empty() && protocol == Some(Protocol::Tcp) {
            out.push(warn(
                o,
                source.line,
                format!(
                    "{me}: source {:?} has L7 Permissions but {:?} speaks tcp: they count as deny",
                    s.name, e.name
                ),
            ));
        }
    }
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn http_permission(http: &HttpPermission, line: u32, me: &str, o: &Origin, out: &mut Vec<Problem>) {
    let paths = [
        !http.path_exact.is_empty(),
        !http.path_prefix.is_empty(),
        !http.path_regex.value.is_empty(),
    ];
    if paths.iter().filter(|p| **p).count() > 1 {
        out.push(at(
            o,
            line,
            format!("{me}: a permission may set only one of PathExact, PathPrefix, PathRegex"),
        ));
    }
    for (field, path) in [
        ("PathExact", &http.path_exact),
        ("PathPrefix", &http.path_prefix),
    ] {
        if !path.is_empty() && !path.starts_with('/') {
            out.push(at(
                o,
                line,
                format!("{me}: {field} {path:?} must begin with '/'"),
            ));
        }
    }
    regex_ok(&http.path_regex, "PathRegex", line, me, o, out);
    for method in &http.methods {
        if !METHODS.contains(&method.as_str()) {
            out.push(at(
                o,
                line,
                format!(
                    "{me}: method {method:?} is not one of {}",
                    METHODS.join(", ")
                ),
            ));
        }
    }
    for header in &http.header {
        let h = &header.value;
        if h.name.is_empty() {
            out.push(at(
                o,
                header.line,
                format!("{me}: a header permission has no Name"),
            ));
        }
        let set = [
            h.present,
            !h.exact.is_empty(),
            !h.prefix.is_empty(),
            !h.suffix.is_empty(),
            !h.contains.is_empty(),
            !h.regex.is_empty(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            out.push(at(
                o,
                header.line,
                format!(
                    "{me}: header {:?} must set exactly one of Present, Exact, Prefix, Suffix, Contains, Regex",
                    h.name
                ),
            ));
        }
        let spanned = Spanned {
            line: header.line,
            value: h.regex.clone(),
        };
        regex_ok(&spanned, "header Regex", header.line, me, o, out);
    }
}

fn regex_ok(
    pattern: &Spanned<String>,
    what: &str,
    line: u32,
    me: &str,
    o: &Origin,
    out: &mut Vec<Problem>,
) {
    if pattern.value.is_empty() {
        return;
    }
    if let Err(e) = regex::Regex::new(&pattern.value) {
        let line = if pattern.line == 0 {
            line
        } else {
            pattern.line
        };
        let first = e.to_string().lines().last().unwrap_or_default().to_owned();
        out.push(at(
            o,
            line,
            format!(
                "{me}: {what} {:?} is not a valid regex: {first}",
                pattern.value
            ),
        ));
    }
}

/// Used by callers that report through an entry's origin.
pub fn origin_file(origin: &Origin) -> Arc<str> {
    origin.file.clone()
}
