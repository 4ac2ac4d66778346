//! Test resources: EDS clusters, assignments, HTTP listeners with RDS routes, secrets.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Node, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret::Type as SecretType,
};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value, value::Kind};
use prost::{Message, Name};

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// An EDS cluster fed over ADS.
pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// The same cluster with another connect timeout: a changed resource.
pub fn cluster_with_timeout(name: &str, seconds: i64) -> Cluster {
    let mut c = cluster(name);
    c.connect_timeout = Some(Duration { seconds, nanos: 0 });
    c
}

/// An assignment of `name` to endpoints on 127.0.0.1.
pub fn cla(name: &str, ports: &[u16]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: ports
                .iter()
                .map(|p| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("127.0.0.1", *p)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}

/// An HTTP listener on 127.0.0.1:`port` whose routes come from RDS `route_name`.
pub fn http_listener(name: &str, port: u16, route_name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route_name.into(),
            config_source: Some(ads()),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(socket("127.0.0.1", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration sending every request to `cluster`.
pub fn route(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A generic secret.
pub fn secret(name: &str, value: &str) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(SecretType::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(Specifier::InlineString(value.into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// A cluster Envoy rejects: a negative connect timeout fails Envoy's proto validation.
pub fn invalid_cluster(name: &str) -> Cluster {
    let mut c = cluster(name);
    c.connect_timeout = Some(Duration {
        seconds: -1,
        nanos: 0,
    });
    c
}

/// A node placed in the test group (ingress gateways of dc1).
pub fn node(id: &str) -> Node {
    node_with(id, &[("role", "ingress"), ("datacenter", "dc1")])
}

pub fn node_with(id: &str, md: &[(&str, &str)]) -> Node {
    let fields: HashMap<String, Value> = md
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue((*v).to_owned())),
                },
            )
        })
        .collect();
    Node {
        id: id.into(),
        cluster: "test".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}
