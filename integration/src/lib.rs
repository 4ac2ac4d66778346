//! meshgate's end-to-end suite: an in-process server harness, a step-by-step ADS client built
//! on envoy-types' client stubs, test resources, real Envoy, test upstreams, and a Consul
//! HTTP API test double.

pub mod app;
pub mod bench;
pub mod client;
pub mod consul_double;
pub mod envoy;
pub mod fixtures;
pub mod harness;
pub mod load;
pub mod mesh;
pub mod upstream;

/// The commit being measured, for benchmark reports (empty outside a git checkout).
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
