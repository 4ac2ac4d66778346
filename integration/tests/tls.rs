//! TLS on the xDS listener, loaded from PEM files as `meshgate serve --xds-tls-*` does, with
//! client-certificate verification.

use std::sync::Arc;

use integration::client::{DeltaClient, Via, names};
use integration::fixtures::{cluster, node};
use integration::harness::test_group;
use meshgate::metrics::Metrics;
use meshgate::xds::stream::StreamRegistry;
use meshgate::xds::{Debounce, ResourceType, Store, TlsFiles, Update, XdsServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    other_ca_client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = Issuer::new(other_params, other_key);
    Pki {
        ca: ca_cert.pem(),
        server: leaf("localhost", &issuer),
        client: leaf("envoy", &issuer),
        other_ca_client: leaf("intruder", &other),
    }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<DeltaClient, String> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(cfg)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = DeltaClient::on_channel(ch, node("tls-1"), Via::Ads)
        .await
        .map_err(|s| s.to_string())?;
    c.subscribe(ResourceType::Cluster, &[]).await;
    Ok(c)
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let files = TlsFiles {
        cert: file("server.pem", &p.server.0),
        key: file("server.key", &p.server.1),
        client_ca: Some(file("ca.pem", &p.ca)),
    };
    let store = Store::new(Debounce::NONE, Arc::new(Metrics::new()));
    store
        .publish(&test_group(), Update::new().replace([cluster("a")]))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = XdsServer::new(store, Arc::new(StreamRegistry::default()), "dc1");
    tokio::spawn(server.serve(
        listener,
        Some(files.load().unwrap()),
        std::future::pending(),
    ));

    // A client of the CA gets its clusters.
    let mut ok = tls_client(addr, &p.ca, Some(&p.client)).await.unwrap();
    assert_eq!(names(&ok.recv_ack().await), ["a"]);

    // No client certificate, or one from another CA: refused.
    for identity in [None, Some(&p.other_ca_client)] {
        match tls_client(addr, &p.ca, identity).await {
            Err(e) => assert!(!e.is_empty()),
            // The handshake may fail lazily; then the stream must end in an error.
            Ok(mut c) => {
                let r = c.try_recv().await;
                assert!(
                    r.is_err(),
                    "a client without a valid certificate was served: {r:?}"
                );
            }
        }
    }
}

#[test]
fn missing_tls_files_are_named_in_the_error() {
    let files = TlsFiles {
        cert: "does-not-exist.pem".into(),
        key: "does-not-exist.key".into(),
        client_ca: None,
    };
    let err = files.load().unwrap_err().to_string();
    assert!(err.contains("certificate does-not-exist.pem"), "{err}");
}
