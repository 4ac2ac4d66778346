//! Routing across datacenters with real Envoys, all on 127.0.0.1: the resolver's default
//! subset, a redirect to another datacenter, failover to a third datacenter and back, leaf
//! rotation under traffic, and an unexported service that an intention allows.
//!
//! client → sidecar of `web` (dc-a) → egress gateway (dc-a) → ingress gateway (dc-b or dc-c)
//! → test upstreams that answer with their names.
//!
//! meshgate runs as `serve --config-dir` on files written here, with the built-in CA. Every
//! test ends by checking that every Envoy reports `update_rejected` 0 for every type.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use integration::app::App;
use integration::envoy::{AdsApi, Envoy};
use integration::mesh::{
    SOON, TD, answer, catalog, egress_gateway, ingress_gateway, instance, no_rejections, sidecar,
    tcp_answered, tcp_call, wait_answer, write,
};
use integration::upstream::{Upstream, free_port};

/// dc-a (egress gateway, `web`'s sidecar with one upstream), dc-b (ingress gateway), and
/// dc-c (ingress gateway) when asked for.
struct Lab {
    dir: tempfile::TempDir,
    envoys: Vec<Envoy>,
    /// The sidecar's local port for the (first) upstream.
    port: u16,
    /// The sidecar's local ports, one per upstream.
    ports: Vec<u16>,
    _app: App,
}

struct Spec<'a> {
    /// The sidecar's upstreams, all in dc-b.
    upstreams: &'a [&'a str],
    /// Whether dc-c exists (with its ingress gateway).
    dc_c: bool,
    /// The services' instances (catalog registrations), written to `services.yaml`.
    instances: String,
    /// Config entries, one file each (name, text).
    entries: Vec<(&'a str, String)>,
    /// More `meshgate serve` flags.
    flags: &'a [&'a str],
}

/// A `service-defaults` entry making `service` speak HTTP.
fn http(service: &str) -> String {
    format!("Kind = \"service-defaults\"\nName = \"{service}\"\nProtocol = \"http\"\n")
}

/// A `service-intentions` entry allowing `web` to call `service`.
fn allow_web(service: &str) -> String {
    format!(
        "Kind = \"service-intentions\"\nName = \"{service}\"\nSources = [{{ Name = \"web\", Action = \"allow\" }}]\n"
    )
}

/// The `exported-services` entry exporting `services` to dc-a.
fn exported(services: &[&str]) -> String {
    let list: Vec<String> = services
        .iter()
        .map(|s| format!("  {{ Name = \"{s}\", Consumers = [{{ Peer = \"dc-a\" }}] }},\n"))
        .collect();
    format!(
        "Kind = \"exported-services\"\nName = \"default\"\nServices = [\n{}]\n",
        list.concat()
    )
}

async fn lab(spec: Spec<'_>) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ingress_b, ingress_c, egress_a) = (free_port(), free_port(), free_port());
    let ports: Vec<u16> = spec.upstreams.iter().map(|_| free_port()).collect();
    let mut gateways = vec![
        ingress_gateway("dc-b", ingress_b),
        egress_gateway("dc-a", egress_a),
    ];
    if spec.dc_c {
        gateways.push(ingress_gateway("dc-c", ingress_c));
    }
    let upstreams: Vec<(&str, &str, u16)> = spec
        .upstreams
        .iter()
        .zip(&ports)
        .map(|(u, p)| (*u, "dc-b", *p))
        .collect();
    gateways.push(sidecar("dc-a", "web", &upstreams));
    write(d, "gateways.yaml", &catalog(&gateways));
    write(d, "services.yaml", &spec.instances);
    for (name, text) in &spec.entries {
        write(d, name, text);
    }
    let state = d.join(".state");
    let mut flags = vec![
        "--config-dir",
        d.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--state-dir",
        state.to_str().unwrap(),
        "--config-debounce",
        "50ms",
    ];
    flags.extend_from_slice(spec.flags);
    let app = App::start(&flags);
    let mut nodes: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "ingress-b",
            vec![("role", "ingress"), ("datacenter", "dc-b")],
        ),
        ("egress-a", vec![("role", "egress"), ("datacenter", "dc-a")]),
        (
            "web-sidecar",
            vec![
                ("role", "sidecar"),
                ("datacenter", "dc-a"),
                ("service", "web"),
            ],
        ),
    ];
    if spec.dc_c {
        nodes.push((
            "ingress-c",
            vec![("role", "ingress"), ("datacenter", "dc-c")],
        ));
    }
    let mut envoys = Vec::new();
    for (id, meta) in &nodes {
        envoys.push(Envoy::start_as(app.xds_addr, AdsApi::Delta, id, meta).await);
    }
    Lab {
        dir,
        envoys,
        port: ports[0],
        ports,
        _app: app,
    }
}

/// dc-b's `api` as two instances, v1 and v2 by service meta; the resolver sends callers to
/// v1 unless they ask for a subset.
#[tokio::test]
async fn the_resolver_default_subset_gets_every_request() {
    let (v1, v2) = (
        Upstream::start("api-v1").await,
        Upstream::start("api-v2").await,
    );
    let lab = lab(Spec {
        upstreams: &["api"],
        dc_c: false,
        instances: catalog(&[
            instance(
                "dc-b",
                "api-1",
                "api",
                v1.port(),
                &[("version", "v1")],
                "passing",
            ),
            instance(
                "dc-b",
                "api-2",
                "api",
                v2.port(),
                &[("version", "v2")],
                "passing",
            ),
        ]),
        entries: vec![
            ("exported.hcl", exported(&["api"])),
            ("defaults.hcl", http("api")),
            ("intentions.hcl", allow_web("api")),
            (
                "resolver.hcl",
                r#"
Kind = "service-resolver"
Name = "api"
DefaultSubset = "v1"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = { Filter = "Service.Meta.version == v2" }
}
"#
                .to_owned(),
            ),
        ],
        flags: &[],
    })
    .await;

    wait_answer(lab.port, "an answer from api", |b| b.starts_with("api")).await;
    for i in 0..20 {
        assert_eq!(
            answer(lab.port).await.as_deref(),
            Ok("api-v1"),
            "request {i}"
        );
    }
    assert!(v1.hits.load(Ordering::Relaxed) >= 21);
    assert_eq!(v2.hits.load(Ordering::Relaxed), 0, "v2 was called");
    no_rejections(&lab.envoys).await;
}

/// A resolver redirects dc-b's `api` to dc-c: the caller asks for dc-b and dc-c answers.
#[tokio::test]
async fn a_resolver_redirect_sends_calls_to_another_datacenter() {
    let (api_b, api_c) = (
        Upstream::start("api-dc-b").await,
        Upstream::start("api-dc-c").await,
    );
    let lab = lab(Spec {
        upstreams: &["api"],
        dc_c: true,
        instances: catalog(&[
            instance("dc-b", "api-b", "api", api_b.port(), &[], "passing"),
            instance("dc-c", "api-c", "api", api_c.port(), &[], "passing"),
        ]),
        entries: vec![
            ("exported.hcl", exported(&["api"])),
            ("defaults.hcl", http("api")),
            ("intentions.hcl", allow_web("api")),
            (
                "resolver.hcl",
                "Kind = \"service-resolver\"\nName = \"api\"\nRedirect = { Datacenter = \"dc-c\" }\n"
                    .to_owned(),
            ),
        ],
        flags: &[],
    })
    .await;

    let first = wait_answer(lab.port, "an answer from api", |b| b.starts_with("api")).await;
    assert_eq!(first, "api-dc-c");
    for i in 0..10 {
        assert_eq!(
            answer(lab.port).await.as_deref(),
            Ok("api-dc-c"),
            "request {i}"
        );
    }
    assert_eq!(api_b.hits.load(Ordering::Relaxed), 0, "dc-b was called");
    no_rejections(&lab.envoys).await;
}

/// dc-b's `api` fails over to dc-c: dc-b answers while its instance passes, dc-c once it is
/// critical, dc-b again when it passes again.
#[tokio::test]
async fn failover_goes_to_the_third_datacenter_and_comes_back() {
    let (api_b, api_c) = (
        Upstream::start("api-dc-b").await,
        Upstream::start("api-dc-c").await,
    );
    let instances = |status: &str| {
        catalog(&[
            instance("dc-b", "api-b", "api", api_b.port(), &[], status),
            instance("dc-c", "api-c", "api", api_c.port(), &[], "passing"),
        ])
    };
    let lab = lab(Spec {
        upstreams: &["api"],
        dc_c: true,
        instances: instances("passing"),
        entries: vec![
            ("exported.hcl", exported(&["api"])),
            ("defaults.hcl", http("api")),
            ("intentions.hcl", allow_web("api")),
            (
                "resolver.hcl",
                "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Datacenters = [\"dc-c\"] } }\n"
                    .to_owned(),
            ),
        ],
        flags: &[],
    })
    .await;

    // Answered by the first that answers in a stable state, then every time.
    let steady = async |expected: &str| {
        for i in 0..10 {
            assert_eq!(
                answer(lab.port).await.as_deref(),
                Ok(expected),
                "request {i} after the switch to {expected}"
            );
        }
    };
    wait_answer(lab.port, "dc-b answering", |b| b == "api-dc-b").await;
    steady("api-dc-b").await;

    write(lab.dir.path(), "services.yaml", &instances("critical"));
    wait_answer(lab.port, "dc-c answering after dc-b failed", |b| {
        b == "api-dc-c"
    })
    .await;
    steady("api-dc-c").await;

    write(lab.dir.path(), "services.yaml", &instances("passing"));
    wait_answer(lab.port, "dc-b answering after it recovered", |b| {
        b == "api-dc-b"
    })
    .await;
    steady("api-dc-b").await;
    no_rejections(&lab.envoys).await;
}

/// The serial numbers of the certificates an Envoy presents with `spiffe` as URI SAN, from
/// its admin `/certs`.
async fn serials(envoy: &Envoy, spiffe: &str) -> BTreeSet<String> {
    let certs: serde_json::Value =
        serde_json::from_str(&envoy.admin_get("/certs").await).expect("/certs JSON");
    let mut out = BTreeSet::new();
    for context in certs["certificates"].as_array().into_iter().flatten() {
        for cert in context["cert_chain"].as_array().into_iter().flatten() {
            let sans = cert["subject_alt_names"].as_array();
            if sans
                .into_iter()
                .flatten()
                .any(|s| s["uri"].as_str() == Some(spiffe))
                && let Some(serial) = cert["serial_number"].as_str()
            {
                out.insert(serial.to_owned());
            }
        }
    }
    out
}

/// With 2-minute leaves (replaced at two thirds, 80 s), the ingress gateway's certificate
/// for `api` changes while calls keep going through, each on a new connection (tcp: one
/// mTLS handshake with the ingress gateway per call), and none fails.
#[tokio::test]
async fn leaves_rotate_under_traffic_without_a_failed_call() {
    let api = Upstream::start("api").await;
    let lab = lab(Spec {
        upstreams: &["api"],
        dc_c: false,
        instances: instance("dc-b", "api-1", "api", api.port(), &[], "passing"),
        entries: vec![
            ("exported.hcl", exported(&["api"])),
            ("intentions.hcl", allow_web("api")),
        ],
        flags: &["--leaf-ttl", "2m"],
    })
    .await;
    let ingress = &lab.envoys[0];
    let spiffe = format!("spiffe://{TD}/ns/default/dc/dc-b/svc/api");

    let deadline = tokio::time::Instant::now() + SOON;
    while !tcp_answered(lab.port, "api").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "api never answered: {:?}",
            tcp_call(lab.port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = serials(ingress, &spiffe).await;
    assert_eq!(first.len(), 1, "api's certificates on the ingress gateway");

    // Rotation is due 80 s after the leaf was signed; allow some slack past that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(110);
    let (mut calls, mut after) = (0u32, 0u32);
    let mut rotated = None;
    while after < 10 {
        let r = tcp_call(lab.port).await;
        calls += 1;
        assert!(
            r.as_ref()
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("api")),
            "call {calls} failed: {r:?}\n{}",
            ingress.log()
        );
        if rotated.is_some() {
            after += 1;
        } else {
            let now = serials(ingress, &spiffe).await;
            if now != first && !now.is_empty() {
                rotated = Some(now);
            } else {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the ingress gateway's leaf never changed: still {first:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rotated = rotated.unwrap();
    assert!(
        rotated.is_disjoint(&first),
        "old serial still served: {first:?} → {rotated:?}"
    );
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    no_rejections(&lab.envoys).await;
}

/// `secret` has an instance in dc-b and an intention that allows `web`, but dc-b does not
/// export it: the ingress gateway has no chain for it, and the call is refused.
#[tokio::test]
async fn an_unexported_service_is_refused_even_when_an_intention_allows() {
    let (api, secret) = (
        Upstream::start("api").await,
        Upstream::start("secret").await,
    );
    let lab = lab(Spec {
        upstreams: &["secret", "api"],
        dc_c: false,
        instances: catalog(&[
            instance("dc-b", "api-1", "api", api.port(), &[], "passing"),
            instance("dc-b", "secret-1", "secret", secret.port(), &[], "passing"),
        ]),
        entries: vec![
            ("exported.hcl", exported(&["api"])),
            ("intentions.hcl", allow_web("secret")),
            ("api-intentions.hcl", allow_web("api")),
            ("defaults.hcl", http("secret")),
            ("api-defaults.hcl", http("api")),
        ],
        flags: &[],
    })
    .await;
    // The path works: api, exported and allowed, answers through the same gateways.
    let api_port = lab.ports[1];
    wait_answer(api_port, "an answer from api", |b| b == "api").await;
    for i in 0..5 {
        let r = answer(lab.port).await;
        assert!(r.is_err(), "call {i} to the unexported service: {r:?}");
    }
    assert_eq!(secret.hits.load(Ordering::Relaxed), 0, "secret was called");
    let chains = lab.envoys[0].config_dump().await.to_string();
    assert!(
        !chains.contains(&format!("secret.default.dc-b.internal.{TD}")),
        "the ingress gateway has a chain for secret"
    );
    no_rejections(&lab.envoys).await;
}
