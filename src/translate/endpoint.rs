//! ClusterLoadAssignments: a service's instances with Consul's health and weight rules
//! (`calculateEndpointHealthAndWeight`): healthy unless a check is critical (or, for an
//! `OnlyPassing` subset, anything but passing); weight `Weights.Passing`, or
//! `Weights.Warning` when a check warns; a weight below 1 is unhealthy with weight 1; at
//! most 128. Unhealthy endpoints are sent as UNHEALTHY, not removed.

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::Settings;
use super::cluster::remote_gateway_addresses;
use super::listener::{remote_datacenters, socket_address};
use super::names::{gateway_sni, service_sni};
use crate::model::entries::ServiceResolver;
use crate::model::{Health, Instance, ServiceKind, Snapshot};

const MAX_WEIGHT: u32 = 128;

/// The assignments of an ingress gateway: one per cluster of [`super::cluster::ingress_clusters`].
pub fn ingress_assignments(
    snapshot: &Snapshot,
    dc: &str,
    services: &[String],
    settings: &Settings,
) -> Vec<ClusterLoadAssignment> {
    let mut out = Vec::new();
    for service in services {
        let instances: Vec<&Instance> = snapshot
            .instances(dc, service)
            .iter()
            .filter(|i| i.kind == ServiceKind::Typical)
            .collect();
        let resolver = snapshot
            .entries
            .service_resolvers
            .get(service)
            .map(|s| &*s.entry);
        let name = service_sni(service, "", dc, &settings.trust_domain);
        // The unnamed cluster is the default subset's when one is set.
        let default = resolver
            .and_then(|r| r.default_subset.as_ref())
            .map(|d| d.value.as_str())
            .filter(|d| !d.is_empty());
        out.push(match default {
            Some(subset) => subset_assignment(name, &instances, resolver, subset),
            None => assignment(name, instances.iter().copied(), false),
        });
        for subset in resolver.iter().flat_map(|r| r.subsets.keys()) {
            let name = service_sni(service, subset, dc, &settings.trust_domain);
            out.push(subset_assignment(name, &instances, resolver, subset));
        }
    }
    out
}

fn subset_assignment(
    name: String,
    instances: &[&Instance],
    resolver: Option<&ServiceResolver>,
    subset: &str,
) -> ClusterLoadAssignment {
    let Some(def) = resolver.and_then(|r| r.subsets.get(subset)) else {
        return assignment(name, std::iter::empty(), false);
    };
    let selected = instances
        .iter()
        .copied()
        .filter(|i| def.filter.as_ref().is_none_or(|f| f.matches(*i)));
    assignment(name, selected, def.only_passing)
}

fn assignment<'a>(
    name: String,
    instances: impl Iterator<Item = &'a Instance>,
    only_passing: bool,
) -> ClusterLoadAssignment {
    let lb_endpoints = instances.map(|i| lb_endpoint(i, only_passing)).collect();
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Consul's health and weight of one endpoint.
pub fn health_and_weight(instance: &Instance, only_passing: bool) -> (bool, u32) {
    let health = instance.health();
    let mut healthy = match health {
        Health::Passing => true,
        Health::Warning => !only_passing,
        Health::Critical | Health::Maintenance => false,
    };
    let mut weight = if health == Health::Warning {
        instance.weights.warning
    } else {
        instance.weights.passing
    };
    if weight < 1 {
        healthy = false;
        weight = 1;
    }
    (healthy, weight.min(MAX_WEIGHT))
}

fn lb_endpoint(instance: &Instance, only_passing: bool) -> LbEndpoint {
    let (healthy, weight) = health_and_weight(instance, only_passing);
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: instance.address().to_owned(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(instance.port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: if healthy {
            HealthStatus::Healthy as i32
        } else {
            HealthStatus::Unhealthy as i32
        },
        load_balancing_weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    }
}

/// The assignments of an egress gateway's EDS clusters: each remote datacenter's ingress
/// gateways at their `wan` addresses (DNS clusters carry theirs inline).
pub fn egress_assignments(
    snapshot: &Snapshot,
    dc: &str,
    settings: &Settings,
) -> Vec<ClusterLoadAssignment> {
    remote_datacenters(snapshot, dc)
        .into_iter()
        .filter_map(|remote| {
            let targets = remote_gateway_addresses(snapshot, remote);
            if targets
                .iter()
                .any(|a| a.address.parse::<std::net::IpAddr>().is_err())
            {
                return None;
            }
            Some(ClusterLoadAssignment {
                cluster_name: gateway_sni(remote, &settings.trust_domain),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: targets
                        .iter()
                        .map(|t| LbEndpoint {
                            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                address: Some(socket_address(&t.address, t.port)),
                                ..Default::default()
                            })),
                            health_status: HealthStatus::Healthy as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        })
        .collect()
}
