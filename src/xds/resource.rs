//! A resource as the store keeps it: encoded once, versioned from its encoding, shared
//! (`Arc`) by every group state and every stream that sends it.
//!
//! **Versions (R17, R28).** A resource's version is the XXH3-64 hash of its protobuf
//! encoding, so equal content has equal versions across publishes, restarts and replicas —
//! provided the encoding is deterministic. prost encodes every field in a fixed order except
//! proto `map<>` fields, which envoy-types generates as `HashMap` (random iteration order per
//! map instance). Publishers therefore never put two or more entries in such a map: where
//! Envoy takes a map of many entries (RBAC policies) translation encodes it itself in key
//! order (`translate::rbac`), and single-entry maps (`typed_extension_protocol_options`) have
//! one order. Every golden translation test (`translate::tests::golden`) translates its mesh
//! nine times and compares every version, which catches a map that breaks the rule.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::{Message, Name};

use super::types::ResourceType;

/// A typed Envoy resource meshgate can publish.
pub trait XdsResource: Message + Name + fmt::Debug + Sized {
    const TYPE: ResourceType;

    /// The resource's name, unique within its type and group.
    fn resource_name(&self) -> &str;

    /// Names of resources of [`Self::WARMS`] type that Envoy must receive again after this
    /// resource is added or changed, or it stays warming (R13: a changed EDS cluster needs its
    /// ClusterLoadAssignment again; R14: a changed listener its route configurations).
    fn warms(&self) -> Vec<String> {
        Vec::new()
    }
}

impl XdsResource for Cluster {
    const TYPE: ResourceType = ResourceType::Cluster;

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn warms(&self) -> Vec<String> {
        let is_eds = matches!(
            self.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if !is_eds {
            return Vec::new();
        }
        let service_name = self
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.as_str())
            .filter(|s| !s.is_empty());
        vec![service_name.unwrap_or(&self.name).to_owned()]
    }
}

impl XdsResource for ClusterLoadAssignment {
    const TYPE: ResourceType = ResourceType::Endpoint;

    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}

impl XdsResource for Listener {
    const TYPE: ResourceType = ResourceType::Listener;

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn warms(&self) -> Vec<String> {
        let mut names = Vec::new();
        let chains = self
            .filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref());
        for filter in chains.flat_map(|c| c.filters.iter()) {
            let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if any.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                && !names.contains(&rds.route_config_name)
            {
                names.push(rds.route_config_name);
            }
        }
        names
    }
}

impl XdsResource for RouteConfiguration {
    const TYPE: ResourceType = ResourceType::Route;

    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for Secret {
    const TYPE: ResourceType = ResourceType::Secret;

    fn resource_name(&self) -> &str {
        &self.name
    }
}

/// The version of an encoded resource: 16 hex digits of the XXH3-64 hash of its bytes. Short
/// on purpose: it travels in every delta response and every ACK.
pub fn version_of_encoding(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// One encoded, versioned resource. Immutable; shared by `Arc`.
pub struct Entry {
    pub ty: ResourceType,
    pub name: Arc<str>,
    /// Stable content version: the hash of the encoding (see the module documentation).
    pub version: Arc<str>,
    /// The encoded `envoy.service.discovery.v3.Resource` (name, version, Any) that a delta
    /// response carries as one element of `resources`.
    pub delta: Bytes,
    /// The encoded `google.protobuf.Any` that a state-of-the-world response carries.
    pub sotw: Bytes,
    /// Resources of the dependent type to send again after this one is sent (R13, R14).
    pub warms: Box<[Arc<str>]>,
}

impl Entry {
    /// Encodes and versions a resource. This is the only place a resource is encoded: every
    /// stream that sends it copies these bytes.
    pub fn new<R: XdsResource>(resource: &R) -> Arc<Entry> {
        Entry::from_parts(
            R::TYPE,
            resource.resource_name(),
            &[&resource.encode_to_vec()],
            resource.warms(),
        )
    }

    /// An entry from a resource encoded by the caller (the ingress listener is assembled from
    /// its services' chains encoded one by one): the resource's encoding is the concatenation
    /// of `parts`. It must decode as a resource of `ty` named `name`, and `warms` be what
    /// [`XdsResource::warms`] would give.
    ///
    /// Both encodings live in one buffer: the delta `Resource` (version, the `Any`, name — in
    /// field order, as prost writes it) holds the state-of-the-world `Any` whole, so `sotw` is
    /// a slice of `delta`. The parts are copied once.
    pub fn from_parts(
        ty: ResourceType,
        name: &str,
        parts: &[&[u8]],
        warms: Vec<String>,
    ) -> Arc<Entry> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        // The version is a fixed 16 hex digits: its place is kept, and filled once the value
        // is in the buffer (hashing the contiguous copy is faster than hashing the parts).
        const VERSION_LEN: usize = 16;
        let type_url = ty.type_url();
        let field_len = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
        let any_len = field_len(1, type_url.len()) + field_len(2, value_len);
        let total = field_len(1, VERSION_LEN) + field_len(2, any_len) + field_len(3, name.len());

        let mut buf = Vec::with_capacity(total);
        let bytes_field = |tag: u32, bytes: &[u8], buf: &mut Vec<u8>| {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(bytes.len() as u64, buf);
            buf.extend_from_slice(bytes);
        };
        // Resource.version = 1, filled below.
        bytes_field(1, &[b'0'; VERSION_LEN], &mut buf);
        let version_at = buf.len() - VERSION_LEN;
        // Resource.resource = 2: the Any { type_url = 1, value = 2 }
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(any_len as u64, &mut buf);
        let sotw_start = buf.len();
        bytes_field(1, type_url.as_bytes(), &mut buf);
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(value_len as u64, &mut buf);
        let value_start = buf.len();
        for part in parts {
            buf.extend_from_slice(part);
        }
        let sotw_end = buf.len();
        let version = version_of_encoding(&buf[value_start..sotw_end]);
        debug_assert_eq!(version.len(), VERSION_LEN);
        buf[version_at..version_at + VERSION_LEN].copy_from_slice(version.as_bytes());
        // Resource.name = 3
        bytes_field(3, name.as_bytes(), &mut buf);
        debug_assert_eq!(buf.len(), total);

        let delta = Bytes::from(buf);
        let sotw = delta.slice(sotw_start..sotw_end);
        Arc::new(Entry {
            ty,
            name: Arc::from(name),
            version: Arc::from(version),
            delta,
            sotw,
            warms: warms.into_iter().map(Arc::from).collect(),
        })
    }

    /// The type whose resources [`Entry::warms`] names.
    pub fn warmed_type(&self) -> Option<ResourceType> {
        match self.ty {
            ResourceType::Cluster => Some(ResourceType::Endpoint),
            ResourceType::Listener => Some(ResourceType::Route),
            _ => None,
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("type", &self.ty)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bytes", &self.delta.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn entry_bytes_decode_to_the_resource() {
        let cla = ClusterLoadAssignment {
            cluster_name: "web".into(),
            ..Default::default()
        };
        let e = Entry::new(&cla);
        let r = Resource::decode(e.delta.clone()).unwrap();
        assert_eq!(r.name, "web");
        assert_eq!(r.version, &*e.version);
        let any = Any::decode(e.sotw.clone()).unwrap();
        assert_eq!(any.type_url, ResourceType::Endpoint.type_url());
        assert_eq!(
            ClusterLoadAssignment::decode(any.value.as_slice()).unwrap(),
            cla
        );
        assert_eq!(r.resource.clone().unwrap(), any);
        // Byte for byte what prost writes.
        assert_eq!(e.delta, r.encode_to_vec());
        assert_eq!(e.sotw, any.encode_to_vec());
        assert_eq!(&*e.version, version_of_encoding(&cla.encode_to_vec()));
    }

    /// An entry from parts is the entry of the whole.
    #[test]
    fn parts_make_the_same_entry_as_the_whole() {
        let whole = cla("web", &[1, 2, 3, 4, 5, 6, 7, 8]).encode_to_vec();
        let a = Entry::new(&cla("web", &[1, 2, 3, 4, 5, 6, 7, 8]));
        for cut in [0, 1, whole.len() / 2, whole.len()] {
            let (x, y) = whole.split_at(cut);
            let b = Entry::from_parts(ResourceType::Endpoint, "web", &[x, y], Vec::new());
            assert_eq!(
                (&a.version, &a.delta, &a.sotw),
                (&b.version, &b.delta, &b.sotw)
            );
        }
    }

    fn cla(name: &str, ports: &[u32]) -> ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
        use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
        };
        let lb_endpoints = ports
            .iter()
            .map(|p| LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(PortSpecifier::PortValue(*p)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn equal_content_built_twice_has_one_version() {
        let a = Entry::new(&cla("web", &[1, 2, 3]));
        let b = Entry::new(&cla("web", &[1, 2, 3]));
        assert_eq!(a.version, b.version);
        assert_eq!(a.version.len(), 16, "{}", a.version);
        assert!(a.version.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn any_content_change_changes_the_version() {
        let base = Entry::new(&cla("web", &[1, 2, 3]));
        for other in [
            cla("web", &[1, 2, 4]),
            cla("web", &[1, 2]),
            cla("web", &[3, 2, 1]), // repeated fields keep their order: a change
            cla("api", &[1, 2, 3]),
        ] {
            assert_ne!(Entry::new(&other).version, base.version, "{other:?}");
        }
    }

    /// Why publishers keep maps to one entry: two equal maps of many entries encode in
    /// different orders, so their versions differ.
    #[test]
    fn a_map_of_many_entries_encodes_in_random_order() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::google::protobuf::Struct;
        let build = || Cluster {
            name: "web".into(),
            metadata: Some(Metadata {
                filter_metadata: (0..32)
                    .map(|i| (format!("key-{i}"), Struct::default()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (a, b) = (build(), build());
        assert_eq!(a, b);
        // The chance that two random orders of 32 keys agree is 1/32!.
        assert_ne!(Entry::new(&a).version, Entry::new(&b).version);
    }

    #[test]
    fn eds_cluster_warms_its_assignment() {
        let mut c = Cluster {
            name: "web".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        assert_eq!(c.warms(), vec!["web".to_owned()]);
        c.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: None,
            service_name: "web-v2".into(),
        });
        assert_eq!(c.warms(), vec!["web-v2".to_owned()]);
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        assert!(c.warms().is_empty());
    }

    #[test]
    fn listener_warms_its_rds_routes() {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "routes-a".into(),
                config_source: None,
            })),
            ..Default::default()
        };
        let filter = Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: HttpConnectionManager::type_url(),
                value: hcm.encode_to_vec(),
            })),
        };
        let l = Listener {
            name: "l".into(),
            filter_chains: vec![
                FilterChain {
                    filters: vec![filter.clone()],
                    ..Default::default()
                },
                FilterChain {
                    filters: vec![filter],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(l.warms(), vec!["routes-a".to_owned()]);
    }
}
