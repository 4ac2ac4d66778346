//! The Consul source's metrics, registered under `consul` in meshgate's prefixed registry:
//! `meshgate_consul_requests_total{endpoint_kind, result}`, `meshgate_consul_stale`,
//! `meshgate_consul_watches`, `meshgate_consul_index_resets_total`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// What a watch asks Consul for (the `endpoint_kind` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelValue, Serialize)]
#[allow(non_camel_case_types)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    catalog_services,
    catalog_datacenters,
    health,
    config,
    ca_roots,
}

/// How a request ended (the `result` label): `ok` brought a changed body, `unchanged` the
/// same body again, `forbidden` a 403, `error` anything else that failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestResult {
    ok,
    unchanged,
    forbidden,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint_kind: EndpointKind,
    pub result: RequestResult,
}

/// Handles to the Consul metrics; clones share the same series.
#[derive(Clone, Debug, Default)]
pub struct ConsulMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// 1 while any watch's last attempt failed.
    pub stale: Gauge,
    /// Watches running now.
    pub watches: Gauge,
    pub index_resets: Counter,
}

impl ConsulMetrics {
    /// Registers the metrics in a sub-registry `consul` of `registry`, which is meant to be
    /// meshgate's registry already prefixed `meshgate` (in [`crate::metrics::Metrics`]:
    /// `root.sub_registry_with_prefix("meshgate")`).
    pub fn register(registry: &mut Registry) -> ConsulMetrics {
        let m = ConsulMetrics::default();
        let reg = registry.sub_registry_with_prefix("consul");
        reg.register(
            "requests",
            "Requests to Consul's HTTP API, by endpoint kind and result",
            m.requests.clone(),
        );
        reg.register(
            "stale",
            "1 while the last attempt of any Consul watch failed (the last good data is served)",
            m.stale.clone(),
        );
        reg.register(
            "watches",
            "Consul watches (blocking-query loops) running now",
            m.watches.clone(),
        );
        reg.register(
            "index_resets",
            "Times a watch saw X-Consul-Index go backwards and started over from index 0",
            m.index_resets.clone(),
        );
        m
    }

    pub fn request(&self, endpoint_kind: EndpointKind, result: RequestResult) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint_kind,
                result,
            })
            .inc();
    }

    /// The count of requests so far with these labels.
    pub fn requests_of(&self, endpoint_kind: EndpointKind, result: RequestResult) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint_kind,
                result,
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_render_under_meshgate_consul() {
        let mut root = Registry::default();
        let m = ConsulMetrics::register(root.sub_registry_with_prefix("meshgate"));
        m.request(EndpointKind::health, RequestResult::forbidden);
        m.stale.set(1);
        m.watches.set(3);
        m.index_resets.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &root).unwrap();
        assert!(
            text.contains(
                "meshgate_consul_requests_total{endpoint_kind=\"health\",result=\"forbidden\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("meshgate_consul_stale 1"), "{text}");
        assert!(text.contains("meshgate_consul_watches 3"), "{text}");
        assert!(
            text.contains("meshgate_consul_index_resets_total 1"),
            "{text}"
        );
    }
}
