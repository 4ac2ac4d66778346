//! The Consul test double over real HTTP: shapes, datacenters, filters, blocking queries,
//! index resets, and faults. Waits are short (`wait=1s`); timing assertions only separate
//! "answered before its wait" from "blocked until its wait", with generous margins.

use std::time::{Duration, Instant};

use integration::consul_double::{ConsulDouble, parse_go_duration};
use serde_json::{Value, json};

struct Answer {
    status: u16,
    index: Option<u64>,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
    fn index(&self) -> u64 {
        self.index.expect("X-Consul-Index")
    }
}

async fn get_with(c: &ConsulDouble, path: impl AsRef<str>, token: Option<&str>) -> Answer {
    let path = path.as_ref();
    let mut req = reqwest::Client::new().get(format!("{}{}", c.url(), path));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let index = headers
        .get("X-Consul-Index")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    Answer {
        status,
        index,
        headers,
        text: resp.text().await.unwrap(),
    }
}

async fn get(c: &ConsulDouble, path: impl AsRef<str>) -> Answer {
    get_with(c, path, None).await
}

fn web_registration(node: &str, address: &str) -> Value {
    json!({
        "Node": node,
        "ID": "11111111-2222-3333-4444-555555555555",
        "Address": address,
        "TaggedAddresses": {"lan": address, "wan": "198.18.0.1"},
        "NodeMeta": {"rack": "r1"},
        "Service": {
            "ID": "web-1",
            "Service": "web",
            "Tags": ["v1", "primary"],
            "Address": "172.16.1.3",
            "Port": 8080,
            "Meta": {"version": "1"},
            "TaggedAddresses": {"wan": {"address": "198.18.1.3", "port": 8080}}
        },
        "Checks": [
            {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
            {"CheckID": "service:web-1", "Name": "web alive", "Status": "passing",
             "ServiceID": "web-1", "Output": "ok"}
        ]
    })
}

fn gateway_registration(dc: &str, node: &str) -> Value {
    json!({
        "Datacenter": dc,
        "Node": node,
        "Address": "10.2.0.1",
        "Service": {
            "Kind": "mesh-gateway",
            "Service": "mesh-gateway",
            "Port": 8443,
            "Tags": ["gw"],
            "TaggedAddresses": {"wan": {"Address": "203.0.113.7", "Port": 443}},
            "Proxy": {"Config": {"connect_timeout_ms": 5000}}
        },
        "Check": {"CheckID": "gw-alive", "Status": "passing", "ServiceID": "mesh-gateway"}
    })
}

#[tokio::test]
async fn health_service_shape_with_node_and_service_checks() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let a = get(&c, "/v1/health/service/web").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["x-consul-knownleader"], "true");
    assert_eq!(a.headers["x-consul-lastcontact"], "0");
    assert_eq!(a.index(), c.index());
    let v = a.json();
    let e = &v[0];
    assert_eq!(v.as_array().unwrap().len(), 1);
    let node = &e["Node"];
    assert_eq!(node["ID"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(node["Node"], "n1");
    assert_eq!(node["Address"], "10.1.1.1");
    assert_eq!(node["Datacenter"], "dc1");
    assert_eq!(
        node["TaggedAddresses"],
        json!({"lan": "10.1.1.1", "wan": "198.18.0.1"})
    );
    assert_eq!(node["Meta"], json!({"rack": "r1"}));
    assert!(node["CreateIndex"].as_u64().unwrap() >= 1);
    let s = &e["Service"];
    assert!(s.get("Kind").is_none(), "plain services omit Kind: {s}");
    assert_eq!(s["ID"], "web-1");
    assert_eq!(s["Service"], "web");
    assert_eq!(s["Tags"], json!(["v1", "primary"]));
    assert_eq!(s["Address"], "172.16.1.3");
    assert_eq!(s["Port"], 8080);
    assert_eq!(s["Meta"], json!({"version": "1"}));
    assert_eq!(s["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(
        s["TaggedAddresses"],
        json!({"wan": {"Address": "198.18.1.3", "Port": 8080}})
    );
    assert_eq!(s["EnableTagOverride"], false);
    assert_eq!(s["PeerName"], "");
    assert_eq!(s["Connect"], json!({}));
    assert_eq!(s["Proxy"]["Mode"], "");
    assert_eq!(s["CreateIndex"], s["ModifyIndex"]);
    let checks = e["Checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["CheckID"], "serfHealth");
    assert_eq!(checks[0]["Node"], "n1");
    assert_eq!(checks[0]["ServiceID"], "");
    assert_eq!(checks[0]["ServiceName"], "");
    assert_eq!(checks[0]["ServiceTags"], json!([]));
    assert_eq!(checks[1]["CheckID"], "service:web-1");
    assert_eq!(checks[1]["Name"], "web alive");
    assert_eq!(checks[1]["Status"], "passing");
    assert_eq!(checks[1]["Output"], "ok");
    assert_eq!(checks[1]["Notes"], "");
    assert_eq!(checks[1]["Type"], "");
    assert_eq!(checks[1]["ServiceID"], "web-1");
    assert_eq!(checks[1]["ServiceName"], "web");
    assert_eq!(checks[1]["ServiceTags"], json!(["v1", "primary"]));
    assert!(checks[1]["ModifyIndex"].as_u64().unwrap() >= 1);

    // Unknown service: [] with an index, not 404.
    let a = get(&c, "/v1/health/service/nope").await;
    assert_eq!((a.status, a.json()), (200, json!([])));
    assert!(a.index() >= 1);
    // Anything else: 404.
    assert_eq!(get(&c, "/v1/kv/foo").await.status, 404);
    assert_eq!(get(&c, "/v2/catalog/services").await.status, 404);
}

#[tokio::test]
async fn gateway_shape_kind_proxy_and_defaults() {
    let c = ConsulDouble::start("dc1");
    c.register(gateway_registration("dc1", "gw1"));
    let v = get(&c, "/v1/health/service/mesh-gateway").await.json();
    let s = &v[0]["Service"];
    assert_eq!(s["Kind"], "mesh-gateway");
    assert_eq!(s["ID"], "mesh-gateway", "ID defaults to the service name");
    assert_eq!(
        s["TaggedAddresses"]["wan"],
        json!({"Address": "203.0.113.7", "Port": 443})
    );
    assert_eq!(s["Proxy"]["Config"]["connect_timeout_ms"], 5000);
    assert_eq!(s["Address"], "");
    // No TaggedAddresses on the node: lan and wan are the node address.
    assert_eq!(
        v[0]["Node"]["TaggedAddresses"],
        json!({"lan": "10.2.0.1", "wan": "10.2.0.1"})
    );
    assert_eq!(v[0]["Checks"][0]["CheckID"], "gw-alive");
}

#[tokio::test]
async fn catalog_services_and_mesh_gateway_filter() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let mut second = web_registration("n2", "10.1.1.2");
    second["Service"]["ID"] = json!("web-2");
    second["Service"]["Tags"] = json!(["v2", "primary"]);
    second["Checks"] = json!([]);
    c.register(second);
    c.register(gateway_registration("dc1", "gw1"));
    let a = get(&c, "/v1/catalog/services").await;
    assert_eq!(
        a.json(),
        json!({"mesh-gateway": ["gw"], "web": ["primary", "v1", "v2"]})
    );
    for filter in [
        "ServiceKind%20%3D%3D%20%22mesh-gateway%22",
        "ServiceKind%20%3D%3D%20mesh-gateway",
    ] {
        let a = get(&c, format!("/v1/catalog/services?filter={filter}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json(), json!({"mesh-gateway": ["gw"]}));
    }
    let a = get(
        &c,
        "/v1/catalog/services?filter=Service.Meta.x%20%3D%3D%201",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.text.contains("Service.Meta.x == 1"), "{}", a.text);
}

#[tokio::test]
async fn second_datacenter() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    c.register(gateway_registration("dc2", "gw-dc2"));
    assert_eq!(
        get(&c, "/v1/catalog/datacenters").await.json(),
        json!(["dc1", "dc2"])
    );
    assert_eq!(
        get(&c, "/v1/catalog/services?dc=dc2").await.json(),
        json!({"mesh-gateway": ["gw"]})
    );
    let v = get(&c, "/v1/health/service/mesh-gateway?dc=dc2")
        .await
        .json();
    assert_eq!(v[0]["Node"]["Datacenter"], "dc2");
    assert_eq!(
        get(&c, "/v1/health/service/mesh-gateway").await.json(),
        json!([])
    );
    let a = get(&c, "/v1/health/service/web?dc=dc9").await;
    assert_eq!((a.status, a.text.as_str()), (500, "No path to datacenter"));
    // An unreachable datacenter stays listed; queries naming it fail, and recover.
    c.set_unreachable("dc2", true);
    assert_eq!(
        get(&c, "/v1/catalog/datacenters").await.json(),
        json!(["dc1", "dc2"])
    );
    let a = get(&c, "/v1/health/service/mesh-gateway?dc=dc2").await;
    assert_eq!((a.status, a.text.as_str()), (500, "No path to datacenter"));
    assert_eq!(get(&c, "/v1/health/service/web").await.status, 200);
    c.set_unreachable("dc2", false);
    let a = get(&c, "/v1/health/service/mesh-gateway?dc=dc2").await;
    assert_eq!(a.json()[0]["Node"]["Datacenter"], "dc2");
    // The local datacenter is listed even with nothing in it.
    let c2 = ConsulDouble::start("east");
    assert_eq!(
        get(&c2, "/v1/catalog/datacenters").await.json(),
        json!(["east"])
    );
}

#[tokio::test]
async fn passing_filters_warning_and_critical() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let mut second = web_registration("n2", "10.1.1.2");
    second["Service"]["ID"] = json!("web-2");
    second["Checks"][1]["ServiceID"] = json!("web-2");
    second["Checks"][1]["CheckID"] = json!("service:web-2");
    c.register(second);
    let count = |v: Value| v.as_array().unwrap().len();
    assert_eq!(
        count(get(&c, "/v1/health/service/web?passing").await.json()),
        2
    );
    c.set_check("dc1", "n1", "service:web-1", "warning");
    assert_eq!(count(get(&c, "/v1/health/service/web").await.json()), 2);
    let v = get(&c, "/v1/health/service/web?passing").await.json();
    assert_eq!(count(v.clone()), 1);
    assert_eq!(v[0]["Service"]["ID"], "web-2");
    c.set_check("dc1", "n2", "serfHealth", "critical"); // a node check hits its services
    assert_eq!(
        count(get(&c, "/v1/health/service/web?passing=1").await.json()),
        0
    );
    assert_eq!(
        count(get(&c, "/v1/health/service/web?passing=false").await.json()),
        2
    );
    c.set_check("dc1", "n1", "service:web-1", "passing");
    assert_eq!(
        count(get(&c, "/v1/health/service/web?passing").await.json()),
        1
    );
    assert_eq!(
        count(
            get(&c, "/v1/health/service/web?tag=v1&tag=primary")
                .await
                .json()
        ),
        2
    );
    assert_eq!(
        count(get(&c, "/v1/health/service/web?tag=v9").await.json()),
        0
    );
    c.deregister("dc1", "n2", "web-2");
    let v = get(&c, "/v1/health/service/web").await.json();
    assert_eq!(count(v.clone()), 1);
    assert_eq!(v[0]["Checks"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn config_entries() {
    let c = ConsulDouble::start("dc1");
    c.put_config_entry(json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1"}));
    c.put_config_entry(json!({"Kind": "service-resolver", "Name": "api"}));
    c.put_config_entry(
        json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}),
    );
    let a = get(&c, "/v1/config/service-resolver").await;
    let v = a.json();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web"]);
    let web = get(&c, "/v1/config/service-resolver/web").await.json();
    assert_eq!(web["DefaultSubset"], "v1");
    let created = web["CreateIndex"].as_u64().unwrap();
    assert_eq!(web["ModifyIndex"].as_u64().unwrap(), created);
    c.put_config_entry(json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v2"}));
    let web = get(&c, "/v1/config/service-resolver/web").await.json();
    assert_eq!(web["DefaultSubset"], "v2");
    assert_eq!(web["CreateIndex"].as_u64().unwrap(), created);
    assert!(web["ModifyIndex"].as_u64().unwrap() > created);

    let a = get(&c, "/v1/config/service-resolver/nope").await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.text,
        r#"Config entry not found for "service-resolver" / "nope""#
    );
    assert!(a.index() >= 1);
    let a = get(&c, "/v1/config/foo").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (400, "invalid config entry kind: foo")
    );
    assert_eq!(get(&c, "/v1/config/service-router").await.json(), json!([]));

    c.delete_config_entry("service-resolver", "web");
    assert_eq!(get(&c, "/v1/config/service-resolver/web").await.status, 404);
    assert_eq!(
        get(&c, "/v1/config/service-resolver")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn ca_roots_and_leaf() {
    let c = ConsulDouble::start("dc1");
    let a = get(&c, "/v1/connect/ca/roots").await;
    assert_eq!(
        (a.status, a.json()),
        (
            200,
            json!({"ActiveRootID": "", "TrustDomain": "", "Roots": []})
        )
    );
    assert_eq!(get(&c, "/v1/agent/connect/ca/leaf/web").await.status, 404);
    c.set_ca_roots(json!({
        "ActiveRootID": "aa:bb",
        "TrustDomain": "11111111-2222-3333-4444-555555555555.consul",
        "Roots": [{"ID": "aa:bb", "Name": "Consul CA Root Cert", "RootCert": "-----BEGIN CERTIFICATE-----", "Active": true}]
    }));
    let a = get(&c, "/v1/connect/ca/roots").await;
    let v = a.json();
    assert_eq!(v["ActiveRootID"], "aa:bb");
    assert_eq!(v["Roots"][0]["ModifyIndex"].as_u64().unwrap(), a.index());
    c.set_leaf(
        "web",
        json!({"SerialNumber": "01", "CertPEM": "c", "PrivateKeyPEM": "k", "Service": "web",
               "ServiceURI": "spiffe://td/ns/default/dc/dc1/svc/web"}),
    );
    let a = get(&c, "/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["SerialNumber"], "01");
    assert_eq!(a.json()["ModifyIndex"].as_u64().unwrap(), a.index());
}

#[tokio::test]
async fn blocking_query_wakes_on_change() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let first = get(&c, "/v1/health/service/web").await;
    let idx = first.index();
    let started = Instant::now();
    let (answer, ()) = tokio::join!(
        get(&c, format!("/v1/health/service/web?index={idx}&wait=10s")),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.set_check("dc1", "n1", "service:web-1", "critical");
        }
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "returned before the change: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "did not wake on the change: {took:?}"
    );
    assert!(answer.index() > idx);
    assert_eq!(answer.index(), c.index());
    assert_eq!(answer.json()[0]["Checks"][1]["Status"], "critical");
}

#[tokio::test]
async fn blocking_query_returns_at_wait_with_same_index() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let idx = get(&c, "/v1/health/service/web").await.index();
    let started = Instant::now();
    let a = get(&c, format!("/v1/health/service/web?index={idx}&wait=1s")).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "did not block until wait: {took:?}"
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.index(), idx);
}

#[tokio::test]
async fn older_index_answers_at_once() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let idx = get(&c, "/v1/health/service/web").await.index();
    c.set_check("dc1", "n1", "serfHealth", "warning");
    let started = Instant::now();
    let a = get(&c, format!("/v1/health/service/web?index={idx}&wait=20s")).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(a.index() > idx);
    // index=0 never blocks.
    let started = Instant::now();
    get(&c, "/v1/catalog/services?index=0&wait=20s").await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn change_to_a_does_not_wake_b() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let mut api = web_registration("n2", "10.1.1.2");
    api["Service"] = json!({"ID": "api-1", "Service": "api", "Port": 9090});
    api["Checks"] = json!([{"CheckID": "api-alive", "Status": "passing", "ServiceID": "api-1"}]);
    c.register(api);
    let web_idx = get(&c, "/v1/health/service/web").await.index();
    let api_idx = get(&c, "/v1/health/service/api").await.index();
    let cfg_idx = get(&c, "/v1/config/service-defaults").await.index();
    c.clear_requests();
    let started = Instant::now();
    let (b, a, cfg, ()) = tokio::join!(
        get(
            &c,
            format!("/v1/health/service/api?index={api_idx}&wait=1s")
        ),
        get(
            &c,
            format!("/v1/health/service/web?index={web_idx}&wait=10s")
        ),
        get(
            &c,
            format!("/v1/config/service-defaults?index={cfg_idx}&wait=1s")
        ),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Several changes to web only (a service check, then the service itself).
            c.set_check("dc1", "n1", "service:web-1", "critical");
            c.set_check("dc1", "n1", "service:web-1", "passing");
            c.register(web_registration("n1", "10.1.1.1"));
        }
    );
    let took = started.elapsed();
    assert!(a.index() > web_idx, "web's query saw web's change");
    assert_eq!(b.index(), api_idx, "api's index did not move");
    assert_eq!(cfg.index(), cfg_idx, "config index did not move");
    assert!(
        took >= Duration::from_millis(950),
        "api's query was woken: {took:?}"
    );
    assert_eq!(c.requests().len(), 3, "one request each, no retries");
}

#[tokio::test]
async fn catalog_index_ignores_check_changes_and_bumps_on_registration() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let idx = get(&c, "/v1/catalog/services").await.index();
    c.set_check("dc1", "n1", "service:web-1", "critical");
    assert_eq!(get(&c, "/v1/catalog/services").await.index(), idx);
    c.register(gateway_registration("dc1", "gw1"));
    assert!(get(&c, "/v1/catalog/services").await.index() > idx);
    let dcs = get(&c, "/v1/catalog/datacenters").await.index();
    c.register(gateway_registration("dc2", "gw2"));
    assert!(get(&c, "/v1/catalog/datacenters").await.index() > dcs);
}

#[tokio::test]
async fn reset_index_lowers_indexes_and_releases_blocked_queries() {
    let c = ConsulDouble::start("dc1");
    for i in 0..5 {
        c.register(web_registration(&format!("n{i}"), "10.1.1.1"));
    }
    let before = get(&c, "/v1/health/service/web").await.index();
    let global = c.index();
    let started = Instant::now();
    let (a, ()) = tokio::join!(
        get(
            &c,
            format!("/v1/health/service/web?index={before}&wait=10s")
        ),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.reset_index();
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "blocked query not released"
    );
    assert!(
        a.index() < before,
        "index went backwards: {} < {before}",
        a.index()
    );
    assert!(a.index() >= 1);
    assert!(c.index() < global);
    assert!(get(&c, "/v1/catalog/services").await.index() < before);
    // And it moves up again from there.
    c.set_check("dc1", "n1", "serfHealth", "warning");
    let after = get(&c, "/v1/health/service/web").await.index();
    assert!(after > a.index() && after < before);
}

#[tokio::test]
async fn require_token() {
    let c = ConsulDouble::start("dc1");
    c.require_token(Some("s3cret"));
    let a = get(&c, "/v1/catalog/services").await;
    assert_eq!(a.status, 403);
    assert!(a.text.starts_with("Permission denied"), "{}", a.text);
    let a = get_with(&c, "/v1/catalog/services", Some("wrong")).await;
    assert_eq!((a.status, a.text.as_str()), (403, "ACL not found"));
    assert_eq!(
        get_with(&c, "/v1/catalog/services", Some("s3cret"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&c, "/v1/catalog/services?token=s3cret").await.status,
        200
    );
    let r = reqwest::Client::new()
        .get(format!("{}/v1/catalog/services", c.url()))
        .header("Authorization", "Bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.require_token(None);
    assert_eq!(get(&c, "/v1/catalog/services").await.status, 200);
}

#[tokio::test]
async fn fail_next_and_delay() {
    let c = ConsulDouble::start("dc1");
    c.fail_next(500, 2);
    for _ in 0..2 {
        let a = get(&c, "/v1/catalog/services").await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (500, "rpc error making call: No cluster leader")
        );
    }
    assert_eq!(get(&c, "/v1/catalog/services").await.status, 200);
    c.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&c, "/v1/catalog/services").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(290));
}

#[tokio::test]
async fn bad_parameters() {
    let c = ConsulDouble::start("dc1");
    let a = get(&c, "/v1/catalog/services?index=1&wait=soon").await;
    assert_eq!((a.status, a.text.as_str()), (400, "Invalid wait time"));
    let a = get(&c, "/v1/catalog/services?index=-3").await;
    assert_eq!((a.status, a.text.as_str()), (400, "Invalid index"));
    let a = get(
        &c,
        "/v1/health/service/web?filter=Service.Port%20%3D%3D%201",
    )
    .await;
    assert_eq!(a.status, 400);
    let r = reqwest::Client::new()
        .put(format!("{}/v1/catalog/services", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[test]
fn go_durations() {
    let ms = Duration::from_millis;
    assert_eq!(parse_go_duration("10s"), Some(ms(10_000)));
    assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
    assert_eq!(parse_go_duration("500ms"), Some(ms(500)));
    assert_eq!(parse_go_duration("1.5s"), Some(ms(1_500)));
    assert_eq!(parse_go_duration("1h"), Some(ms(3_600_000)));
    assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    for bad in ["", "10", "s", "1x", "1..5s", "soon"] {
        assert_eq!(parse_go_duration(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port() {
    let c = ConsulDouble::start("dc1");
    c.register(web_registration("n1", "10.1.1.1"));
    let addr = c.addr();
    let idx = get(&c, "/v1/health/service/web").await.index();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/health/service/web?index={idx}&wait=10s", c.url());
    let blocked = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = std::sync::Arc::new(c);
    let c2 = c.clone();
    tokio::task::spawn_blocking(move || c2.stop())
        .await
        .unwrap();
    let result = blocked.await.unwrap();
    assert!(result.is_err(), "the blocked query's connection was closed");
    assert!(
        reqwest::get(format!("{}/v1/catalog/services", c.url()))
            .await
            .is_err(),
        "nothing listens after stop"
    );
    let c2 = c.clone();
    tokio::task::spawn_blocking(move || c2.restart())
        .await
        .unwrap();
    assert_eq!(c.addr(), addr);
    let a = get(&c, "/v1/health/service/web").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.index(), idx, "same state after restart");
    assert_eq!(a.json()[0]["Service"]["ID"], "web-1");
}

#[tokio::test]
async fn requests_are_recorded() {
    let c = ConsulDouble::start("dc1");
    get_with(
        &c,
        "/v1/health/service/web?passing&dc=dc1&index=0",
        Some("t1"),
    )
    .await;
    get(&c, "/v1/catalog/services?token=t2").await;
    let r = c.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].method, "GET");
    assert_eq!(r[0].path, "/v1/health/service/web");
    assert_eq!(r[0].query, "passing&dc=dc1&index=0");
    assert_eq!(r[0].param("passing"), Some(""));
    assert_eq!(r[0].param("dc"), Some("dc1"));
    assert_eq!(r[0].token.as_deref(), Some("t1"));
    assert_eq!(r[1].token.as_deref(), Some("t2"));
    assert!(r[1].at >= r[0].at);
    c.clear_requests();
    assert!(c.requests().is_empty());
}
