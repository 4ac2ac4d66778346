//! Stable content versions for resources (R17, R28).
//!
//! envoy-types generates proto `map<>` fields as `std::collections::HashMap`, whose iteration
//! order is random per map instance, so the prost encoding of a message with a map of two or
//! more entries changes from one build of the same content to the next. A version taken from
//! the encoded bytes would flap: spurious delta resends, and versions that differ between two
//! meshgate replicas or across a restart (so a reconnecting Envoy's `initial_resource_versions`
//! would never match).
//!
//! The version is therefore the hash of a *canonical form*: the message's `Debug` rendering
//! (prost derives it field by field in declaration order, which is deterministic) re-written
//! with every map literal's entries sorted. Messages packed inside `google.protobuf.Any` (filter
//! configs, TLS contexts) are encoded bytes in the outer message; for the types meshgate uses
//! they are decoded and canonicalized recursively, so a map inside an RBAC filter inside a
//! listener is ordered too. An `Any` of a type not in [`decode_any`] is kept as its bytes.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateClusterConfig;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Struct;
use prost::{Message, Name};

/// The version of a message: 16 hex digits of the XXH3-64 hash of its canonical form.
/// Short on purpose: it travels in every delta response and every ACK.
pub fn version_of<M: std::fmt::Debug>(message: &M) -> String {
    let canonical = canonical_form(&format!("{message:?}"));
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canonical.as_bytes()))
}

/// Rewrites a prost `Debug` rendering with map entries sorted and known `Any` payloads
/// expanded. Input that does not parse (it never should: it is prost's own output) is returned
/// unchanged, which is still deterministic for maps of fewer than two entries.
pub fn canonical_form(debug: &str) -> String {
    let mut parser = Parser {
        s: debug.as_bytes(),
        i: 0,
    };
    let mut out = String::with_capacity(debug.len());
    match parser.value(&mut out) {
        Some(()) if parser.at_end() => out,
        _ => debug.to_owned(),
    }
}

/// Decodes the payload of an `Any` of a known type into its `Debug` rendering.
pub(crate) fn decode_any(type_url: &str, bytes: &[u8]) -> Option<String> {
    macro_rules! known {
        ($($t:ty),* $(,)?) => {
            $(if type_url == <$t>::type_url() {
                return <$t>::decode(bytes).ok().map(|m| format!("{m:?}"));
            })*
        };
    }
    known!(
        Cluster,
        ClusterLoadAssignment,
        Listener,
        RouteConfiguration,
        Secret,
        HttpConnectionManager,
        Router,
        HttpRbac,
        NetworkRbac,
        TcpProxy,
        TlsInspector,
        SniCluster,
        DownstreamTlsContext,
        UpstreamTlsContext,
        AggregateClusterConfig,
        HttpProtocolOptions,
        Struct,
    );
    None
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.i == self.s.len()
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn text(&self, from: usize) -> &str {
        // The input is a &str and token boundaries fall on ASCII bytes.
        std::str::from_utf8(&self.s[from..self.i]).unwrap_or("")
    }

    /// One value: string, list, map, tuple, or a word (scalar, enum variant, struct, newtype).
    fn value(&mut self, out: &mut String) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(out),
            b'[' => self.seq(b'[', b']', out),
            b'(' => self.seq(b'(', b')', out),
            b'{' => self.map(out),
            _ => {
                let word = self.word()?.to_owned();
                out.push_str(&word);
                match self.peek() {
                    Some(b'{') => self.struct_body(&word, out),
                    Some(b'(') => self.seq(b'(', b')', out),
                    _ => Some(()),
                }
            }
        }
    }

    fn word(&mut self) -> Option<&str> {
        self.skip_ws();
        let from = self.i;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            // `#`: raw identifiers such as `r#match` (RouteConfiguration) name fields.
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+' | b'#') {
                self.i += 1;
            } else {
                break;
            }
        }
        (self.i > from).then(|| self.text(from))
    }

    fn string(&mut self, out: &mut String) -> Option<()> {
        let from = self.i;
        self.i += 1; // opening quote
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    out.push_str(self.text(from));
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
        None
    }

    fn seq(&mut self, open: u8, close: u8, out: &mut String) -> Option<()> {
        self.eat(open).then_some(())?;
        out.push(open as char);
        let mut first = true;
        while !self.eat(close) {
            if !first {
                self.eat(b',').then_some(())?;
                out.push(',');
                if self.eat(close) {
                    break;
                }
            }
            first = false;
            self.value(out)?;
        }
        out.push(close as char);
        Some(())
    }

    /// `{k: v, ...}` — the only place order is not deterministic: entries are sorted.
    fn map(&mut self, out: &mut String) -> Option<()> {
        self.eat(b'{').then_some(())?;
        let mut entries = Vec::new();
        while !self.eat(b'}') {
            if !entries.is_empty() {
                self.eat(b',').then_some(())?;
                if self.eat(b'}') {
                    break;
                }
            }
            let mut entry = String::new();
            self.value(&mut entry)?;
            self.eat(b':').then_some(())?;
            entry.push(':');
            self.value(&mut entry)?;
            entries.push(entry);
        }
        entries.sort_unstable();
        out.push('{');
        out.push_str(&entries.join(","));
        out.push('}');
        Some(())
    }

    /// `Name { field: value, .. }` in declaration order; `Any` payloads are expanded.
    fn struct_body(&mut self, name: &str, out: &mut String) -> Option<()> {
        self.eat(b'{').then_some(())?;
        let mut fields: Vec<(String, String)> = Vec::new();
        while !self.eat(b'}') {
            if !fields.is_empty() {
                self.eat(b',').then_some(())?;
                if self.eat(b'}') {
                    break;
                }
            }
            // `..` closes a non-exhaustive rendering; prost never emits it, but be safe.
            let field = self.word()?.to_owned();
            self.eat(b':').then_some(())?;
            let mut value = String::new();
            self.value(&mut value)?;
            fields.push((field, value));
        }
        if name == "Any"
            && let Some(expanded) = expand_any(&fields)
        {
            out.push_str(&expanded);
            return Some(());
        }
        out.push('{');
        for (n, (field, value)) in fields.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(field);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Some(())
    }
}

fn expand_any(fields: &[(String, String)]) -> Option<String> {
    let type_url = fields
        .iter()
        .find(|(f, _)| f == "type_url")?
        .1
        .trim_matches('"');
    let list = fields.iter().find(|(f, _)| f == "value")?.1.as_str();
    let inner = list.strip_prefix('[')?.strip_suffix(']')?;
    let bytes = if inner.is_empty() {
        Vec::new()
    } else {
        inner
            .split(',')
            .map(|b| b.parse::<u8>().ok())
            .collect::<Option<Vec<u8>>>()?
    };
    let debug = decode_any(type_url, &bytes)?;
    Some(format!(
        "{{type_url:\"{type_url}\",value:{}}}",
        canonical_form(&debug)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::rbac::v3::{Policy, Rbac as RbacRules};
    use envoy_types::pb::google::protobuf::{Any, Value, value::Kind};
    use std::collections::HashMap;

    fn struct_with(keys: &[&str]) -> Struct {
        let mut fields = HashMap::new();
        for k in keys {
            fields.insert(
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue(format!("v-{k}"))),
                },
            );
        }
        Struct { fields }
    }

    fn metadata(keys: &[&str]) -> Metadata {
        let mut filter_metadata = HashMap::new();
        for k in keys {
            filter_metadata.insert((*k).to_owned(), struct_with(keys));
        }
        Metadata {
            filter_metadata,
            ..Default::default()
        }
    }

    #[test]
    fn map_order_does_not_change_the_version() {
        let keys: Vec<String> = (0..32).map(|i| format!("key-{i}")).collect();
        let fwd: Vec<&str> = keys.iter().map(String::as_str).collect();
        let rev: Vec<&str> = fwd.iter().rev().copied().collect();
        let a = metadata(&fwd);
        let b = metadata(&rev);
        assert_eq!(a, b);
        // Two separately built maps of 32 entries: their renderings differ in order (the
        // chance that two random orders of 32 keys agree is 1/32!), their versions must not.
        assert_ne!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(version_of(&a), version_of(&b));
    }

    /// A route's `r#match` field must not make the parse fail (and fall back to the raw,
    /// map-order-dependent rendering).
    #[test]
    fn raw_identifier_fields_parse() {
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteMatch, VirtualHost};
        let route = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![VirtualHost {
                routes: vec![Route {
                    r#match: Some(RouteMatch::default()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let debug = format!("{route:?}");
        assert!(debug.contains("r#match"), "{debug}");
        assert_ne!(canonical_form(&debug), debug, "the parse fell back");
    }

    #[test]
    fn content_change_changes_the_version() {
        let a = metadata(&["a", "b", "c"]);
        let b = metadata(&["a", "b", "d"]);
        assert_ne!(version_of(&a), version_of(&b));
    }

    #[test]
    fn repeated_field_order_still_matters() {
        let one = ClusterLoadAssignment {
            cluster_name: "x".into(),
            named_endpoints: HashMap::new(),
            ..Default::default()
        };
        let mut two = one.clone();
        two.cluster_name = "y".into();
        let l1 = Listener {
            name: "l".into(),
            access_log: vec![],
            ..Default::default()
        };
        assert_ne!(version_of(&one), version_of(&two));
        assert_ne!(version_of(&one), version_of(&l1));
    }

    #[test]
    fn maps_inside_any_are_canonical_too() {
        let rules = |names: &[&str]| {
            let mut policies = HashMap::new();
            for n in names {
                policies.insert((*n).to_owned(), Policy::default());
            }
            NetworkRbac {
                stat_prefix: "rbac".into(),
                rules: Some(RbacRules {
                    policies,
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let names: Vec<String> = (0..24).map(|i| format!("policy-{i}")).collect();
        let fwd: Vec<&str> = names.iter().map(String::as_str).collect();
        let rev: Vec<&str> = fwd.iter().rev().copied().collect();
        let wrap = |r: NetworkRbac| Any {
            type_url: NetworkRbac::type_url(),
            value: r.encode_to_vec(),
        };
        let (a, b) = (wrap(rules(&fwd)), wrap(rules(&rev)));
        assert_eq!(version_of(&a), version_of(&b));
        let c = wrap(rules(&fwd[1..]));
        assert_ne!(version_of(&a), version_of(&c));
    }

    #[test]
    fn strings_with_delimiters_are_kept_whole() {
        let s = struct_with(&["a\"}{,:b", "[x]"]);
        let form = canonical_form(&format!("{s:?}"));
        assert!(form.contains(r#""a\"}{,:b""#), "{form}");
        assert_eq!(version_of(&s), version_of(&s.clone()));
    }
}
