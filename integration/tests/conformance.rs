//! xDS conformance: one test per rule of the protocol reference (R1–R29) that applies, for
//! delta and for state-of-the-world, driven step by step with a client on envoy-types' stubs.
//!
//! "Nothing is sent" is proved without timing: the client then subscribes to something the
//! server must answer (a probe) and checks that the probe's answer is the next message.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use integration::client::{DeltaClient, SotwClient, Via, names, sotw_names};
use integration::fixtures::{
    cla, cluster, cluster_with_timeout, http_listener, node, node_with, route,
};
use integration::harness::{TestServer, test_group};
use meshgate::xds::{Debounce, ResourceType, Update};
use std::time::Duration;
use tonic::Code;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

/// What a delta response brought: name → version, as a reconnect sends it back.
fn versions(
    r: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
) -> std::collections::HashMap<String, String> {
    r.resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect()
}

fn three_clusters() -> Update {
    Update::new()
        .replace(["a", "b", "c"].map(cluster))
        .replace(["a", "b", "c"].map(|n| cla(n, &[10001])))
}

// ---- R1, R2, node placement --------------------------------------------------------------

#[tokio::test]
async fn r1_node_only_on_first_request_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await; // carries the node
    assert_eq!(names(&c.recv_ack().await), ["a", "b", "c"]);
    c.subscribe(EDS, &["a"]).await; // no node
    let r = c.recv_ack().await;
    assert_eq!(names(&r), ["a"]);
    let streams = s.streams.snapshot();
    assert_eq!(streams[0].node_id, "n1");
    assert_eq!(streams[0].group, "ingress/dc1");
}

#[tokio::test]
async fn r1_node_only_on_first_request_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b", "c"]);
    c.request(EDS, &["b"]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["b"]);
}

#[tokio::test]
async fn r2_ads_request_without_type_url_is_refused() {
    let s = TestServer::start();
    let mut d = DeltaClient::connect(s.xds_addr, node("n1")).await;
    d.send(DeltaDiscoveryRequest::default()).await;
    let e = d.recv_error().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("type_url is required"),
        "{}",
        e.message()
    );

    let mut c = SotwClient::connect(s.xds_addr, node("n2")).await;
    c.send(Default::default()).await;
    assert_eq!(c.recv_error().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn node_without_role_gets_a_clear_error() {
    let s = TestServer::start();
    let mut d = DeltaClient::connect(s.xds_addr, node_with("gw-7", &[("datacenter", "dc1")])).await;
    d.subscribe(CDS, &[]).await;
    let e = d.recv_error().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "node \"gw-7\": metadata.role is missing; set it to one of: ingress, egress, sidecar"
    );
    let mut c = SotwClient::connect(s.xds_addr, node_with("gw-8", &[("role", "router")])).await;
    c.request(CDS, &[]).await;
    let e = c.recv_error().await;
    assert!(
        e.message().contains("metadata.role \"router\" is unknown"),
        "{}",
        e.message()
    );
    assert_eq!(s.metric("meshgate_xds_stream_errors_total").await, 2.0);
}

// ---- R3, R4, R8 ----------------------------------------------------------------------------

#[tokio::test]
async fn r3_r4_nonces_are_unique_and_acks_get_no_answer_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let mut nonces = vec![c.recv_ack().await.nonce];
    c.subscribe(EDS, &["a", "b"]).await;
    nonces.push(c.recv_ack().await.nonce);
    c.expect_quiet().await;
    for i in 0..3 {
        s.publish(Update::new().upsert([cla("a", &[10002 + i])]));
        nonces.push(c.recv_ack().await.nonce);
    }
    c.expect_quiet().await;
    let mut unique = nonces.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), nonces.len(), "{nonces:?}");
    assert!(nonces.iter().all(|n| !n.is_empty()));
    assert!(s.metric("meshgate_xds_acks_total{type=\"eds\"}").await >= 4.0);
}

#[tokio::test]
async fn r4_ack_gets_no_answer_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    let r = c.recv_ack().await;
    assert!(!r.nonce.is_empty());
    c.request(EDS, &["a", "b", "c"]).await;
    c.recv_ack().await;
    c.expect_quiet().await;
}

#[tokio::test]
async fn r8_ack_of_one_type_leaves_the_other_pending() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let cds = c.recv().await;
    c.subscribe(EDS, &["a"]).await;
    let eds = c.recv().await;
    c.ack(&cds).await; // ACK CDS only
    c.expect_quiet().await;
    let v = &s.streams.snapshot()[0];
    let (cv, ev) = (&v.types["cds"], &v.types["eds"]);
    assert_eq!(cv.acked_nonce.as_deref(), Some(cds.nonce.as_str()));
    assert_eq!(ev.sent_nonce.as_deref(), Some(eds.nonce.as_str()));
    assert_eq!(ev.acked_nonce, None);
}

// ---- R5, R27: NACK -------------------------------------------------------------------------

#[tokio::test]
async fn r5_nack_is_recorded_and_not_answered_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([cluster_with_timeout("b", 7)]));
    let r = c.recv().await;
    assert_eq!(names(&r), ["b"]);
    c.nack(&r, "cluster b: bad timeout").await;
    c.expect_quiet().await;
    assert_eq!(
        s.metric("meshgate_xds_rejects_total{type=\"cds\"}").await,
        1.0
    );
    let nack = s.streams.snapshot()[0].types["cds"]
        .last_nack
        .clone()
        .expect("nack recorded");
    assert_eq!(nack.message, "cluster b: bad timeout");
    assert_eq!(nack.nonce, r.nonce);
    // The next version is sent.
    s.publish(Update::new().upsert([cluster_with_timeout("b", 8)]));
    assert_eq!(names(&c.recv_ack().await), ["b"]);
}

#[tokio::test]
async fn r5_r27_nack_is_recorded_and_not_answered_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    let good = c.recv_ack().await;
    c.expect_quiet().await; // the ACK is processed before the next push
    s.publish(Update::new().upsert([cluster_with_timeout("b", 7)]));
    let bad = c.recv().await;
    assert_ne!(bad.version_info, good.version_info);
    c.nack(&bad, &good.version_info, "cluster b: bad timeout")
        .await;
    c.expect_quiet().await;
    // R27: the same request again (old version, same names) is no new subscription.
    c.nack(&bad, &good.version_info, "cluster b: bad timeout")
        .await;
    c.expect_quiet().await;
    assert!(s.metric("meshgate_xds_rejects_total{type=\"cds\"}").await >= 1.0);
    let view = &s.streams.snapshot()[0].types["cds"];
    assert_eq!(view.last_nack.as_ref().unwrap().version, bad.version_info);
    assert_eq!(
        view.acked_version.as_deref(),
        Some(good.version_info.as_str())
    );
}

// ---- R6, R7: stale nonces --------------------------------------------------------------------

#[tokio::test]
async fn r6_stale_nonce_is_no_ack_but_new_names_are_honoured_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(EDS, &["a"]).await;
    let first = c.recv_ack().await;
    c.expect_quiet().await; // the ACK is processed before the next push
    s.publish(Update::new().upsert([cla("a", &[10009])]));
    let second = c.recv().await;
    // A request still carrying the first nonce: stale. Same names: ignored.
    c.send(
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
            type_url: EDS.type_url().into(),
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            resource_names: vec!["a".into()],
            ..Default::default()
        },
    )
    .await;
    c.expect_quiet().await;
    assert!(
        s.metric("meshgate_xds_expired_nonces_total{type=\"eds\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        s.streams.snapshot()[0].types["eds"].acked_nonce.as_deref(),
        Some(first.nonce.as_str())
    );
    // Stale, but subscribing to "b": b is sent (envoy#10363).
    c.send(
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
            type_url: EDS.type_url().into(),
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            resource_names: vec!["a".into(), "b".into()],
            ..Default::default()
        },
    )
    .await;
    let r = c.recv().await;
    assert_eq!(sotw_names(&r), ["b"]);
    let _ = second;
}

#[tokio::test]
async fn r7_stale_nonce_still_changes_the_subscription_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(EDS, &["a"]).await;
    let first = c.recv_ack().await;
    s.publish(Update::new().upsert([cla("a", &[10009])]));
    let _second = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: EDS.type_url().into(),
        response_nonce: first.nonce.clone(),
        resource_names_subscribe: vec!["c".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(names(&c.recv_ack().await), ["c"]);
}

// ---- R9, R10, R29: what a change sends -----------------------------------------------------

#[tokio::test]
async fn r9_sotw_cds_is_full_state_and_removal_is_omission() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([cluster_with_timeout("b", 4)]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b", "c"]);
    s.publish(Update::new().remove(CDS, ["c"]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b"]);
    s.publish(
        Update::new().replace(Vec::<envoy_types::pb::envoy::config::cluster::v3::Cluster>::new()),
    );
    let r = c.recv_ack().await;
    assert!(r.resources.is_empty(), "an empty CDS response removes all");
}

#[tokio::test]
async fn r10_sotw_eds_sends_only_changed_and_newly_requested() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(EDS, &["a", "b"]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b"]);
    s.publish(Update::new().upsert([cla("b", &[10005])]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["b"]);
    // Newly requested "c" is sent even though it has not changed.
    c.request(EDS, &["a", "b", "c"]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["c"]);
    c.expect_quiet().await;
}

#[tokio::test]
async fn r17_r29_endpoint_change_sends_one_assignment_and_no_cds_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    c.recv_ack().await;
    c.subscribe(EDS, &["a", "b", "c"]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([cla("b", &[10005])]));
    let r = c.recv_ack().await;
    assert_eq!(r.type_url, EDS.type_url());
    assert_eq!(names(&r), ["b"]);
    c.expect_quiet().await;
    // Publishing identical content sends nothing.
    assert_eq!(s.publish(Update::new().upsert([cla("b", &[10005])])), None);
    c.expect_quiet().await;
}

#[tokio::test]
async fn r29_endpoint_change_sends_no_cds_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    c.recv_ack().await;
    c.request(EDS, &["a", "b", "c"]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([cla("b", &[10005])]));
    let r = c.recv_ack().await;
    assert_eq!(r.type_url, EDS.type_url());
    assert_eq!(sotw_names(&r), ["b"]);
    c.expect_quiet().await;
}

// ---- R11: wildcards (the four-step sequences of the spec) ----------------------------------

#[tokio::test]
async fn r11_wildcard_sequence_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    s.publish(Update::new().upsert([cluster("x")]));
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    // 1. nothing named on the first request: wildcard.
    c.subscribe(CDS, &[]).await;
    assert_eq!(names(&c.recv_ack().await), ["a", "b", "c", "x"]);
    // 2. subscribe "A": still wildcard, plus A (sent again: a subscribe is always answered).
    c.subscribe(CDS, &["a"]).await;
    assert_eq!(names(&c.recv_ack().await), ["a"]);
    // 3. unsubscribe "*": only "a" is left.
    c.unsubscribe(CDS, &["*"]).await;
    c.expect_quiet().await;
    s.publish(Update::new().upsert([cluster_with_timeout("b", 3)]));
    s.publish(Update::new().upsert([cluster_with_timeout("a", 3)]));
    assert_eq!(
        names(&c.recv_ack().await),
        ["a"],
        "b is no longer subscribed"
    );
    // 4. nothing named again: a no-op, not a wildcard.
    c.subscribe(CDS, &[]).await;
    c.expect_quiet().await;
    s.publish(Update::new().upsert([cluster_with_timeout("c", 3)]));
    c.expect_quiet().await;
    // Explicit "*" brings the wildcard back.
    c.subscribe(CDS, &["*"]).await;
    let r = c.recv_ack().await;
    assert_eq!(names(&r), ["b", "c", "x"]);
}

#[tokio::test]
async fn r11_wildcard_sequence_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    // 1. unset: wildcard.
    c.request(CDS, &[]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b", "c"]);
    // 2. "*" and "a": wildcard continues, a added (a newly named resource is sent again,
    //    and CDS responses are full state).
    c.request(CDS, &["*", "a"]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b", "c"]);
    // 3. "a" only: wildcard dropped.
    c.request(CDS, &["a"]).await;
    c.expect_quiet().await;
    s.publish(Update::new().upsert([cluster_with_timeout("a", 3)]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["a"]);
    // 4. unset again: unsubscribes from everything, not a wildcard.
    c.request(CDS, &[]).await;
    c.expect_quiet().await;
    s.publish(Update::new().upsert([cluster_with_timeout("b", 3)]));
    c.expect_quiet().await;
}

// ---- R12: names that do not exist yet -------------------------------------------------------

#[tokio::test]
async fn r12_subscription_to_a_missing_resource_is_kept_delta() {
    let s = TestServer::start();
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(EDS, &["later"]).await;
    let r = c.recv_ack().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["later"]);
    s.publish(Update::new().upsert([cla("later", &[10001])]));
    assert_eq!(names(&c.recv_ack().await), ["later"]);
    // Removed again, then back: the subscription survives both (consul#10563).
    s.publish(Update::new().remove(EDS, ["later"]));
    assert_eq!(c.recv_ack().await.removed_resources, ["later"]);
    s.publish(Update::new().upsert([cla("later", &[10002])]));
    assert_eq!(names(&c.recv_ack().await), ["later"]);
}

#[tokio::test]
async fn r12_subscription_to_a_missing_resource_is_kept_sotw() {
    let s = TestServer::start();
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(EDS, &["later"]).await;
    c.expect_quiet().await; // SotW has no "does not exist"
    s.publish(Update::new().upsert([cla("later", &[10001])]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["later"]);
}

// ---- R13, R14: warming ------------------------------------------------------------------------

#[tokio::test]
async fn r13_changed_cluster_gets_its_assignment_again_delta() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    c.recv_ack().await;
    c.subscribe(EDS, &["a", "b", "c"]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([cluster_with_timeout("b", 9)]));
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (CDS.type_url(), vec!["b".to_owned()])
    );
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (EDS.type_url(), vec!["b".to_owned()])
    );
    c.expect_quiet().await;
}

#[tokio::test]
async fn r13_removed_and_readded_cluster_gets_its_assignment_sotw() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    c.recv_ack().await;
    c.request(EDS, &["a", "b", "c"]).await;
    c.recv_ack().await;
    // go-control-plane#583: remove a cluster and add it back; the CLA is unchanged.
    s.publish(Update::new().remove(CDS, ["c"]));
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b"]);
    s.publish(Update::new().upsert([cluster("c")]));
    let r = c.recv_ack().await;
    assert_eq!(sotw_names(&r), ["a", "b", "c"]);
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), sotw_names(&r)),
        (EDS.type_url(), vec!["c".to_owned()])
    );
}

#[tokio::test]
async fn r14_changed_listener_gets_its_routes_again() {
    let s = TestServer::start();
    s.publish(
        Update::new()
            .replace([http_listener("l1", 15001, "r1")])
            .replace([route("r1", "a")]),
    );
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(LDS, &[]).await;
    c.recv_ack().await;
    c.subscribe(RDS, &["r1"]).await;
    c.recv_ack().await;
    s.publish(Update::new().upsert([http_listener("l1", 15002, "r1")]));
    let r = c.recv_ack().await;
    assert_eq!(r.type_url, LDS.type_url());
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (RDS.type_url(), vec!["r1".to_owned()])
    );
}

// ---- R15, R16: order -----------------------------------------------------------------------------

async fn subscribe_all_delta(c: &mut DeltaClient) {
    c.subscribe(CDS, &[]).await;
    c.recv_ack().await;
    c.subscribe(EDS, &["a", "y"]).await;
    c.recv_ack().await;
    c.subscribe(LDS, &[]).await;
    c.recv_ack().await;
    c.subscribe(RDS, &["r1"]).await;
    c.recv_ack().await;
}

#[tokio::test]
async fn r15_additions_in_order_then_removals_delta() {
    let s = TestServer::start();
    s.publish(
        Update::new()
            .replace([cluster("a")])
            .replace([cla("a", &[10001])])
            .replace([http_listener("l1", 15001, "r1")])
            .replace([route("r1", "a")]),
    );
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    subscribe_all_delta(&mut c).await;
    // The route moves from a to y in one publish, with a removed: y must come first, a's
    // removal after the route no longer points at it.
    s.publish(
        Update::new()
            .replace([cluster("y")])
            .replace([cla("y", &[10002])])
            .replace([http_listener("l1", 15002, "r1")])
            .replace([route("r1", "y")]),
    );
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = c.recv_ack().await;
        let kind = r.type_url.rsplit('.').next().unwrap().to_owned();
        seen.push(if r.resources.is_empty() {
            format!("-{kind}{:?}", r.removed_resources)
        } else {
            format!("+{kind}{:?}", names(&r))
        });
    }
    assert_eq!(
        seen,
        [
            "+Cluster[\"y\"]",
            "+ClusterLoadAssignment[\"y\"]",
            "+Listener[\"l1\"]",
            "+RouteConfiguration[\"r1\"]",
            "-Cluster[\"a\"]",
            "-ClusterLoadAssignment[\"a\"]",
        ]
    );
    c.expect_quiet().await;
}

#[tokio::test]
async fn r15_make_before_break_sotw() {
    let s = TestServer::start();
    s.publish(
        Update::new()
            .replace([cluster("a")])
            .replace([cla("a", &[10001])])
            .replace([route("r1", "a")]),
    );
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    c.recv_ack().await;
    c.request(EDS, &["a", "y"]).await;
    c.recv_ack().await;
    c.request(RDS, &["r1"]).await;
    c.recv_ack().await;
    s.publish(
        Update::new()
            .replace([cluster("y")])
            .replace([cla("y", &[10002])])
            .replace([route("r1", "y")]),
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = c.recv_ack().await;
        let kind = r.type_url.rsplit('.').next().unwrap().to_owned();
        seen.push(format!("{kind}{:?}", sotw_names(&r)));
    }
    assert_eq!(
        seen,
        [
            "Cluster[\"a\", \"y\"]",
            "ClusterLoadAssignment[\"y\"]",
            "RouteConfiguration[\"r1\"]",
            "Cluster[\"y\"]",
        ]
    );
    c.expect_quiet().await;
}

// ---- R18, R28: reconnect ---------------------------------------------------------------------

#[tokio::test]
async fn r18_reconnect_sends_only_what_differs_plus_removals() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let cds = c.recv_ack().await;
    c.subscribe(EDS, &["a", "b", "c"]).await;
    let eds = c.recv_ack().await;
    let (cds_v, eds_v) = (versions(&cds), versions(&eds));
    drop(c);
    // While disconnected: c removed, b changed.
    s.publish(Update::new().remove(CDS, ["c"]).remove(EDS, ["c"]));
    s.publish(Update::new().upsert([cla("b", &[10007])]));

    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.send(DeltaDiscoveryRequest {
        type_url: CDS.type_url().into(),
        initial_resource_versions: cds_v,
        ..Default::default()
    })
    .await;
    // The first response (R21): nothing changed in CDS but c; its removal waits for the
    // client's first ACK (all its reconnect requests are in by then).
    let r = c.recv_ack().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{:?}",
        names(&r)
    );
    assert_eq!(c.recv_ack().await.removed_resources, ["c"]);
    c.send(DeltaDiscoveryRequest {
        type_url: EDS.type_url().into(),
        resource_names_subscribe: vec!["a".into(), "b".into(), "c".into()],
        initial_resource_versions: eds_v,
        ..Default::default()
    })
    .await;
    let r = c.recv_ack().await;
    assert_eq!(names(&r), ["b"]);
    // Removals come after additions (R15), in a response of their own.
    assert_eq!(c.recv_ack().await.removed_resources, ["c"]);
    c.expect_quiet().await;
}

#[tokio::test]
async fn r15_r16_a_reconnect_gets_new_routes_before_removals_of_clusters_old_routes_name() {
    // Envoy reconnects with a request per type, one after the other. The server must not
    // remove a cluster the routes the client still holds name before it has sent the new
    // routes, even when the RDS request comes a little after the CDS one.
    let s = TestServer::start();
    s.publish(
        Update::new()
            .replace(["a", "b"].map(cluster))
            .replace([route("r", "b")]),
    );
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let cds = c.recv_ack().await;
    c.subscribe(RDS, &["r"]).await;
    let rds = c.recv_ack().await;
    let (cds_v, rds_v) = (versions(&cds), versions(&rds));
    drop(c);
    // While disconnected: the route moves to a, and b goes.
    s.publish(Update::new().upsert([route("r", "a")]).remove(CDS, ["b"]));

    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.send(DeltaDiscoveryRequest {
        type_url: CDS.type_url().into(),
        initial_resource_versions: cds_v,
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.send(DeltaDiscoveryRequest {
        type_url: RDS.type_url().into(),
        resource_names_subscribe: vec!["r".into()],
        initial_resource_versions: rds_v,
        ..Default::default()
    })
    .await;
    // The client ACKs what it gets; the CDS answer it is due comes first, empty (R21).
    let mut order = Vec::new();
    while !order.iter().any(|o: &String| o.starts_with("CDS removed")) {
        let r = c.recv_ack().await;
        let ty = if r.type_url == CDS.type_url() {
            "CDS"
        } else {
            "RDS"
        };
        order.push(if r.removed_resources.is_empty() {
            format!("{ty} {:?}", names(&r))
        } else {
            format!("{ty} removed {:?}", r.removed_resources)
        });
    }
    assert_eq!(
        order,
        ["CDS []", "RDS [\"r\"]", "CDS removed [\"b\"]"],
        "the new routes come before the cluster they no longer name goes"
    );
    c.expect_quiet().await;
}

#[tokio::test]
async fn sotw_reconnect_at_the_current_version_is_sent_nothing_and_an_older_one_everything() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.request(CDS, &[]).await;
    let cds = c.recv_ack().await;
    c.request(EDS, &["a", "b", "c"]).await;
    let eds = c.recv_ack().await;
    assert_eq!(sotw_names(&eds), ["a", "b", "c"]);
    drop(c);

    // The client resumes with what it last accepted, which is current: nothing is resent.
    let request = |ty: ResourceType, version: &str, names: &[&str]| DiscoveryRequest {
        type_url: ty.type_url().into(),
        version_info: version.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.send(request(CDS, &cds.version_info, &[])).await;
    c.send(request(EDS, &eds.version_info, &["a", "b", "c"]))
        .await;
    c.expect_quiet().await;
    // What changes afterwards still arrives.
    s.publish(Update::new().upsert([cla("b", &[10009])]));
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), sotw_names(&r)),
        (EDS.type_url(), vec!["b".to_owned()])
    );
    drop(c);

    // With the EDS version from before that change, the client's content is not known: every
    // named assignment is sent again; CDS, still current, is not.
    let mut c = SotwClient::connect(s.xds_addr, node("n1")).await;
    c.send(request(CDS, &cds.version_info, &[])).await;
    c.send(request(EDS, &eds.version_info, &["a", "b", "c"]))
        .await;
    let r = c.recv_ack().await;
    assert_eq!(
        (r.type_url.as_str(), sotw_names(&r)),
        (
            EDS.type_url(),
            vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
        )
    );
    c.expect_quiet().await;
}

#[tokio::test]
async fn r28_versions_survive_a_server_restart() {
    // The same content built by another server process gives the same versions, so an Envoy
    // that reconnects to a restarted (or another) meshgate is sent nothing.
    let seed = || vec![(test_group(), three_clusters())];
    let s1 = TestServer::start_seeded(Debounce::NONE, None, seed());
    let mut c = DeltaClient::connect(s1.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let cds = c.recv_ack().await;
    drop(c);
    s1.kill();
    let s2 = TestServer::start_seeded(Debounce::NONE, None, seed());
    let mut c = DeltaClient::connect(s2.xds_addr, node("n1")).await;
    c.send(DeltaDiscoveryRequest {
        type_url: CDS.type_url().into(),
        initial_resource_versions: cds
            .resources
            .iter()
            .map(|x| (x.name.clone(), x.version.clone()))
            .collect(),
        ..Default::default()
    })
    .await;
    let r = c.recv_ack().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
}

// ---- R19, R20, R21, R22 ------------------------------------------------------------------------

#[tokio::test]
async fn r19_unsubscribe_under_wildcard_resends() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &["*", "a", "zz"]).await;
    c.recv_ack().await;
    c.unsubscribe(CDS, &["a"]).await;
    assert_eq!(names(&c.recv_ack().await), ["a"]);
    c.unsubscribe(CDS, &["zz"]).await;
    assert_eq!(c.recv_ack().await.removed_resources, ["zz"]);
}

#[tokio::test]
async fn r20_unsubscribe_of_unknown_names_is_ignored() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(EDS, &["a"]).await;
    c.recv_ack().await;
    c.unsubscribe(EDS, &["never-heard-of"]).await;
    c.expect_quiet().await;
    s.publish(Update::new().upsert([cla("a", &[10003])]));
    assert_eq!(names(&c.recv_ack().await), ["a"]);
}

#[tokio::test]
async fn r21_first_wildcard_request_is_answered_when_empty() {
    let s = TestServer::start();
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &[]).await;
    let r = c.recv_ack().await;
    assert_eq!(r.type_url, CDS.type_url());
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    let mut c = SotwClient::connect(s.xds_addr, node("n2")).await;
    c.request(LDS, &[]).await;
    let r = c.recv_ack().await;
    assert_eq!(r.type_url, LDS.type_url());
    assert!(r.resources.is_empty());
}

#[tokio::test]
async fn r22_no_duplicate_names_in_a_response() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(CDS, &["*", "a", "a", "b"]).await;
    let r = c.recv_ack().await;
    assert_eq!(names(&r), ["a", "b", "c"]);
    let mut c = SotwClient::connect(s.xds_addr, node("n2")).await;
    c.request(EDS, &["a", "a", "b"]).await;
    assert_eq!(sotw_names(&c.recv_ack().await), ["a", "b"]);
    // The store refuses a publish with a duplicate name: nothing reaches Envoy.
    let err = s
        .store
        .publish(
            &test_group(),
            Update::new().replace([cluster("d"), cluster("d")]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("\"d\" appears twice"), "{err}");
}

// ---- R23, R24: stream close frees everything -------------------------------------------------

#[tokio::test]
async fn r23_r24_stream_close_frees_its_state() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let egress = node_with("eg-1", &[("role", "egress"), ("datacenter", "dc2")]);
    let mut d = DeltaClient::connect(s.xds_addr, node("n1")).await;
    d.subscribe(CDS, &[]).await;
    d.recv_ack().await;
    let mut e = SotwClient::connect(s.xds_addr, egress).await;
    e.request(CDS, &[]).await;
    e.recv_ack().await;
    assert_eq!(s.streams.len(), 2);
    assert_eq!(
        s.metric("meshgate_xds_connected_streams{protocol=\"delta\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("meshgate_xds_connected_streams{protocol=\"sotw\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.store.groups().len(),
        2,
        "egress/dc2 exists while its stream does"
    );
    drop(d);
    drop(e);
    for _ in 0..100 {
        if s.streams.is_empty() && s.store.groups().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.streams.len(), 0, "registry entries freed");
    assert_eq!(
        s.store.groups().len(),
        1,
        "the stream-only group is freed; the published one stays"
    );
    assert_eq!(
        s.metric("meshgate_xds_connected_streams{protocol=\"delta\"}")
            .await,
        0.0
    );
    assert_eq!(
        s.metric("meshgate_xds_connected_streams{protocol=\"sotw\"}")
            .await,
        0.0
    );
    let dump: serde_json::Value =
        serde_json::from_str(&s.admin_get("/debug/streams").await).unwrap();
    assert_eq!(dump, serde_json::json!([]));
}

// ---- Per-type services, coalescing, slow consumers --------------------------------------------

#[tokio::test]
async fn per_type_services_share_the_state_machine() {
    let s = TestServer::start();
    s.publish(three_clusters());
    let mut cds = DeltaClient::connect_via(s.xds_addr, node("n1"), Via::Single(CDS)).await;
    // type_url may be omitted on a per-type service.
    cds.send(DeltaDiscoveryRequest::default()).await;
    assert_eq!(names(&cds.recv_ack().await), ["a", "b", "c"]);
    let mut eds = SotwClient::connect_via(s.xds_addr, node("n1"), Via::Single(EDS)).await;
    eds.request(EDS, &["c"]).await;
    assert_eq!(sotw_names(&eds.recv_ack().await), ["c"]);
    s.publish(Update::new().upsert([cla("c", &[10004])]));
    assert_eq!(sotw_names(&eds.recv_ack().await), ["c"]);
    // The wrong type on a per-type service is refused.
    let mut bad = DeltaClient::connect_via(s.xds_addr, node("n2"), Via::Single(CDS)).await;
    bad.subscribe(EDS, &["a"]).await;
    assert_eq!(bad.recv_error().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn publishes_within_the_debounce_window_are_one_push() {
    let s = TestServer::start_with(
        Debounce {
            quiet: Duration::from_millis(300),
            max: Duration::from_secs(5),
        },
        None,
    );
    s.publish(three_clusters());
    while s.store.current(&test_group()).unwrap().generation < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await; // the seed's release
    }
    let mut c = DeltaClient::connect(s.xds_addr, node("n1")).await;
    c.subscribe(EDS, &["a", "b", "c"]).await;
    assert_eq!(names(&c.recv_ack().await), ["a", "b", "c"]);
    // Three publishes back to back (well within 300 ms of each other): one push.
    s.publish(Update::new().upsert([cla("a", &[10011])]));
    s.publish(Update::new().upsert([cla("b", &[10012])]));
    s.publish(Update::new().upsert([cla("a", &[10013])]));
    let r = c.recv_ack().await;
    assert_eq!(names(&r), ["a", "b"]);
    c.expect_quiet().await;
    assert_eq!(
        s.metric("meshgate_xds_pushes_total{type=\"eds\"}").await,
        2.0
    );
}

#[tokio::test]
async fn slow_consumer_gets_the_latest_state_not_a_backlog() {
    let s = TestServer::start();
    let ports: Vec<u16> = (0..400).map(|i| 20000 + i).collect();
    s.publish(Update::new().replace([cla("big", &ports)]));
    // A client with a small HTTP/2 window (64 KiB) that stops reading.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", s.xds_addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut c = DeltaClient::on_channel(ch, node("n1"), Via::Ads)
        .await
        .unwrap();
    c.subscribe(EDS, &["big"]).await;
    c.recv_ack().await;
    // 300 changes of a ~10 KiB assignment (3 MiB in all) while the client reads nothing.
    for i in 0..300u16 {
        let mut p = ports.clone();
        p[0] = 30000 + i;
        s.publish(Update::new().upsert([cla("big", &p)]));
    }
    let last = s.store.current(&test_group()).unwrap();
    let want = last.set(EDS).get("big").unwrap().version.to_string();
    let mut received = 0;
    loop {
        let r = c.recv_ack().await;
        received += 1;
        if r.resources[0].version == want {
            break;
        }
    }
    // What was buffered in the HTTP/2 windows (64 KiB) and the one-slot channel, then the
    // latest: far fewer than the 300 states published.
    assert!(
        received < 30,
        "received {received} responses for 300 states"
    );
    c.expect_quiet().await;
}
