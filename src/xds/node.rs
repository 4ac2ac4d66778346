//! Placing a connecting Envoy in its group, from `node.id`, `node.cluster` and
//! `node.metadata` (`role`, `datacenter`, `service`), as the bootstraps meshgate ships set them.

use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use serde::Serialize;

/// The role an Envoy plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The WAN-facing gateway of a datacenter: terminates mTLS for exported services.
    Ingress,
    /// The outbound gateway of a datacenter: routes mesh traffic by SNI.
    Egress,
    /// A workload's local Envoy (upstreams only).
    Sidecar,
}

impl Role {
    pub const NAMES: &'static str = "ingress, egress, sidecar";

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ingress" => Some(Role::Ingress),
            "egress" => Some(Role::Egress),
            "sidecar" => Some(Role::Sidecar),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Egress => "egress",
            Role::Sidecar => "sidecar",
        }
    }
}

/// The group a node belongs to: every node of a group sees the same resources.
/// Gateways are grouped by role and datacenter; sidecars also by service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub role: Role,
    pub datacenter: Arc<str>,
    pub service: Option<Arc<str>>,
}

impl GroupKey {
    pub fn new(role: Role, datacenter: &str, service: Option<&str>) -> GroupKey {
        GroupKey {
            role,
            datacenter: Arc::from(datacenter),
            service: service.map(Arc::from),
        }
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.datacenter)?;
        if let Some(s) = &self.service {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

impl Serialize for GroupKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a node cannot be placed. The message names the node and what is missing, and is sent
/// to Envoy as the gRPC status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("the first request on the stream carries no node; set node.id and node.metadata")]
    NoNode,
    #[error("node.id is empty; set it in the bootstrap (node.id) or with --service-node")]
    NoId,
    #[error(
        "node {id:?}: metadata.role is missing; set it to one of: {}",
        Role::NAMES
    )]
    NoRole { id: String },
    #[error(
        "node {id:?}: metadata.role {role:?} is unknown; expected one of: {}",
        Role::NAMES
    )]
    UnknownRole { id: String, role: String },
    #[error("node {id:?}: metadata.{field} must be a string")]
    NotAString { id: String, field: &'static str },
    #[error(
        "node {id:?}: role sidecar needs the service it belongs to; set metadata.service or node.cluster"
    )]
    NoService { id: String },
}

/// Places a node. `default_datacenter` is the server's own datacenter (`--datacenter`), used
/// when the node does not name one.
pub fn place(node: Option<&Node>, default_datacenter: &str) -> Result<GroupKey, PlacementError> {
    let node = node.ok_or(PlacementError::NoNode)?;
    if node.id.is_empty() {
        return Err(PlacementError::NoId);
    }
    let id = || node.id.clone();
    let field = |name: &'static str| -> Result<Option<&str>, PlacementError> {
        let Some(md) = &node.metadata else {
            return Ok(None);
        };
        match md.fields.get(name).and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => Ok(None),
            Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
            Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(PlacementError::NotAString {
                id: id(),
                field: name,
            }),
        }
    };
    let role = match field("role")? {
        None => return Err(PlacementError::NoRole { id: id() }),
        Some(r) => Role::parse(r).ok_or_else(|| PlacementError::UnknownRole {
            id: id(),
            role: r.to_owned(),
        })?,
    };
    let datacenter = field("datacenter")?.unwrap_or(default_datacenter);
    let service = match role {
        Role::Sidecar => {
            let s = field("service")?
                .or(Some(node.cluster.as_str()).filter(|c| !c.is_empty()))
                .ok_or_else(|| PlacementError::NoService { id: id() })?;
            Some(s)
        }
        Role::Ingress | Role::Egress => None,
    };
    Ok(GroupKey::new(role, datacenter, service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use std::collections::HashMap;

    fn node(id: &str, cluster: &str, md: &[(&str, Kind)]) -> Node {
        let fields: HashMap<String, Value> = md
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(v.clone()),
                    },
                )
            })
            .collect();
        Node {
            id: id.into(),
            cluster: cluster.into(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Kind {
        Kind::StringValue(v.into())
    }

    #[test]
    fn gateways_group_by_role_and_datacenter() {
        let n = node(
            "gw-1",
            "",
            &[("role", s("ingress")), ("datacenter", s("authn"))],
        );
        assert_eq!(place(Some(&n), "dc1").unwrap().to_string(), "ingress/authn");
        let n = node("gw-2", "", &[("role", s("egress"))]);
        assert_eq!(place(Some(&n), "dc1").unwrap().to_string(), "egress/dc1");
    }

    #[test]
    fn sidecars_group_by_service_from_metadata_or_cluster() {
        let n = node("web-1", "web", &[("role", s("sidecar"))]);
        assert_eq!(
            place(Some(&n), "dc1").unwrap().to_string(),
            "sidecar/dc1/web"
        );
        let n = node(
            "web-1",
            "ignored",
            &[("role", s("sidecar")), ("service", s("api"))],
        );
        assert_eq!(
            place(Some(&n), "dc1").unwrap().to_string(),
            "sidecar/dc1/api"
        );
        let n = node("web-1", "", &[("role", s("sidecar"))]);
        assert_eq!(
            place(Some(&n), "dc1").unwrap_err(),
            PlacementError::NoService { id: "web-1".into() }
        );
    }

    #[test]
    fn errors_name_the_node_and_what_is_missing() {
        assert_eq!(place(None, "dc1").unwrap_err(), PlacementError::NoNode);
        assert_eq!(
            place(Some(&node("", "", &[])), "dc1").unwrap_err(),
            PlacementError::NoId
        );
        let e = place(Some(&node("gw-1", "", &[])), "dc1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"gw-1\": metadata.role is missing; set it to one of: ingress, egress, sidecar"
        );
        let e = place(Some(&node("gw-1", "", &[("role", s("mesh"))])), "dc1").unwrap_err();
        assert!(
            e.to_string().contains("metadata.role \"mesh\" is unknown"),
            "{e}"
        );
        let e = place(
            Some(&node("gw-1", "", &[("role", Kind::NumberValue(1.0))])),
            "dc1",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("metadata.role must be a string"),
            "{e}"
        );
    }
}
