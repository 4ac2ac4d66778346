//! Which services of other datacenters the local sidecars can reach: the Consul source
//! watches their health there (`/v1/health/service/:name?dc=X`), so that the translator can
//! tell whether a remote failover (or redirect) target has a healthy instance.
//!
//! The inputs are raw API answers: the `Proxy.Upstreams` of the local `connect-proxy`
//! instances (from their `/v1/health/service/:name` answers) and the `service-resolver`
//! entries (`/v1/config/service-resolver`). Each upstream's destination (in the upstream's
//! `Datacenter` when set, else the local one) is resolved as the translator's discovery
//! chain does (`translate::sidecar::chain`): redirects followed (`Service`, `Datacenter`),
//! then the failover targets of the resolver the chain ends on (`Datacenters`, or `Targets`
//! with `Service` / `Datacenter`), each resolved in turn. Unlike the chain, which uses the
//! failover entry of the primary subset (or `*`), every failover entry is taken: a subset's
//! targets are watched whether or not the upstream lands on that subset, so the set never
//! misses a target the chain may pick.
//!
//! Decoding is lenient: an entry or instance that does not decode is skipped here (the
//! snapshot conversion reports it and refuses the state).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

/// The most redirects followed from one target (as the translator; `validate` refuses
/// cycles, this only bounds the walk over a state that has one).
const MAX_REDIRECTS: usize = 8;

/// Where one upstream of a local sidecar points, before any resolver applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    pub service: String,
    /// The upstream's `Datacenter`; empty means the sidecar's own (local) datacenter.
    pub datacenter: String,
}

/// The upstream destinations declared by the `connect-proxy` instances of one
/// `/v1/health/service/:name` answer (none for any other service).
pub fn upstream_destinations(health: &Value) -> BTreeSet<Destination> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        #[serde(default)]
        service: Option<Service>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Service {
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        proxy: Option<Proxy>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Proxy {
        #[serde(default)]
        upstreams: Option<Vec<Upstream>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Upstream {
        #[serde(default)]
        destination_name: Option<String>,
        #[serde(default)]
        datacenter: Option<String>,
    }

    let mut out = BTreeSet::new();
    for item in health.as_array().into_iter().flatten() {
        let Ok(Entry {
            service: Some(service),
        }) = Entry::deserialize(item)
        else {
            continue;
        };
        // As the translator: only sidecars' upstreams make listeners.
        if service.kind.as_deref() != Some("connect-proxy") {
            continue;
        }
        let upstreams = service.proxy.and_then(|p| p.upstreams).unwrap_or_default();
        for u in upstreams {
            let service = u.destination_name.unwrap_or_default();
            if service.is_empty() {
                continue;
            }
            out.insert(Destination {
                service,
                datacenter: u.datacenter.unwrap_or_default(),
            });
        }
    }
    out
}

/// The parts of a `service-resolver` entry that name where traffic goes.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resolver {
    #[serde(default)]
    redirect: Option<Redirect>,
    /// Subset name (or `*`) → failover.
    #[serde(default)]
    failover: Option<BTreeMap<String, Failover>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Redirect {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Failover {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    datacenters: Option<Vec<String>>,
    #[serde(default)]
    targets: Option<Vec<FailoverTarget>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailoverTarget {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
}

/// The resolvers of a `/v1/config/service-resolver` answer, by name.
pub fn resolvers(config: &Value) -> BTreeMap<String, Resolver> {
    let mut out = BTreeMap::new();
    for item in config.as_array().into_iter().flatten() {
        let Some(name) = item.get("Name").and_then(Value::as_str) else {
            continue;
        };
        if let Ok(r) = Resolver::deserialize(item) {
            out.insert(name.to_owned(), r);
        }
    }
    out
}

/// `value` unless it is absent or empty.
fn or<'a>(value: &'a Option<String>, default: &'a str) -> &'a str {
    match value.as_deref() {
        Some(v) if !v.is_empty() => v,
        _ => default,
    }
}

/// A (service, datacenter) after its redirects.
fn resolve(
    resolvers: &BTreeMap<String, Resolver>,
    mut service: String,
    mut datacenter: String,
) -> (String, String) {
    for _ in 0..MAX_REDIRECTS {
        let Some(redirect) = resolvers.get(&service).and_then(|r| r.redirect.as_ref()) else {
            break;
        };
        let next_service = or(&redirect.service, &service).to_owned();
        let next_datacenter = or(&redirect.datacenter, &datacenter).to_owned();
        if next_service == service && next_datacenter == datacenter {
            break;
        }
        (service, datacenter) = (next_service, next_datacenter);
    }
    (service, datacenter)
}

/// Every (datacenter, service) whose instances decide where the upstreams of the local
/// sidecars go, outside `local_dc`: each destination's primary target and every failover
/// target of its resolver. Local targets are left out (the local catalog is watched whole).
pub fn remote_targets<'a>(
    destinations: impl IntoIterator<Item = &'a Destination>,
    resolvers: &BTreeMap<String, Resolver>,
    local_dc: &str,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |(service, datacenter): (String, String)| {
        if datacenter != local_dc {
            out.insert((datacenter, service));
        }
    };
    for d in destinations {
        let datacenter = if d.datacenter.is_empty() {
            local_dc
        } else {
            &d.datacenter
        };
        let (service, datacenter) = resolve(resolvers, d.service.clone(), datacenter.to_owned());
        let failovers = resolvers
            .get(&service)
            .and_then(|r| r.failover.as_ref())
            .into_iter()
            .flat_map(|f| f.values());
        for f in failovers {
            match f.targets.as_deref() {
                Some(targets) if !targets.is_empty() => {
                    for t in targets {
                        add(resolve(
                            resolvers,
                            or(&t.service, &service).to_owned(),
                            or(&t.datacenter, &datacenter).to_owned(),
                        ));
                    }
                }
                _ => {
                    let target_service = or(&f.service, &service);
                    match f.datacenters.as_deref() {
                        Some(dcs) if !dcs.is_empty() => {
                            for dc in dcs {
                                add(resolve(resolvers, target_service.to_owned(), dc.clone()));
                            }
                        }
                        _ => add(resolve(
                            resolvers,
                            target_service.to_owned(),
                            datacenter.clone(),
                        )),
                    }
                }
            }
        }
        add((service, datacenter));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dest(service: &str, datacenter: &str) -> Destination {
        Destination {
            service: service.into(),
            datacenter: datacenter.into(),
        }
    }

    /// The remote targets of `destinations` under `entries` (resolver entries as Consul's
    /// API gives them), from dc1, as sorted `service@dc` strings.
    fn targets(destinations: &[Destination], entries: Value) -> Vec<String> {
        let mut out: Vec<String> = remote_targets(destinations, &resolvers(&entries), "dc1")
            .into_iter()
            .map(|(dc, service)| format!("{service}@{dc}"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_local_destination_without_resolver_needs_nothing() {
        assert!(targets(&[dest("api", ""), dest("api", "dc1")], json!([])).is_empty());
    }

    #[test]
    fn an_upstream_datacenter_is_a_remote_target() {
        assert_eq!(targets(&[dest("api", "dc2")], json!([])), ["api@dc2"]);
    }

    #[test]
    fn redirects_are_followed_to_where_they_end() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api", "Redirect": {"Datacenter": "dc2"}},
            {"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "web2", "Datacenter": "dc3"}},
            {"Kind": "service-resolver", "Name": "web2", "Redirect": {"Service": "web3"}},
        ]);
        assert_eq!(
            targets(&[dest("api", ""), dest("web", "")], entries),
            // web → web2@dc3 → web3@dc3; the hops on the way are not targets.
            ["api@dc2", "web3@dc3"]
        );
    }

    #[test]
    fn failover_datacenters_and_targets_are_remote_targets_and_local_ones_are_left_out() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api",
             "Failover": {"*": {"Datacenters": ["dc2", "dc1", "dc3"]}}},
            {"Kind": "service-resolver", "Name": "db",
             "Failover": {"*": {"Targets": [
                 {"Service": "db-replica", "Datacenter": "dc2"},
                 {"Datacenter": "dc4"},
                 {"Service": "db-local"}
             ]}}},
        ]);
        assert_eq!(
            targets(&[dest("api", ""), dest("db", "")], entries),
            ["api@dc2", "api@dc3", "db-replica@dc2", "db@dc4"]
        );
    }

    #[test]
    fn every_failover_entry_counts_and_failover_targets_are_resolved() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api",
             "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}},
             "Failover": {
                 "*": {"Service": "backup"},
                 "v1": {"Datacenters": ["dc3"]}
             }},
            // A failover target that redirects: its redirect's end is the target.
            {"Kind": "service-resolver", "Name": "backup", "Redirect": {"Datacenter": "dc5"}},
        ]);
        assert_eq!(
            targets(&[dest("api", "dc2")], entries),
            ["api@dc2", "api@dc3", "backup@dc5"]
        );
    }

    #[test]
    fn failover_without_datacenters_stays_in_the_primary_datacenter() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api", "Failover": {"*": {"Service": "api-b"}}},
        ]);
        assert_eq!(
            targets(&[dest("api", "dc2")], entries.clone()),
            ["api-b@dc2", "api@dc2"]
        );
        // From the local datacenter: both local, nothing to add.
        assert!(targets(&[dest("api", "")], entries).is_empty());
    }

    #[test]
    fn a_target_reached_twice_is_one_target() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api", "Failover": {"*": {"Datacenters": ["dc2"]}}},
            {"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "api", "Datacenter": "dc2"}},
        ]);
        assert_eq!(
            targets(
                &[dest("api", ""), dest("web", ""), dest("api", "dc2")],
                entries
            ),
            ["api@dc2"]
        );
    }

    #[test]
    fn a_redirect_cycle_ends() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b", "Datacenter": "dc2"}},
            {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}},
        ]);
        assert_eq!(targets(&[dest("a", "")], entries).len(), 1);
    }

    #[test]
    fn nulls_and_broken_entries_are_skipped() {
        let entries = json!([
            {"Kind": "service-resolver", "Name": "api", "Redirect": null, "Failover": null},
            {"Kind": "service-resolver", "Name": "db", "Failover": {"*": {"Datacenters": "dc2"}}},
            {"Kind": "service-resolver"},
        ]);
        let r = resolvers(&entries);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["api"]);
        assert_eq!(r["api"], Resolver::default());
    }

    #[test]
    fn upstreams_come_from_connect_proxies_only() {
        let health = json!([
            {"Node": {"Node": "n1"}, "Service": {"Kind": "connect-proxy", "Service": "web-sidecar-proxy",
              "Proxy": {"DestinationServiceName": "web", "Upstreams": [
                  {"DestinationName": "api", "LocalBindPort": 9191},
                  {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9192},
                  {"DestinationName": "", "LocalBindPort": 9193}
              ]}}},
            {"Node": {"Node": "n2"}, "Service": {"Kind": "connect-proxy", "Service": "web-sidecar-proxy",
              "Proxy": {"Upstreams": null}}},
            {"Node": {"Node": "n3"}, "Service": {"Service": "web",
              "Proxy": {"Upstreams": [{"DestinationName": "not-a-sidecar"}]}}},
            {"Node": {"Node": "n4"}, "Service": "not an object"},
        ]);
        assert_eq!(
            upstream_destinations(&health)
                .into_iter()
                .collect::<Vec<_>>(),
            [dest("api", ""), dest("db", "dc2")]
        );
        assert!(upstream_destinations(&json!({"not": "a list"})).is_empty());
    }
}
