//! The resource types meshgate serves, their type URLs and the order they are pushed in.

use std::fmt;

/// One xDS resource type. The declaration order is the ADS push order for additions
/// (CDS → EDS → LDS → RDS → SDS): referents before referrers, so Envoy never sees a route to a
/// cluster it does not have (R15, R16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

pub const TYPE_COUNT: usize = 5;

impl ResourceType {
    /// Push order for additions and changes.
    pub const ADD_ORDER: [ResourceType; TYPE_COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    /// Push order for removals: referrers before referents ("make before break"): listeners
    /// stop pointing at routes and secrets before those go, routes stop pointing at clusters
    /// before the clusters go, clusters go before their endpoints and secrets.
    pub const REMOVE_ORDER: [ResourceType; TYPE_COUNT] = [
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Secret,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ADD_ORDER.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name used in metric labels, logs and the admin API.
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        }
    }

    /// In state-of-the-world, LDS and CDS responses carry the complete set and omission means
    /// removal (R9); the other types may carry only what changed and have no removal (R10).
    pub const fn sotw_full_state(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_index_matches_order() {
        for (i, t) in ResourceType::ADD_ORDER.into_iter().enumerate() {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(t.index(), i);
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/foo"), None);
    }
}
