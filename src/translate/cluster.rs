//! Clusters: one EDS cluster per service the gateway proxies to, and one per resolver
//! subset, named by SNI as Consul names them.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, LeastRequestLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection, circuit_breakers::Thresholds,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};

use super::Settings;
use super::gateway::{GatewayRole, gateways};
use super::listener::{remote_datacenters, socket_address};
use super::names::{gateway_sni, service_sni};
use crate::model::entries::{ConfigEntries, Protocol, ServiceResolver, UpstreamSettings};
use crate::model::{Health, ServiceAddress, Snapshot};

/// Consul's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The services an ingress gateway of `datacenter` proxies to: those the exported-services
/// entry names that have instances there, sorted.
pub fn ingress_services(snapshot: &Snapshot, datacenter: &str) -> Vec<String> {
    let Some(exported) = &snapshot.entries.exported_services else {
        return Vec::new();
    };
    let mut out: Vec<String> = exported
        .entry
        .services
        .iter()
        .map(|s| s.value.name.clone())
        .filter(|name| has_local_instances(snapshot, datacenter, name))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `service` has instances of its own (not proxies or gateways) in `datacenter`: an
/// exported service without any has no ingress resources.
pub fn has_local_instances(snapshot: &Snapshot, datacenter: &str, service: &str) -> bool {
    snapshot
        .instances(datacenter, service)
        .iter()
        .any(|i| i.kind == crate::model::ServiceKind::Typical)
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The clusters of an ingress gateway: per service, the service's SNI and each subset's,
/// with the circuit breakers and passive health checks the gateway has for it as a caller
/// (`gateway`: the ingress gateways' service name; see [`upstream_settings`]), and HTTP/2 to
/// the service when it speaks http2 or grpc.
pub fn ingress_clusters(
    snapshot: &Snapshot,
    dc: &str,
    services: &[String],
    gateway: Option<&str>,
    settings: &Settings,
) -> Vec<Cluster> {
    let mut out = Vec::new();
    for service in services {
        let resolver = snapshot
            .entries
            .service_resolvers
            .get(service)
            .map(|s| &*s.entry);
        let upstream = gateway.and_then(|g| upstream_settings(&snapshot.entries, g, service));
        let protocol = snapshot.entries.protocol(service);
        let finish = |mut c: Cluster| {
            if let Some(u) = &upstream {
                apply_upstream_settings(&mut c, u);
            }
            if matches!(protocol, Protocol::Http2 | Protocol::Grpc) {
                http2(&mut c);
            }
            c
        };
        out.push(finish(eds_cluster(
            service_sni(service, "", dc, &settings.trust_domain),
            resolver,
        )));
        for subset in resolver.iter().flat_map(|r| r.subsets.keys()) {
            out.push(finish(eds_cluster(
                service_sni(service, subset, dc, &settings.trust_domain),
                resolver,
            )));
        }
    }
    out
}

/// The service name the ingress gateways of `dc` are registered under (the caller whose
/// `service-defaults` `UpstreamConfig` applies to their clusters).
pub fn ingress_gateway_service(snapshot: &Snapshot, dc: &str) -> Option<String> {
    gateways(snapshot, dc, GatewayRole::Ingress)
        .first()
        .map(|g| g.service.clone())
}

/// The settings `caller` has for its calls to `destination`, as Consul reads them: in the
/// caller's `service-defaults`, the `UpstreamConfig.Overrides` entry named for the
/// destination (default namespace and partition, no peer) over `UpstreamConfig.Defaults`,
/// field by field. In Consul the caller configures its upstreams; for the ingress gateway
/// the caller is the gateway's own service.
pub fn upstream_settings(
    entries: &ConfigEntries,
    caller: &str,
    destination: &str,
) -> Option<UpstreamSettings> {
    let config = entries
        .service_defaults
        .get(caller)?
        .entry
        .upstream_config
        .as_ref()?;
    let default_scope = |s: &str| s.is_empty() || s == "default";
    let over = config.overrides.iter().find(|o| {
        o.name == destination
            && default_scope(&o.namespace)
            && default_scope(&o.partition)
            && o.peer.is_empty()
    });
    match (config.defaults.as_ref(), over) {
        (None, None) => None,
        (Some(d), None) => Some(d.clone()),
        (None, Some(o)) => Some(o.clone()),
        (Some(d), Some(o)) => Some(UpstreamSettings {
            limits: o.limits.clone().or_else(|| d.limits.clone()),
            passive_health_check: o
                .passive_health_check
                .clone()
                .or_else(|| d.passive_health_check.clone()),
            connect_timeout_ms: if o.connect_timeout_ms > 0 {
                o.connect_timeout_ms
            } else {
                d.connect_timeout_ms
            },
            ..o.clone()
        }),
    }
}

/// Circuit breakers (`Limits`) and outlier detection (`PassiveHealthCheck`).
pub fn apply_upstream_settings(cluster: &mut Cluster, settings: &UpstreamSettings) {
    if let Some(limits) = &settings.limits {
        let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32v(limits.max_connections),
                max_pending_requests: u32v(limits.max_pending_requests),
                max_requests: u32v(limits.max_concurrent_requests),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(p) = &settings.passive_health_check {
        cluster.outlier_detection = Some(OutlierDetection {
            interval: p.interval.map(|d| pb_duration(d.get())),
            consecutive_5xx: (p.max_failures > 0).then_some(UInt32Value {
                value: p.max_failures,
            }),
            enforcing_consecutive_5xx: p
                .enforcing_consecutive5xx
                .map(|value| UInt32Value { value }),
            max_ejection_percent: p.max_ejection_percent.map(|value| UInt32Value { value }),
            base_ejection_time: p.base_ejection_time.map(|d| pb_duration(d.get())),
            ..Default::default()
        });
    }
}

/// Speaks HTTP/2 to the upstream.
pub fn http2(cluster: &mut Cluster) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        super::any(&options),
    );
}

/// The clusters of an egress gateway: per other datacenter with ingress gateways, one named
/// `<dc>.internal.<trust-domain>` — EDS over their `wan` addresses, or DNS when those are
/// host names (Consul's `HostnameDatacenters`).
pub fn egress_clusters(snapshot: &Snapshot, dc: &str, settings: &Settings) -> Vec<Cluster> {
    remote_datacenters(snapshot, dc)
        .into_iter()
        .map(|remote| {
            let name = gateway_sni(remote, &settings.trust_domain);
            let targets = remote_gateway_addresses(snapshot, remote);
            if targets.iter().any(|a| a.address.parse::<IpAddr>().is_err()) {
                dns_cluster(name, &targets)
            } else {
                eds_cluster(name, None)
            }
        })
        .collect()
}

/// The `wan` addresses of a datacenter's ingress gateways, healthy ones only.
pub fn remote_gateway_addresses(snapshot: &Snapshot, dc: &str) -> Vec<ServiceAddress> {
    gateways(snapshot, dc, GatewayRole::Ingress)
        .into_iter()
        .filter(|g| !matches!(g.health(), Health::Critical | Health::Maintenance))
        .map(|g| g.wan_address())
        .collect()
}

/// A STRICT_DNS cluster over host names (each resolved, IPv4).
fn dns_cluster(name: String, targets: &[ServiceAddress]) -> Cluster {
    let endpoints = targets
        .iter()
        .map(|t| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&t.address, t.port)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    Cluster {
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        name,
        connect_timeout: Some(pb_duration(DEFAULT_CONNECT_TIMEOUT)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        ..Default::default()
    }
}

/// A bare EDS cluster over ADS.
pub fn eds(name: String) -> Cluster {
    Cluster {
        name,
        connect_timeout: Some(pb_duration(DEFAULT_CONNECT_TIMEOUT)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// The connect timeout of `service`'s resolver, else Consul's default.
pub fn connect_timeout(snapshot: &Snapshot, service: &str) -> Duration {
    connect_timeout_of(
        snapshot
            .entries
            .service_resolvers
            .get(service)
            .map(|r| &*r.entry),
    )
}

fn connect_timeout_of(resolver: Option<&ServiceResolver>) -> Duration {
    resolver
        .and_then(|r| r.connect_timeout)
        .map(|d| d.get())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// An EDS cluster with the resolver's connect timeout and load-balancer policy. Hash-based
/// policies (ring_hash, maglev) need a hash from L7 and are applied only where routes see
/// requests; here they leave Envoy's default, as Consul's mesh gateway does.
fn eds_cluster(name: String, resolver: Option<&ServiceResolver>) -> Cluster {
    let connect_timeout = connect_timeout_of(resolver);
    let mut cluster = Cluster {
        name,
        connect_timeout: Some(pb_duration(connect_timeout)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    if let Some(lb) = resolver.and_then(|r| r.load_balancer.as_ref()) {
        match lb.policy.value.as_str() {
            "least_request" => {
                cluster.lb_policy = LbPolicy::LeastRequest as i32;
                if let Some(c) = lb
                    .least_request_config
                    .as_ref()
                    .filter(|c| c.choice_count > 0)
                {
                    cluster.lb_config =
                        Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                            choice_count: Some(UInt32Value {
                                value: c.choice_count,
                            }),
                            ..Default::default()
                        }));
                }
            }
            "random" => cluster.lb_policy = LbPolicy::Random as i32,
            "round_robin" => cluster.lb_policy = LbPolicy::RoundRobin as i32,
            _ => {}
        }
    }
    cluster
}
