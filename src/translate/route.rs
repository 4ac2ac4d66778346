//! Route configurations: one per HTTP filter chain of an ingress gateway, named by the chain's
//! SNI, sending every request to that chain's cluster with the resolver's request timeout.

use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};

use super::Settings;
use super::cluster::pb_duration;
use super::listener::ingress_route_names;
use crate::model::Snapshot;

/// The routes of the HTTP services among `services`.
pub fn ingress_routes(
    snapshot: &Snapshot,
    dc: &str,
    services: &[String],
    settings: &Settings,
) -> Vec<RouteConfiguration> {
    let mut out = Vec::new();
    for service in services {
        for sni in ingress_route_names(snapshot, dc, service, settings) {
            out.push(route_to(&sni, service, &sni, snapshot, service));
        }
    }
    out
}

/// A route configuration sending everything to `cluster`, with `service`'s request timeout.
pub fn route_to(
    name: &str,
    vhost: &str,
    cluster: &str,
    snapshot: &Snapshot,
    service: &str,
) -> RouteConfiguration {
    let timeout = snapshot
        .entries
        .service_resolvers
        .get(service)
        .and_then(|r| r.entry.request_timeout)
        .map(|t| pb_duration(t.get()));
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: vhost.to_owned(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
                    timeout,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
