//! The bench workload as a config directory for the real `meshgate serve`: a change is a file
//! edit, measured from the write to every stream's ACK (the whole path: watcher, read,
//! snapshot, translation, store, streams).
//!
//! S services of E instances (one JSON file each), an ingress gateway, and an
//! exported-services entry naming every service. Resource names in the ingress group follow
//! the SNI (`<service>.default.<dc>.internal.<trust domain>`), so what a change touches is
//! given as name prefixes (`svc-00017.*`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meshgate::xds::ResourceType;
use serde_json::json;

use crate::bench::{Applied, Op, Touched, service_name};

pub struct DirWorkload {
    pub root: PathBuf,
    endpoints: usize,
    present: BTreeSet<usize>,
    endpoint_salt: Vec<u64>,
    cluster_salt: Vec<u64>,
}

impl DirWorkload {
    /// Writes the workload under `root` (`services/`, `config_entries/`).
    pub fn create(root: &Path, services: usize, endpoints: usize) -> std::io::Result<DirWorkload> {
        std::fs::create_dir_all(root.join("services"))?;
        std::fs::create_dir_all(root.join("config_entries"))?;
        std::fs::write(
            root.join("services").join("gateway.yaml"),
            "Node: gateway\nAddress: 127.0.0.1\nService: {Kind: mesh-gateway, Service: mesh-gateway, Port: 8443, Meta: {meshgate-role: ingress}}\n",
        )?;
        let w = DirWorkload {
            root: root.to_owned(),
            endpoints,
            present: (0..services).collect(),
            endpoint_salt: vec![0; services],
            cluster_salt: vec![0; services],
        };
        for i in 0..services {
            w.write_service(i)?;
        }
        w.write_exports()?;
        Ok(w)
    }

    fn service_file(&self, i: usize) -> PathBuf {
        self.root
            .join("services")
            .join(format!("{}.json", service_name(i)))
    }

    fn write_service(&self, i: usize) -> std::io::Result<()> {
        let name = service_name(i);
        let salt = self.endpoint_salt[i];
        let items: Vec<serde_json::Value> = (0..self.endpoints)
            .map(|e| {
                // A change moves the first instance to another port.
                let port = if e == 0 { 8080 + salt % 1000 } else { 8080 };
                json!({
                    "name": name,
                    "id": format!("{name}-{e}"),
                    "address": format!("10.{}.{}.{}", i / 250 % 250, i % 250, e + 1),
                    "port": port,
                    "checks": [{"id": format!("{name}-{e}-alive"), "ttl": "30s", "status": "passing"}],
                })
            })
            .collect();
        write_atomically(
            &self.service_file(i),
            &serde_json::to_string_pretty(&json!({ "services": items }))?,
        )
    }

    fn write_exports(&self) -> std::io::Result<()> {
        let services: Vec<serde_json::Value> = self
            .present
            .iter()
            .map(|&i| json!({"Name": service_name(i), "Consumers": [{"Peer": "dc2"}]}))
            .collect();
        write_atomically(
            &self.root.join("config_entries").join("exports.json"),
            &serde_json::to_string_pretty(
                &json!({"Kind": "exported-services", "Name": "default", "Services": services}),
            )?,
        )
    }

    fn write_resolver(&self, i: usize) -> std::io::Result<()> {
        let name = service_name(i);
        write_atomically(
            &self
                .root
                .join("config_entries")
                .join(format!("{name}-resolver.hcl")),
            &format!(
                "Kind = \"service-resolver\"\nName = \"{name}\"\nConnectTimeout = \"{}s\"\n",
                2 + self.cluster_salt[i] % 30
            ),
        )
    }

    pub fn apply(&mut self, op: Op) -> Result<Applied, String> {
        let touched = |ty: ResourceType, i: usize| Touched {
            type_url: ty.type_url().into(),
            name: format!("{}.*", service_name(i)),
        };
        let any_listener = Touched {
            type_url: ResourceType::Listener.type_url().into(),
            name: "*".into(),
        };
        op.applies_to(&self.present)?;
        let mut applied = Applied::default();
        let io = |e: std::io::Error| e.to_string();
        match op {
            Op::Endpoint { service: i } => {
                self.endpoint_salt[i] += 1;
                self.write_service(i).map_err(io)?;
                applied.updated.push(touched(ResourceType::Endpoint, i));
            }
            Op::Cluster { service: i } => {
                self.cluster_salt[i] += 1;
                self.write_resolver(i).map_err(io)?;
                applied.updated.push(touched(ResourceType::Cluster, i));
                applied.updated.push(touched(ResourceType::Endpoint, i));
            }
            Op::Add { service: i } => {
                if i >= self.endpoint_salt.len() {
                    self.endpoint_salt.resize(i + 1, 0);
                    self.cluster_salt.resize(i + 1, 0);
                }
                self.present.insert(i);
                self.write_service(i).map_err(io)?;
                self.write_exports().map_err(io)?;
                applied.updated.push(touched(ResourceType::Cluster, i));
                applied.updated.push(touched(ResourceType::Endpoint, i));
                applied.updated.push(any_listener);
            }
            Op::Remove { service: i } => {
                self.present.remove(&i);
                self.write_exports().map_err(io)?;
                std::fs::remove_file(self.service_file(i)).map_err(io)?;
                applied.updated.push(any_listener);
                applied.removed.push(touched(ResourceType::Cluster, i));
            }
        }
        Ok(applied)
    }
}

/// Writes through a temporary file and a rename, as editors and config tools do: the
/// watcher never reads a half-written file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
