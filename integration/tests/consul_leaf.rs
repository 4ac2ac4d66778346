//! meshgate's Consul-mode certificates against the Consul test double: a leaf fetched from
//! `/v1/agent/connect/ca/leaf/:service` with the token, replaced when Consul replaces it
//! (blocking query), followed across an index reset and a 404, and no longer asked for once
//! unwanted; roots and trust domain from the snapshot.
//!
//! Durations are generous upper bounds for "this arrives"; nothing here measures speed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use integration::consul_double::ConsulDouble;
use integration::harness::init_test_process;
use meshgate::ca::{Authority, CertManager, CertSet, Leaf, RootSource};
use meshgate::model::{CaRoots, Snapshot, SnapshotBuilder};
use meshgate::source::consul::ConsulConfig;
use serde_json::{Value, json};
use tokio::sync::watch;

const SOON: Duration = Duration::from_secs(20);
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
const TOKEN: &str = "leaf-reader-token";

/// A CA standing in for Consul's, so that the leaves are real certificates.
fn consul_ca(dir: &tempfile::TempDir) -> Authority {
    Authority::open(&RootSource::StateDir(dir.path().to_path_buf()), TD).unwrap()
}

/// Consul's `IssuedCert` JSON for a leaf.
fn issued(leaf: &Leaf) -> Value {
    json!({
        "SerialNumber": leaf.serial,
        "CertPEM": leaf.cert_pem,
        "PrivateKeyPEM": leaf.key_pem(),
        "Service": leaf.service,
        "ServiceURI": format!("spiffe://{TD}/ns/default/dc/dc1/svc/{}", leaf.service),
        "ValidAfter": "2025-01-01T00:00:00Z",
        "ValidBefore": "2025-01-04T00:00:00Z",
        "Kind": "",
        "Namespace": "default",
        "Partition": "default",
    })
}

fn snapshots(ca: &Authority) -> watch::Receiver<Option<Arc<Snapshot>>> {
    let mut b = SnapshotBuilder::new("dc1");
    b.set_ca_roots(Some(Arc::new(CaRoots {
        trust_domain: TD.to_string(),
        active_root_id: "root-1".into(),
        roots_pem: vec![ca.bundle_pem().to_string()],
    })));
    let (tx, rx) = watch::channel(Some(Arc::new(b.build(1))));
    // The receiver keeps the last value after the sender is gone.
    drop(tx);
    rx
}

fn manager(d: &ConsulDouble, ca: &Authority) -> CertManager {
    let mut config = ConsulConfig::new(d.url(), "dc1");
    config.wait = Duration::from_secs(2);
    config.token = Some(TOKEN.into());
    // The configured trust domain is a placeholder: Consul's roots name the real one.
    CertManager::consul(&config, "placeholder.consul", snapshots(ca)).unwrap()
}

fn want(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(s, d)| (s.to_string(), d.to_string()))
        .collect()
}

/// Waits for `changes` until `ensure` returns a set that satisfies `pred`.
async fn set_where(
    m: &CertManager,
    wanted: &BTreeSet<(String, String)>,
    what: &str,
    pred: impl Fn(&CertSet) -> bool,
) -> Arc<CertSet> {
    let mut changes = m.changes();
    let found = tokio::time::timeout(SOON, async {
        loop {
            changes.borrow_and_update();
            let set = m.ensure(wanted);
            if pred(&set) {
                return set;
            }
            changes.changed().await.expect("the manager is alive");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("never: {what}"))
}

fn web() -> (String, String) {
    ("web".to_string(), "dc1".to_string())
}

fn leaf_requests(d: &ConsulDouble, service: &str) -> Vec<integration::consul_double::Recorded> {
    let path = format!("/v1/agent/connect/ca/leaf/{service}");
    d.requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

#[tokio::test]
async fn leaf_is_fetched_with_the_token_and_follows_consul() {
    init_test_process();
    let dir = tempfile::tempdir().unwrap();
    let ca = consul_ca(&dir);
    let d = ConsulDouble::start("dc1");
    d.require_token(Some(TOKEN));
    let first = ca
        .issue("web", "dc1", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    d.set_leaf("web", issued(&first));

    let m = manager(&d, &ca);
    let wanted = want(&[("web", "dc1")]);
    let set = set_where(&m, &wanted, "the first leaf", |s| {
        s.leaves.contains_key(&web())
    })
    .await;
    let leaf = &set.leaves[&web()];
    assert_eq!(leaf.serial, first.serial);
    assert_eq!(leaf.cert_pem, first.cert_pem);
    assert_eq!(leaf.key_pem(), first.key_pem());
    assert_eq!(
        leaf.not_before, first.not_before,
        "read from the certificate"
    );
    assert_eq!(leaf.not_after, first.not_after);
    assert_eq!(set.trust_domain, TD, "Consul's roots name the trust domain");
    assert_eq!(set.roots_pem, ca.bundle_pem());
    assert!(!format!("{set:?}").contains(first.key_pem().lines().nth(1).unwrap()));

    // Consul replaces the leaf: the blocked query returns it.
    let second = ca
        .issue("web", "dc1", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    d.set_leaf("web", issued(&second));
    set_where(&m, &wanted, "the replaced leaf", |s| {
        s.leaves[&web()].serial == second.serial
    })
    .await;

    let requests = leaf_requests(&d, "web");
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.token.as_deref() == Some(TOKEN)));
    // After the first read, the queries block: index and wait.
    let blocking = requests
        .iter()
        .filter(|r| r.params.iter().any(|(k, _)| k == "index"))
        .count();
    assert!(blocking >= 1, "{requests:?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.params.iter().any(|(k, _)| k == "index"))
            .all(|r| r.params.iter().any(|(k, v)| k == "wait" && v == "2s"))
    );

    // The index goes backwards (a restore): the watch reads from 0 and keeps following.
    d.reset_index();
    let third = ca
        .issue("web", "dc1", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    d.set_leaf("web", issued(&third));
    set_where(&m, &wanted, "the leaf after an index reset", |s| {
        s.leaves[&web()].serial == third.serial
    })
    .await;
}

#[tokio::test]
async fn missing_leaf_is_retried_and_other_datacenters_are_not_asked() {
    init_test_process();
    let dir = tempfile::tempdir().unwrap();
    let ca = consul_ca(&dir);
    let d = ConsulDouble::start("dc1");
    let m = manager(&d, &ca);
    let wanted = want(&[("api", "dc1"), ("api", "dc2")]);

    // 404 until the double has a leaf: nothing yet, retried with backoff.
    let set = m.ensure(&wanted);
    assert!(set.leaves.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m.ensure(&wanted).leaves.is_empty());
    let api = ca
        .issue("api", "dc1", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    d.set_leaf("api", issued(&api));
    let set = set_where(&m, &wanted, "the api leaf", |s| !s.leaves.is_empty()).await;
    assert_eq!(
        set.leaves.keys().cloned().collect::<Vec<_>>(),
        vec![("api".to_string(), "dc1".to_string())],
        "the local agent signs for its own datacenter only"
    );
    assert!(
        d.requests()
            .iter()
            .all(|r| r.params.iter().all(|(k, _)| k != "dc")),
        "no ?dc= on the agent endpoint"
    );

    // No longer wanted: its watch stops and its leaf is gone.
    assert!(m.ensure(&BTreeSet::new()).leaves.is_empty());
    // Let a query already under way come back (the wait is 2 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.clear_requests();
    d.set_leaf(
        "api",
        issued(
            &ca.issue("api", "dc1", Duration::from_secs(3600), SystemTime::now())
                .unwrap(),
        ),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        leaf_requests(&d, "api").is_empty(),
        "an unwanted leaf is still watched"
    );
}

#[tokio::test]
async fn a_broken_leaf_is_not_served_until_consul_fixes_it() {
    init_test_process();
    let dir = tempfile::tempdir().unwrap();
    let ca = consul_ca(&dir);
    let d = ConsulDouble::start("dc1");
    let good = ca
        .issue("web", "dc1", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let mut broken = issued(&good);
    broken["CertPEM"] = json!("not a certificate");
    d.set_leaf("web", broken);
    let m = manager(&d, &ca);
    let wanted = want(&[("web", "dc1")]);
    m.ensure(&wanted);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        m.ensure(&wanted).leaves.is_empty(),
        "a broken leaf is not served"
    );
    // Fixed in Consul: picked up by the retries.
    d.set_leaf("web", issued(&good));
    set_where(&m, &wanted, "the fixed leaf", |s| {
        s.leaves
            .get(&web())
            .is_some_and(|l| l.serial == good.serial)
    })
    .await;
}
