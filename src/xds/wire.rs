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

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::StdError;

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

/// Length of the gRPC message prefix: a compression flag and a big-endian length.
pub const GRPC_HEADER: usize = 5;

/// A buffer for one gRPC message of `len` bytes, its prefix already written: the response
/// goes to HTTP/2 as it is, with no further copy or encode buffer.
fn grpc_frame(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(GRPC_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a response is smaller than 4 GiB"));
    buf
}

/// Encodes an `envoy.service.discovery.v3.DeltaDiscoveryResponse`, as one gRPC message
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
    let mut buf = grpc_frame(len);
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
    debug_assert_eq!(buf.len(), GRPC_HEADER + len);
    buf.freeze()
}

/// Encodes an `envoy.service.discovery.v3.DiscoveryResponse`, as one gRPC message
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
    let mut buf = grpc_frame(len);
    put_string(1, version, &mut buf);
    for e in resources {
        put_embedded(2, &e.sotw, &mut buf);
    }
    put_string(4, type_url, &mut buf);
    put_string(5, nonce, &mut buf);
    debug_assert_eq!(buf.len(), GRPC_HEADER + len);
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

/// Largest request accepted (gRPC's usual default).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Decodes the gRPC messages of a request body. The buffer is meshgate's own: after a large
/// request (an EDS subscription naming 10,000 clusters) it is released instead of kept at
/// that size for the life of the stream, and names are decoded as slices of it.
pub struct RequestFrames<B, Req> {
    body: Pin<Box<B>>,
    buf: BytesMut,
    done: bool,
    _req: PhantomData<fn() -> Req>,
}

impl<B, Req> RequestFrames<B, Req> {
    pub fn new(body: B) -> Self {
        RequestFrames {
            body: Box::pin(body),
            buf: BytesMut::new(),
            done: false,
            _req: PhantomData,
        }
    }
}

impl<B, Req: Message + Default> RequestFrames<B, Req> {
    /// The next complete message in the buffer, if any.
    fn parse(&mut self) -> Result<Option<Req>, Status> {
        if self.buf.len() < GRPC_HEADER {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported; do not set grpc-encoding",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes is larger than {MAX_REQUEST_BYTES}"
            )));
        }
        if self.buf.len() < GRPC_HEADER + len {
            self.buf.reserve(GRPC_HEADER + len - self.buf.len());
            return Ok(None);
        }
        let message = self
            .buf
            .split_to(GRPC_HEADER + len)
            .freeze()
            .slice(GRPC_HEADER..);
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            self.buf = BytesMut::new();
        }
        Req::decode(message)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("cannot decode request: {e}")))
    }
}

impl<B, Req> Stream for RequestFrames<B, Req>
where
    B: http_body::Body,
    B::Error: Into<StdError>,
    Req: Message + Default,
{
    type Item = Result<Req, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.parse() {
                Ok(Some(req)) => return Poll::Ready(Some(Ok(req))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            this.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                None => this.done = true,
            }
        }
    }
}

/// The response body: each message as one HTTP/2 data frame (the bytes built by
/// [`delta_response`] / [`sotw_response`]), then the gRPC status as trailers.
pub struct ResponseFrames {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

impl ResponseFrames {
    pub fn new(rx: mpsc::Receiver<Result<Bytes, Status>>) -> Self {
        ResponseFrames { rx, done: false }
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut headers = http::HeaderMap::new();
        if status.add_header(&mut headers).is_err() {
            headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Frame::trailers(headers)
    }
}

impl http_body::Body for ResponseFrames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Ok(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Err(status)) => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&status))))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
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
        let len = (bytes.len() - GRPC_HEADER) as u32;
        assert_eq!(bytes[0], 0, "uncompressed");
        assert_eq!(bytes[1..GRPC_HEADER], len.to_be_bytes());
        let r = DeltaDiscoveryResponse::decode(bytes.slice(GRPC_HEADER..)).unwrap();
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
        let r = DiscoveryResponse::decode(bytes.slice(GRPC_HEADER..)).unwrap();
        assert_eq!((r.version_info.as_str(), r.nonce.as_str()), ("v9", "3"));
        assert_eq!(r.resources.len(), 2);
        assert!(r.resources.iter().all(|a| a.type_url == url));
        // An empty response is valid too (R21).
        let empty = sotw_response(url, "", "4", std::iter::empty());
        assert_eq!(
            DiscoveryResponse::decode(empty.slice(GRPC_HEADER..))
                .unwrap()
                .resources
                .len(),
            0
        );
    }
}
