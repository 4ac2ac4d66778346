//! meshgate: an xDS control plane for Envoy gateways between Consul datacenters.
//!
//! The data flows one way (see `docs/architecture.md`):
//! sources → model snapshot → translation → versioned resources ([`xds::Store`]) → streams
//! ([`xds::XdsServer`]).

pub mod admin;
pub mod bootstrap;
pub mod ca;
pub mod cli;
pub mod metrics;
pub mod model;
pub mod source;
pub mod translate;
pub mod xds;
