//! Shared pieces of the gateway end-to-end tests (`tests/gateways*.rs`): config files written
//! atomically for `meshgate serve --config-dir`, catalog registrations of gateways, instances
//! and sidecars, calls through a sidecar's upstream listener, and the `update_rejected` check.
//! Everything listens on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::envoy::{AdsApi, Envoy, http_client};

/// The trust domain of the test meshes.
pub const TD: &str = "5c3b6c1e-0b55-4e6e-9a0b-6a1e5b7f2d10.consul";

/// A generous bound for "arrives soon" waits (config pushed, Envoy warmed): not a
/// performance figure.
pub const SOON: Duration = Duration::from_secs(30);

/// A real Envoy in the group of the `role` (`ingress` or `egress`) gateways of `dc`, by
/// delta ADS; its node id is `<role>-<dc>`.
pub async fn gateway_envoy(xds: std::net::SocketAddr, role: &str, dc: &str) -> Envoy {
    Envoy::start_as(
        xds,
        AdsApi::Delta,
        &format!("{role}-{dc}"),
        &[("role", role), ("datacenter", dc)],
    )
    .await
}

/// A real Envoy as the sidecar of `service` in `dc`, by delta ADS; its node id is
/// `<service>-sidecar`.
pub async fn sidecar_envoy(xds: std::net::SocketAddr, dc: &str, service: &str) -> Envoy {
    Envoy::start_as(
        xds,
        AdsApi::Delta,
        &format!("{service}-sidecar"),
        &[
            ("role", "sidecar"),
            ("datacenter", dc),
            ("service", service),
        ],
    )
    .await
}

/// Writes `dir/name` atomically (a temporary file renamed), so the directory watcher never
/// reads half a file.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Catalog registrations as one multi-document YAML file.
pub fn catalog(docs: &[String]) -> String {
    docs.join("---\n")
}

/// The catalog registration of an ingress gateway of `dc` listening (and reachable over the
/// WAN) on `port`.
pub fn ingress_gateway(dc: &str, port: u16) -> String {
    format!(
        "Datacenter: {dc}\nNode: gw-{dc}\nAddress: 127.0.0.1\nService:\n  Kind: mesh-gateway\n  ID: ingress-{dc}\n  Service: mesh-gateway\n  Port: {port}\n  TaggedAddresses: {{wan: {{Address: 127.0.0.1, Port: {port}}}}}\n  Meta: {{meshgate-role: ingress}}\n"
    )
}

/// The catalog registration of an egress gateway of `dc` listening on `port`.
pub fn egress_gateway(dc: &str, port: u16) -> String {
    format!(
        "Datacenter: {dc}\nNode: gw-{dc}\nAddress: 127.0.0.1\nService:\n  Kind: mesh-gateway\n  ID: egress-{dc}\n  Service: mesh-gateway-egress\n  Port: {port}\n  Meta: {{meshgate-role: egress}}\n"
    )
}

/// The catalog registration of an instance `id` of `service` in `dc` on `port`, with service
/// meta and one check in `status` (`passing`, `warning`, `critical`).
pub fn instance(
    dc: &str,
    id: &str,
    service: &str,
    port: u16,
    meta: &[(&str, &str)],
    status: &str,
) -> String {
    let meta: Vec<String> = meta.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "Datacenter: {dc}\nNode: app-{dc}\nAddress: 127.0.0.1\nService: {{ID: {id}, Service: {service}, Port: {port}, Meta: {{{}}}}}\nChecks: [{{CheckID: {id}, ServiceID: {id}, Status: {status}}}]\n",
        meta.join(", ")
    )
}

/// The catalog registration of the sidecar of `service` in `dc` with its upstreams
/// (destination, datacenter, local bind port).
pub fn sidecar(dc: &str, service: &str, upstreams: &[(&str, &str, u16)]) -> String {
    let mut out = format!(
        "Datacenter: {dc}\nNode: app-{dc}\nAddress: 127.0.0.1\nService:\n  Kind: connect-proxy\n  ID: {service}-sidecar-proxy\n  Service: {service}-sidecar-proxy\n  Port: 21000\n  Proxy:\n    DestinationServiceName: {service}\n    Upstreams:\n"
    );
    for (name, udc, port) in upstreams {
        out.push_str(&format!(
            "      - {{DestinationName: {name}, Datacenter: {udc}, LocalBindPort: {port}}}\n"
        ));
    }
    out
}

/// Fails (with the Envoy's log) unless every `update_rejected` counter of every Envoy — CDS,
/// LDS, and each EDS, RDS and SDS subscription — is 0.
pub async fn no_rejections(envoys: &[Envoy]) {
    for e in envoys {
        let stats = e.admin_get("/stats?filter=update_rejected").await;
        let counted = stats
            .lines()
            .filter(|l| l.contains("update_rejected"))
            .count();
        assert!(counted >= 2, "no update_rejected stats at all:\n{stats}");
        for line in stats.lines() {
            assert!(line.ends_with(": 0"), "{line}\n{}", e.log());
        }
    }
}

/// An HTTP request through a sidecar's upstream listener: (status, body, the
/// `x-forwarded-client-cert` the upstream received).
pub async fn get(
    port: u16,
    path: &str,
    method: reqwest::Method,
) -> Result<(u16, String, String), String> {
    let r = http_client()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let xfcc = r
        .headers()
        .get("x-received-xfcc")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, r.text().await.map_err(|e| e.to_string())?, xfcc))
}

/// A GET of `/` through a sidecar: the body of a 200, or what went wrong.
pub async fn answer(port: u16) -> Result<String, String> {
    match get(port, "/", reqwest::Method::GET).await {
        Ok((200, body, _)) => Ok(body),
        Ok((status, body, _)) => Err(format!("status {status}: {body}")),
        Err(e) => Err(e),
    }
}

/// Waits (up to [`SOON`]) until a GET through the sidecar is answered with 200 and a body
/// `pred` accepts; returns that body.
pub async fn wait_answer(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let last = answer(port).await;
        if let Ok(body) = &last
            && pred(body)
        {
            return body.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: never seen through the mesh; last: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP round trip through a sidecar's (tcp) upstream listener: a fresh connection, an
/// HTTP/1 request written raw, and whatever came back before the upstream closed.
pub async fn tcp_call(port: u16) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Err(e)) => Err(format!("{e} after {:?}", String::from_utf8_lossy(&buf))),
        Err(_) => Err(format!(
            "no end of answer; so far {:?}",
            String::from_utf8_lossy(&buf)
        )),
    }
}

/// Whether a TCP round trip through the sidecar came back with `name` (the upstream's body).
pub async fn tcp_answered(port: u16, name: &str) -> bool {
    tcp_call(port)
        .await
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with(name))
}
