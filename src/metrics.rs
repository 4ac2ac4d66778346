//! Prometheus metrics of the xDS server, named after istiod's where one exists
//! (`pilot_xds_pushes` → `meshgate_xds_pushes_total`, `pilot_proxy_convergence_time` →
//! `meshgate_proxy_convergence_time_seconds`, `pilot_total_xds_rejects` →
//! `meshgate_xds_rejects_total`).
//!
//! Hot-path handles (per type, per protocol) are resolved once here, so a push touches an
//! atomic, never a label map.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::xds::types::{ResourceType, TYPE_COUNT};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum XdsType {
    cds,
    eds,
    lds,
    rds,
    sds,
}

impl From<ResourceType> for XdsType {
    fn from(t: ResourceType) -> Self {
        match t {
            ResourceType::Cluster => XdsType::cds,
            ResourceType::Endpoint => XdsType::eds,
            ResourceType::Listener => XdsType::lds,
            ResourceType::Route => XdsType::rds,
            ResourceType::Secret => XdsType::sds,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Protocol {
    delta,
    sotw,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: XdsType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: Protocol,
}

type HistogramFamily = Family<TypeLabels, Histogram, fn() -> Histogram>;

fn size_histogram() -> Histogram {
    // 64 B .. 64 MiB
    Histogram::new(exponential_buckets(64.0, 4.0, 11))
}

/// Per-type handles of one metric family.
pub struct PerType<M>([M; TYPE_COUNT]);

impl<M> PerType<M> {
    pub fn get(&self, t: ResourceType) -> &M {
        &self.0[t.index()]
    }
}

fn per_type<M: Clone, C: prometheus_client::metrics::family::MetricConstructor<M>>(
    family: &Family<TypeLabels, M, C>,
) -> PerType<M> {
    PerType(ResourceType::ADD_ORDER.map(|t| {
        // The guard ends with this closure call, before the next label is created.
        family
            .get_or_create(&TypeLabels { r#type: t.into() })
            .clone()
    }))
}

/// All of meshgate's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub streams_delta: Gauge,
    pub streams_sotw: Gauge,
    pub pushes: PerType<Counter>,
    pub push_bytes: PerType<Histogram>,
    pub push_duration: Histogram,
    pub acks: PerType<Counter>,
    pub rejects: PerType<Counter>,
    pub expired_nonces: PerType<Counter>,
    pub sotw_resumed: PerType<Counter>,
    pub convergence: Histogram,
    pub stream_errors: Counter,
    pub store_publishes: Counter,
    pub source: SourceMetrics,
    pub consul: crate::source::consul::ConsulMetrics,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LoadResult {
    accepted,
    refused,
    unchanged,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    pub result: LoadResult,
}

/// Metrics of the source that fills the model (directory or Consul).
pub struct SourceMetrics {
    pub loads_accepted: Counter,
    pub loads_refused: Counter,
    pub loads_unchanged: Counter,
    /// Errors found in refused states, one per problem.
    pub errors: Counter,
    /// Errors in the latest state read (0 when it was accepted).
    pub current_errors: Gauge,
    pub warnings: Gauge,
    pub generation: Gauge,
    pub last_accepted: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub snapshot_build: Histogram,
}

impl SourceMetrics {
    fn register(reg: &mut Registry) -> SourceMetrics {
        let loads = Family::<LoadLabels, Counter>::default();
        reg.register(
            "source_loads",
            "States read from the source, by result (accepted, refused for errors, unchanged)",
            loads.clone(),
        );
        let errors = Counter::default();
        reg.register(
            "source_errors",
            "Errors found in refused source states (one per problem)",
            errors.clone(),
        );
        let current_errors = Gauge::default();
        reg.register(
            "source_current_errors",
            "Errors in the latest state read from the source (0 when it was accepted)",
            current_errors.clone(),
        );
        let warnings = Gauge::default();
        reg.register(
            "source_warnings",
            "Warnings in the latest state read from the source",
            warnings.clone(),
        );
        let generation = Gauge::default();
        reg.register(
            "snapshot_generation",
            "Generation of the model snapshot being served",
            generation.clone(),
        );
        let last_accepted = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        reg.register(
            "source_last_accepted_timestamp_seconds",
            "Unix time of the last accepted source state",
            last_accepted.clone(),
        );
        let snapshot_build = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        reg.register_with_unit(
            "snapshot_build_duration",
            "Time to read the source and build one model snapshot",
            Unit::Seconds,
            snapshot_build.clone(),
        );
        let handle = |result| loads.get_or_create(&LoadLabels { result }).clone();
        let loads_accepted = handle(LoadResult::accepted);
        let loads_refused = handle(LoadResult::refused);
        let loads_unchanged = handle(LoadResult::unchanged);
        SourceMetrics {
            loads_accepted,
            loads_refused,
            loads_unchanged,
            errors,
            current_errors,
            warnings,
            generation,
            last_accepted,
            snapshot_build,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let reg = root.sub_registry_with_prefix("meshgate");

        let streams = Family::<ProtocolLabels, Gauge>::default();
        reg.register(
            "xds_connected_streams",
            "xDS streams connected now, by protocol",
            streams.clone(),
        );
        let pushes = Family::<TypeLabels, Counter>::default();
        reg.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            pushes.clone(),
        );
        let push_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        reg.register_with_unit(
            "xds_push_size",
            "Encoded size of each xDS response, by resource type",
            Unit::Bytes,
            push_bytes.clone(),
        );
        let push_duration = Histogram::new(exponential_buckets(0.00001, 2.0, 20));
        reg.register_with_unit(
            "xds_push_duration",
            "Time from a stream noticing new state to handing one response to the transport",
            Unit::Seconds,
            push_duration.clone(),
        );
        let acks = Family::<TypeLabels, Counter>::default();
        reg.register("xds_acks", "xDS ACKs received, by type", acks.clone());
        let rejects = Family::<TypeLabels, Counter>::default();
        reg.register(
            "xds_rejects",
            "xDS NACKs received (Envoy rejected a response), by type",
            rejects.clone(),
        );
        let expired = Family::<TypeLabels, Counter>::default();
        reg.register(
            "xds_expired_nonces",
            "Requests whose nonce was not the latest sent for their type (ignored as ACKs)",
            expired.clone(),
        );
        let resumed = Family::<TypeLabels, Counter>::default();
        reg.register(
            "xds_sotw_resumed",
            "State-of-the-world streams whose first request of a type carried the current version (nothing resent)",
            resumed.clone(),
        );
        let convergence = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        reg.register_with_unit(
            "proxy_convergence_time",
            "Time from a publish to a stream's ACK of the response that carried it",
            Unit::Seconds,
            convergence.clone(),
        );
        let stream_errors = Counter::default();
        reg.register(
            "xds_stream_errors",
            "xDS streams ended by a protocol error (bad node, missing type_url, ...)",
            stream_errors.clone(),
        );
        let store_publishes = Counter::default();
        reg.register(
            "store_publishes",
            "Publishes into the resource store that changed something",
            store_publishes.clone(),
        );
        let source = SourceMetrics::register(reg);
        let consul = crate::source::consul::ConsulMetrics::register(reg);

        // Each handle in its own statement: a family's read guard lives to the end of the
        // statement, and creating the next label needs its write lock.
        let streams_delta = streams
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::delta,
            })
            .clone();
        let streams_sotw = streams
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::sotw,
            })
            .clone();
        Metrics {
            streams_delta,
            streams_sotw,
            pushes: per_type(&pushes),
            push_bytes: per_type(&push_bytes),
            push_duration,
            acks: per_type(&acks),
            rejects: per_type(&rejects),
            expired_nonces: per_type(&expired),
            sotw_resumed: per_type(&resumed),
            convergence,
            stream_errors,
            store_publishes,
            source,
            consul,
            registry: root,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_render() {
        let m = Metrics::new();
        m.pushes.get(ResourceType::Endpoint).inc();
        m.streams_delta.inc();
        m.convergence.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("meshgate_xds_pushes_total{type=\"eds\"} 1"),
            "{text}"
        );
        assert!(text.contains("meshgate_xds_connected_streams{protocol=\"delta\"} 1"));
        assert!(text.contains("meshgate_proxy_convergence_time_seconds_count 1"));
        assert!(text.contains("meshgate_xds_push_size_bytes_bucket"));
    }
}
