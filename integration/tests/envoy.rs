//! meshgate against the real Envoy 1.40, for a DELTA_GRPC and a GRPC (state-of-the-world) ADS
//! bootstrap: configuration arrives and is accepted, traffic flows, endpoint changes move it,
//! a rejected resource is NACKed and recorded without a resend, and a control-plane restart
//! costs no request.

use std::time::Duration;

use integration::envoy::{self, AdsApi, Envoy};
use integration::fixtures::{cla, cluster, http_listener, invalid_cluster, route};
use integration::harness::{TestServer, metric_value};
use integration::upstream::{Upstream, free_port};
use meshgate::xds::{Debounce, Update};

const WAIT: Duration = Duration::from_secs(30);

fn config(listen: u16, upstream_port: u16) -> Update {
    Update::new()
        .replace([cluster("app")])
        .replace([cla("app", &[upstream_port])])
        .replace([http_listener("ingress", listen, "app-routes")])
        .replace([route("app-routes", "app")])
}

/// GETs through Envoy until the body is `want` (a listener or endpoint change takes a moment
/// to apply); fails with Envoy's log after [`WAIT`].
async fn wait_for_body(envoy: &Envoy, http: &reqwest::Client, port: u16, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = envoy::get(http, port).await;
        if got.as_deref() == Ok(want) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("no {want:?} through Envoy: last {got:?}\n{}", envoy.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serves_traffic_and_follows_endpoint_changes(api: AdsApi) {
    let server = TestServer::start();
    let (up1, up2) = (Upstream::start("one").await, Upstream::start("two").await);
    let listen = free_port();
    server.publish(config(listen, up1.port()));
    let envoy = Envoy::start(server.xds_addr, api, "envoy-1").await;

    let cds_ok = envoy
        .wait_stat(
            "cluster_manager.cds.update_success",
            |v| v >= 1,
            "CDS accepted",
            WAIT,
        )
        .await;
    envoy
        .wait_stat(
            "listener_manager.lds.update_success",
            |v| v >= 1,
            "LDS accepted",
            WAIT,
        )
        .await;
    let http = envoy::http_client();
    wait_for_body(&envoy, &http, listen, "one").await;
    assert!(up1.hits.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // The endpoint moves to the second upstream; Envoy keeps running.
    server.publish(Update::new().upsert([cla("app", &[up2.port()])]));
    wait_for_body(&envoy, &http, listen, "two").await;

    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
        "cluster.app.update_rejected",
        "http.ingress.rds.app-routes.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat).await, 0, "{stat}\n{}", envoy.log());
    }
    assert!(envoy.stat("cluster.app.update_success").await >= 2);
    // An endpoint change is EDS only: CDS was not pushed again.
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_success").await,
        cds_ok
    );

    // What Envoy holds is what was published.
    let dump = envoy.config_dump().await.to_string();
    assert!(
        dump.contains("\"app-routes\""),
        "route config in config_dump"
    );
    // meshgate saw Envoy's ACKs.
    let views = server.streams.snapshot();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].node_id, "envoy-1");
    let eds = &views[0].types["eds"];
    assert_eq!(eds.acked_nonce, eds.sent_nonce, "{views:?}");
    assert!(
        server
            .metric("meshgate_proxy_convergence_time_seconds_count")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_serves_traffic_and_follows_endpoint_changes() {
    serves_traffic_and_follows_endpoint_changes(AdsApi::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_ads_serves_traffic_and_follows_endpoint_changes() {
    serves_traffic_and_follows_endpoint_changes(AdsApi::Sotw).await;
}

async fn nack_is_recorded_and_next_version_serves(api: AdsApi) {
    let server = TestServer::start();
    let (up1, up2) = (Upstream::start("one").await, Upstream::start("two").await);
    let listen = free_port();
    server.publish(config(listen, up1.port()));
    let envoy = Envoy::start(server.xds_addr, api, "envoy-nack").await;
    let http = envoy::http_client();
    wait_for_body(&envoy, &http, listen, "one").await;
    let pushes_before = server
        .metric("meshgate_xds_pushes_total{type=\"cds\"}")
        .await;

    // A cluster Envoy must reject.
    server.publish(Update::new().upsert([invalid_cluster("broken")]));
    envoy
        .wait_stat(
            "cluster_manager.cds.update_rejected",
            |v| v >= 1,
            "CDS NACK",
            WAIT,
        )
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server
        .metric("meshgate_xds_rejects_total{type=\"cds\"}")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "meshgate did not record the NACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let debug: serde_json::Value =
        serde_json::from_str(&server.admin_get("/debug/streams").await).unwrap();
    let nack = &debug[0]["types"]["cds"]["last_nack"];
    assert!(
        nack["message"]
            .as_str()
            .unwrap_or_default()
            .contains("seconds: -1"),
        "Envoy's rejection text is recorded: {debug}"
    );
    // Traffic still flows on the last good config, and the rejected version is not resent:
    // let Envoy run a while, then count.
    for _ in 0..10 {
        assert_eq!(envoy::get(&http, listen).await.as_deref(), Ok("one"));
    }
    assert_eq!(
        server
            .metric("meshgate_xds_pushes_total{type=\"cds\"}")
            .await,
        pushes_before + 1.0,
        "one CDS push for the bad version, no resend"
    );
    assert_eq!(
        server
            .metric("meshgate_xds_rejects_total{type=\"cds\"}")
            .await,
        1.0
    );

    // The fix: the next version is ACKed and serves.
    server.publish(
        Update::new()
            .remove(meshgate::xds::ResourceType::Cluster, ["broken"])
            .upsert([cla("app", &[up2.port()])]),
    );
    wait_for_body(&envoy, &http, listen, "two").await;
    envoy
        .wait_stat(
            "cluster_manager.cds.update_success",
            |v| v >= 2,
            "CDS ACK after fix",
            WAIT,
        )
        .await;
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_is_recorded_and_next_version_serves() {
    nack_is_recorded_and_next_version_serves(AdsApi::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_is_recorded_and_next_version_serves() {
    nack_is_recorded_and_next_version_serves(AdsApi::Sotw).await;
}

async fn control_plane_restart_costs_no_request(api: AdsApi) {
    let up = Upstream::start("one").await;
    let listen = free_port();
    let seed = || {
        vec![(
            integration::harness::test_group(),
            config(listen, up.port()),
        )]
    };
    let server = TestServer::start_seeded(Debounce::NONE, None, seed());
    let xds_addr = server.xds_addr;
    let envoy = Envoy::start(xds_addr, api, "envoy-restart").await;
    let http = envoy::http_client();
    wait_for_body(&envoy, &http, listen, "one").await;
    envoy
        .wait_stat(
            "control_plane.connected_state",
            |v| v == 1,
            "connected",
            WAIT,
        )
        .await;

    // Requests run the whole time; every one must succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, http2) = (stop.clone(), http.clone());
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match envoy::get(&http2, listen).await {
                Ok(b) if b == "one" => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, failed)
    });

    server.kill();
    envoy
        .wait_stat(
            "control_plane.connected_state",
            |v| v == 0,
            "disconnected",
            WAIT,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = TestServer::start_seeded(Debounce::NONE, Some(xds_addr), seed());
    envoy
        .wait_stat(
            "control_plane.connected_state",
            |v| v == 1,
            "reconnected",
            WAIT,
        )
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let views = server.streams.snapshot();
        // Each type either was sent and ACKed, or (state of the world) resumed: Envoy came
        // back with the current version, and nothing needed sending.
        let metrics = server.admin_get("/metrics").await;
        let acked = views.first().is_some_and(|v| {
            ["cds", "lds"].iter().all(|name| {
                v.types.get(name).is_some_and(|t| {
                    (t.acked_nonce == t.sent_nonce && t.sent_nonce.is_some())
                        || (t.sent_nonce.is_none()
                            && metric_value(
                                &metrics,
                                &format!("meshgate_xds_sotw_resumed_total{{type=\"{name}\"}}"),
                            ) >= 1.0)
                })
            })
        });
        if acked {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy did not ACK after reconnect: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 20, "only {ok} requests ran");
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 0);
    let text = server.admin_get("/metrics").await;
    assert_eq!(
        metric_value(&text, "meshgate_xds_rejects_total{type=\"cds\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_control_plane_restart_costs_no_request() {
    control_plane_restart_costs_no_request(AdsApi::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_control_plane_restart_costs_no_request() {
    control_plane_restart_costs_no_request(AdsApi::Sotw).await;
}
