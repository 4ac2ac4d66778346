//! The directory source end to end: `meshgate serve --config-dir` reads Consul-format files,
//! and what it serves changes when they change — checked on an xDS stream. A broken edit is
//! refused as a whole (nothing new is pushed, the error is on `/debug/sources` and in the
//! metrics), and fixing the file recovers.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use integration::app::App;
use integration::client::{DeltaClient, names};
use integration::fixtures::node;
use meshgate::xds::ResourceType;
use prost::Message;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
const WEB_SNI: &str = "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as git checkouts and config management do: a reader never sees half.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn web(ports: &[u16]) -> String {
    let services: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "  {{\n    name = \"web\"\n    id = \"web-{p}\"\n    address = \"10.0.0.1\"\n    port = {p}\n  }},\n"
            )
        })
        .collect();
    format!("services = [\n{}]\n", services.concat())
}

fn ports(cla: &ClusterLoadAssignment) -> Vec<u32> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut out = Vec::new();
    for l in &cla.endpoints {
        for e in &l.lb_endpoints {
            if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier
                && let Some(address::Address::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.as_ref())
                && let Some(PortSpecifier::PortValue(p)) = sa.port_specifier
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Receives until an EDS response for `WEB_SNI` arrives, ACKing everything; returns it.
async fn next_web_assignment(client: &mut DeltaClient) -> ClusterLoadAssignment {
    loop {
        let r = client.recv_ack().await;
        if r.type_url == ResourceType::Endpoint.type_url()
            && let Some(res) = r.resources.iter().find(|res| res.name == WEB_SNI)
        {
            let any = res.resource.as_ref().expect("a resource body");
            return ClusterLoadAssignment::decode(&any.value[..]).unwrap();
        }
    }
}

async fn refused_loads(app: &App) -> u64 {
    app.sources().await["refused_loads"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn edits_reach_envoy_and_broken_edits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "exports.hcl",
        "Kind = \"exported-services\"\nName = \"default\"\nServices = [{ Name = \"web\", Consumers = [{ Peer = \"dc2\" }] }]\n",
    );
    write(d, "web.hcl", &web(&[8080]));
    let app = App::start(&[
        "--config-dir",
        d.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--config-debounce",
        "50ms",
        "--config-rescan",
        "1h",
    ]);
    let mut client = DeltaClient::connect(app.xds_addr, node("ingress-1")).await;
    client.subscribe(ResourceType::Cluster, &[]).await;
    let clusters = client.recv_ack().await;
    assert_eq!(names(&clusters), [WEB_SNI], "{clusters:?}");
    client.subscribe(ResourceType::Endpoint, &[WEB_SNI]).await;
    assert_eq!(ports(&next_web_assignment(&mut client).await), [8080]);

    // An edit: a second instance.
    write(d, "web.hcl", &web(&[8080, 8081]));
    assert_eq!(ports(&next_web_assignment(&mut client).await), [8080, 8081]);
    let generation = app.sources().await["generation"].as_u64().unwrap();

    // A broken edit: a syntax error in one file, and a port out of range in another.
    write(
        d,
        "web.hcl",
        "services = [\n  { name = \"web\", port = 8082 \n",
    );
    write(
        d,
        "db.hcl",
        "service {\n  name = \"db\"\n  port = 99999\n}\n",
    );
    app.wait_for(
        Duration::from_secs(10),
        "the broken state to be refused",
        async |app| {
            let s = app.sources().await;
            s["errors"].as_array().is_some_and(|e| e.len() == 2)
        },
    )
    .await;
    let status = app.sources().await;
    let errors: Vec<&str> = status["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors[0].starts_with("db.hcl:3: service \"db\": port 99999 is outside 1-65535"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("web.hcl:"), "{errors:?}");
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "the last good snapshot serves"
    );
    assert!(app.metric("meshgate_source_current_errors").await >= 2.0);
    assert!(
        app.metric("meshgate_source_loads_total{result=\"refused\"}")
            .await
            >= 1.0
    );
    assert!(app.metric("meshgate_source_errors_total").await >= 2.0);
    // Nothing new reached the stream.
    client.expect_quiet().await;

    // Fixing both files recovers.
    let refused = refused_loads(&app).await;
    write(
        d,
        "db.hcl",
        "service {\n  name = \"db\"\n  port = 9999\n}\n",
    );
    write(d, "web.hcl", &web(&[8082]));
    assert_eq!(ports(&next_web_assignment(&mut client).await), [8082]);
    let status = app.sources().await;
    assert!(status["errors"].as_array().unwrap().is_empty(), "{status}");
    assert!(status["generation"].as_u64().unwrap() > generation);
    assert!(refused_loads(&app).await >= refused);
    assert_eq!(app.metric("meshgate_source_current_errors").await, 0.0);
}

#[tokio::test]
async fn a_directory_with_errors_refuses_to_start_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        "Kind: service-resolver\nName: api\nDefaultSubset: v1\n",
    );
    let err = match App::try_start(&[
        "--config-dir",
        dir.path().to_str().unwrap(),
        "--trust-domain",
        TD,
    ]) {
        Ok(_) => panic!("a broken directory must not start"),
        Err(e) => e,
    };
    assert!(err.contains("has errors"), "{err}");
}

#[tokio::test]
async fn rescans_of_an_unchanged_directory_push_nothing() {
    // The periodic rescan reads only the directory's digest when nothing changed: no new
    // generation, nothing sent.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "exports.hcl",
        "Kind = \"exported-services\"\nName = \"default\"\nServices = [{ Name = \"web\" }]\n",
    );
    write(d, "web.hcl", &web(&[8080]));
    let app = App::start(&[
        "--config-dir",
        d.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--config-rescan",
        "100ms",
    ]);
    app.wait_for(
        Duration::from_secs(10),
        "two unchanged rescans",
        async |app| {
            app.metric("meshgate_source_loads_total{result=\"unchanged\"}")
                .await
                >= 2.0
        },
    )
    .await;
    let mut client = DeltaClient::connect(app.xds_addr, node("ingress-1")).await;
    client.subscribe(ResourceType::Endpoint, &[WEB_SNI]).await;
    assert_eq!(ports(&next_web_assignment(&mut client).await), [8080]);
    assert_eq!(app.sources().await["generation"].as_u64(), Some(1));
    client.expect_quiet().await;
}

#[tokio::test]
async fn reading_the_files_does_not_count_as_a_change() {
    // The watcher sees file events; a read of the directory (a reload, a rescan's digest)
    // makes access events that must not start another read, or the source would never rest.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "web.hcl", &web(&[8080]));
    let app = App::start(&[
        "--config-dir",
        d.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--config-debounce",
        "50ms",
        "--config-rescan",
        "1h",
    ]);
    // The same content written again: one event, one read, found unchanged.
    std::fs::write(d.join("web.hcl"), web(&[8080])).unwrap();
    app.wait_for(
        Duration::from_secs(10),
        "the event to be read",
        async |app| {
            app.metric("meshgate_source_loads_total{result=\"unchanged\"}")
                .await
                >= 1.0
        },
    )
    .await;
    // Many debounce periods later, nothing else was read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.metric("meshgate_source_loads_total{result=\"unchanged\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("meshgate_source_loads_total{result=\"accepted\"}")
            .await,
        1.0
    );
}
