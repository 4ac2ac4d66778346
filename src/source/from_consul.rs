//! Consul's HTTP API as a source of model snapshots: the watcher ([`super::consul`]) keeps a
//! raw view current with blocking queries; this module turns each view into a snapshot.
//!
//! Work is proportional to what changed: a service whose health answer is the same `Arc` as
//! in the last view keeps its converted instance list (by pointer), and so do config kinds.
//! A view with an error (an entry meshgate cannot read, a redirect loop) is refused as a
//! whole and the last good snapshot keeps serving, as in directory mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value as Json;
use tokio::sync::watch;
use tracing::info;

use super::consul::{ConsulSource, ConsulView, ViewReceiver};
use super::dir::{EntryError, decode_entry};
use super::document;
use super::services::{ServiceEntry, from_service_entry};
use super::{LoadStatus, Problem, validate};
use crate::metrics::Metrics;
use crate::model::entries::Origin;
use crate::model::{CaRoots, Instance, Snapshot, SnapshotBuilder};

pub use super::consul::ConsulConfig;

/// The running Consul source, for the admin API.
#[derive(Clone)]
pub struct ConsulHandle {
    source: ConsulSource,
    status: Arc<Mutex<LoadStatus>>,
}

impl ConsulHandle {
    pub fn status_json(&self) -> Json {
        let consul = self.source.status();
        let status = self.status.lock().clone();
        serde_json::json!({
            "source": "consul",
            "stale": consul.stale,
            "synced": consul.synced,
            "generation": status.generation,
            "last_accepted": status.last_accepted,
            "last_refused": status.last_refused,
            "errors": status.errors,
            "warnings": status.warnings,
            "refused_loads": status.refused_loads,
            "consul": consul,
        })
    }
}

/// Starts the watches and the conversion. The receiver holds `None` until Consul has
/// answered every watch once, then each accepted snapshot.
pub fn start(
    config: ConsulConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(ConsulHandle, watch::Receiver<Option<Arc<Snapshot>>>)> {
    let (source, views) = ConsulSource::start(config, metrics.consul.clone(), shutdown)?;
    let status = Arc::new(Mutex::new(LoadStatus::default()));
    let (tx, rx) = watch::channel(None);
    tokio::spawn(convert(views, tx, status.clone(), metrics));
    Ok((ConsulHandle { source, status }, rx))
}

async fn convert(
    mut views: ViewReceiver,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    status: Arc<Mutex<LoadStatus>>,
    metrics: Arc<Metrics>,
) {
    let mut converter = Converter::default();
    loop {
        let view = views.borrow_and_update().clone();
        if let Some(view) = view {
            let started = Instant::now();
            let result = converter.snapshot(&view);
            let m = &metrics.source;
            m.snapshot_build.observe(started.elapsed().as_secs_f64());
            let (snapshot, problems) = match result {
                Ok((snapshot, warnings)) => (Some(snapshot), warnings),
                Err(problems) => (None, problems),
            };
            let generation = snapshot.as_ref().map_or(0, |s| s.generation);
            status.lock().record(m, generation, &problems);
            if let Some(snapshot) = snapshot {
                let counts = snapshot.counts();
                info!(
                    generation,
                    consul_generation = view.generation,
                    services = counts.services,
                    instances = counts.instances,
                    "snapshot from Consul"
                );
                tx.send_replace(Some(Arc::new(snapshot)));
            }
        }
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// Converts views, keeping what did not change.
#[derive(Default)]
struct Converter {
    generation: u64,
    services: HashMap<(String, String), (Arc<Json>, Converted)>,
    entries: HashMap<&'static str, (Arc<Json>, Arc<Vec<Decoded>>)>,
}

type Decoded = Result<crate::model::ConfigEntry, Problem>;
/// One service's instances, converted from the `Arc` of its last health answer.
type Converted = Result<Arc<[Instance]>, Problem>;

fn consul_file() -> Arc<str> {
    Arc::from("consul")
}

impl Converter {
    fn snapshot(&mut self, view: &ConsulView) -> Result<(Snapshot, Vec<Problem>), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut builder = SnapshotBuilder::new(&view.datacenter);
        for dc in &view.datacenters {
            builder.datacenter(dc);
        }
        // Services: converted again only when their answer changed.
        self.services
            .retain(|key, _| view.services.contains_key(key));
        for ((dc, service), raw) in &view.services {
            let key = (dc.clone(), service.clone());
            let fresh = match self.services.get(&key) {
                Some((old, _)) => !Arc::ptr_eq(old, raw),
                None => true,
            };
            if fresh {
                let converted = instances(raw, dc, service);
                self.services.insert(key.clone(), (raw.clone(), converted));
            }
            match &self.services[&key].1 {
                Ok(list) if !list.is_empty() => builder.add_service(dc, service, list.clone()),
                Ok(_) => {}
                Err(p) => problems.push(p.clone()),
            }
        }
        // Config entries, per kind.
        for (kind, raw) in &view.config {
            let fresh = match self.entries.get(kind) {
                Some((old, _)) => !Arc::ptr_eq(old, raw),
                None => true,
            };
            if fresh {
                self.entries
                    .insert(kind, (raw.clone(), Arc::new(entries(kind, raw))));
            }
            for decoded in self.entries[kind].1.iter() {
                match decoded {
                    Ok(entry) => {
                        let origin = Origin {
                            file: consul_file(),
                            line: 0,
                        };
                        builder.entries().insert(entry.clone(), origin);
                    }
                    Err(p) => problems.push(p.clone()),
                }
            }
        }
        match view.ca_roots.as_deref().map(ca_roots) {
            Some(Ok(roots)) => builder.set_ca_roots(roots.map(Arc::new)),
            Some(Err(p)) => problems.push(p),
            None => {}
        }
        let snapshot = builder.build(self.generation + 1);
        problems.extend(validate::check(&snapshot));
        if problems.iter().any(|p| p.is_error()) {
            problems.sort();
            return Err(problems);
        }
        self.generation += 1;
        Ok((snapshot, problems))
    }
}

fn instances(raw: &Json, dc: &str, service: &str) -> Result<Arc<[Instance]>, Problem> {
    let endpoint = if dc.is_empty() {
        format!("/v1/health/service/{service}")
    } else {
        format!("/v1/health/service/{service}?dc={dc}")
    };
    let entries = Vec::<ServiceEntry>::deserialize(raw)
        .map_err(|e| Problem::error(&consul_file(), 0, format!("{endpoint}: {e}")))?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in &entries {
        out.push(
            from_service_entry(entry, dc)
                .map_err(|e| Problem::error(&consul_file(), 0, format!("{endpoint}: {e}")))?,
        );
    }
    out.sort_by(|a, b| (&a.node.name, &a.id).cmp(&(&b.node.name, &b.id)));
    Ok(out.into())
}

fn entries(kind: &str, raw: &Json) -> Vec<Decoded> {
    let Some(items) = raw.as_array() else {
        return vec![Err(Problem::error(
            &consul_file(),
            0,
            format!("/v1/config/{kind}: expected a JSON array"),
        ))];
    };
    items
        .iter()
        .map(|item| {
            let name = item.get("Name").and_then(Json::as_str).unwrap_or("?");
            let value = document::Value::from(item);
            decode_entry(kind, &value).map_err(|e| {
                let message = match e {
                    EntryError::UnknownKind(m) => m,
                    EntryError::Decode(d) => d.message,
                };
                Problem::error(
                    &consul_file(),
                    0,
                    format!("/v1/config/{kind}: {kind} {name:?}: {message}"),
                )
            })
        })
        .collect()
}

/// `/v1/connect/ca/roots`; `None` when Consul's CA is not set up (no roots).
fn ca_roots(raw: &Json) -> Result<Option<CaRoots>, Problem> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Roots {
        #[serde(default, rename = "ActiveRootID")]
        active_root_id: String,
        #[serde(default)]
        trust_domain: String,
        #[serde(default)]
        roots: Option<Vec<Root>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Root {
        #[serde(default, rename = "ID")]
        id: String,
        #[serde(default)]
        root_cert: String,
        #[serde(default)]
        intermediate_certs: Option<Vec<String>>,
        #[serde(default)]
        active: bool,
    }
    let roots = Roots::deserialize(raw)
        .map_err(|e| Problem::error(&consul_file(), 0, format!("/v1/connect/ca/roots: {e}")))?;
    let mut list = roots.roots.unwrap_or_default();
    if roots.trust_domain.is_empty() || list.is_empty() {
        return Ok(None);
    }
    // The active root first.
    list.sort_by_key(|r| (!r.active, r.id != roots.active_root_id));
    let roots_pem = list
        .iter()
        .flat_map(|r| {
            std::iter::once(r.root_cert.clone())
                .chain(r.intermediate_certs.clone().unwrap_or_default())
        })
        .collect();
    Ok(Some(CaRoots {
        trust_domain: roots.trust_domain,
        active_root_id: roots.active_root_id,
        roots_pem,
    }))
}
