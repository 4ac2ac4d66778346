//! meshgate's end-to-end suite: an in-process server harness, a step-by-step ADS client built
//! on envoy-types' client stubs, test resources, real Envoy, test upstreams, and a Consul
//! HTTP API test double.

pub mod client;
pub mod consul_double;
pub mod envoy;
pub mod fixtures;
pub mod harness;
pub mod upstream;
