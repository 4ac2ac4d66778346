//! Responses built from pre-encoded resources, and the gRPC codec that sends them.
//!
//! A `DeltaDiscoveryResponse` / `DiscoveryResponse` is a few short header fields plus repeated
//! embedded messages; each embedded message is an [`Entry`]'s bytes, encoded once at publish
//! time. Building a response is therefore a copy of those bytes behind a tag and a length, not
//! an encode of the resources: the same CLA sent to 1,000 streams is encoded once.
//!
//! The output is byte-for-byte a valid protobuf encoding of the envoy-types messages (tests
//! below decode it with prost).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::resource::Entry;

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut BytesMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn embedded_len(tag: u32, bytes: &[u8]) -> usize {
    key_len(tag) + encoded_len_varint(bytes.len() as u64) + bytes.len()
}

fn put_embedded(tag: u32, bytes: &[u8], buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// Encodes an `envoy.service.discovery.v3.DeltaDiscoveryResponse`
/// (system_version_info = 1, resources = 2, type_url = 4, nonce = 5, removed_resources = 6).
pub fn delta_response(
    type_url: &str,
    system_version: &str,
    nonce: &str,
    resources: &[Arc<Entry>],
    removed: &[Arc<str>],
) -> Bytes {
    let len = string_len(1, system_version)
        + resources
            .iter()
            .map(|e| embedded_len(2, &e.delta))
            .sum::<usize>()
        + string_len(4, type_url)
        + string_len(5, nonce)
        + removed
            .iter()
            .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
            .sum::<usize>();
    let mut buf = BytesMut::with_capacity(len);
    put_string(1, system_version, &mut buf);
    for e in resources {
        put_embedded(2, &e.delta, &mut buf);
    }
    put_string(4, type_url, &mut buf);
    put_string(5, nonce, &mut buf);
    for n in removed {
        // A repeated string is written even when empty; names are never empty here.
        encode_key(6, WireType::LengthDelimited, &mut buf);
        encode_varint(n.len() as u64, &mut buf);
        buf.put_slice(n.as_bytes());
    }
    debug_assert_eq!(buf.len(), len);
    buf.freeze()
}

/// Encodes an `envoy.service.discovery.v3.DiscoveryResponse`
/// (version_info = 1, resources = 2 as `Any`, type_url = 4, nonce = 5).
pub fn sotw_response<'a>(
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: impl Iterator<Item = &'a Arc<Entry>> + Clone,
) -> Bytes {
    let len = string_len(1, version)
        + resources
            .clone()
            .map(|e| embedded_len(2, &e.sotw))
            .sum::<usize>()
        + string_len(4, type_url)
        + string_len(5, nonce);
    let mut buf = BytesMut::with_capacity(len);
    put_string(1, version, &mut buf);
    for e in resources {
        put_embedded(2, &e.sotw, &mut buf);
    }
    put_string(4, type_url, &mut buf);
    put_string(5, nonce, &mut buf);
    debug_assert_eq!(buf.len(), len);
    buf.freeze()
}

/// `envoy.service.discovery.v3.DeltaDiscoveryRequest` as meshgate reads it. Resource names
/// are decoded as `Bytes` slices of the received message (the wire format of `string` and
/// `bytes` is the same), so an Envoy subscribing to 10,000 names costs no allocation per name;
/// fields meshgate does not use are skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaRequest {
    #[prost(message, optional, tag = "1")]
    pub node: Option<Node>,
    #[prost(string, tag = "2")]
    pub type_url: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names_subscribe: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub resource_names_unsubscribe: Vec<Bytes>,
    #[prost(map = "string, string", tag = "5")]
    pub initial_resource_versions: HashMap<String, String>,
    #[prost(string, tag = "6")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "7")]
    pub error_detail: Option<RpcStatus>,
}

/// `envoy.service.discovery.v3.DiscoveryRequest` as meshgate reads it (see [`DeltaRequest`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<RpcStatus>,
}

/// A resource name from a request; `None` when it is not UTF-8.
pub fn name_str(b: &Bytes) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// gRPC codec: requests are decoded with prost; responses are already-encoded bytes.
pub struct XdsCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for XdsCodec<Req> {
    fn default() -> Self {
        XdsCodec(PhantomData)
    }
}

impl<Req: Message + Default + Send + 'static> Codec for XdsCodec<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // Streams are many and mostly idle: start small (the buffer grows to the largest
        // response, which the stream bounds, see stream::MAX_RESPONSE_BYTES).
        BufferSettings::new(1024, 32 * 1024)
    }
}

pub struct ProstDecoder<Req>(PhantomData<fn() -> Req>);

impl<Req: Message + Default> Decoder for ProstDecoder<Req> {
    type Item = Req;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Req>, Status> {
        Req::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::types::ResourceType;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };

    fn cla(name: &str) -> Arc<Entry> {
        Entry::new(&ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn delta_response_decodes_as_envoy_types() {
        let (a, b) = (cla("a"), cla("b"));
        let url = ResourceType::Endpoint.type_url();
        let bytes = delta_response(url, "v1", "7", &[a.clone(), b], &[Arc::from("gone")]);
        let r = DeltaDiscoveryResponse::decode(bytes).unwrap();
        assert_eq!(r.type_url, url);
        assert_eq!(r.system_version_info, "v1");
        assert_eq!(r.nonce, "7");
        assert_eq!(r.removed_resources, vec!["gone".to_owned()]);
        let names: Vec<_> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(r.resources[0].version, &*a.version);
        let any = r.resources[0].resource.as_ref().unwrap();
        assert_eq!(
            ClusterLoadAssignment::decode(any.value.as_slice())
                .unwrap()
                .cluster_name,
            "a"
        );
    }

    #[test]
    fn requests_decode_from_envoy_types_encoding() {
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryRequest, DiscoveryRequest,
        };
        let d = DeltaDiscoveryRequest {
            type_url: "t".into(),
            resource_names_subscribe: vec!["a".into(), "*".into()],
            resource_names_unsubscribe: vec!["b".into()],
            initial_resource_versions: [("a".to_owned(), "v1".to_owned())].into(),
            response_nonce: "3".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = DeltaRequest::decode(d.encode_to_vec().as_slice()).unwrap();
        assert_eq!(r.type_url, "t");
        assert_eq!(
            r.resource_names_subscribe,
            vec![Bytes::from("a"), Bytes::from("*")]
        );
        assert_eq!(r.resource_names_unsubscribe, vec![Bytes::from("b")]);
        assert_eq!(r.initial_resource_versions["a"], "v1");
        assert_eq!(r.response_nonce, "3");
        assert_eq!(r.error_detail.unwrap().message, "bad");
        assert_eq!(r.node.unwrap().id, "n");
        let s = DiscoveryRequest {
            version_info: "v".into(),
            resource_names: vec!["x".into()],
            type_url: "t".into(),
            response_nonce: "1".into(),
            ..Default::default()
        };
        let r = SotwRequest::decode(s.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (
                r.version_info.as_str(),
                r.type_url.as_str(),
                r.response_nonce.as_str()
            ),
            ("v", "t", "1")
        );
        assert_eq!(r.resource_names, vec![Bytes::from("x")]);
    }

    #[test]
    fn sotw_response_decodes_as_envoy_types() {
        let entries = [cla("a"), cla("b")];
        let url = ResourceType::Endpoint.type_url();
        let bytes = sotw_response(url, "v9", "3", entries.iter());
        let r = DiscoveryResponse::decode(bytes).unwrap();
        assert_eq!((r.version_info.as_str(), r.nonce.as_str()), ("v9", "3"));
        assert_eq!(r.resources.len(), 2);
        assert!(r.resources.iter().all(|a| a.type_url == url));
        // An empty response is valid too (R21).
        let empty = sotw_response(url, "", "4", std::iter::empty());
        assert_eq!(DiscoveryResponse::decode(empty).unwrap().resources.len(), 0);
    }
}
