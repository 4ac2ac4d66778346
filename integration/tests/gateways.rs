//! Real Envoys end to end across two datacenters, all on 127.0.0.1:
//!
//! client → sidecar of `web` (dc-a) → egress gateway (dc-a) → ingress gateway (dc-b) → a test
//! upstream that answers with its name and echoes the `x-forwarded-client-cert` it received.
//!
//! meshgate runs as `serve --config-dir` on files written here, with the built-in CA. Every
//! Envoy must report `update_rejected` 0 for every type: meshgate never sends what Envoy
//! refuses.

use std::time::Duration;

use integration::app::App;
use integration::envoy::Envoy;
use integration::mesh::{
    SOON, TD, gateway_envoy, get, no_rejections, sidecar_envoy, tcp_answered, write,
};
use integration::upstream::{Upstream, free_port};

struct Mesh {
    _dir: tempfile::TempDir,
    _app: App,
    envoys: Vec<Envoy>,
    api_port: u16,
    db_port: u16,
    secret_port: u16,
}

const INTENTIONS: &str = r#"
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name = "web"
    Permissions = [
      { Action = "deny",  HTTP = { PathPrefix = "/admin" } },
      { Action = "allow", HTTP = { PathPrefix = "/", Methods = ["GET"] } },
    ]
  },
]
"#;

async fn mesh(api: &Upstream, db: &Upstream, secret: &Upstream) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ingress_b, egress_a) = (free_port(), free_port());
    let (api_port, db_port, secret_port) = (free_port(), free_port(), free_port());
    write(
        d,
        "gateways.yaml",
        &format!(
            "Datacenter: dc-b\nNode: gw-b\nAddress: 127.0.0.1\nService:\n  Kind: mesh-gateway\n  ID: ingress-b\n  Service: mesh-gateway\n  Port: {ingress_b}\n  TaggedAddresses: {{wan: {{Address: 127.0.0.1, Port: {ingress_b}}}}}\n  Meta: {{meshgate-role: ingress}}\n---\nDatacenter: dc-a\nNode: gw-a\nAddress: 127.0.0.1\nService:\n  Kind: mesh-gateway\n  ID: egress-a\n  Service: mesh-gateway-egress\n  Port: {egress_a}\n  Meta: {{meshgate-role: egress}}\n"
        ),
    );
    write(
        d,
        "services.yaml",
        &format!(
            "Datacenter: dc-b\nNode: app-b\nAddress: 127.0.0.1\nService: {{ID: api-1, Service: api, Port: {}}}\nChecks: [{{CheckID: api-1, ServiceID: api-1, Status: passing}}]\n---\nDatacenter: dc-b\nNode: app-b\nAddress: 127.0.0.1\nService: {{ID: db-1, Service: db, Port: {}}}\nChecks: [{{CheckID: db-1, ServiceID: db-1, Status: passing}}]\n---\nDatacenter: dc-b\nNode: app-b\nAddress: 127.0.0.1\nService: {{ID: secret-1, Service: secret, Port: {}}}\nChecks: [{{CheckID: secret-1, ServiceID: secret-1, Status: passing}}]\n---\nDatacenter: dc-a\nNode: app-a\nAddress: 127.0.0.1\nService:\n  Kind: connect-proxy\n  ID: web-sidecar-proxy\n  Service: web-sidecar-proxy\n  Port: 21000\n  Proxy:\n    DestinationServiceName: web\n    Upstreams:\n      - {{DestinationName: api, Datacenter: dc-b, LocalBindPort: {api_port}}}\n      - {{DestinationName: db, Datacenter: dc-b, LocalBindPort: {db_port}}}\n      - {{DestinationName: secret, Datacenter: dc-b, LocalBindPort: {secret_port}}}\n",
            api.port(),
            db.port(),
            secret.port()
        ),
    );
    write(
        d,
        "entries.hcl",
        "Kind = \"exported-services\"\nName = \"default\"\nServices = [\n  { Name = \"api\", Consumers = [{ Peer = \"dc-a\" }] },\n  { Name = \"db\", Consumers = [{ Peer = \"dc-a\" }] },\n]\n",
    );
    write(
        d,
        "defaults.hcl",
        "Kind = \"service-defaults\"\nName = \"api\"\nProtocol = \"http\"\n",
    );
    write(d, "intentions.hcl", INTENTIONS);
    write(
        d,
        "db-intentions.hcl",
        "Kind = \"service-intentions\"\nName = \"db\"\nSources = [{ Name = \"web\", Action = \"deny\" }]\n",
    );
    let state = d.join(".state");
    let app = App::start(&[
        "--config-dir",
        d.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--state-dir",
        state.to_str().unwrap(),
        "--config-debounce",
        "50ms",
    ]);
    let envoys = vec![
        gateway_envoy(app.xds_addr, "ingress", "dc-b").await,
        gateway_envoy(app.xds_addr, "egress", "dc-a").await,
        sidecar_envoy(app.xds_addr, "dc-a", "web").await,
    ];
    Mesh {
        _dir: dir,
        _app: app,
        envoys,
        api_port,
        db_port,
        secret_port,
    }
}

/// Waits until a GET through the sidecar answers 200.
async fn wait_answered(port: u16) -> (u16, String, String) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match get(port, "/", reqwest::Method::GET).await {
            Ok(r) if r.0 == 200 => return r,
            other => {
                if tokio::time::Instant::now() > deadline {
                    panic!("no answer through the mesh: {other:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_call_crosses_the_gateways_only_where_intentions_allow() {
    let (api, db, secret) = (
        Upstream::start("api").await,
        Upstream::start("db").await,
        Upstream::start("secret").await,
    );
    let mesh = mesh(&api, &db, &secret).await;

    // Allowed by intention (L7: GET anywhere but /admin): answered by api, and api learns
    // who called from the certificate the ingress gateway verified.
    let (status, body, xfcc) = wait_answered(mesh.api_port).await;
    assert_eq!((status, body.as_str()), (200, "api"));
    assert!(
        xfcc.contains(&format!("URI=spiffe://{TD}/ns/default/dc/dc-a/svc/web")),
        "x-forwarded-client-cert: {xfcc:?}"
    );
    // L7: a denied path and a denied method are refused with 403.
    let (status, _, _) = get(mesh.api_port, "/admin/users", reqwest::Method::GET)
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _, _) = get(mesh.api_port, "/", reqwest::Method::POST)
        .await
        .unwrap();
    assert_eq!(status, 403);

    // db: exported, but the intention denies web: the ingress gateway closes the connection.
    assert!(
        !tcp_answered(mesh.db_port, "db").await,
        "a denied TCP call was answered"
    );
    // secret: not exported: no chain on the ingress gateway, refused.
    assert!(
        !tcp_answered(mesh.secret_port, "secret").await,
        "a call to an unexported service was answered"
    );
    assert_eq!(secret.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(db.hits.load(std::sync::atomic::Ordering::Relaxed), 0);

    // An intention changed at run time governs the next connections.
    write(
        mesh._dir.path(),
        "db-intentions.hcl",
        "Kind = \"service-intentions\"\nName = \"db\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n",
    );
    let deadline = tokio::time::Instant::now() + SOON;
    while !tcp_answered(mesh.db_port, "db").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the allowed db call was never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    no_rejections(&mesh.envoys).await;
}
