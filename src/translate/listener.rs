//! Listeners of the gateways.
//!
//! Ingress: one TLS listener with `tls_inspector`; per exported service (and per resolver
//! subset) one filter chain matched by its SNI that terminates mTLS as that service, applies
//! its intentions as RBAC (network RBAC for tcp, HTTP RBAC for http/http2/grpc), and proxies to
//! the service's local cluster. A service that is not exported has no chain: Envoy closes a
//! connection that matches none.
//!
//! Egress: one listener with `tls_inspector`; per other datacenter one chain matched by
//! `*.<dc>.internal.<trust-domain>` that passes the TLS stream through, untouched, to that
//! datacenter's ingress gateways. An SNI it does not know matches no chain and is refused.

use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter::ConfigType as ListenerFilterConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
        SetCurrentClientCertDetails,
    },
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::gateway::{GatewayRole, bind_address, gateways};
use super::names::{gateway_sni, service_sni};
use super::rbac::{Consumers, http_rbac, network_rbac};
use super::{Settings, ads, any};
use crate::model::Snapshot;
use crate::model::entries::Protocol;
use crate::xds::{Entry, ResourceType};
use prost::Message;
use std::sync::Arc;

pub fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

pub fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

pub fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// An HTTP connection manager whose routes come by RDS as `route_name`.
pub fn http_connection_manager(
    stat_prefix: &str,
    route_name: &str,
    mut filters: Vec<HttpFilter>,
    forward_client_cert: bool,
) -> Filter {
    filters.push(router());
    let mut hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        http_filters: filters,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_owned(),
        })),
        // Intentions match on the path the service will see.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::UnescapeAndRedirect as i32,
        ..Default::default()
    };
    if forward_client_cert {
        // The caller's identity, as the gateway verified it, and nothing a caller made up.
        hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        });
    }
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    }
}

/// The chains of one exported service: its SNI and each subset's.
pub fn ingress_chain_names(snapshot: &Snapshot, service: &str, dc: &str, td: &str) -> Vec<String> {
    let mut out = vec![service_sni(service, "", dc, td)];
    if let Some(r) = snapshot.entries.service_resolvers.get(service) {
        out.extend(
            r.entry
                .subsets
                .keys()
                .map(|s| service_sni(service, s, dc, td)),
        );
    }
    out
}

/// The field number of `filter_chains` in `envoy.config.listener.v3.Listener`.
const LISTENER_FILTER_CHAINS: u32 = 3;

/// The ingress gateway listener of `dc` (none without an ingress gateway or exported
/// service), encoded.
pub fn ingress_listener(
    snapshot: &Snapshot,
    dc: &str,
    services: &[String],
    settings: &Settings,
) -> Option<Arc<Entry>> {
    let bind = bind_address(&gateways(snapshot, dc, GatewayRole::Ingress))?;
    let index = Consumers::index(&snapshot.entries);
    let mut chains = Vec::new();
    let mut routes = Vec::new();
    for service in services {
        let consumers = index
            .get(service.as_str())
            .cloned()
            .unwrap_or_else(Consumers::none);
        chains.push(encode_chains(&ingress_chains(
            snapshot, dc, service, &consumers, settings,
        )));
        routes.extend(ingress_route_names(snapshot, dc, service, settings));
    }
    ingress_listener_entry(&bind, chains.iter().map(Vec::as_slice), routes)
}

/// `chains` encoded as they appear in a listener: each as a `filter_chains` field.
pub fn encode_chains(chains: &[FilterChain]) -> Vec<u8> {
    let mut buf = Vec::new();
    for chain in chains {
        prost::encoding::message::encode(LISTENER_FILTER_CHAINS, chain, &mut buf);
    }
    buf
}

/// The ingress listener bound at `bind` (from [`bind_address`]) over chains encoded by
/// [`encode_chains`], in order; none without a chain. The listener's own fields are encoded
/// first and the chains appended after them (protobuf takes fields in any order), so a
/// change to one service's chains costs a copy of the others' bytes, not their encoding.
/// `routes` are the RDS names the chains' HTTP connection managers use.
pub fn ingress_listener_entry<'a>(
    bind: &(String, u16),
    chains: impl Iterator<Item = &'a [u8]> + Clone,
    routes: Vec<String>,
) -> Option<Arc<Entry>> {
    let size: usize = chains.clone().map(<[u8]>::len).sum();
    if size == 0 {
        return None;
    }
    let (address, port) = bind;
    let name = format!("ingress:{address}:{port}");
    let header = Listener {
        name: name.clone(),
        address: Some(socket_address(address, *port)),
        listener_filters: vec![tls_inspector()],
        ..Default::default()
    };
    let header = header.encode_to_vec();
    let mut parts: Vec<&[u8]> = vec![&header];
    for chain in chains {
        parts.push(chain);
    }
    Some(Entry::from_parts(
        ResourceType::Listener,
        &name,
        &parts,
        routes,
    ))
}

/// The RDS names of one exported service's chains (those of an HTTP service).
pub fn ingress_route_names(
    snapshot: &Snapshot,
    dc: &str,
    service: &str,
    settings: &Settings,
) -> Vec<String> {
    if !snapshot.entries.protocol(service).is_l7() {
        return Vec::new();
    }
    ingress_chain_names(snapshot, service, dc, &settings.trust_domain)
}

/// The filter chains of one exported service on its datacenter's ingress gateway: one per
/// SNI of [`ingress_chain_names`]. They depend on the service's own entries (service-defaults,
/// resolver, intentions), the `*` intentions, proxy-defaults and its consumers, nothing else.
pub fn ingress_chains(
    snapshot: &Snapshot,
    dc: &str,
    service: &str,
    consumers: &Consumers,
    settings: &Settings,
) -> Vec<FilterChain> {
    let td = &settings.trust_domain;
    let protocol = snapshot.entries.protocol(service);
    let mut chains = Vec::new();
    for sni in ingress_chain_names(snapshot, service, dc, td) {
        let filters = if protocol.is_l7() {
            let rbac = http_rbac(
                &snapshot.entries,
                service,
                td,
                consumers,
                settings.default_policy,
            );
            vec![http_connection_manager(
                &format!("ingress.{service}"),
                &sni,
                vec![rbac],
                true,
            )]
        } else {
            vec![
                network_rbac(
                    &snapshot.entries,
                    service,
                    td,
                    consumers,
                    settings.default_policy,
                ),
                tcp_proxy(&format!("ingress.{service}"), &sni),
            ]
        };
        let alpn: &[&str] = match protocol {
            Protocol::Tcp => &[],
            Protocol::Http => &["http/1.1"],
            Protocol::Http2 | Protocol::Grpc => &["h2", "http/1.1"],
        };
        chains.push(FilterChain {
            name: sni.clone(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![sni],
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters,
            transport_socket: Some(super::tls::downstream(service, alpn)),
            ..Default::default()
        });
    }
    chains
}

/// The datacenters an egress gateway of `dc` routes to: every other one with an ingress
/// gateway.
pub fn remote_datacenters<'a>(snapshot: &'a Snapshot, dc: &str) -> Vec<&'a str> {
    snapshot
        .datacenters
        .keys()
        .map(String::as_str)
        .filter(|d| *d != dc && !gateways(snapshot, d, GatewayRole::Ingress).is_empty())
        .collect()
}

/// The egress gateway listener of `dc`.
pub fn egress_listener(snapshot: &Snapshot, dc: &str, settings: &Settings) -> Option<Listener> {
    let gws = gateways(snapshot, dc, GatewayRole::Egress);
    let (address, port) = bind_address(&gws)?;
    let td = &settings.trust_domain;
    let chains: Vec<FilterChain> = remote_datacenters(snapshot, dc)
        .into_iter()
        .map(|remote| {
            let cluster = gateway_sni(remote, td);
            FilterChain {
                name: format!("*.{cluster}"),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![format!("*.{cluster}")],
                    transport_protocol: "tls".into(),
                    ..Default::default()
                }),
                filters: vec![tcp_proxy(&format!("egress.{remote}"), &cluster)],
                ..Default::default()
            }
        })
        .collect();
    if chains.is_empty() {
        return None;
    }
    Some(Listener {
        name: format!("egress:{address}:{port}"),
        address: Some(socket_address(&address, port)),
        listener_filters: vec![tls_inspector()],
        filter_chains: chains,
        ..Default::default()
    })
}
