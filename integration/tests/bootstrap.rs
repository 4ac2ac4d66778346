//! `meshgate bootstrap` against the real Envoy 1.40: every role's bootstrap (and every file
//! shipped in `envoy-bootstrap/`) passes `envoy --mode validate`, and an Envoy started with a
//! generated bootstrap connects to meshgate by delta ADS and is placed in its group from the
//! node metadata — over plain gRPC and over mutual TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::app::App;
use integration::envoy::{self, Envoy};
use integration::harness::TestServer;
use meshgate::bootstrap::{self, ClientCert, Options, XdsTls};
use meshgate::xds::Role;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn options(role: Role, datacenter: &str, node_id: &str, xds_addr: &str) -> Options {
    Options {
        role,
        datacenter: datacenter.into(),
        service: None,
        node_id: node_id.into(),
        xds_addr: xds_addr.into(),
        admin_addr: Some("127.0.0.1:0".into()),
        listen_addr: None,
        cluster: None,
        tls: None,
    }
}

fn sidecar(datacenter: &str, service: &str, node_id: &str, xds_addr: &str) -> Options {
    Options {
        service: Some(service.into()),
        ..options(Role::Sidecar, datacenter, node_id, xds_addr)
    }
}

/// A CA, a server certificate for `localhost`, and a client certificate, as PEM files.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: with rcgen's default one on both, BoringSSL takes the leaf for
    // a self-signed certificate (issuer == subject) and refuses it.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            write(&format!("{name}.pem"), &cert.pem()),
            write(&format!("{name}-key.pem"), &key.serialize_pem()),
        )
    };
    let server = leaf("localhost");
    let client = leaf("envoy");
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server,
        client,
    }
}

fn tls(pki: &Pki) -> XdsTls {
    XdsTls {
        ca: pki.ca.display().to_string(),
        client: Some(ClientCert {
            cert: pki.client.0.display().to_string(),
            key: pki.client.1.display().to_string(),
        }),
    }
}

fn validate(path: &Path) {
    if let Err(e) = envoy::validate(path) {
        panic!(
            "envoy --mode validate refused {}:\n{e}\n--- the bootstrap:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

#[test]
fn every_role_passes_envoy_validation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let cases = vec![
        ("ingress", {
            let mut o = options(Role::Ingress, "authn", "gw-in", "127.0.0.1:18000");
            o.listen_addr = Some("0.0.0.0:8443".into());
            o
        }),
        (
            "egress",
            options(Role::Egress, "authn", "gw-out", "127.0.0.1:18000"),
        ),
        (
            "sidecar",
            sidecar("media-core", "logic-router", "lr-1", "127.0.0.1:18000"),
        ),
        (
            "ingress-by-name",
            options(
                Role::Ingress,
                "authn",
                "gw-dns",
                "meshgate.example.com:18000",
            ),
        ),
        ("egress-mtls", {
            let mut o = options(Role::Egress, "authn", "gw-tls", "localhost:18000");
            o.tls = Some(tls(&pki));
            o
        }),
        ("sidecar-tls-ca-only", {
            let mut o = sidecar("authn", "authentik", "ak-1", "127.0.0.1:18000");
            o.tls = Some(XdsTls {
                ca: pki.ca.display().to_string(),
                client: None,
            });
            o
        }),
    ];
    for (name, o) in cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, bootstrap::render(&o).expect("renders")).unwrap();
        validate(&path);
    }
}

#[test]
fn the_shipped_bootstraps_pass_envoy_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy-bootstrap");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("envoy-bootstrap/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    for f in &files {
        validate(f);
    }
}

/// What meshgate's `/debug/streams` says about the stream of `node_id`, once it is there.
async fn stream_of(admin: std::net::SocketAddr, node_id: &str, envoy: &Envoy) -> Value {
    let http = envoy::http_client();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let streams: Value = http
            .get(format!("http://{admin}/debug/streams"))
            .send()
            .await
            .expect("GET /debug/streams")
            .json()
            .await
            .expect("JSON");
        if let Some(s) = streams
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node_id"] == node_id)
        {
            return s.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no stream of {node_id} on /debug/streams: {streams}\nenvoy log:\n{}",
                envoy.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bootstrap Envoy is running with, from its own `/config_dump`.
async fn envoy_node(envoy: &Envoy) -> Value {
    let dump = envoy.config_dump().await;
    let boot = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("BootstrapConfigDump"))
        })
        .expect("a BootstrapConfigDump");
    boot["bootstrap"]["node"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bootstraps_connect_by_delta_ads_with_their_node() {
    let server = TestServer::start();
    let port = server.xds_addr.port();

    // A gateway by IP (a STATIC cluster), a sidecar by name (STRICT_DNS through localhost).
    let mut gw = options(
        Role::Ingress,
        "media-core",
        "media-ingress-1",
        &server.xds_addr.to_string(),
    );
    gw.listen_addr = Some("127.0.0.1:8543".into());
    let side = sidecar(
        "media-core",
        "logic-router",
        "logic-router-1-sidecar-proxy",
        &format!("localhost:{port}"),
    );
    let gw_envoy = Envoy::start_with_bootstrap(&bootstrap::render(&gw).unwrap()).await;
    let side_envoy = Envoy::start_with_bootstrap(&bootstrap::render(&side).unwrap()).await;

    for (envoy, node_id, group, cluster) in [
        (
            &gw_envoy,
            "media-ingress-1",
            "ingress/media-core",
            "ingress-gateway",
        ),
        (
            &side_envoy,
            "logic-router-1-sidecar-proxy",
            "sidecar/media-core/logic-router",
            "logic-router",
        ),
    ] {
        let s = stream_of(server.admin_addr, node_id, envoy).await;
        assert_eq!(s["protocol"], "delta", "{s}");
        assert_eq!(s["service"], "ads", "{s}");
        assert_eq!(s["group"], group, "{s}");
        envoy
            .wait_stat(
                "control_plane.connected_state",
                |v| v == 1,
                "Envoy connected to meshgate",
                WAIT,
            )
            .await;
        let node = envoy_node(envoy).await;
        assert_eq!(node["id"], node_id, "{node}");
        assert_eq!(node["cluster"], cluster, "{node}");
    }
    let gw_node = envoy_node(&gw_envoy).await;
    assert_eq!(
        gw_node["metadata"],
        serde_json::json!({"role": "ingress", "datacenter": "media-core", "listen_addr": "127.0.0.1:8543"})
    );
    // The connection limit is set the way Envoy 1.40 reads it: no warning about a missing
    // limit, and none about a deprecated runtime key.
    for envoy in [&gw_envoy, &side_envoy] {
        let log = envoy.full_log();
        for warning in [
            "no configured limit to the number of allowed active downstream connections",
            "deprecated runtime key",
        ] {
            assert!(!log.contains(warning), "Envoy warned {warning:?}:\n{log}");
        }
    }
    let side_node = envoy_node(&side_envoy).await;
    assert_eq!(
        side_node["metadata"],
        serde_json::json!({"role": "sidecar", "datacenter": "media-core", "service": "logic-router"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_bootstrap_connects_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (cert, key, ca) = (
        pki.server.0.display().to_string(),
        pki.server.1.display().to_string(),
        pki.ca.display().to_string(),
    );
    let app = App::start(&[
        "--datacenter",
        "authn",
        "--state-dir",
        &dir.path().join("state").display().to_string(),
        "--xds-tls-cert",
        &cert,
        "--xds-tls-key",
        &key,
        "--xds-tls-client-ca",
        &ca,
    ]);
    // The server certificate names `localhost`: the bootstrap verifies that name.
    let mut o = options(
        Role::Egress,
        "authn",
        "authn-egress-tls",
        &format!("localhost:{}", app.xds_addr.port()),
    );
    o.tls = Some(tls(&pki));
    let envoy = Envoy::start_with_bootstrap(&bootstrap::render(&o).unwrap()).await;
    let s = stream_of(app.admin_addr, "authn-egress-tls", &envoy).await;
    assert_eq!(s["protocol"], "delta", "{s}");
    assert_eq!(s["group"], "egress/authn", "{s}");
    envoy
        .wait_stat(
            "cluster.meshgate.ssl.handshake",
            |v| v >= 1,
            "a TLS handshake with meshgate",
            WAIT,
        )
        .await;
}
