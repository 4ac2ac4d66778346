//! Sidecars (upstreams only): for each upstream of the service's `Proxy.Upstreams`, a
//! listener on `127.0.0.1:<LocalBindPort>` proxying (TCP, or HTTP for http services) to a
//! cluster that originates mTLS with the sidecar's own leaf, the target's SNI and an exact
//! SPIFFE SAN check of the target — through the local egress gateway, or the target
//! datacenter's ingress gateway when the local datacenter has none. A target in the local
//! datacenter is reached through the local ingress gateway.
//!
//! The resolver is applied as Consul compiles a discovery chain: a redirect picks another
//! target; a default subset picks the subset's SNI; a failover becomes an aggregate cluster
//! (named as the primary target) over one cluster per target named
//! `failover-target~<n>~<primary SNI>`, each with its own SNI and SAN. A member's gateway
//! endpoint is healthy only while its target has a healthy instance, so Envoy moves to the
//! next member when the primary's instances are all critical, and back when they recover.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CustomClusterType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;

use super::cluster::{
    apply_upstream_settings, connect_timeout, eds, http2, pb_duration, upstream_settings,
};
use super::endpoint::health_and_weight;
use super::gateway::{GatewayRole, gateways};
use super::listener::{http_connection_manager, socket_address, tcp_proxy};
use super::names::{service_sni, spiffe_id};
use super::route::route_to;
use super::{Settings, any};
use crate::model::entries::Protocol;
use crate::model::{ServiceAddress, ServiceKind, Snapshot, Upstream};

/// Where an upstream's traffic goes after the resolver: service, subset, datacenter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub service: String,
    pub subset: String,
    pub datacenter: String,
}

impl Target {
    pub fn sni(&self, td: &str) -> String {
        service_sni(&self.service, &self.subset, &self.datacenter, td)
    }
}

/// Redirect (followed until it stops, at most 8 hops: `validate` refuses cycles) and
/// default subset.
fn resolve(snapshot: &Snapshot, mut t: Target) -> Target {
    for _ in 0..8 {
        let Some(r) = snapshot.entries.service_resolvers.get(&t.service) else {
            break;
        };
        if let Some(redirect) = &r.entry.redirect {
            let rd = &redirect.value;
            let next = Target {
                service: if rd.service.is_empty() {
                    t.service.clone()
                } else {
                    rd.service.clone()
                },
                subset: rd.service_subset.clone(),
                datacenter: if rd.datacenter.is_empty() {
                    t.datacenter.clone()
                } else {
                    rd.datacenter.clone()
                },
            };
            if next == t {
                break;
            }
            t = next;
            continue;
        }
        if t.subset.is_empty()
            && let Some(d) = &r.entry.default_subset
        {
            t.subset = d.value.clone();
        }
        break;
    }
    t
}

/// The primary target and the failover targets, in order.
pub fn chain(snapshot: &Snapshot, upstream: &Upstream, local_dc: &str) -> Vec<Target> {
    let dc = if upstream.datacenter.is_empty() {
        local_dc
    } else {
        &upstream.datacenter
    };
    let primary = resolve(
        snapshot,
        Target {
            service: upstream.destination_name.clone(),
            subset: String::new(),
            datacenter: dc.to_owned(),
        },
    );
    let mut out = vec![primary.clone()];
    let Some(r) = snapshot.entries.service_resolvers.get(&primary.service) else {
        return out;
    };
    let failover = r
        .entry
        .failover
        .get(&primary.subset)
        .or_else(|| r.entry.failover.get("*"));
    let Some(f) = failover.map(|f| &f.value) else {
        return out;
    };
    let mut push = |t: Target| {
        let t = resolve(snapshot, t);
        if !out.contains(&t) {
            out.push(t);
        }
    };
    if f.targets.is_empty() {
        let service = if f.service.is_empty() {
            &primary.service
        } else {
            &f.service
        };
        let subset = if f.service_subset.is_empty() && f.service.is_empty() {
            primary.subset.clone()
        } else {
            f.service_subset.clone()
        };
        let dcs: Vec<&str> = if f.datacenters.is_empty() {
            vec![primary.datacenter.as_str()]
        } else {
            f.datacenters.iter().map(|d| d.value.as_str()).collect()
        };
        for d in dcs {
            push(Target {
                service: service.clone(),
                subset: subset.clone(),
                datacenter: d.to_owned(),
            });
        }
    } else {
        for t in &f.targets {
            push(Target {
                service: if t.value.service.is_empty() {
                    primary.service.clone()
                } else {
                    t.value.service.clone()
                },
                subset: t.value.service_subset.clone(),
                datacenter: if t.value.datacenter.is_empty() {
                    primary.datacenter.clone()
                } else {
                    t.value.datacenter.clone()
                },
            });
        }
    }
    out
}

/// The upstreams of a service's sidecars in `dc` (by local bind port; the first wins).
pub fn upstreams<'a>(snapshot: &'a Snapshot, dc: &str, service: &str) -> Vec<&'a Upstream> {
    let mut by_port: BTreeMap<u16, &Upstream> = BTreeMap::new();
    let Some(datacenter) = snapshot.datacenter(dc) else {
        return Vec::new();
    };
    for instance in datacenter.services.values().flat_map(|s| s.iter()) {
        if instance.kind != ServiceKind::ConnectProxy {
            continue;
        }
        let Some(proxy) = &instance.proxy else {
            continue;
        };
        if proxy.destination_service_name != service {
            continue;
        }
        for u in &proxy.upstreams {
            by_port.entry(u.local_bind_port).or_insert(u);
        }
    }
    by_port.into_values().collect()
}

/// Whether a target has a healthy instance (its gateway endpoint is healthy then).
fn target_healthy(snapshot: &Snapshot, t: &Target) -> bool {
    let filter = snapshot
        .entries
        .service_resolvers
        .get(&t.service)
        .and_then(|r| r.entry.subsets.get(&t.subset).cloned());
    snapshot
        .instances(&t.datacenter, &t.service)
        .iter()
        .filter(|i| i.kind == ServiceKind::Typical)
        .filter(|i| {
            filter
                .as_ref()
                .and_then(|s| s.filter.as_ref())
                .is_none_or(|f| f.matches(*i))
        })
        .any(|i| health_and_weight(i, filter.as_ref().is_some_and(|s| s.only_passing)).0)
}

/// How a sidecar in `dc` reaches `target`: the local egress gateways (LAN), else the target
/// datacenter's ingress gateways (WAN); for a local target, the local ingress gateways.
fn path(snapshot: &Snapshot, dc: &str, target: &Target) -> Vec<ServiceAddress> {
    let lan = |role| -> Vec<ServiceAddress> {
        gateways(snapshot, dc, role)
            .into_iter()
            .map(|g| ServiceAddress {
                address: g.address().to_owned(),
                port: g.port,
            })
            .collect()
    };
    if target.datacenter == dc {
        return lan(GatewayRole::Ingress);
    }
    let egress = lan(GatewayRole::Egress);
    if !egress.is_empty() {
        return egress;
    }
    gateways(snapshot, &target.datacenter, GatewayRole::Ingress)
        .into_iter()
        .map(|g| g.wan_address())
        .collect()
}

/// Everything a sidecar of `service` in `dc` needs, except its secrets.
pub struct SidecarResources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub assignments: Vec<ClusterLoadAssignment>,
}

pub fn sidecar(
    snapshot: &Snapshot,
    dc: &str,
    service: &str,
    settings: &Settings,
) -> SidecarResources {
    let td = &settings.trust_domain;
    let mut out = SidecarResources {
        listeners: Vec::new(),
        routes: Vec::new(),
        clusters: Vec::new(),
        assignments: Vec::new(),
    };
    let mut seen_clusters = std::collections::BTreeSet::new();
    for u in upstreams(snapshot, dc, service) {
        let targets = chain(snapshot, u, dc);
        let primary = &targets[0];
        let protocol = snapshot.entries.protocol(&primary.service);
        let alpn: &[&str] = match protocol {
            Protocol::Http2 | Protocol::Grpc => &["h2"],
            Protocol::Http => &["http/1.1"],
            Protocol::Tcp => &[],
        };
        let top = primary.sni(td);
        if seen_clusters.insert(top.clone()) {
            let members: Vec<(String, &Target)> = if targets.len() == 1 {
                vec![(top.clone(), primary)]
            } else {
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("failover-target~{i}~{top}"), t))
                    .collect()
            };
            for (name, t) in &members {
                let mut cluster = eds(name.clone());
                cluster.connect_timeout = Some(pb_duration(connect_timeout(snapshot, &t.service)));
                // The caller's circuit breakers and passive health checks for this upstream.
                if let Some(limits) =
                    upstream_settings(&snapshot.entries, service, &u.destination_name)
                {
                    apply_upstream_settings(&mut cluster, &limits);
                }
                // The ALPN offers h2: the cluster must then speak it.
                if matches!(protocol, Protocol::Http2 | Protocol::Grpc) {
                    http2(&mut cluster);
                }
                cluster.transport_socket = Some(super::tls::upstream(
                    service,
                    &t.sni(td),
                    &spiffe_id(&t.service, &t.datacenter, td),
                    alpn,
                ));
                out.clusters.push(cluster);
                let healthy = target_healthy(snapshot, t);
                out.assignments.push(ClusterLoadAssignment {
                    cluster_name: name.clone(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: path(snapshot, dc, t)
                            .iter()
                            .map(|a| LbEndpoint {
                                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                    address: Some(socket_address(&a.address, a.port)),
                                    ..Default::default()
                                })),
                                health_status: if healthy {
                                    HealthStatus::Healthy as i32
                                } else {
                                    HealthStatus::Unhealthy as i32
                                },
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
            if members.len() > 1 {
                out.clusters.push(Cluster {
                    name: top.clone(),
                    connect_timeout: Some(pb_duration(connect_timeout(snapshot, &primary.service))),
                    lb_policy: LbPolicy::ClusterProvided as i32,
                    cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(
                        CustomClusterType {
                            name: "envoy.clusters.aggregate".into(),
                            typed_config: Some(any(&AggregateConfig {
                                clusters: members.iter().map(|(n, _)| n.clone()).collect(),
                            })),
                        },
                    )),
                    ..Default::default()
                });
            }
        }
        let bind = if u.local_bind_address.is_empty() {
            "127.0.0.1"
        } else {
            &u.local_bind_address
        };
        let name = format!("upstream:{}:{}", u.destination_name, u.local_bind_port);
        let stat = format!("upstream.{}", u.destination_name);
        let filters = if protocol.is_l7() {
            let route_name = format!("{}:{}", u.destination_name, u.local_bind_port);
            out.routes.push(route_to(
                &route_name,
                &u.destination_name,
                &top,
                snapshot,
                &primary.service,
            ));
            vec![http_connection_manager(
                &stat,
                &route_name,
                Vec::new(),
                false,
            )]
        } else {
            vec![tcp_proxy(&stat, &top)]
        };
        out.listeners.push(Listener {
            name,
            address: Some(socket_address(bind, u.local_bind_port)),
            filter_chains: vec![FilterChain {
                filters,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    out
}
