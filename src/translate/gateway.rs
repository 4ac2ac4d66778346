//! Which catalog instances are the gateways of a datacenter, and where they listen.
//!
//! A gateway is a catalog instance of `Kind: mesh-gateway`. Its role is told by the service
//! meta `meshgate-role`: `ingress` (WAN-facing: other datacenters route to it at its `wan`
//! address) or `egress` (local callers leave through it). A mesh gateway without the meta is
//! an ingress gateway, as a plain Consul mesh gateway accepts traffic from other datacenters.

use crate::model::{Instance, ServiceKind, Snapshot};

/// The service meta key that names a gateway's role.
pub const ROLE_META: &str = "meshgate-role";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayRole {
    Ingress,
    Egress,
}

/// The role of an instance, if it is a gateway.
pub fn role(instance: &Instance) -> Option<GatewayRole> {
    if instance.kind != ServiceKind::MeshGateway {
        return None;
    }
    match instance.meta.get(ROLE_META).map(String::as_str) {
        Some("egress") => Some(GatewayRole::Egress),
        _ => Some(GatewayRole::Ingress),
    }
}

/// The gateways of `role` in `datacenter`, sorted by (node, id).
pub fn gateways<'a>(
    snapshot: &'a Snapshot,
    datacenter: &str,
    role: GatewayRole,
) -> Vec<&'a Instance> {
    let Some(dc) = snapshot.datacenter(datacenter) else {
        return Vec::new();
    };
    let mut out: Vec<&Instance> = dc
        .mesh_gateways()
        .filter(|i| self::role(i) == Some(role))
        .collect();
    out.sort_by(|a, b| (&a.node.name, &a.id).cmp(&(&b.node.name, &b.id)));
    out
}

/// Where the gateways of a group listen. Every gateway of a group gets the same listener, so
/// it binds the registered address when all of them share it, else every address
/// (`0.0.0.0`) on the registered port (the first gateway's, when they differ).
pub fn bind_address(gateways: &[&Instance]) -> Option<(String, u16)> {
    let first = gateways.first()?;
    let address = first.address().to_owned();
    let same = gateways.iter().all(|g| g.address() == address);
    Some((
        if same { address } else { "0.0.0.0".to_owned() },
        first.port,
    ))
}
