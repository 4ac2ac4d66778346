//! The synthetic workload of `make bench`, and the control protocol a bench server speaks.
//!
//! A workload of S services × E endpoints is, per service, an EDS cluster and its
//! ClusterLoadAssignment, plus one listener whose HTTP connection manager takes its routes
//! from RDS, and one route configuration with a virtual host per service. It is the same in
//! meshgate's bench server (`meshgate-benchserver`, through meshgate's store) and in the floor
//! (`meshgate-floor`, pre-encoded bytes only), so that both move the same resources.
//!
//! A bench server applies one change per `POST /change` (a JSON [`Op`]) on its control port
//! and answers with the resources the change touched ([`Applied`]); `GET /stats` gives the
//! number of connected streams, the process id and the allocation counters ([`Stats`]). Any
//! other control plane can be measured by the same generator behind an adapter that speaks
//! these two calls.

pub mod dir;

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use meshgate::xds::{ResourceType, Update};
use serde::{Deserialize, Serialize};

use crate::fixtures::{cla, cluster_with_timeout, http_listener};

/// The one listener of the workload.
pub const LISTENER: &str = "bench-ingress";
/// The route configuration the listener names.
pub const ROUTES: &str = "bench-routes";

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// The endpoints (ports on 127.0.0.1) of service `i` after `salt` changes.
pub fn endpoints_of(i: usize, endpoints: usize, salt: u64) -> Vec<u16> {
    (0..endpoints)
        .map(|e| (10000 + (i * 7 + e * 13 + salt as usize) % 50000) as u16)
        .collect()
}

/// One change, as `POST /change` carries it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// One endpoint of the service moves (its ClusterLoadAssignment changes).
    Endpoint { service: usize },
    /// The service's cluster changes (its connect timeout); its endpoints do not.
    Cluster { service: usize },
    /// A service appears: a cluster, its assignment, and a virtual host in the routes.
    Add { service: usize },
    /// A service goes away: its virtual host, then its cluster and assignment.
    Remove { service: usize },
}

impl Op {
    /// Refuses a change to a service that does not exist, or the addition of one that does.
    pub fn applies_to(&self, present: &BTreeSet<usize>) -> Result<(), String> {
        match *self {
            Op::Endpoint { service: i }
            | Op::Cluster { service: i }
            | Op::Remove { service: i }
                if !present.contains(&i) =>
            {
                Err(format!("service {} does not exist", service_name(i)))
            }
            Op::Add { service: i } if present.contains(&i) => {
                Err(format!("service {} exists already", service_name(i)))
            }
            _ => Ok(()),
        }
    }
}

/// A resource a change touched, by type URL and name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Touched {
    pub type_url: String,
    pub name: String,
}

impl Touched {
    fn new(ty: ResourceType, name: &str) -> Touched {
        Touched {
            type_url: ty.type_url().to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The answer to `POST /change`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Applied {
    /// Resources an Envoy receives again (new or changed, or sent again to finish warming).
    pub updated: Vec<Touched>,
    /// Resources an Envoy no longer has once the change reached it.
    pub removed: Vec<Touched>,
    /// Time the server spent applying the change before fan-out, in microseconds.
    pub server_us: u64,
}

/// The answer to `GET /stats`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Stats {
    pub pid: u32,
    pub streams: u64,
    pub allocations: u64,
    pub allocated_bytes: u64,
}

/// The workload's state: which services exist and how often each was changed.
pub struct Workload {
    pub endpoints: usize,
    present: BTreeSet<usize>,
    endpoint_salt: Vec<u64>,
    cluster_salt: Vec<u64>,
}

impl Workload {
    pub fn new(services: usize, endpoints: usize) -> Workload {
        Workload {
            endpoints,
            present: (0..services).collect(),
            endpoint_salt: vec![0; services],
            cluster_salt: vec![0; services],
        }
    }

    pub fn services(&self) -> usize {
        self.present.len()
    }

    /// The services that exist, in order.
    pub fn present(&self) -> impl Iterator<Item = usize> + '_ {
        self.present.iter().copied()
    }

    fn grow(&mut self, i: usize) {
        if i >= self.endpoint_salt.len() {
            self.endpoint_salt.resize(i + 1, 0);
            self.cluster_salt.resize(i + 1, 0);
        }
    }

    pub fn cluster(&self, i: usize) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
        cluster_with_timeout(&service_name(i), 1 + (self.cluster_salt[i] % 30) as i64)
    }

    pub fn assignment(
        &self,
        i: usize,
    ) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
        cla(
            &service_name(i),
            &endpoints_of(i, self.endpoints, self.endpoint_salt[i]),
        )
    }

    pub fn listener(&self) -> envoy_types::pb::envoy::config::listener::v3::Listener {
        http_listener(LISTENER, 10000, ROUTES)
    }

    /// One virtual host per service, matched by `<service>.bench`.
    pub fn routes(&self) -> RouteConfiguration {
        RouteConfiguration {
            name: ROUTES.into(),
            virtual_hosts: self
                .present
                .iter()
                .map(|&i| {
                    let name = service_name(i);
                    VirtualHost {
                        domains: vec![format!("{name}.bench")],
                        routes: vec![Route {
                            r#match: Some(RouteMatch {
                                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                                ..Default::default()
                            }),
                            action: Some(Action::Route(RouteAction {
                                cluster_specifier: Some(ClusterSpecifier::Cluster(name.clone())),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                        name,
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Everything, as one update that replaces each type.
    pub fn full(&self) -> Update {
        Update::new()
            .replace(self.present.iter().map(|&i| self.cluster(i)))
            .replace(self.present.iter().map(|&i| self.assignment(i)))
            .replace([self.listener()])
            .replace([self.routes()])
    }

    /// Applies `op`: the update to publish and what it touches.
    pub fn apply(&mut self, op: Op) -> Result<(Update, Applied), String> {
        op.applies_to(&self.present)?;
        let mut applied = Applied::default();
        let update = match op {
            Op::Endpoint { service: i } => {
                self.endpoint_salt[i] += 1;
                let name = service_name(i);
                applied
                    .updated
                    .push(Touched::new(ResourceType::Endpoint, &name));
                Update::new().upsert([self.assignment(i)])
            }
            Op::Cluster { service: i } => {
                self.cluster_salt[i] += 1;
                let name = service_name(i);
                // A changed EDS cluster warms until its assignment is sent again.
                applied
                    .updated
                    .push(Touched::new(ResourceType::Cluster, &name));
                applied
                    .updated
                    .push(Touched::new(ResourceType::Endpoint, &name));
                Update::new().upsert([self.cluster(i)])
            }
            Op::Add { service: i } => {
                self.grow(i);
                self.present.insert(i);
                let name = service_name(i);
                applied
                    .updated
                    .push(Touched::new(ResourceType::Cluster, &name));
                applied
                    .updated
                    .push(Touched::new(ResourceType::Endpoint, &name));
                applied
                    .updated
                    .push(Touched::new(ResourceType::Route, ROUTES));
                Update::new()
                    .upsert([self.cluster(i)])
                    .upsert([self.assignment(i)])
                    .upsert([self.routes()])
            }
            Op::Remove { service: i } => {
                self.present.remove(&i);
                let name = service_name(i);
                applied
                    .updated
                    .push(Touched::new(ResourceType::Route, ROUTES));
                applied
                    .removed
                    .push(Touched::new(ResourceType::Cluster, &name));
                Update::new()
                    .upsert([self.routes()])
                    .remove(ResourceType::Cluster, [name.clone()])
                    .remove(ResourceType::Endpoint, [name])
            }
        };
        Ok((update, applied))
    }
}

/// What a bench server does for its control port.
pub trait Control: Send + Sync + 'static {
    fn apply(&self, op: Op) -> Result<Applied, String>;
    fn stats(&self) -> Stats;
}

/// The control port: `POST /change` and `GET /stats`.
pub fn control_router(control: std::sync::Arc<dyn Control>) -> axum::Router {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Json};
    use axum::routing::{get, post};
    type C = std::sync::Arc<dyn Control>;
    async fn change(State(c): State<C>, Json(op): Json<Op>) -> axum::response::Response {
        match c.apply(op) {
            Ok(applied) => Json(applied).into_response(),
            Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
        }
    }
    async fn stats(State(c): State<C>) -> Json<Stats> {
        Json(c.stats())
    }
    axum::Router::new()
        .route("/change", post(change))
        .route("/stats", get(stats))
        .with_state(control)
}

/// The line a bench server prints on stdout once it serves: where to reach it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Ready {
    pub xds: std::net::SocketAddr,
    pub control: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_touch_what_they_say() {
        let mut w = Workload::new(3, 2);
        let (_, a) = w.apply(Op::Endpoint { service: 1 }).unwrap();
        assert_eq!(
            a.updated,
            vec![Touched::new(ResourceType::Endpoint, "svc-00001")]
        );
        assert_ne!(w.assignment(1), Workload::new(3, 2).assignment(1));
        let (_, a) = w.apply(Op::Remove { service: 2 }).unwrap();
        assert_eq!(
            a.removed,
            vec![Touched::new(ResourceType::Cluster, "svc-00002")]
        );
        assert_eq!(w.routes().virtual_hosts.len(), 2);
        assert!(w.apply(Op::Endpoint { service: 2 }).is_err());
        let (_, a) = w.apply(Op::Add { service: 7 }).unwrap();
        assert_eq!(a.updated.len(), 3);
        assert_eq!(w.services(), 3);
        assert!(w.apply(Op::Add { service: 7 }).is_err());
        let op: Op = serde_json::from_str(r#"{"op":"cluster","service":0}"#).unwrap();
        assert_eq!(op, Op::Cluster { service: 0 });
    }
}
