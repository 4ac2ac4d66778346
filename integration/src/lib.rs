//! meshgate's end-to-end suite: an in-process server harness, a step-by-step ADS client built
//! on envoy-types' client stubs, test resources, real Envoy, and test upstreams.

pub mod client;
pub mod envoy;
pub mod fixtures;
pub mod harness;
pub mod upstream;
