//! meshgate's Consul source against the Consul test double: first sync, services coming and
//! going, a health change re-reading only its service, index resets, Consul going away and
//! coming back, ACL tokens and 403s, remote datacenters' mesh gateways, and the services of
//! remote datacenters that local sidecars' upstreams reach (redirect, failover).
//!
//! Waits are short (1–2 s, 10 s where a test needs queries to stay blocked). Durations are
//! only generous upper bounds for "this arrives"; nothing here measures speed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use integration::consul_double::ConsulDouble;
use meshgate::source::consul::metrics::RequestResult;
use meshgate::source::consul::{
    CONFIG_KINDS, ConsulConfig, ConsulMetrics, ConsulSource, ConsulStatus, ConsulView, EndpointKind,
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(20);

struct Running {
    source: ConsulSource,
    views: watch::Receiver<Option<Arc<ConsulView>>>,
    metrics: ConsulMetrics,
    _stop: oneshot::Sender<()>,
}

fn shutdown_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

fn start(double: &ConsulDouble, wait: Duration, token: Option<&str>) -> Running {
    let mut config = ConsulConfig::new(double.url(), "dc1");
    config.wait = wait;
    config.token = token.map(str::to_string);
    let metrics = ConsulMetrics::default();
    let (stop, shutdown) = shutdown_signal();
    let (source, views) =
        ConsulSource::start(config, metrics.clone(), shutdown).expect("start the source");
    Running {
        source,
        views,
        metrics,
        _stop: stop,
    }
}

fn service(dc: &str, node: &str, name: &str, port: u16) -> Value {
    json!({
        "Datacenter": dc,
        "Node": node,
        "Address": "10.0.0.1",
        "Service": {"ID": name, "Service": name, "Port": port, "Meta": {"version": "1"}},
        "Checks": [
            {"CheckID": format!("{name}-alive"), "Name": "alive", "Status": "passing", "ServiceID": name}
        ]
    })
}

fn gateway(dc: &str, node: &str) -> Value {
    json!({
        "Datacenter": dc,
        "Node": node,
        "Address": "10.2.0.1",
        "Service": {
            "Kind": "mesh-gateway", "ID": "mesh-gateway", "Service": "mesh-gateway", "Port": 8443,
            "TaggedAddresses": {"wan": {"Address": "198.18.2.1", "Port": 8443}}
        },
        "Checks": [{"CheckID": "gw-alive", "Status": "passing", "ServiceID": "mesh-gateway"}]
    })
}

/// A double of dc1 with `web` and `api`, a service-defaults entry and CA roots.
fn populated() -> ConsulDouble {
    let d = ConsulDouble::start("dc1");
    d.register(service("dc1", "n1", "web", 8080));
    d.register(service("dc1", "n2", "api", 9090));
    d.put_config_entry(json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}));
    d.set_ca_roots(json!({
        "ActiveRootID": "root-1",
        "TrustDomain": "11111111-2222-3333-4444-555555555555.consul",
        "Roots": [{"ID": "root-1", "Name": "Consul CA Primary Cert", "RootCert": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "Active": true}]
    }));
    d
}

/// The first view for which `pred` holds, within [`SOON`].
async fn view_where(
    views: &mut watch::Receiver<Option<Arc<ConsulView>>>,
    what: &str,
    pred: impl Fn(&ConsulView) -> bool,
) -> Arc<ConsulView> {
    let found = tokio::time::timeout(SOON, async {
        loop {
            if let Some(v) = views.borrow_and_update().as_ref()
                && pred(v)
            {
                return v.clone();
            }
            views.changed().await.expect("the source is running");
        }
    })
    .await;
    match found {
        Ok(v) => v,
        Err(_) => panic!(
            "no view where {what} within {SOON:?}; last: {:?}",
            views
                .borrow()
                .as_ref()
                .map(|v| v.services.keys().cloned().collect::<Vec<_>>())
        ),
    }
}

/// Waits (within [`SOON`]) until `pred` holds of the source's status.
async fn status_where(
    source: &ConsulSource,
    what: &str,
    pred: impl Fn(&ConsulStatus) -> bool,
) -> ConsulStatus {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let status = source.status();
        if pred(&status) {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("status never showed {what}: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !pred() {
        if tokio::time::Instant::now() > deadline {
            panic!("never: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(view: &ConsulView, dc: &str, service: &str) -> bool {
    view.services
        .contains_key(&(dc.to_string(), service.to_string()))
}

fn health<'a>(view: &'a ConsulView, dc: &str, service: &str) -> &'a Value {
    &view.services[&(dc.to_string(), service.to_string())]
}

/// The status of `check_id` in a health answer.
fn check_status<'a>(entries: &'a Value, check_id: &str) -> Option<&'a str> {
    entries
        .as_array()?
        .iter()
        .flat_map(|e| e["Checks"].as_array().into_iter().flatten())
        .find(|c| c["CheckID"] == check_id)?["Status"]
        .as_str()
}

fn health_requests(d: &ConsulDouble, service: &str) -> usize {
    let path = format!("/v1/health/service/{service}");
    d.requests().iter().filter(|r| r.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_has_services_config_and_roots() {
    let d = populated();
    let mut s = start(&d, Duration::from_secs(2), None);
    let view = view_where(&mut s.views, "web and api are there", |v| {
        has(v, "dc1", "web") && has(v, "dc1", "api")
    })
    .await;
    assert_eq!(view.datacenter, "dc1");
    assert!(view.datacenters.contains(&"dc1".to_string()));
    assert_eq!(health(&view, "dc1", "web")[0]["Service"]["Port"], 8080);
    for kind in CONFIG_KINDS {
        assert!(view.config.contains_key(kind), "config kind {kind} missing");
    }
    let defaults = view.config["service-defaults"].as_array().unwrap();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["Name"], "web");
    assert_eq!(view.ca_roots.as_ref().unwrap()["ActiveRootID"], "root-1");
    assert!(view.generation > 0);

    let status = s.source.status();
    assert!(status.synced, "{status:#?}");
    assert!(!status.stale, "{status:#?}");
    assert_eq!(status.generation, view.generation);
    assert!(status.watches.iter().all(|w| w.answered && w.index >= 1));
    // Datacenters, services, 6 config kinds, roots, and one health watch per service.
    let healths = status
        .watches
        .iter()
        .filter(|w| w.kind == EndpointKind::health)
        .count();
    assert_eq!(healths, view.services.len());
    assert_eq!(s.metrics.watches.get() as usize, status.watches.len());
    assert!(
        s.metrics
            .requests_of(EndpointKind::health, RequestResult::ok)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_come_and_go_start_and_stop_their_watch() {
    let d = populated();
    let mut s = start(&d, Duration::from_secs(1), None);
    view_where(&mut s.views, "synced", |v| has(v, "dc1", "web")).await;

    d.register(service("dc1", "n3", "db", 5432));
    let view = view_where(&mut s.views, "db is there", |v| has(v, "dc1", "db")).await;
    assert_eq!(health(&view, "dc1", "db")[0]["Service"]["Port"], 5432);
    assert!(health_requests(&d, "db") >= 1);
    let web_before = view.services[&("dc1".to_string(), "web".to_string())].clone();

    d.deregister("dc1", "n3", "db");
    let view = view_where(&mut s.views, "db is gone", |v| !has(v, "dc1", "db")).await;
    // The others are untouched: the same Arc.
    assert!(Arc::ptr_eq(
        &web_before,
        &view.services[&("dc1".to_string(), "web".to_string())]
    ));
    status_where(&s.source, "no db watch", |st| {
        !st.watches
            .iter()
            .any(|w| w.endpoint == "/v1/health/service/db")
    })
    .await;
    // Stopped: no new query for db over several waits. A query the watch sent just before it
    // was stopped may still be on its way to the double: let it land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health_requests(&d, "db"), 0, "db is still watched");
    assert!(health_requests(&d, "web") >= 1, "web stopped being watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_change_rereads_only_that_service() {
    let d = populated();
    d.register(service("dc1", "n4", "cache", 6379));
    // A long wait: without changes every health query stays blocked for the whole test.
    let mut s = start(&d, Duration::from_secs(30), None);
    let before = view_where(&mut s.views, "synced", |v| has(v, "dc1", "cache")).await;
    // Let every watch send its blocking query.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.clear_requests();

    d.set_check("dc1", "n1", "web-alive", "critical");
    let after = view_where(&mut s.views, "web is critical", |v| {
        check_status(health(v, "dc1", "web"), "web-alive") == Some("critical")
    })
    .await;
    assert!(after.generation > before.generation);
    // Let anything else that might (wrongly) follow arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health: Vec<String> = d
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/health/"))
        .map(|r| format!("{}?{}", r.path, r.query))
        .collect();
    assert_eq!(
        health.len(),
        1,
        "one health query (web's next blocking query) expected: {health:?}"
    );
    assert!(
        health[0].starts_with("/v1/health/service/web?"),
        "{health:?}"
    );
    // The unchanged services are the same Arcs.
    for name in ["api", "cache"] {
        let key = ("dc1".to_string(), name.to_string());
        assert!(Arc::ptr_eq(&before.services[&key], &after.services[&key]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_reset_starts_the_watches_over() {
    let d = populated();
    let mut s = start(&d, Duration::from_secs(2), None);
    view_where(&mut s.views, "synced", |v| has(v, "dc1", "web")).await;
    assert!(d.index() > 1);

    d.reset_index();
    let metrics = s.metrics.clone();
    until("an index reset is counted", || {
        metrics.index_resets.get() > 0
    })
    .await;
    // The watches keep working from the new index.
    d.register(service("dc1", "n5", "late", 7000));
    view_where(&mut s.views, "late is there", |v| has(v, "dc1", "late")).await;
    d.set_check("dc1", "n1", "web-alive", "warning");
    view_where(&mut s.views, "web is warning", |v| {
        check_status(health(v, "dc1", "web"), "web-alive") == Some("warning")
    })
    .await;
    let status = s.source.status();
    assert!(!status.stale, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_going_away_makes_the_source_stale_and_it_recovers() {
    let d = populated();
    let mut s = start(&d, Duration::from_secs(2), None);
    let synced = view_where(&mut s.views, "synced", |v| has(v, "dc1", "web")).await;

    tokio::task::block_in_place(|| d.stop());
    status_where(&s.source, "stale", |st| st.stale).await;
    assert_eq!(s.metrics.stale.get(), 1);
    // Meanwhile the last view is kept.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = s.source.view().expect("the last view is kept");
    assert!(Arc::ptr_eq(&kept, &synced) || kept.services == synced.services);
    assert!(s.source.status().stale);
    let errors = s
        .metrics
        .requests_of(EndpointKind::health, RequestResult::error);
    assert!(errors > 0);

    tokio::task::block_in_place(|| d.restart());
    status_where(&s.source, "not stale", |st| !st.stale && st.synced).await;
    assert_eq!(s.metrics.stale.get(), 0);
    d.register(service("dc1", "n6", "after-restart", 7100));
    view_where(&mut s.views, "after-restart is there", |v| {
        has(v, "dc1", "after-restart")
    })
    .await;
    // Retries were paced by backoff, not a busy loop: well under one request per 10 ms per
    // watch over the 5 s outage.
    let watches = s.source.status().watches.len() as u64;
    assert!(
        errors < watches * 500,
        "{errors} errors for {watches} watches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_on_every_request() {
    let d = populated();
    d.require_token(Some("s3cret-token"));
    let mut s = start(&d, Duration::from_secs(1), Some("s3cret-token"));
    view_where(&mut s.views, "synced", |v| has(v, "dc1", "web")).await;
    d.register(service("dc1", "n7", "more", 7200));
    view_where(&mut s.views, "more is there", |v| has(v, "dc1", "more")).await;
    let requests = d.requests();
    assert!(requests.len() >= 10);
    for r in &requests {
        assert_eq!(
            r.token.as_deref(),
            Some("s3cret-token"),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
    }
    assert!(!s.source.status().stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_reported_as_an_acl_problem_naming_the_endpoint() {
    let d = populated();
    d.require_token(Some("the-right-one"));
    let mut s = start(&d, Duration::from_secs(1), Some("a-wrong-one"));
    let status = status_where(&s.source, "the services watch refused", |st| {
        st.watches
            .iter()
            .any(|w| w.endpoint == "/v1/catalog/services" && w.failing)
    })
    .await;
    let line = status
        .watches
        .iter()
        .find(|w| w.endpoint == "/v1/catalog/services")
        .unwrap();
    assert_eq!(
        line.last_error.as_deref(),
        Some(
            "Consul refused /v1/catalog/services with 403 (ACL not found): the token lacks permission or is unknown"
        )
    );
    assert!(status.stale && !status.synced);
    assert!(s.views.borrow().is_none(), "no view before sync");
    assert!(
        s.metrics
            .requests_of(EndpointKind::catalog_services, RequestResult::forbidden)
            >= 1
    );

    // The token gains access: the source recovers by itself.
    d.require_token(Some("a-wrong-one"));
    view_where(&mut s.views, "synced after the fix", |v| {
        has(v, "dc1", "web")
    })
    .await;
    let status = status_where(&s.source, "not stale", |st| !st.stale).await;
    assert!(status.synced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_synced() {
    let d = populated();
    d.fail_next(500, 5);
    let mut s = start(&d, Duration::from_secs(1), None);
    view_where(&mut s.views, "synced", |v| {
        has(v, "dc1", "web") && has(v, "dc1", "api")
    })
    .await;
    let errors: u64 = [
        EndpointKind::catalog_services,
        EndpointKind::catalog_datacenters,
        EndpointKind::health,
        EndpointKind::config,
        EndpointKind::ca_roots,
    ]
    .into_iter()
    .map(|k| s.metrics.requests_of(k, RequestResult::error))
    .sum();
    assert_eq!(errors, 5);
    status_where(&s.source, "not stale", |st| !st.stale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_datacenters_contribute_their_mesh_gateways() {
    let d = populated();
    d.register(gateway("dc2", "gw-node"));
    d.register(service("dc2", "n-remote", "remote-web", 8080));
    let mut s = start(&d, Duration::from_secs(1), None);
    let view = view_where(&mut s.views, "dc2's gateway is there", |v| {
        has(v, "dc2", "mesh-gateway")
    })
    .await;
    assert!(view.datacenters.contains(&"dc2".to_string()));
    assert!(
        !has(&view, "dc2", "remote-web"),
        "only gateways of remote dcs"
    );
    assert_eq!(
        health(&view, "dc2", "mesh-gateway")[0]["Service"]["Kind"],
        "mesh-gateway"
    );
    let requests = d.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/v1/health/service/mesh-gateway" && r.param("dc") == Some("dc2"))
    );
    assert!(requests.iter().any(|r| r.path == "/v1/catalog/services"
        && r.param("dc") == Some("dc2")
        && r.param("filter") == Some(r#"ServiceKind == "mesh-gateway""#)));
    // Local ones carry no dc.
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/v1/health/service/web")
            .all(|r| r.param("dc").is_none())
    );
    let status = s.source.status();
    assert!(
        status
            .watches
            .iter()
            .any(|w| w.endpoint == "/v1/health/service/mesh-gateway?dc=dc2")
    );

    // The gateway goes away: its watch and entry go too.
    d.deregister("dc2", "gw-node", "mesh-gateway");
    view_where(&mut s.views, "dc2's gateway is gone", |v| {
        !has(v, "dc2", "mesh-gateway")
    })
    .await;
}

/// `web`'s sidecar in dc1 with upstreams to `destinations` (name, datacenter).
fn sidecar(destinations: &[(&str, &str)]) -> Value {
    let upstreams: Vec<Value> = destinations
        .iter()
        .enumerate()
        .map(|(i, (name, dc))| {
            json!({"DestinationName": name, "Datacenter": dc, "LocalBindPort": 9191 + i})
        })
        .collect();
    json!({
        "Datacenter": "dc1",
        "Node": "n1",
        "Address": "10.0.0.1",
        "Service": {
            "Kind": "connect-proxy", "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
            "Port": 21000,
            "Proxy": {"DestinationServiceName": "web", "Upstreams": upstreams}
        }
    })
}

fn remote_health_requests(d: &ConsulDouble, service: &str, dc: &str) -> usize {
    let path = format!("/v1/health/service/{service}");
    d.requests()
        .iter()
        .filter(|r| r.path == path && r.param("dc") == Some(dc))
        .count()
}

fn watched(status: &ConsulStatus, endpoint: &str) -> bool {
    status.watches.iter().any(|w| w.endpoint == endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_targets_of_local_upstreams_are_watched_and_follow_changes() {
    let d = populated();
    // `web`'s sidecar reaches `db` in dc1, which fails over to dc2.
    d.register(sidecar(&[("db", "")]));
    d.put_config_entry(json!({
        "Kind": "service-resolver", "Name": "db",
        "Failover": {"*": {"Datacenters": ["dc2"]}}
    }));
    d.register(service("dc2", "n-dc2", "db", 5432));
    d.register(service("dc2", "n-dc2", "unrelated", 7000));
    d.register(service("dc3", "n-dc3", "db", 5432));
    let mut s = start(&d, Duration::from_secs(1), None);
    // The first view already has it: the watch started with the upstream, before the sync.
    let first = view_where(&mut s.views, "synced", |_| true).await;
    assert!(has(&first, "dc2", "db"), "{:?}", first.services.keys());
    assert_eq!(health(&first, "dc2", "db")[0]["Node"]["Datacenter"], "dc2");
    assert!(
        !has(&first, "dc2", "unrelated"),
        "only what an upstream reaches"
    );
    assert!(!has(&first, "dc3", "db"), "dc3 is not a target");
    assert!(remote_health_requests(&d, "db", "dc2") >= 1);
    assert_eq!(remote_health_requests(&d, "unrelated", "dc2"), 0);
    // The local target is the local watch, not a second one with ?dc=dc1.
    assert_eq!(remote_health_requests(&d, "db", "dc1"), 0);
    let status = s.source.status();
    assert!(
        watched(&status, "/v1/health/service/db?dc=dc2"),
        "{status:#?}"
    );
    assert_eq!(s.metrics.watches.get() as usize, status.watches.len());

    // A remote health change arrives; an unrelated change keeps the remote answer's Arc.
    d.set_check("dc2", "n-dc2", "db-alive", "critical");
    let v = view_where(&mut s.views, "db@dc2 is critical", |v| {
        has(v, "dc2", "db") && check_status(health(v, "dc2", "db"), "db-alive") == Some("critical")
    })
    .await;
    let remote_db = v.services[&("dc2".to_string(), "db".to_string())].clone();
    d.set_check("dc1", "n1", "web-alive", "warning");
    let v = view_where(&mut s.views, "web is warning", |v| {
        check_status(health(v, "dc1", "web"), "web-alive") == Some("warning")
    })
    .await;
    assert!(Arc::ptr_eq(
        &remote_db,
        &v.services[&("dc2".to_string(), "db".to_string())]
    ));

    // The resolver changes: failover to dc3 instead; dc2's watch stops, dc3's starts.
    d.put_config_entry(json!({
        "Kind": "service-resolver", "Name": "db",
        "Failover": {"*": {"Targets": [{"Datacenter": "dc3"}]}}
    }));
    view_where(&mut s.views, "db@dc3 and not db@dc2", |v| {
        has(v, "dc3", "db") && !has(v, "dc2", "db")
    })
    .await;
    status_where(&s.source, "dc3 watched, dc2 not", |st| {
        watched(st, "/v1/health/service/db?dc=dc3") && !watched(st, "/v1/health/service/db?dc=dc2")
    })
    .await;

    // The upstream is removed: the remote watch stops, and asks no more.
    d.register(sidecar(&[]));
    view_where(&mut s.views, "db@dc3 is gone", |v| !has(v, "dc3", "db")).await;
    status_where(&s.source, "no remote db watch", |st| {
        !watched(st, "/v1/health/service/db?dc=dc3")
    })
    .await;
    d.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        remote_health_requests(&d, "db", "dc3"),
        0,
        "db@dc3 is still watched"
    );
    assert!(health_requests(&d, "web") >= 1, "the local watches stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_target_does_not_hold_the_first_view() {
    let d = populated();
    // An upstream straight to dc2, redirected by its resolver to dc3, which is down.
    d.register(sidecar(&[("db", "dc2")]));
    d.put_config_entry(json!({
        "Kind": "service-resolver", "Name": "db", "Redirect": {"Datacenter": "dc3"}
    }));
    d.register(service("dc2", "n-dc2", "db", 5432));
    d.register(service("dc3", "n-dc3", "db", 5432));
    d.set_unreachable("dc3", true);
    let mut s = start(&d, Duration::from_secs(1), None);
    let first = view_where(&mut s.views, "synced", |_| true).await;
    assert!(has(&first, "dc1", "web"));
    assert!(!has(&first, "dc3", "db"));
    // The redirect's end is the target, not where the upstream pointed.
    assert!(!has(&first, "dc2", "db"));
    let status = status_where(&s.source, "db@dc3 failing", |st| {
        st.watches
            .iter()
            .any(|w| w.endpoint == "/v1/health/service/db?dc=dc3" && w.failing)
    })
    .await;
    assert!(status.synced && status.stale, "{status:#?}");
    let line = status
        .watches
        .iter()
        .find(|w| w.endpoint == "/v1/health/service/db?dc=dc3")
        .unwrap();
    assert_eq!(
        line.last_error.as_deref(),
        Some("Consul answered /v1/health/service/db?dc=dc3 with 500 (No path to datacenter)")
    );

    // dc3 comes back: its instances arrive and the source is no longer stale.
    d.set_unreachable("dc3", false);
    view_where(&mut s.views, "db@dc3 is there", |v| has(v, "dc3", "db")).await;
    status_where(&s.source, "not stale", |st| !st.stale).await;
}
