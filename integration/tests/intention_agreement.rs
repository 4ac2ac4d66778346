//! `meshgate intention check` agrees with what the real gateways do (issue #4), over a table of
//! intentions with exact, wildcard, allow, deny and L7 sources.
//!
//! One mesh of real Envoys, all on 127.0.0.1: dc `alpha` has five callers, each with a sidecar
//! whose upstreams are the destinations of its rows, and an egress gateway; dc `beta` has seven
//! destinations, each a test upstream that answers with its name, behind beta's ingress
//! gateway, all exported to alpha. meshgate serves the config directory written here. For each
//! row (caller → destination) the test runs the `meshgate intention check` binary on that same
//! directory, makes real calls sidecar → egress gateway → ingress gateway (where intentions are
//! enforced, as RBAC filters) → upstream, and asserts that the two agree. The table runs twice:
//! under meshgate's default intention policy (deny; no flag given to either) and under
//! `--default-intention-policy allow` (given to both).
//!
//! What the gateway did is read from definite evidence only, so that a call failing while the
//! Envoys warm up never passes for a refusal:
//! * answered: a 200 whose body is the destination's name (each upstream answers with its own);
//! * refused: not answered, *and* the ingress gateway's RBAC counted a denial for that call
//!   (`connect_authz.rbac.denied` for tcp destinations, whose connection is closed;
//!   `http.ingress.<service>.rbac.denied` for http ones, whose request gets a 403).
//!
//! Anything else is retried until [`SOON`].
//!
//! The comparison rule: `intention check` answers Consul's L4 question — may SOURCE connect to
//! DESTINATION at all — so **`Allowed` ⇔ every call of the row is answered**. An L4 row makes
//! one call (a TCP round trip, or `GET /` for http). In an L7 row the deciding intention has
//! `Permissions`; `intention check`, like `consul intention check`, cannot grant a connection
//! without seeing the request and says `Denied`, and the gateway must then refuse at least one
//! of the row's calls: on a tcp destination the connection itself (L7 intentions count as deny
//! there), on an http destination the requests the permissions refuse (403) — while it answers
//! those they allow. Each request of an L7 row is also checked against the table and against
//! meshgate's L7 engine (`intentions::check_request`, which the gateways' HTTP RBAC mirrors).
//!
//! `intention check` runs as the built binary `target/<profile>/meshgate`: this crate cannot
//! ask Cargo for another package's binary (`CARGO_BIN_EXE_*` is given only to a package's own
//! tests), so it must be built first — `make test` does (`cargo build --release --workspace
//! --bins`). A missing binary, or one older than meshgate's sources, fails the test with the
//! command to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use integration::app::App;
use integration::envoy::Envoy;
use integration::mesh::{
    SOON, TD, catalog, egress_gateway, gateway_envoy, get, ingress_gateway, instance,
    no_rejections, sidecar, sidecar_envoy, tcp_call, write,
};
use integration::upstream::{Upstream, free_port};
use meshgate::model::intentions::{self, DefaultPolicy, HttpRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Http,
}

/// beta's services: name and protocol (http ones get a `service-defaults`).
const DESTINATIONS: &[(&str, Protocol)] = &[
    ("orders", Protocol::Tcp),
    ("ledger", Protocol::Tcp),
    ("catalog", Protocol::Http),
    ("vault", Protocol::Tcp),
    ("metrics", Protocol::Tcp),
    ("api", Protocol::Http),
    ("archive", Protocol::Tcp),
];

/// The intentions of the table. `metrics` has no entry of its own; the `*` entry gives ops
/// and batch every destination at precedence 6 and takes it from web, unless a higher
/// intention says otherwise.
const INTENTIONS: &str = r#"Kind: service-intentions
Name: orders
Sources:
  - {Name: web, Action: allow}
---
Kind: service-intentions
Name: ledger
Sources:
  - {Name: batch, Action: deny}
---
Kind: service-intentions
Name: catalog
Sources:
  - {Name: "*", Action: allow}
  - {Name: batch, Action: deny}
---
Kind: service-intentions
Name: vault
Sources:
  - {Name: "*", Action: deny}
  - {Name: ops, Action: allow}
---
Kind: service-intentions
Name: api
Sources:
  - {Name: "*", Action: allow}
  - Name: reporter
    Permissions:
      - Action: deny
        HTTP: {PathPrefix: /reports/private}
      - Action: allow
        HTTP: {PathPrefix: /reports/, Methods: [GET]}
---
Kind: service-intentions
Name: archive
Sources:
  - Name: reporter
    Permissions:
      - Action: allow
        HTTP: {PathPrefix: /}
---
Kind: service-intentions
Name: "*"
Sources:
  - {Name: ops, Action: allow}
  - {Name: batch, Action: allow}
  - {Name: web, Action: deny}
"#;

/// `[under default deny, under default allow]`.
type ByDefault = [bool; 2];

struct Row {
    /// What the row covers.
    case: &'static str,
    source: &'static str,
    destination: &'static str,
    /// `intention check`'s expected answer (true: Allowed).
    check: ByDefault,
    /// For L7 rows on http destinations: requests (method, path) and whether the gateway
    /// answers each. Empty: one call, which the gateway answers iff `check` says Allowed.
    requests: &'static [(&'static str, &'static str, ByDefault)],
}

const ROWS: &[Row] = &[
    Row {
        case: "exact allow (9) over a `web => *` deny (6)",
        source: "web",
        destination: "orders",
        check: [true, true],
        requests: &[],
    },
    Row {
        case: "no intention matches the source: the default policy",
        source: "guest",
        destination: "orders",
        check: [false, true],
        requests: &[],
    },
    Row {
        case: "exact deny (9) over a `batch => *` allow (6)",
        source: "batch",
        destination: "ledger",
        check: [false, false],
        requests: &[],
    },
    Row {
        case: "wildcard allow `* => catalog` (8) over a `web => *` deny (6), http",
        source: "web",
        destination: "catalog",
        check: [true, true],
        requests: &[],
    },
    Row {
        case: "exact deny (9) over a wildcard allow (8), http",
        source: "batch",
        destination: "catalog",
        check: [false, false],
        requests: &[],
    },
    Row {
        case: "exact allow (9) over a wildcard deny (8)",
        source: "ops",
        destination: "vault",
        check: [true, true],
        requests: &[],
    },
    Row {
        case: "wildcard deny `* => vault` (8)",
        source: "web",
        destination: "vault",
        check: [false, false],
        requests: &[],
    },
    Row {
        case: "wildcard-source deny (8) over a wildcard-destination allow `batch => *` (6)",
        source: "batch",
        destination: "vault",
        check: [false, false],
        requests: &[],
    },
    Row {
        case: "wildcard-destination allow `ops => *` (6), no entry for the destination",
        source: "ops",
        destination: "metrics",
        check: [true, true],
        requests: &[],
    },
    Row {
        case: "no intention at all: the default policy",
        source: "guest",
        destination: "metrics",
        check: [false, true],
        requests: &[],
    },
    Row {
        case: "L7 permissions (9) over a wildcard allow (8), http: Denied at L4; per request \
               the first matching permission, else the default policy",
        source: "reporter",
        destination: "api",
        check: [false, false],
        requests: &[
            // The allow permission.
            ("GET", "/reports/q1", [true, true]),
            // The deny permission, written before the allow one that would also match.
            ("GET", "/reports/private/q2", [false, false]),
            // No permission matches: the default policy, not the lower `* => api` allow.
            ("POST", "/reports/q1", [false, true]),
            ("GET", "/status", [false, true]),
        ],
    },
    Row {
        case: "L7 permissions on a tcp destination count as deny",
        source: "reporter",
        destination: "archive",
        check: [false, false],
        requests: &[],
    },
];

fn protocol(destination: &str) -> Protocol {
    DESTINATIONS
        .iter()
        .find(|(name, _)| *name == destination)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("{destination} is not in DESTINATIONS"))
}

/// The callers, in order of first appearance in [`ROWS`].
fn sources() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for row in ROWS {
        if !out.contains(&row.source) {
            out.push(row.source);
        }
    }
    out
}

/// The `meshgate` binary of this build, next to the `deps/` directory this test runs from;
/// fails unless it exists and is newer than every source it is built from.
fn meshgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = profile_dir.join(format!("meshgate{}", std::env::consts::EXE_SUFFIX));
    let build = format!(
        "build it first: `cargo build {}--bin meshgate` (`make test` does)",
        if profile_dir.ends_with("release") {
            "--release "
        } else {
            ""
        }
    );
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}: {build}", bin.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is in the workspace");
    let mut inputs = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                inputs.push(path);
            }
        }
    }
    for input in inputs {
        let changed = std::fs::metadata(&input)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            changed <= built,
            "{} is older than {}: {build}",
            bin.display(),
            input.display()
        );
    }
    bin
}

/// Runs `meshgate intention check SOURCE DESTINATION --config-dir DIR <flags>`: whether it
/// said Allowed, and the deciding intention it gave on stderr.
fn intention_check(
    bin: &Path,
    dir: &Path,
    flags: &[&str],
    source: &str,
    destination: &str,
) -> (bool, String) {
    let out = Command::new(bin)
        .args(["intention", "check", "--config-dir"])
        .arg(dir)
        .args(flags)
        .args([source, destination])
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("MESHGATE_CONFIG_DIR")
        .output()
        .expect("run meshgate intention check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let allowed = match (out.status.code(), stdout.as_ref()) {
        (Some(0), "Allowed\n") => true,
        (Some(1), "Denied\n") => false,
        (code, _) => panic!(
            "meshgate intention check {source} {destination}: exit {code:?}\nstdout: {stdout}\nstderr: {stderr}"
        ),
    };
    (allowed, stderr.trim().to_owned())
}

struct Lab {
    dir: tempfile::TempDir,
    /// ingress (beta), egress (alpha), then one sidecar per caller.
    envoys: Vec<Envoy>,
    /// The local port of each (caller, destination) upstream on the caller's sidecar.
    ports: BTreeMap<(&'static str, &'static str), u16>,
    _upstreams: Vec<Upstream>,
    _app: App,
}

impl Lab {
    fn ingress(&self) -> &Envoy {
        &self.envoys[0]
    }
}

/// Builds the lab; again (with other ports) when an Envoy could not bind a listener port.
/// Ports are picked by the OS for the test and released before Envoy binds them, so another
/// process binding an OS-picked port in between (an admin listener, another test's upstream)
/// makes Envoy reject that listener: the calls on it would then reach that other process.
async fn lab(serve_flags: &[&str]) -> Lab {
    let mut collisions = Vec::new();
    for _ in 0..3 {
        match try_lab(serve_flags).await {
            Ok(lab) => return lab,
            Err(e) => collisions.push(e),
        }
    }
    panic!("three port collisions in a row: {collisions:#?}");
}

async fn try_lab(serve_flags: &[&str]) -> Result<Lab, String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut upstreams = Vec::new();
    for (name, _) in DESTINATIONS {
        upstreams.push(Upstream::start(name).await);
    }
    let ports: BTreeMap<(&str, &str), u16> = ROWS
        .iter()
        .map(|r| ((r.source, r.destination), free_port()))
        .collect();
    assert_eq!(ports.len(), ROWS.len(), "two rows with the same pair");

    let (ingress_port, egress_port) = (free_port(), free_port());
    let mut registrations = vec![
        ingress_gateway("beta", ingress_port),
        egress_gateway("alpha", egress_port),
    ];
    for u in &upstreams {
        registrations.push(instance(
            "beta",
            &format!("{}-1", u.name),
            &u.name,
            u.port(),
            &[],
            "passing",
        ));
    }
    for source in sources() {
        let upstreams: Vec<(&str, &str, u16)> = ports
            .iter()
            .filter(|((s, _), _)| *s == source)
            .map(|((_, dst), port)| (*dst, "beta", *port))
            .collect();
        registrations.push(sidecar("alpha", source, &upstreams));
    }
    write(d, "catalog.yaml", &catalog(&registrations));
    write(d, "intentions.yaml", INTENTIONS);
    let mut entries = String::from("Kind: exported-services\nName: default\nServices:\n");
    for (name, _) in DESTINATIONS {
        entries.push_str(&format!(
            "  - {{Name: {name}, Consumers: [{{Peer: alpha}}]}}\n"
        ));
    }
    for (name, p) in DESTINATIONS {
        let p = match p {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        };
        entries.push_str(&format!(
            "---\nKind: service-defaults\nName: {name}\nProtocol: {p}\n"
        ));
    }
    write(d, "entries.yaml", &entries);

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
    flags.extend_from_slice(serve_flags);
    let app = App::start(&flags);

    let mut envoys = vec![
        gateway_envoy(app.xds_addr, "ingress", "beta").await,
        gateway_envoy(app.xds_addr, "egress", "alpha").await,
    ];
    let mut listening: Vec<Vec<u16>> = vec![vec![ingress_port], vec![egress_port]];
    for source in sources() {
        envoys.push(sidecar_envoy(app.xds_addr, "alpha", source).await);
        listening.push(
            ports
                .iter()
                .filter(|((s, _), _)| *s == source)
                .map(|(_, p)| *p)
                .collect(),
        );
    }
    // Every Envoy listens on every port it was given, or one could not bind it.
    let deadline = tokio::time::Instant::now() + SOON;
    for (envoy, ports) in envoys.iter().zip(&listening) {
        loop {
            let listeners = envoy.admin_get("/listeners").await;
            if ports
                .iter()
                .all(|p| listeners.contains(&format!("127.0.0.1:{p}")))
            {
                break;
            }
            let log = envoy.full_log();
            if let Some(line) = log.lines().find(|l| l.contains("Address already in use")) {
                return Err(line.to_owned());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "an Envoy does not listen on {ports:?}: {listeners}\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Lab {
        dir,
        envoys,
        ports,
        _upstreams: upstreams,
        _app: app,
    })
}

/// What the gateways did with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Refused,
}

impl Outcome {
    fn answered(self) -> bool {
        self == Outcome::Answered
    }
}

/// One call from a caller's sidecar port to `destination` (for http, `method path`), retried
/// until it is answered by the destination or refused by the ingress gateway's RBAC.
async fn call(ingress: &Envoy, port: u16, destination: &str, method: &str, path: &str) -> Outcome {
    let protocol = protocol(destination);
    let denied = match protocol {
        Protocol::Tcp => "connect_authz.rbac.denied".to_owned(),
        Protocol::Http => format!("http.ingress.{destination}.rbac.denied"),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let before = ingress.stat(&denied).await;
        let (refused_shape, seen) = match protocol {
            Protocol::Tcp => match tcp_call(port).await {
                Ok(r) if r.starts_with("HTTP/1.1 200") && r.ends_with(destination) => {
                    return Outcome::Answered;
                }
                other => (true, format!("{other:?}")),
            },
            Protocol::Http => match get(port, path, method.clone()).await {
                Ok((200, body, _)) if body == destination => return Outcome::Answered,
                other => (matches!(other, Ok((403, _, _))), format!("{other:?}")),
            },
        };
        let after = ingress.stat(&denied).await;
        if refused_shape && after > before {
            return Outcome::Refused;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "port {port} → {destination} {method} {path}: neither answered nor refused by \
                 the ingress gateway's RBAC ({denied} {before} → {after}); last: {seen}\n\
                 ingress gateway:\n{}\n{}",
                ingress.admin_get("/stats?filter=rbac").await,
                ingress.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn said(allowed: bool) -> &'static str {
    if allowed { "Allowed" } else { "Denied" }
}

fn did(answered: bool) -> &'static str {
    if answered { "answered" } else { "refused" }
}

async fn intention_check_agrees_with_the_gateways(default: DefaultPolicy) {
    let (column, flags): (usize, &[&str]) = match default {
        // meshgate's default, given to neither: both must default to deny.
        DefaultPolicy::Deny => (0, &[]),
        DefaultPolicy::Allow => (1, &["--default-intention-policy", "allow"]),
    };
    let bin = meshgate_binary();
    let lab = lab(flags).await;
    let loaded = meshgate::source::dir::load(lab.dir.path(), "beta", 1);
    let problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
    assert!(!loaded.has_errors(), "the test's config: {problems:#?}");
    let entries = &loaded.snapshot.entries;

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for row in ROWS {
        let (src, dst) = (row.source, row.destination);
        let port = lab.ports[&(src, dst)];
        let (checked, reason) = intention_check(&bin, lab.dir.path(), flags, src, dst);
        if checked != row.check[column] {
            failures.push(format!(
                "{src} → {dst} ({}): intention check says {}, the table {}",
                row.case,
                said(checked),
                said(row.check[column])
            ));
        }
        let mut calls = Vec::new();
        if row.requests.is_empty() {
            let outcome = call(lab.ingress(), port, dst, "GET", "/").await;
            calls.push(did(outcome.answered()).to_owned());
            if outcome.answered() != checked {
                failures.push(format!(
                    "{src} → {dst} ({}): intention check says {} ({reason}), the gateway {} the call",
                    row.case,
                    said(checked),
                    did(outcome.answered())
                ));
            }
        } else {
            let mut all_answered = true;
            for (method, path, expected) in row.requests {
                let outcome = call(lab.ingress(), port, dst, method, path).await;
                all_answered &= outcome.answered();
                calls.push(format!("{method} {path} {}", did(outcome.answered())));
                let engine = intentions::check_request(
                    entries,
                    src,
                    dst,
                    &HttpRequest::new(method, path),
                    default,
                );
                if outcome.answered() != expected[column] {
                    failures.push(format!(
                        "{src} → {dst} {method} {path} ({}): the gateway {} it, the table says {}",
                        row.case,
                        did(outcome.answered()),
                        did(expected[column])
                    ));
                }
                if outcome.answered() != engine.allowed {
                    failures.push(format!(
                        "{src} → {dst} {method} {path} ({}): the gateway {} it, the L7 engine says {} ({})",
                        row.case,
                        did(outcome.answered()),
                        did(engine.allowed),
                        engine.reason
                    ));
                }
            }
            if all_answered != checked {
                failures.push(format!(
                    "{src} → {dst} ({}): intention check says {} ({reason}), yet the gateway {} every request",
                    row.case,
                    said(checked),
                    if all_answered { "answered" } else { "did not answer" }
                ));
            }
        }
        report.push(format!(
            "{src} → {dst}: intention check {} ({reason}); gateway: {}",
            said(checked),
            calls.join(", ")
        ));
    }
    let report = report.join("\n");
    println!("default {}:\n{report}", default.as_str());
    assert!(
        failures.is_empty(),
        "default {}: {} disagreement(s):\n{}\n\nall rows:\n{report}",
        default.as_str(),
        failures.len(),
        failures.join("\n")
    );
    no_rejections(&lab.envoys).await;
}

#[tokio::test]
async fn intention_check_agrees_with_the_gateways_under_default_deny() {
    intention_check_agrees_with_the_gateways(DefaultPolicy::Deny).await;
}

#[tokio::test]
async fn intention_check_agrees_with_the_gateways_under_default_allow() {
    intention_check_agrees_with_the_gateways(DefaultPolicy::Allow).await;
}
