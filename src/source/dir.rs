//! The directory source: every `.hcl`, `.json`, `.yaml` and `.yml` file below a directory
//! (hidden files and folders such as `.git` skipped), read into one snapshot.
//!
//! A document is a config entry (it has `Kind`), a catalog registration (`Node` and
//! `Service`) or an agent service definition (`service` / `services`). Agent definitions
//! belong to the server's datacenter, on a node named [`AGENT_NODE`] at 127.0.0.1 (a service
//! without an `Address` is dialled there); catalog registrations belong to their own
//! `Datacenter`; config entries apply mesh-wide.

mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use watch::{DirSource, DirStatus};

use super::document::{self, Document, Format, Kind, Value};
use super::services::{self, AgentDefinition, CatalogRegistration};
use super::{Problem, validate};
use crate::model::entries::{
    ConfigEntry, EntryKind, ExportedServices, Mesh, Origin, ProxyDefaults, ServiceDefaults,
    ServiceIntentions, ServiceResolver,
};
use crate::model::spanned::Spanned;
use crate::model::{Node, Snapshot, SnapshotBuilder};

/// The node agent service definitions are registered on.
pub const AGENT_NODE: &str = "local-agent";
/// Its address: where a service without an `Address` is dialled.
pub const AGENT_ADDRESS: &str = "127.0.0.1";

/// What a directory holds: the snapshot it would make, and every problem found.
pub struct Loaded {
    pub snapshot: Snapshot,
    pub problems: Vec<Problem>,
    pub files: usize,
    pub documents: usize,
    /// A digest of every file's path and content: equal digests, equal snapshots.
    pub digest: u64,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Lists the files to read, sorted, skipping hidden entries.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ty = entry.file_type()?;
            if ty.is_dir() || (ty.is_symlink() && path.is_dir()) {
                stack.push(path);
            } else if Format::from_path(&path).is_some() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A digest of the files [`load`] would read (paths and contents), computed without parsing:
/// what a rescan compares before reading anything further.
pub fn digest(dir: &Path) -> std::io::Result<u64> {
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for path in list_files(dir)? {
        let shown = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        digest.update(shown.as_bytes());
        digest.update(&[0]);
        digest.update(&std::fs::read(&path)?);
        digest.update(&[0]);
    }
    Ok(digest.digest())
}

/// Files parsed by earlier reads of a directory, by path and content hash: a file whose
/// content did not change is not parsed again (an edit of one of 2,000 files parses one).
#[derive(Default)]
pub struct ParseCache {
    files: std::collections::HashMap<Arc<str>, (u64, Arc<Parsed>)>,
}

type Parsed = Result<Vec<Document>, document::SyntaxError>;

/// Reads a directory into a snapshot numbered `generation`. Never fails: a directory that
/// cannot be read is a problem like any other.
pub fn load(dir: &Path, local_datacenter: &str, generation: u64) -> Loaded {
    load_cached(
        dir,
        local_datacenter,
        generation,
        &mut ParseCache::default(),
    )
}

/// [`load`], parsing only the files whose content is not in `cache`; the cache then holds
/// the files of this read.
pub fn load_cached(
    dir: &Path,
    local_datacenter: &str,
    generation: u64,
    cache: &mut ParseCache,
) -> Loaded {
    let mut loader = Loader::new(local_datacenter);
    let mut kept = std::collections::HashMap::with_capacity(cache.files.len());
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    let files = match list_files(dir) {
        Ok(files) => files,
        Err(e) => {
            let name: Arc<str> = dir.display().to_string().into();
            loader.problems.push(Problem::error(
                &name,
                0,
                format!("cannot read directory: {e}"),
            ));
            Vec::new()
        }
    };
    for path in &files {
        let shown: Arc<str> = path
            .strip_prefix(dir)
            .unwrap_or(path)
            .display()
            .to_string()
            .into();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                digest.update(shown.as_bytes());
                digest.update(&[0]);
                digest.update(text.as_bytes());
                digest.update(&[0]);
                let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
                let parsed = match cache.files.remove(&shown) {
                    Some((h, parsed)) if h == hash => parsed,
                    _ => Arc::new(document::parse(
                        &text,
                        Format::from_path(path).expect("listed by extension"),
                    )),
                };
                loader.parsed(&shown, &parsed);
                kept.insert(shown, (hash, parsed));
            }
            Err(e) => {
                loader
                    .problems
                    .push(Problem::error(&shown, 0, format!("cannot read file: {e}")))
            }
        }
    }
    cache.files = kept;
    let documents = loader.documents;
    let (snapshot, problems) = loader.finish(generation);
    Loaded {
        snapshot,
        problems,
        files: files.len(),
        documents,
        digest: digest.digest(),
    }
}

/// Reads in-memory files (name, text) the same way: for tests and the embedded example.
pub fn load_files(files: &[(&str, &str)], local_datacenter: &str, generation: u64) -> Loaded {
    let mut loader = Loader::new(local_datacenter);
    for (name, text) in files {
        let shown: Arc<str> = (*name).into();
        match Format::from_path(Path::new(name)) {
            Some(format) => loader.file(&shown, text, format),
            None => loader.problems.push(Problem::error(
                &shown,
                0,
                "not a .hcl, .json, .yaml or .yml file",
            )),
        }
    }
    let documents = loader.documents;
    let (snapshot, problems) = loader.finish(generation);
    Loaded {
        snapshot,
        problems,
        files: files.len(),
        documents,
        digest: 0,
    }
}

struct Loader {
    local_datacenter: String,
    builder: SnapshotBuilder,
    problems: Vec<Problem>,
    documents: usize,
    /// (kind, name) → first definition, to name both places of a duplicate.
    entry_origins: BTreeMap<(EntryKind, String), Origin>,
    /// (datacenter, node, service id) → first definition.
    instance_origins: BTreeMap<(String, String, String), Origin>,
    agent_node: Arc<Node>,
}

impl Loader {
    fn new(local_datacenter: &str) -> Self {
        Loader {
            local_datacenter: local_datacenter.to_owned(),
            builder: SnapshotBuilder::new(local_datacenter),
            problems: Vec::new(),
            documents: 0,
            entry_origins: BTreeMap::new(),
            instance_origins: BTreeMap::new(),
            agent_node: Arc::new(Node {
                name: AGENT_NODE.to_owned(),
                id: String::new(),
                address: AGENT_ADDRESS.to_owned(),
                datacenter: local_datacenter.to_owned(),
                tagged_addresses: BTreeMap::new(),
                meta: BTreeMap::new(),
            }),
        }
    }

    fn file(&mut self, file: &Arc<str>, text: &str, format: Format) {
        self.parsed(file, &document::parse(text, format));
    }

    fn parsed(&mut self, file: &Arc<str>, parsed: &Parsed) {
        match parsed {
            Ok(docs) => {
                for doc in docs {
                    self.document(file, doc);
                }
            }
            Err(e) => self
                .problems
                .push(Problem::error(file, e.line, e.message.clone())),
        }
    }

    fn document(&mut self, file: &Arc<str>, doc: &Document) {
        match &doc.value.kind {
            // A JSON array or YAML sequence of documents.
            Kind::Array(items) => {
                for item in items {
                    self.value(file, item);
                }
            }
            Kind::Null => {} // an empty YAML document
            _ => self.value(file, &doc.value),
        }
    }

    fn value(&mut self, file: &Arc<str>, value: &Value) {
        self.documents += 1;
        let Kind::Object(fields) = &value.kind else {
            self.problems.push(Problem::error(
                file,
                value.line,
                "expected an object: a config entry, a catalog registration or a service definition",
            ));
            return;
        };
        let has = |key: &str| fields.iter().any(|f| normalize(&f.key) == key);
        if has("kind") {
            self.entry(file, value);
        } else if has("node") {
            self.registration(file, value);
        } else if has("service") || has("services") {
            self.agent_definition(file, value);
        } else {
            self.problems.push(Problem::error(
                file,
                value.line,
                "not a config entry (no Kind), a catalog registration (Node and Service) or an agent service definition (service or services)",
            ));
        }
    }

    fn entry(&mut self, file: &Arc<str>, value: &Value) {
        let origin = Origin {
            file: file.clone(),
            line: value.line,
        };
        let (kind, kind_line) = match string_field(value, "kind") {
            Some((k, line)) => (k, line),
            None => {
                self.problems
                    .push(Problem::error(file, value.line, "Kind must be a string"));
                return;
            }
        };
        let name = string_field(value, "name").map(|(n, _)| n);
        let label = match &name {
            Some(n) => format!("{kind} {n:?}"),
            None => kind.to_owned(),
        };
        let decoded = match decode_entry(kind, value) {
            Ok(entry) => entry,
            Err(EntryError::UnknownKind(message)) => {
                self.problems.push(Problem::error(file, kind_line, message));
                return;
            }
            Err(EntryError::Decode(e)) => {
                self.problems.push(Problem::error(
                    file,
                    e.line,
                    format!("{label}: {}", e.message),
                ));
                return;
            }
        };
        let key = (decoded.kind(), decoded.name().to_owned());
        if let Some(first) = self.entry_origins.get(&key) {
            self.problems.push(Problem::error(
                file,
                value.line,
                format!(
                    "{} {:?} is defined twice: here and at {first}",
                    key.0, key.1
                ),
            ));
            return;
        }
        self.entry_origins.insert(key, origin.clone());
        self.builder.entries().insert(decoded, origin);
    }

    /// Decodes a document, or reports why not (prefixed with what it was meant to be).
    fn decode<T: serde::de::DeserializeOwned>(
        &mut self,
        file: &Arc<str>,
        value: &Value,
        what: &str,
    ) -> Option<T> {
        match document::decode(value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problems.push(Problem::error(
                    file,
                    e.line,
                    format!("{what}: {}", e.message),
                ));
                None
            }
        }
    }

    fn registration(&mut self, file: &Arc<str>, value: &Value) {
        let Some(reg) = self.decode::<CatalogRegistration>(file, value, "catalog registration")
        else {
            return;
        };
        let datacenter = if reg.datacenter.is_empty() {
            self.local_datacenter.clone()
        } else {
            reg.datacenter.clone()
        };
        if reg.address.is_empty() {
            self.problems.push(Problem::error(
                file,
                value.line,
                format!("catalog registration of node {:?} has no Address", reg.node),
            ));
            return;
        }
        let node = Arc::new(Node {
            name: reg.node.clone(),
            id: reg.id.clone(),
            address: reg.address.clone(),
            datacenter: datacenter.clone(),
            tagged_addresses: reg.tagged_addresses.clone(),
            meta: reg.node_meta.clone(),
        });
        let checks: Vec<_> = reg.check.iter().chain(&reg.checks).collect();
        let (node_checks, service_checks) = match services::split_checks(&checks, &reg.node) {
            Ok(split) => split,
            Err(e) => {
                self.problems
                    .push(Problem::error(file, line_or(e.line, value.line), e.message));
                return;
            }
        };
        let Some(service) = &reg.service else {
            self.problems.push(Problem::error(
                file,
                value.line,
                format!(
                    "catalog registration of node {:?} has no Service (meshgate reads services, not bare nodes)",
                    reg.node
                ),
            ));
            return;
        };
        self.add_instances(file, service, &node, &node_checks, &service_checks);
    }

    fn agent_definition(&mut self, file: &Arc<str>, value: &Value) {
        let Some(def) = self.decode::<AgentDefinition>(file, value, "service definition") else {
            return;
        };
        let node = self.agent_node.clone();
        for service in def.service.iter().chain(&def.services) {
            self.add_instances(file, service, &node, &[], &[]);
        }
    }

    fn add_instances(
        &mut self,
        file: &Arc<str>,
        service: &Spanned<services::ServiceDef>,
        node: &Arc<Node>,
        node_checks: &[crate::model::Check],
        extra_checks: &[services::CheckDef],
    ) {
        let instances = match services::instances(
            &service.value,
            service.line,
            node,
            node_checks,
            extra_checks,
        ) {
            Ok(i) => i,
            Err(e) => {
                let name = service
                    .value
                    .service_name()
                    .map(|n| format!("service {:?}: ", n.value))
                    .unwrap_or_default();
                self.problems.push(Problem::error(
                    file,
                    line_or(e.line, service.line),
                    format!("{name}{}", e.message),
                ));
                return;
            }
        };
        for instance in instances {
            let key = (
                node.datacenter.clone(),
                node.name.clone(),
                instance.id.clone(),
            );
            let origin = Origin {
                file: file.clone(),
                line: service.line,
            };
            if let Some(first) = self.instance_origins.get(&key) {
                self.problems.push(Problem::error(
                    file,
                    service.line,
                    format!(
                        "service instance {:?} on node {:?} in {} is registered twice: here and at {first}",
                        key.2, key.1, key.0
                    ),
                ));
                continue;
            }
            self.instance_origins.insert(key, origin);
            self.builder.add_instance(instance);
        }
    }

    fn finish(mut self, generation: u64) -> (Snapshot, Vec<Problem>) {
        let snapshot = self.builder.build(generation);
        self.problems.extend(validate::check(&snapshot));
        self.problems.sort();
        self.problems.dedup();
        (snapshot, self.problems)
    }
}

fn line_or(line: u32, fallback: u32) -> u32 {
    if line == 0 { fallback } else { line }
}

/// A key as compared: lower case, without underscores (`DefaultSubset` = `default_subset`).
pub fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A string field of an object, by normalized key, with its line.
fn string_field<'a>(value: &'a Value, key: &str) -> Option<(&'a str, u32)> {
    let Kind::Object(fields) = &value.kind else {
        return None;
    };
    fields
        .iter()
        .find(|f| normalize(&f.key) == key)
        .and_then(|f| match &f.value.kind {
            Kind::Str(s) => Some((s.as_str(), f.value.line)),
            _ => None,
        })
}

pub enum EntryError {
    UnknownKind(String),
    Decode(document::DecodeError),
}

/// Decodes a config entry of the given `Kind` (from a file, or from Consul's API).
pub fn decode_entry(kind: &str, value: &Value) -> Result<ConfigEntry, EntryError> {
    let Some(kind) = EntryKind::parse(kind) else {
        let message = match kind {
            "service-router"
            | "service-splitter"
            | "ingress-gateway"
            | "terminating-gateway"
            | "api-gateway"
            | "http-route"
            | "tcp-route"
            | "inline-certificate"
            | "file-system-certificate"
            | "jwt-provider"
            | "sameness-group"
            | "control-plane-request-limit"
            | "rate-limit-ip-config" => format!(
                "Kind {kind:?} is a Consul config entry meshgate does not read yet (it reads {})",
                supported_kinds()
            ),
            _ => format!(
                "unknown Kind {kind:?} (meshgate reads {})",
                supported_kinds()
            ),
        };
        return Err(EntryError::UnknownKind(message));
    };
    let decoded = match kind {
        EntryKind::ServiceDefaults => document::decode::<ServiceDefaults>(value)
            .map(|e| ConfigEntry::ServiceDefaults(Box::new(e))),
        EntryKind::ProxyDefaults => document::decode::<ProxyDefaults>(value)
            .map(|e| ConfigEntry::ProxyDefaults(Box::new(e))),
        EntryKind::ServiceResolver => document::decode::<ServiceResolver>(value)
            .map(|e| ConfigEntry::ServiceResolver(Box::new(e))),
        EntryKind::ServiceIntentions => document::decode::<ServiceIntentions>(value)
            .map(|e| ConfigEntry::ServiceIntentions(Box::new(e))),
        EntryKind::ExportedServices => document::decode::<ExportedServices>(value)
            .map(|e| ConfigEntry::ExportedServices(Box::new(e))),
        EntryKind::Mesh => document::decode::<Mesh>(value).map(|e| ConfigEntry::Mesh(Box::new(e))),
    };
    decoded.map_err(EntryError::Decode)
}

fn supported_kinds() -> String {
    EntryKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
