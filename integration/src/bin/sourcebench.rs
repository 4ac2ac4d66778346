//! `meshgate-sourcebench`: what reading the mesh costs.
//!
//! 1. The directory source on a generated directory (default 10,000 service instances in
//!    1,000 services, and 1,000 config entries, in HCL, JSON and YAML): a full read into a
//!    snapshot, and the digest a periodic rescan computes when nothing changed.
//! 2. The Consul source against the Consul test double holding the same catalog: the first
//!    sync, then one health change — how many requests Consul answered for it (one blocking
//!    round trip, no resync) and how long until the new snapshot.
//! 3. Idle: CPU used by the directory watcher and the Consul watches while nothing changes.
//!
//! Results print as a table and go to `target/bench/sources.json`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use integration::consul_double::ConsulDouble;
use meshgate::metrics::Metrics;
use meshgate::source::dir::{DirSource, load};
use meshgate::source::from_consul::{self, ConsulConfig};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measures the directory and Consul sources")]
struct Args {
    /// Services (each with --instances instances).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Config entries (service-defaults, service-resolver and service-intentions, in turn).
    #[arg(long, default_value_t = 1000)]
    entries: usize,
    /// Full reads to time (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds of idle to measure.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Run only the translation benchmark (to profile it).
    #[arg(long)]
    translation_only: bool,
}

fn write_services(dir: &Path, services: usize, instances: usize) {
    for s in 0..services {
        let name = format!("svc-{s:04}");
        let (file, text) = match s % 3 {
            0 => {
                let items: Vec<String> = (0..instances)
                    .map(|i| {
                        format!(
                            "  {{\n    name = \"{name}\"\n    id = \"{name}-{i}\"\n    address = \"10.{}.{}.{}\"\n    port = 8080\n    meta = {{ version = \"v{}\" }}\n    checks = [{{ id = \"{name}-{i}-alive\", ttl = \"30s\", status = \"passing\" }}]\n  }},\n",
                            s / 250,
                            s % 250,
                            i + 1,
                            i % 2 + 1
                        )
                    })
                    .collect();
                (
                    format!("{name}.hcl"),
                    format!("services = [\n{}]\n", items.concat()),
                )
            }
            1 => {
                let items: Vec<serde_json::Value> = (0..instances)
                    .map(|i| {
                        json!({"name": name, "id": format!("{name}-{i}"), "address": format!("10.{}.{}.{}", s / 250, s % 250, i + 1),
                               "port": 8080, "meta": {"version": format!("v{}", i % 2 + 1)},
                               "checks": [{"id": format!("{name}-{i}-alive"), "ttl": "30s", "status": "passing"}]})
                    })
                    .collect();
                (
                    format!("{name}.json"),
                    serde_json::to_string_pretty(&json!({ "services": items })).unwrap(),
                )
            }
            _ => {
                let docs: Vec<String> = (0..instances)
                    .map(|i| {
                        format!(
                            "Node: node-{s}-{i}\nAddress: 10.{}.{}.{}\nService:\n  Service: {name}\n  ID: {name}-{i}\n  Port: 8080\n  Meta: {{version: v{}}}\nChecks:\n  - CheckID: {name}-{i}-alive\n    ServiceID: {name}-{i}\n    Status: passing\n",
                            s / 250,
                            s % 250,
                            i + 1,
                            i % 2 + 1
                        )
                    })
                    .collect();
                (format!("{name}.yaml"), docs.join("---\n"))
            }
        };
        std::fs::write(dir.join("services").join(file), text).unwrap();
    }
}

fn write_entries(dir: &Path, services: usize, entries: usize) {
    for e in 0..entries {
        let name = format!("svc-{:04}", e / 3 % services.max(1));
        let (file, text) = match e % 3 {
            0 => (
                format!("{name}-defaults.hcl"),
                format!("Kind = \"service-defaults\"\nName = \"{name}\"\nProtocol = \"http\"\n"),
            ),
            1 => (
                format!("{name}-resolver.yaml"),
                format!(
                    "Kind: service-resolver\nName: {name}\nDefaultSubset: v1\nSubsets:\n  v1: {{Filter: \"Service.Meta.version == v1\"}}\n  v2: {{Filter: \"Service.Meta.version == v2\", OnlyPassing: true}}\nConnectTimeout: 3s\n"
                ),
            ),
            _ => (
                format!("{name}-intentions.json"),
                serde_json::to_string_pretty(&json!({
                    "Kind": "service-intentions", "Name": name,
                    "Sources": [
                        {"Name": "frontend", "Action": "allow"},
                        {"Name": "ops", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/admin", "Methods": ["GET"]}}]},
                        {"Name": "*", "Action": "deny"}
                    ]
                }))
                .unwrap(),
            ),
        };
        std::fs::write(dir.join("entries").join(file), text).unwrap();
    }
}

/// CPU time (user + system) of this process, from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let out_dir = Path::new("target/bench");
    if args.translation_only {
        let t = translation(10_000, 10);
        t.print();
        let _ = std::fs::create_dir_all(out_dir);
        std::fs::write(
            out_dir.join("translation.json"),
            serde_json::to_string_pretty(&t.json()).unwrap(),
        )
        .unwrap();
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    std::fs::create_dir_all(dir.path().join("entries")).unwrap();
    write_services(dir.path(), args.services, args.instances);
    write_entries(dir.path(), args.services, args.entries);
    std::fs::write(
        dir.path().join("entries/exports.hcl"),
        "Kind = \"exported-services\"\nName = \"default\"\nServices = [{ Name = \"svc-0000\" }]\n",
    )
    .unwrap();

    // 1. Full reads and rescans.
    let mut reads = Vec::new();
    let mut counts = None;
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let loaded = load(dir.path(), "dc1", 1);
        reads.push(started.elapsed().as_secs_f64());
        assert!(
            !loaded.has_errors(),
            "generated files must be valid: {:?}",
            loaded.problems.first()
        );
        counts = Some((loaded.files, loaded.snapshot.counts()));
    }
    let (files, counts) = counts.unwrap();
    let mut digests = Vec::new();
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        meshgate::source::dir::digest(dir.path()).unwrap();
        digests.push(started.elapsed().as_secs_f64());
    }
    let read_s = median(reads);
    let digest_s = median(digests);

    // 3a. Idle: the directory watcher as `serve` runs it (rescan every 30 s: the window below
    // may hold none, so the rescan's own cost is reported from the digest time).
    let metrics = Arc::new(Metrics::new());
    let (source, first) = DirSource::open(dir.path(), "dc1", metrics.clone()).unwrap();
    let (tx, _rx) = tokio::sync::watch::channel(Some(first));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(source.watch(
        tx,
        Duration::from_millis(200),
        Duration::from_secs(30),
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let dir_idle = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(());

    // 2. Consul: the same catalog in the double.
    let consul = ConsulDouble::start("dc1");
    consul.set_ca_roots(json!({"ActiveRootID": "r", "TrustDomain": "bench.consul",
        "Roots": [{"ID": "r", "RootCert": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "Active": true}]}));
    for s in 0..args.services {
        for i in 0..args.instances {
            let name = format!("svc-{s:04}");
            consul.register(json!({
                "Node": format!("node-{s}-{i}"), "Address": format!("10.{}.{}.{}", s / 250, s % 250, i + 1),
                "Service": {"ID": format!("{name}-{i}"), "Service": name, "Port": 8080, "Meta": {"version": "v1"}},
                "Checks": [{"CheckID": format!("{name}-{i}-alive"), "ServiceID": format!("{name}-{i}"), "Status": "passing"}]
            }));
        }
    }
    let metrics = Arc::new(Metrics::new());
    let mut config = ConsulConfig::new(consul.url(), "dc1");
    config.wait = Duration::from_secs(60);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let (_handle, mut snapshots) = from_consul::start(config, metrics, async {
        let _ = stop_rx.await;
    })
    .unwrap();
    snapshots.wait_for(|s| s.is_some()).await.unwrap();
    let first_sync_s = started.elapsed().as_secs_f64();
    // Let every watch settle into a blocking query.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let consul_idle = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    consul.clear_requests();
    let before = snapshots.borrow_and_update().as_ref().unwrap().generation;
    let started = Instant::now();
    consul.set_check("dc1", "node-7-3", "svc-0007-3-alive", "critical");
    snapshots
        .wait_for(|s| s.as_ref().is_some_and(|s| s.generation > before))
        .await
        .unwrap();
    let change_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = consul.requests();
    let other_health = requests
        .iter()
        .filter(|r| {
            r.path.starts_with("/v1/health/service/") && r.path != "/v1/health/service/svc-0007"
        })
        .count();
    let own_health = requests
        .iter()
        .filter(|r| r.path == "/v1/health/service/svc-0007")
        .count();
    let _ = stop_tx.send(());

    // 4. Translation: 10,000 services x 10 instances (100,000 endpoints), all exported, one
    // ingress group; then the same after one instance's health changed.
    let translated = translation(10_000, 10);

    let commit = integration::git_commit();
    println!(
        "sources: {} services x {} instances, {} config entries, commit {commit}",
        args.services, args.instances, args.entries
    );
    println!(
        "  directory: {files} files, {} instances, {} entries",
        counts.instances,
        counts.entries.values().sum::<usize>()
    );
    println!(
        "    full read into a snapshot (median of {}):   {:>8.1} ms",
        args.runs,
        read_s * 1e3
    );
    println!(
        "    rescan digest, nothing changed:             {:>8.1} ms",
        digest_s * 1e3
    );
    println!(
        "    idle CPU, file watcher:                     {:>8.2} % of a core",
        dir_idle * 100.0
    );
    println!(
        "    + one rescan per 30 s (the default):        {:>8.2} % of a core",
        digest_s / 30.0 * 100.0
    );
    translated.print();
    println!("  consul (test double):");
    println!(
        "    first sync to a snapshot:                   {:>8.1} ms",
        first_sync_s * 1e3
    );
    println!(
        "    one health change to a new snapshot:        {:>8.1} ms",
        change_s * 1e3
    );
    println!(
        "    health requests seen for it: {own_health} for that service, {other_health} for other services"
    );
    println!(
        "    idle CPU, blocking queries:                 {:>8.2} % of a core",
        consul_idle * 100.0
    );
    let out = json!({
        "commit": commit,
        "workload": {"services": args.services, "instances": args.instances, "entries": args.entries, "files": files},
        "directory": {"read_ms": read_s * 1e3, "rescan_digest_ms": digest_s * 1e3, "idle_cpu_percent": dir_idle * 100.0, "rescan_cpu_percent_at_30s": digest_s / 30.0 * 100.0},
        "translation": translated.json(),
        "consul": {"first_sync_ms": first_sync_s * 1e3, "health_change_ms": change_s * 1e3,
                   "health_requests_changed_service": own_health, "health_requests_other_services": other_health,
                   "idle_cpu_percent": consul_idle * 100.0},
    });
    let _ = std::fs::create_dir_all(out_dir);
    std::fs::write(
        out_dir.join("translation.json"),
        serde_json::to_string_pretty(&out["translation"]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        out_dir.join("sources.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
}

/// Figures of the translation benchmark.
struct Translated {
    services: usize,
    resources: usize,
    /// The encoded size of the ingress listener (every service's chains).
    listener_bytes: usize,
    /// First translation (nothing cached) and its publish.
    full_s: f64,
    /// One instance's health changed, the other services' instance lists kept by pointer
    /// (as the Consul source delivers a change); translation and publish.
    change_s: f64,
    change_services: usize,
    change_touched: usize,
    /// The same change in a snapshot built afresh, as the directory source delivers every
    /// change: the source's sharing of unchanged lists (compared by value), then translation
    /// and publish.
    share_s: f64,
    reread_s: f64,
    reread_services: usize,
    reread_touched: usize,
    /// One service's intention changed (by pointer otherwise): its chain and the listener.
    intention_s: f64,
    intention_services: usize,
    intention_touched: usize,
}

impl Translated {
    fn print(&self) {
        println!(
            "  translation: {} services x 10 instances, all exported, one ingress group ({} resources; the listener {:.1} MB)",
            self.services,
            self.resources,
            self.listener_bytes as f64 / 1e6
        );
        println!(
            "    full translation + encoding into the store:  {:>8.1} ms",
            self.full_s * 1e3
        );
        println!(
            "    one health change (Consul: others by pointer): {:>8.2} ms, {} service(s) translated, {} resource(s) touched",
            self.change_s * 1e3,
            self.change_services,
            self.change_touched
        );
        println!(
            "    same change, directory re-read: sharing unchanged lists {:.1} ms (in the source), then {:.2} ms, {} service(s) translated, {} resource(s) touched",
            self.share_s * 1e3,
            self.reread_s * 1e3,
            self.reread_services,
            self.reread_touched
        );
        println!(
            "    one intention changed (the listener re-encoded): {:>8.2} ms, {} service(s) translated, {} resource(s) touched",
            self.intention_s * 1e3,
            self.intention_services,
            self.intention_touched
        );
    }

    fn json(&self) -> serde_json::Value {
        json!({"services": self.services, "endpoints": self.services * 10, "resources": self.resources,
            "listener_bytes": self.listener_bytes,
            "full_ms": self.full_s * 1e3,
            "one_change_ms": self.change_s * 1e3, "one_change_services_translated": self.change_services,
            "one_change_resources_touched": self.change_touched,
            "reread_share_ms": self.share_s * 1e3, "reread_change_ms": self.reread_s * 1e3, "reread_services_translated": self.reread_services,
            "reread_resources_touched": self.reread_touched,
            "intention_change_ms": self.intention_s * 1e3, "intention_services_translated": self.intention_services,
            "intention_resources_touched": self.intention_touched})
    }
}

/// Times translating (and encoding into a store) one ingress group of `services` exported
/// services, then the change of one instance's health, delivered both ways a source does.
fn translation(services: usize, instances: usize) -> Translated {
    use meshgate::model::{
        Check, Health, Instance, Node, ServiceKind, Snapshot, SnapshotBuilder, Weights,
    };
    use meshgate::translate::Settings;
    use meshgate::translate::ingress::IngressCache;
    use meshgate::xds::{Debounce, GroupKey, ResourceType, Role, Store};
    let build = |critical: bool| {
        let mut files: Vec<(String, String)> = vec![(
            "exports.json".into(),
            serde_json::to_string(&json!({"Kind": "exported-services", "Name": "default",
                "Services": (0..services).map(|s| json!({"Name": format!("svc-{s:05}"), "Consumers": [{"Peer": "dc2"}]})).collect::<Vec<_>>()}))
            .unwrap(),
        )];
        files.push((
            "gw.yaml".into(),
            "Node: gw\nAddress: 10.0.0.1\nService: {Kind: mesh-gateway, Service: mesh-gateway, Port: 8443, Meta: {meshgate-role: ingress}}\n".into(),
        ));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let loaded = meshgate::source::dir::load_files(&refs, "dc1", 1);
        assert!(!loaded.has_errors(), "{:?}", loaded.problems.first());
        let mut b = SnapshotBuilder::new("dc1");
        *b.entries() = loaded.snapshot.entries.clone();
        for gw in loaded.snapshot.instances("dc1", "mesh-gateway") {
            b.add_instance(gw.clone());
        }
        for s in 0..services {
            for i in 0..instances {
                let node = std::sync::Arc::new(Node {
                    name: format!("n{s}-{i}"),
                    address: format!("10.{}.{}.{}", s / 250 % 250, s % 250, i + 1),
                    datacenter: "dc1".into(),
                    ..Default::default()
                });
                let status = if critical && s == 7 && i == 3 {
                    Health::Critical
                } else {
                    Health::Passing
                };
                b.add_instance(Instance {
                    node,
                    id: format!("svc-{s:05}-{i}"),
                    service: format!("svc-{s:05}"),
                    kind: ServiceKind::Typical,
                    address: String::new(),
                    port: 8080,
                    tagged_addresses: Default::default(),
                    tags: Vec::new(),
                    meta: Default::default(),
                    weights: Weights::default(),
                    checks: vec![Check {
                        id: "alive".into(),
                        name: String::new(),
                        status,
                        service_id: format!("svc-{s:05}-{i}"),
                    }],
                    proxy: None,
                });
            }
        }
        b.build(1)
    };
    let settings = Settings {
        trust_domain: "bench.consul".into(),
        default_policy: meshgate::model::intentions::DefaultPolicy::Deny,
    };
    let group = GroupKey::new(Role::Ingress, "dc1", None);
    let before = Arc::new(build(false));
    // The change as the directory source delivers it: a snapshot read afresh, whose unchanged
    // instance lists the source replaces with the previous snapshot's (compared by value).
    let mut reread = build(true);
    let started = Instant::now();
    let shared = reread.share_unchanged(&before);
    let share_s = started.elapsed().as_secs_f64();
    assert_eq!(
        shared, services,
        "every list but the changed one, plus the gateway's"
    );
    let reread = Arc::new(reread);
    // The change as the Consul source delivers it: every other list by pointer.
    let by_pointer = {
        let mut datacenters = before.datacenters.clone();
        let dc1 = datacenters.get_mut("dc1").unwrap();
        let changed = reread.datacenter("dc1").unwrap().services["svc-00007"].clone();
        dc1.services.insert("svc-00007".into(), changed);
        Arc::new(Snapshot {
            generation: 2,
            local_datacenter: before.local_datacenter.clone(),
            datacenters,
            entries: before.entries.clone(),
            ca_roots: None,
        })
    };
    // One intention of one service changed: its filter chain changes, so the listener (one
    // over every chain) is encoded again.
    let intention = {
        let file = "Kind = \"service-intentions\"\nName = \"svc-00007\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n";
        let loaded = meshgate::source::dir::load_files(&[("i.hcl", file)], "dc1", 2);
        assert!(!loaded.has_errors(), "{:?}", loaded.problems.first());
        let mut entries = before.entries.clone();
        entries
            .service_intentions
            .extend(loaded.snapshot.entries.service_intentions.clone());
        Arc::new(Snapshot {
            generation: 2,
            local_datacenter: before.local_datacenter.clone(),
            datacenters: before.datacenters.clone(),
            entries,
            ca_roots: None,
        })
    };
    let run = |next: &Arc<Snapshot>| {
        let store = Store::new(Debounce::NONE, Arc::new(Metrics::new()));
        let mut cache = IngressCache::default();
        let started = Instant::now();
        let (update, first) = cache.translate(&before, "dc1", &settings);
        store.publish(&group, update).unwrap();
        let full_s = started.elapsed().as_secs_f64();
        assert!(first.full);
        let state = store.current(&group).unwrap();
        let resources: usize = ResourceType::ADD_ORDER
            .iter()
            .map(|t| state.set(*t).len())
            .sum();
        let listener_bytes = state
            .set(ResourceType::Listener)
            .resources
            .values()
            .map(|e| e.delta.len())
            .sum::<usize>();
        let started = Instant::now();
        let (update, stats) = cache.translate(next, "dc1", &settings);
        let translated = started.elapsed();
        store.publish(&group, update).unwrap();
        let total = started.elapsed();
        println!(
            "    (one change: translation {:.2} ms, store publish {:.2} ms)",
            translated.as_secs_f64() * 1e3,
            (total - translated).as_secs_f64() * 1e3
        );
        (
            full_s,
            total.as_secs_f64(),
            stats,
            (resources, listener_bytes),
        )
    };
    let (full_s, change_s, change, (resources, listener_bytes)) = run(&by_pointer);
    let (_, reread_s, reread_stats, _) = run(&reread);
    let (_, intention_s, intention_stats, _) = run(&intention);
    Translated {
        services,
        resources,
        listener_bytes,
        full_s,
        change_s,
        change_services: change.services_translated,
        change_touched: change.resources_touched,
        share_s,
        reread_s,
        reread_services: reread_stats.services_translated,
        reread_touched: reread_stats.resources_touched,
        intention_s,
        intention_services: intention_stats.services_translated,
        intention_touched: intention_stats.resources_touched,
    }
}
