//! TLS contexts: certificates and the trust bundle come over SDS (on the same ADS stream),
//! by the names of `translate::secret`.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, TransportSocket, config_source::ConfigSourceSpecifier,
    transport_socket::ConfigType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;

use super::any;
use super::secret::{TRUST_BUNDLE, leaf_secret_name};

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads()),
    }
}

fn common(service: &str, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(leaf_secret_name(service))],
        alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

/// Terminates mTLS as `service`: its leaf, a client certificate required and verified
/// against the trust bundle.
pub fn downstream(service: &str, alpn: &[&str]) -> TransportSocket {
    let mut common = common(service, alpn);
    common.validation_context_type = Some(ValidationContextType::ValidationContextSdsSecretConfig(
        sds(TRUST_BUNDLE.to_owned()),
    ));
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Originates mTLS as `service` towards `sni`, accepting only a server certificate with
/// exactly the SPIFFE ID `expected_spiffe`.
pub fn upstream(service: &str, sni: &str, expected_spiffe: &str, alpn: &[&str]) -> TransportSocket {
    let mut common = common(service, alpn);
    common.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
        CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: SanType::Uri as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(expected_spiffe.to_owned())),
                        ignore_case: false,
                    }),
                    oid: String::new(),
                }],
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds(TRUST_BUNDLE.to_owned())),
            ..Default::default()
        },
    ));
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: sni.to_owned(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}
