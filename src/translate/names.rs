//! Consul's names, kept so that Consul-served sidecars can use meshgate's gateways unchanged:
//! SNI `[subset.]service.namespace.datacenter.internal.<trust-domain>` and SPIFFE IDs
//! `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`.

use crate::model::DEFAULT_NAMESPACE;

/// The SNI of a service (or one of its subsets) in a datacenter (default partition).
pub fn service_sni(service: &str, subset: &str, datacenter: &str, trust_domain: &str) -> String {
    if subset.is_empty() {
        format!("{service}.{DEFAULT_NAMESPACE}.{datacenter}.internal.{trust_domain}")
    } else {
        format!("{subset}.{service}.{DEFAULT_NAMESPACE}.{datacenter}.internal.{trust_domain}")
    }
}

/// The name of a datacenter's gateways as a cluster: `dc.internal.<trust-domain>`.
pub fn gateway_sni(datacenter: &str, trust_domain: &str) -> String {
    format!("{datacenter}.internal.{trust_domain}")
}

/// The SPIFFE ID of a service.
pub fn spiffe_id(service: &str, datacenter: &str, trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{DEFAULT_NAMESPACE}/dc/{datacenter}/svc/{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Consul's own test vectors (agent/connect/sni_test.go).
    #[test]
    fn matches_consul() {
        let td = "1c053652-8512-4373-90cf-5a7f6263a994.consul";
        assert_eq!(
            service_sni("api", "", "foo", td),
            format!("api.default.foo.internal.{td}")
        );
        assert_eq!(
            service_sni("api", "v2", "foo", td),
            format!("v2.api.default.foo.internal.{td}")
        );
        assert_eq!(gateway_sni("foo", "domain1"), "foo.internal.domain1");
        assert_eq!(
            spiffe_id("web", "dc1", "td.consul"),
            "spiffe://td.consul/ns/default/dc/dc1/svc/web"
        );
    }
}
