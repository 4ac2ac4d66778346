//! `meshgate serve --consul-addr` end to end, against the Consul test double: what Consul
//! holds reaches an xDS stream; a health flip changes one assignment; Consul going away
//! leaves the last snapshot serving and says so (`stale`), and recovery is automatic; the
//! ACL token is sent; a 403 is reported naming the endpoint; a config entry Consul serves but
//! that breaks a rule is refused as a whole; a sidecar's failover across datacenters follows
//! the health of the remote instances.
//!
//! Durations here are generous upper bounds for "this arrives", never measurements.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use integration::app::App;
use integration::client::{DeltaClient, names};
use integration::consul_double::ConsulDouble;
use integration::fixtures::{node, node_with};
use meshgate::xds::ResourceType;
use prost::Message;
use serde_json::{Value, json};

const TD: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.consul";
const SOON: Duration = Duration::from_secs(20);

fn sni(service: &str) -> String {
    format!("{service}.default.dc1.internal.{TD}")
}

fn sni_in(service: &str, dc: &str) -> String {
    format!("{service}.default.{dc}.internal.{TD}")
}

fn web(node: &str, port: u16, status: &str) -> Value {
    json!({
        "Node": node,
        "Address": "10.0.0.1",
        "Service": {"ID": format!("web-{port}"), "Service": "web", "Port": port},
        "Checks": [{"CheckID": format!("web-{port}-alive"), "Status": status, "ServiceID": format!("web-{port}")}]
    })
}

fn seed(consul: &ConsulDouble) {
    consul.set_ca_roots(json!({
        "ActiveRootID": "root-1",
        "TrustDomain": TD,
        "Roots": [{"ID": "root-1", "Name": "Consul CA Root Cert", "RootCert": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "Active": true}]
    }));
    consul.put_config_entry(json!({
        "Kind": "exported-services", "Name": "default",
        "Services": [{"Name": "web", "Consumers": [{"Peer": "dc2"}]}]
    }));
    consul.register(web("n1", 8080, "passing"));
    consul.register(web("n2", 8081, "passing"));
}

fn start(consul: &ConsulDouble, extra: &[&str]) -> App {
    let url = consul.url();
    let mut flags = vec!["--consul-addr", url.as_str(), "--consul-wait", "2s"];
    flags.extend_from_slice(extra);
    App::start(&flags)
}

/// Receives (ACKing everything) until an assignment of `name` arrives.
async fn next_assignment(client: &mut DeltaClient, name: &str) -> ClusterLoadAssignment {
    loop {
        let r = client.recv_ack().await;
        if let Some(res) = r.resources.iter().find(|res| res.name == name) {
            let any = res.resource.as_ref().expect("a resource body");
            return ClusterLoadAssignment::decode(&any.value[..]).unwrap();
        }
    }
}

fn health(cla: &ClusterLoadAssignment) -> Vec<i32> {
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter().map(|e| e.health_status))
        .collect()
}

async fn status(app: &App) -> Value {
    app.sources().await
}

#[tokio::test]
async fn consul_state_reaches_envoy_and_survives_consul_going_away() {
    let consul = ConsulDouble::start("dc1");
    seed(&consul);
    let app = start(&consul, &[]);
    app.wait_for(SOON, "the first snapshot from Consul", async |app| {
        status(app).await["generation"].as_u64() >= Some(1)
    })
    .await;
    let mut client = DeltaClient::connect(app.xds_addr, node("ingress-1")).await;
    client.subscribe(ResourceType::Cluster, &[]).await;
    // The cluster is named with the trust domain of Consul's CA.
    assert_eq!(names(&client.recv_ack().await), [sni("web")]);
    client
        .subscribe(ResourceType::Endpoint, &[&sni("web")])
        .await;
    let healthy = HealthStatus::Healthy as i32;
    let unhealthy = HealthStatus::Unhealthy as i32;
    assert_eq!(
        health(&next_assignment(&mut client, &sni("web")).await),
        [healthy, healthy]
    );

    // A health flip: one blocking round trip, one new assignment.
    consul.set_check("dc1", "n2", "web-8081-alive", "critical");
    assert_eq!(
        health(&next_assignment(&mut client, &sni("web")).await),
        [healthy, unhealthy]
    );
    let generation = status(&app).await["generation"].as_u64().unwrap();

    // Consul goes away for 5 s: the last snapshot keeps serving, and the source says so.
    consul.stop();
    app.wait_for(SOON, "stale to be reported", async |app| {
        status(app).await["stale"] == json!(true)
    })
    .await;
    assert_eq!(app.metric("meshgate_consul_stale").await, 1.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = status(&app).await;
    assert_eq!(s["generation"].as_u64(), Some(generation), "{s}");
    client.expect_quiet().await;
    // It comes back: stale clears by itself, and a change made after reaches the stream.
    consul.restart();
    app.wait_for(SOON, "stale to clear", async |app| {
        status(app).await["stale"] == json!(false)
    })
    .await;
    assert_eq!(app.metric("meshgate_consul_stale").await, 0.0);
    consul.set_check("dc1", "n2", "web-8081-alive", "passing");
    assert_eq!(
        health(&next_assignment(&mut client, &sni("web")).await),
        [healthy, healthy]
    );

    // A service removed from the catalog leaves the assignment.
    consul.deregister("dc1", "n1", "web-8080");
    assert_eq!(
        health(&next_assignment(&mut client, &sni("web")).await),
        [healthy]
    );
}

#[tokio::test]
async fn the_token_is_sent_and_a_403_is_reported_naming_the_endpoint() {
    let consul = ConsulDouble::start("dc1");
    seed(&consul);
    consul.require_token(Some("secret-token"));
    // A wrong token: every watch is refused; the status names the endpoints and the cause.
    let app = start(&consul, &["--consul-token", "wrong-token"]);
    app.wait_for(SOON, "the ACL problem to be reported", async |app| {
        status(app).await.to_string().contains("403")
    })
    .await;
    let s = status(&app).await;
    let watches = s["consul"]["watches"].as_array().unwrap();
    let refused: Vec<&str> = watches
        .iter()
        .filter_map(|w| w["last_error"].as_str())
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e.starts_with("Consul refused /v1/catalog/services with 403 (ACL not found)")),
        "{refused:#?}"
    );
    assert_eq!(
        s["generation"].as_u64(),
        Some(0),
        "nothing is served before a sync"
    );
    drop(app);

    // The right token: sent on every request, and the mesh is read.
    consul.clear_requests();
    let app = start(&consul, &["--consul-token", "secret-token"]);
    app.wait_for(SOON, "the first snapshot", async |app| {
        status(app).await["generation"].as_u64() >= Some(1)
    })
    .await;
    let requests = consul.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.token.as_deref(),
            Some("secret-token"),
            "{} {}",
            r.path,
            r.query
        );
    }
}

#[tokio::test]
async fn a_broken_entry_in_consul_is_refused_and_the_last_snapshot_serves() {
    let consul = ConsulDouble::start("dc1");
    seed(&consul);
    let app = start(&consul, &[]);
    app.wait_for(SOON, "the first snapshot", async |app| {
        status(app).await["generation"].as_u64() >= Some(1)
    })
    .await;
    let first = status(&app).await["generation"].as_u64().unwrap();
    // Two resolvers redirecting to each other: Consul itself would refuse to compile the
    // chain; meshgate refuses the state. The first alone is valid and accepted.
    consul.put_config_entry(
        json!({"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}}),
    );
    app.wait_for(SOON, "the first redirect to be accepted", async |app| {
        status(app).await["generation"].as_u64() > Some(first)
    })
    .await;
    let generation = status(&app).await["generation"].as_u64().unwrap();
    consul.put_config_entry(
        json!({"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}),
    );
    app.wait_for(SOON, "the redirect cycle to be refused", async |app| {
        let s = status(app).await;
        s["errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let s = status(&app).await;
    assert_eq!(
        s["errors"][0],
        json!(
            "consul: redirect cycle: service-resolver \"a\" → service-resolver \"b\" → service-resolver \"a\""
        )
    );
    assert_eq!(s["generation"].as_u64(), Some(generation));
    // Fixed in Consul: accepted again.
    consul.delete_config_entry("service-resolver", "b");
    app.wait_for(SOON, "the fixed state to be accepted", async |app| {
        let s = status(app).await;
        s["errors"].as_array().is_some_and(|e| e.is_empty())
            && s["generation"].as_u64() > Some(generation)
    })
    .await;
}

/// `web`'s sidecar in dc1, with an upstream to `api` in dc2 (or none).
fn web_sidecar(upstream: bool) -> Value {
    let upstreams = if upstream {
        json!([{"DestinationName": "api", "Datacenter": "dc2", "LocalBindPort": 9191}])
    } else {
        json!([])
    };
    json!({
        "Node": "n1",
        "Address": "10.0.0.1",
        "Service": {
            "Kind": "connect-proxy", "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
            "Port": 21000,
            "Proxy": {"DestinationServiceName": "web", "Upstreams": upstreams}
        }
    })
}

fn api_in(dc: &str, node: &str) -> Value {
    json!({
        "Datacenter": dc,
        "Node": node,
        "Address": "10.9.0.1",
        "Service": {"ID": "api", "Service": "api", "Port": 8080},
        "Checks": [{"CheckID": "api-alive", "Status": "passing", "ServiceID": "api"}]
    })
}

/// The endpoint health of the last assignment received of each cluster of a stream.
type Seen = std::collections::BTreeMap<String, Vec<i32>>;

/// Receives (ACKing everything, recording assignments in `seen`) until the endpoint health
/// last seen of `names`, in that order, is `expected`.
async fn health_becomes(
    client: &mut DeltaClient,
    seen: &mut Seen,
    names: &[&str],
    expected: &[Vec<i32>],
) {
    let current = |seen: &Seen| -> Vec<Vec<i32>> {
        names
            .iter()
            .map(|n| seen.get(*n).cloned().unwrap_or_default())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while current(seen) != expected {
        let r = match tokio::time::timeout_at(deadline, client.try_recv()).await {
            Ok(Ok(r)) => r,
            failed => panic!(
                "the health of {names:?} never became {expected:?} within {SOON:?} \
                 ({failed:?}); last: {:?}",
                current(seen)
            ),
        };
        client.ack(&r).await;
        if r.type_url != ResourceType::Endpoint.type_url() {
            continue;
        }
        for res in &r.resources {
            let any = res.resource.as_ref().expect("a resource body");
            let cla = ClusterLoadAssignment::decode(&any.value[..]).unwrap();
            seen.insert(res.name.clone(), health(&cla));
        }
    }
}

#[tokio::test]
async fn failover_to_a_remote_datacenter_follows_its_health() {
    let consul = ConsulDouble::start("dc1");
    seed(&consul);
    // dc1: an egress gateway (the way to other datacenters) and `web`'s sidecar, whose
    // upstream `api` lives in dc2 and fails over to dc3.
    consul.register(json!({
        "Node": "gw-a",
        "Address": "10.0.0.9",
        "Service": {
            "Kind": "mesh-gateway", "ID": "egress", "Service": "egress", "Port": 8443,
            "Meta": {"meshgate-role": "egress"}
        }
    }));
    consul.register(web_sidecar(true));
    consul.put_config_entry(json!({
        "Kind": "service-resolver", "Name": "api",
        "Failover": {"*": {"Datacenters": ["dc3"]}}
    }));
    consul.register(api_in("dc2", "api-b"));
    consul.register(api_in("dc3", "api-c"));
    let app = start(&consul, &[]);
    app.wait_for(SOON, "the first snapshot from Consul", async |app| {
        status(app).await["generation"].as_u64() >= Some(1)
    })
    .await;

    let primary = format!("failover-target~0~{}", sni_in("api", "dc2"));
    let secondary = format!("failover-target~1~{}", sni_in("api", "dc2"));
    let mut client = DeltaClient::connect(
        app.xds_addr,
        node_with(
            "web-1",
            &[
                ("role", "sidecar"),
                ("datacenter", "dc1"),
                ("service", "web"),
            ],
        ),
    )
    .await;
    client.subscribe(ResourceType::Cluster, &[]).await;
    // The first snapshot may predate the remote datacenters' answers: the clusters come
    // with the snapshot that has them (the first response may be empty, R21).
    let mut clusters: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = client.recv_ack().await;
        clusters.retain(|c| !r.removed_resources.contains(c));
        clusters.extend(names(&r));
        if [&sni_in("api", "dc2"), &primary, &secondary]
            .iter()
            .all(|n| clusters.contains(n))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} and its failover targets not in {clusters:?}",
            sni_in("api", "dc2")
        );
    }
    client
        .subscribe(ResourceType::Endpoint, &[&primary, &secondary])
        .await;
    let healthy = HealthStatus::Healthy as i32;
    let unhealthy = HealthStatus::Unhealthy as i32;
    // Both targets have a passing instance in their datacenter: both members healthy (each
    // endpoint is the local egress gateway).
    let members = [primary.as_str(), secondary.as_str()];
    let mut seen = Seen::new();
    health_becomes(
        &mut client,
        &mut seen,
        &members,
        &[vec![healthy], vec![healthy]],
    )
    .await;
    let requests = consul.requests();
    for dc in ["dc2", "dc3"] {
        assert!(
            requests
                .iter()
                .any(|r| r.path == "/v1/health/service/api" && r.param("dc") == Some(dc)),
            "no /v1/health/service/api?dc={dc}"
        );
    }
    let s = status(&app).await;
    let endpoints: Vec<&str> = s["consul"]["watches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["endpoint"].as_str())
        .collect();
    assert!(
        endpoints.contains(&"/v1/health/service/api?dc=dc2"),
        "{endpoints:?}"
    );

    // dc2's instance goes critical: the primary member turns unhealthy, so Envoy fails over;
    // and back when it passes again.
    consul.set_check("dc2", "api-b", "api-alive", "critical");
    health_becomes(
        &mut client,
        &mut seen,
        &members,
        &[vec![unhealthy], vec![healthy]],
    )
    .await;
    consul.set_check("dc2", "api-b", "api-alive", "passing");
    health_becomes(
        &mut client,
        &mut seen,
        &members,
        &[vec![healthy], vec![healthy]],
    )
    .await;

    // The upstream is removed: meshgate stops watching the remote targets.
    consul.register(web_sidecar(false));
    app.wait_for(SOON, "the remote api watches to stop", async |app| {
        let s = status(app).await;
        !s["consul"]["watches"].as_array().unwrap().iter().any(|w| {
            w["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("/v1/health/service/api?dc="))
        })
    })
    .await;
}
