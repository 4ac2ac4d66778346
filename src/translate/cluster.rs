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

use super::Settings;
use super::names::service_sni;
use crate::model::Snapshot;
use crate::model::entries::ServiceResolver;

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
        .filter(|name| {
            snapshot
                .instances(datacenter, name)
                .iter()
                .any(|i| i.kind == crate::model::ServiceKind::Typical)
        })
        .collect();
    out.sort();
    out.dedup();
    out
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

/// The clusters of an ingress gateway: per service, the service's SNI and each subset's.
pub fn ingress_clusters(
    snapshot: &Snapshot,
    services: &[String],
    settings: &Settings,
) -> Vec<Cluster> {
    let dc = &snapshot.local_datacenter;
    let mut out = Vec::new();
    for service in services {
        let resolver = snapshot
            .entries
            .service_resolvers
            .get(service)
            .map(|s| &*s.entry);
        out.push(eds_cluster(
            service_sni(service, "", dc, &settings.trust_domain),
            resolver,
        ));
        for subset in resolver.iter().flat_map(|r| r.subsets.keys()) {
            out.push(eds_cluster(
                service_sni(service, subset, dc, &settings.trust_domain),
                resolver,
            ));
        }
    }
    out
}

/// An EDS cluster with the resolver's connect timeout and load-balancer policy. Hash-based
/// policies (ring_hash, maglev) need a hash from L7 and are applied only where routes see
/// requests; here they leave Envoy's default, as Consul's mesh gateway does.
fn eds_cluster(name: String, resolver: Option<&ServiceResolver>) -> Cluster {
    let connect_timeout = resolver
        .and_then(|r| r.connect_timeout)
        .map(|d| d.get())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
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
