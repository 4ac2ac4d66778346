//! The resource store the rest of meshgate publishes into.
//!
//! Resources live in *groups* (all ingress gateways of datacenter `authn` are one group: they
//! see the same resources). A group's state is an immutable [`GroupState`]: per resource type
//! an immutable [`TypeSet`] of shared [`Entry`]s, plus a short log of which names changed at
//! which generation. Publishing builds the next state off to the side (resources are encoded
//! before any lock is taken), swaps it in under a short lock, and — after the debounce window —
//! releases it to the group's streams through a `watch` channel, which holds only the latest
//! state: a slow stream skips intermediate states instead of queueing them.
//!
//! Cost: a publish costs O(size of the changed types) for the map copy plus O(changed
//! resources) for encoding and versioning; a stream that wakes for it costs O(changed names)
//! thanks to the change log (see [`GroupState::changed_since`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::node::GroupKey;
use super::resource::{Entry, XdsResource};
use super::types::{ResourceType, TYPE_COUNT};
use crate::metrics::Metrics;

/// How many change records a group keeps. A stream whose last state is older than the log
/// falls back to a full comparison of the type (O(resources)), which is still correct.
const CHANGE_LOG_LEN: usize = 256;

/// The set of resources of one type in one group state.
#[derive(Debug)]
pub struct TypeSet {
    /// Generation at which this set last changed.
    pub generation: u64,
    pub resources: HashMap<Arc<str>, Arc<Entry>>,
    /// Order-independent digest of the (name, version) pairs: sum of their hashes, so a
    /// change costs O(1) to fold in.
    digest: u64,
    /// The type's version, used as `version_info` in state-of-the-world responses and as
    /// `system_version_info` in delta ones. Deterministic across replicas.
    pub version: Arc<str>,
}

/// The empty set at generation 0, shared: every new stream's starting basis.
pub fn empty_set() -> Arc<TypeSet> {
    static EMPTY: std::sync::LazyLock<Arc<TypeSet>> = std::sync::LazyLock::new(|| {
        Arc::new(TypeSet {
            generation: 0,
            resources: HashMap::new(),
            digest: 0,
            version: Arc::from(""),
        })
    });
    EMPTY.clone()
}

impl TypeSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.resources.get(name)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

fn pair_hash(name: &str, version: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(version.as_bytes());
    h.digest()
}

fn set_version(digest: u64, len: usize) -> Arc<str> {
    if len == 0 {
        return Arc::from("empty");
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&digest.to_le_bytes());
    bytes[8..].copy_from_slice(&(len as u64).to_le_bytes());
    Arc::from(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)))
}

/// Which names of which type changed at a generation.
#[derive(Debug)]
struct ChangeRecord {
    generation: u64,
    ty: ResourceType,
    names: Box<[Arc<str>]>,
}

#[derive(Debug, Default, Clone)]
struct ChangeLog {
    /// Highest generation whose records were dropped; the log is complete above it.
    floor: u64,
    records: VecDeque<Arc<ChangeRecord>>,
}

/// One immutable state of a group.
#[derive(Debug)]
pub struct GroupState {
    pub generation: u64,
    pub types: [Arc<TypeSet>; TYPE_COUNT],
    log: ChangeLog,
    /// The earliest publish folded into this state since the group's last release: the start
    /// of the convergence clock for the streams that receive it.
    pub first_publish: Option<Instant>,
}

impl GroupState {
    fn empty() -> GroupState {
        GroupState {
            generation: 0,
            types: std::array::from_fn(|_| empty_set()),
            log: ChangeLog::default(),
            first_publish: None,
        }
    }

    pub fn set(&self, ty: ResourceType) -> &Arc<TypeSet> {
        &self.types[ty.index()]
    }

    /// The names of `ty` that changed (added, modified or removed) after generation `since`,
    /// or `None` when the log no longer reaches back that far (the caller then compares the
    /// whole type). Names may repeat when they changed more than once.
    pub fn changed_since(
        &self,
        ty: ResourceType,
        since: u64,
    ) -> Option<impl Iterator<Item = &Arc<str>>> {
        // Records are in generation order: walk back from the newest, O(changes since).
        (since >= self.log.floor).then(|| {
            self.log
                .records
                .iter()
                .rev()
                .take_while(move |r| r.generation > since)
                .filter(move |r| r.ty == ty)
                .flat_map(|r| r.names.iter())
        })
    }
}

/// What a publish does to one type.
#[derive(Debug)]
pub enum TypeUpdate {
    /// The complete new set of the type.
    Replace(Vec<Arc<Entry>>),
    /// Add or change some resources and remove others; the rest stay.
    Patch {
        upsert: Vec<Arc<Entry>>,
        remove: Vec<String>,
    },
}

/// A publish to one group: any number of per-type updates, applied together as one new
/// generation.
#[derive(Debug, Default)]
pub struct Update {
    types: Vec<(ResourceType, TypeUpdate)>,
}

impl Update {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces all resources of `R`'s type with `items`.
    pub fn replace<R: XdsResource>(mut self, items: impl IntoIterator<Item = R>) -> Self {
        let entries = items.into_iter().map(|r| Entry::new(&r)).collect();
        self.types.push((R::TYPE, TypeUpdate::Replace(entries)));
        self
    }

    /// Adds or changes `items`, leaving the type's other resources as they are.
    pub fn upsert<R: XdsResource>(mut self, items: impl IntoIterator<Item = R>) -> Self {
        let upsert = items.into_iter().map(|r| Entry::new(&r)).collect();
        self.types.push((
            R::TYPE,
            TypeUpdate::Patch {
                upsert,
                remove: Vec::new(),
            },
        ));
        self
    }

    /// Removes the named resources of type `ty`.
    pub fn remove(
        mut self,
        ty: ResourceType,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let remove = names.into_iter().map(Into::into).collect();
        self.types.push((
            ty,
            TypeUpdate::Patch {
                upsert: Vec::new(),
                remove,
            },
        ));
        self
    }

    /// Adds an update of already-built entries (all must be of type `ty`).
    pub fn with(mut self, ty: ResourceType, update: TypeUpdate) -> Self {
        self.types.push((ty, update));
        self
    }

    /// The per-type updates, in the order they were added (to inspect a translation).
    pub fn types(&self) -> &[(ResourceType, TypeUpdate)] {
        &self.types
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("group {group}: {ty} resource {name:?} appears twice in one update")]
    DuplicateName {
        group: String,
        ty: ResourceType,
        name: String,
    },
    #[error("group {group}: resource {name:?} is a {actual} resource, published as {expected}")]
    WrongType {
        group: String,
        name: String,
        expected: ResourceType,
        actual: ResourceType,
    },
}

/// The debounce window: publishes that arrive within it become one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Release once no publish has arrived for this long.
    pub quiet: Duration,
    /// Release at the latest this long after the first unreleased publish.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

impl Debounce {
    pub const NONE: Debounce = Debounce {
        quiet: Duration::ZERO,
        max: Duration::ZERO,
    };

    fn is_zero(&self) -> bool {
        self.quiet.is_zero() || self.max.is_zero()
    }
}

/// One group: its staged state (latest published) and the channel that releases states to
/// its streams.
pub struct Group {
    key: GroupKey,
    staged: Mutex<Arc<GroupState>>,
    released: AtomicU64,
    tx: watch::Sender<Arc<GroupState>>,
}

impl Group {
    fn new(key: GroupKey) -> Group {
        let initial = Arc::new(GroupState::empty());
        Group {
            key,
            staged: Mutex::new(initial.clone()),
            released: AtomicU64::new(0),
            tx: watch::Sender::new(initial),
        }
    }

    pub fn key(&self) -> &GroupKey {
        &self.key
    }

    /// The latest released state (what streams serve).
    pub fn current(&self) -> Arc<GroupState> {
        self.tx.borrow().clone()
    }

    fn release(&self) {
        let staged = self.staged.lock().clone();
        self.released.store(staged.generation, Ordering::Release);
        if staged.generation != self.tx.borrow().generation {
            self.tx.send_replace(staged);
        }
    }

    fn never_published(&self) -> bool {
        self.staged.lock().generation == 0
    }
}

struct StoreInner {
    groups: DashMap<GroupKey, Arc<Group>>,
    debounce: Debounce,
    pending: Mutex<HashSet<GroupKey>>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Lets the debounce task see that the store is gone.
        self.wake.notify_one();
    }
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

impl Store {
    /// Creates a store. With a non-zero debounce this spawns the debounce task, so it must be
    /// called inside a Tokio runtime; the task ends when the last clone of the store is dropped.
    pub fn new(debounce: Debounce, metrics: Arc<Metrics>) -> Store {
        let inner = Arc::new(StoreInner {
            groups: DashMap::new(),
            debounce,
            pending: Mutex::new(HashSet::new()),
            wake: Arc::new(Notify::new()),
            metrics,
        });
        if !debounce.is_zero() {
            tokio::spawn(debounce_loop(Arc::downgrade(&inner), inner.wake.clone()));
        }
        Store { inner }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn debounce(&self) -> Debounce {
        self.inner.debounce
    }

    fn group(&self, key: &GroupKey) -> Arc<Group> {
        if let Some(g) = self.inner.groups.get(key) {
            return g.clone();
        }
        self.inner
            .groups
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Group::new(key.clone())))
            .clone()
    }

    /// The groups that exist (published to, or with connected streams).
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.inner
            .groups
            .iter()
            .map(|g| g.value().clone())
            .collect()
    }

    /// The latest released state of a group, if the group exists.
    pub fn current(&self, key: &GroupKey) -> Option<Arc<GroupState>> {
        self.inner.groups.get(key).map(|g| g.current())
    }

    /// Publishes an update to a group. Returns the new generation, or `None` when the update
    /// changed nothing (no new generation, nothing pushed). An invalid update changes nothing.
    pub fn publish(&self, key: &GroupKey, update: Update) -> Result<Option<u64>, PublishError> {
        let group = self.group(key);
        let generation = {
            let mut staged = group.staged.lock();
            let Some(next) = apply(key, &staged, update, group.released.load(Ordering::Acquire))?
            else {
                return Ok(None);
            };
            let generation = next.generation;
            *staged = Arc::new(next);
            generation
        };
        self.inner.metrics.store_publishes.inc();
        if self.inner.debounce.is_zero() {
            group.release();
        } else {
            self.inner.pending.lock().insert(key.clone());
            self.inner.wake.notify_one();
        }
        Ok(Some(generation))
    }

    /// Subscribes a stream to a group, creating the group (empty) if nobody published to it
    /// yet: resources published later reach the stream.
    pub fn subscribe(&self, key: &GroupKey) -> GroupSubscription {
        let group = self.group(key);
        GroupSubscription {
            rx: Some(group.tx.subscribe()),
            key: key.clone(),
            store: Arc::downgrade(&self.inner),
        }
    }

    /// Removes a group and everything published to it. Its streams keep their last state
    /// until they reconnect.
    pub fn remove_group(&self, key: &GroupKey) {
        self.inner.groups.remove(key);
    }
}

/// A stream's handle on its group. Dropping it frees the group if the group was created only
/// for streams and nobody published to it (R24).
pub struct GroupSubscription {
    rx: Option<watch::Receiver<Arc<GroupState>>>,
    key: GroupKey,
    store: Weak<StoreInner>,
}

impl GroupSubscription {
    pub fn receiver(&mut self) -> &mut watch::Receiver<Arc<GroupState>> {
        self.rx.as_mut().expect("receiver is present until drop")
    }

    pub fn key(&self) -> &GroupKey {
        &self.key
    }
}

impl Drop for GroupSubscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(store) = self.store.upgrade() {
            store.groups.remove_if(&self.key, |_, g| {
                g.tx.receiver_count() == 0 && g.never_published()
            });
        }
    }
}

/// Builds the next state, or `None` if the update changes nothing.
fn apply(
    key: &GroupKey,
    old: &GroupState,
    update: Update,
    released: u64,
) -> Result<Option<GroupState>, PublishError> {
    let generation = old.generation + 1;
    let mut types = old.types.clone();
    let mut records: Vec<ChangeRecord> = Vec::new();

    for (ty, type_update) in update.types {
        let current = &types[ty.index()];
        let mut resources = current.resources.clone();
        let mut digest = current.digest;
        let mut changed: Vec<Arc<str>> = Vec::new();

        let check = |e: &Entry| {
            if e.ty == ty {
                Ok(())
            } else {
                Err(PublishError::WrongType {
                    group: key.to_string(),
                    name: e.name.to_string(),
                    expected: ty,
                    actual: e.ty,
                })
            }
        };
        let upsert = |resources: &mut HashMap<Arc<str>, Arc<Entry>>,
                      digest: &mut u64,
                      changed: &mut Vec<Arc<str>>,
                      entry: Arc<Entry>| {
            match resources.get(&entry.name) {
                Some(prev) if prev.version == entry.version => {}
                prev => {
                    if let Some(prev) = prev {
                        *digest = digest.wrapping_sub(pair_hash(&prev.name, &prev.version));
                    }
                    *digest = digest.wrapping_add(pair_hash(&entry.name, &entry.version));
                    changed.push(entry.name.clone());
                    resources.insert(entry.name.clone(), entry);
                }
            }
        };

        match type_update {
            TypeUpdate::Replace(entries) => {
                let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
                for e in &entries {
                    check(e)?;
                    if !seen.insert(&e.name) {
                        return Err(PublishError::DuplicateName {
                            group: key.to_string(),
                            ty,
                            name: e.name.to_string(),
                        });
                    }
                }
                let gone: Vec<Arc<str>> = resources
                    .keys()
                    .filter(|n| !seen.contains(&***n))
                    .cloned()
                    .collect();
                drop(seen);
                for name in gone {
                    if let Some(prev) = resources.remove(&name) {
                        digest = digest.wrapping_sub(pair_hash(&prev.name, &prev.version));
                        changed.push(name);
                    }
                }
                for e in entries {
                    upsert(&mut resources, &mut digest, &mut changed, e);
                }
            }
            TypeUpdate::Patch {
                upsert: entries,
                remove,
            } => {
                let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
                for e in &entries {
                    check(e)?;
                    if !seen.insert(&e.name) {
                        return Err(PublishError::DuplicateName {
                            group: key.to_string(),
                            ty,
                            name: e.name.to_string(),
                        });
                    }
                }
                drop(seen);
                for name in remove {
                    if let Some((name, prev)) = resources.remove_entry(name.as_str()) {
                        digest = digest.wrapping_sub(pair_hash(&prev.name, &prev.version));
                        changed.push(name);
                    }
                }
                for e in entries {
                    upsert(&mut resources, &mut digest, &mut changed, e);
                }
            }
        }

        if changed.is_empty() {
            continue;
        }
        let version = set_version(digest, resources.len());
        types[ty.index()] = Arc::new(TypeSet {
            generation,
            resources,
            digest,
            version,
        });
        records.push(ChangeRecord {
            generation,
            ty,
            names: changed.into_boxed_slice(),
        });
    }

    if records.is_empty() {
        return Ok(None);
    }
    let mut log = old.log.clone();
    for r in records {
        log.records.push_back(Arc::new(r));
    }
    while log.records.len() > CHANGE_LOG_LEN {
        if let Some(dropped) = log.records.pop_front() {
            log.floor = log.floor.max(dropped.generation);
        }
    }
    // The convergence clock starts at the first publish not yet released.
    let first_publish = match old.first_publish {
        Some(t) if old.generation > released => Some(t),
        _ => Some(Instant::now()),
    };
    Ok(Some(GroupState {
        generation,
        types,
        log,
        first_publish,
    }))
}

/// Releases staged states once publishes have been quiet for `quiet`, or `max` after the
/// first unreleased publish, whichever comes first.
async fn debounce_loop(store: Weak<StoreInner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(debounce) = store.upgrade().map(|s| s.debounce) else {
            return;
        };
        let deadline = Instant::now() + debounce.max;
        loop {
            let quiet_end = Instant::now() + debounce.quiet;
            tokio::select! {
                _ = tokio::time::sleep_until(quiet_end.min(deadline)) => break,
                _ = wake.notified() => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        let keys: Vec<GroupKey> = inner.pending.lock().drain().collect();
        for key in keys {
            if let Some(group) = inner.groups.get(&key).map(|g| g.clone()) {
                group.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::node::Role;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn key() -> GroupKey {
        GroupKey::new(Role::Ingress, "dc1", None)
    }

    fn cluster(name: &str, timeout_s: i64) -> Cluster {
        Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn store(debounce: Debounce) -> Store {
        Store::new(debounce, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn publish_computes_per_resource_changes() {
        let s = store(Debounce::NONE);
        let g1 = s
            .publish(
                &key(),
                Update::new().replace([cluster("a", 1), cluster("b", 1)]),
            )
            .unwrap();
        assert_eq!(g1, Some(1));
        // Same content again: no new generation.
        let again = s
            .publish(
                &key(),
                Update::new().replace([cluster("b", 1), cluster("a", 1)]),
            )
            .unwrap();
        assert_eq!(again, None);
        let g2 = s
            .publish(
                &key(),
                Update::new().replace([cluster("a", 2), cluster("c", 1)]),
            )
            .unwrap();
        assert_eq!(g2, Some(2));
        let st = s.current(&key()).unwrap();
        let mut changed: Vec<&str> = st
            .changed_since(ResourceType::Cluster, 1)
            .unwrap()
            .map(|n| &**n)
            .collect();
        changed.sort();
        assert_eq!(changed, ["a", "b", "c"]);
        assert!(
            st.changed_since(ResourceType::Endpoint, 0)
                .unwrap()
                .next()
                .is_none()
        );
        // Unchanged entries are shared, not copied.
        let before = s.current(&key()).unwrap();
        s.publish(
            &key(),
            Update::new().upsert([ClusterLoadAssignment {
                cluster_name: "a".into(),
                ..Default::default()
            }]),
        )
        .unwrap();
        let after = s.current(&key()).unwrap();
        assert!(Arc::ptr_eq(
            before.set(ResourceType::Cluster),
            after.set(ResourceType::Cluster)
        ));
        assert_eq!(after.set(ResourceType::Endpoint).generation, 3);
    }

    #[tokio::test]
    async fn type_version_is_order_independent_and_content_sensitive() {
        let s1 = store(Debounce::NONE);
        let s2 = store(Debounce::NONE);
        s1.publish(&key(), Update::new().upsert([cluster("a", 1)]))
            .unwrap();
        s1.publish(&key(), Update::new().upsert([cluster("b", 1)]))
            .unwrap();
        s2.publish(
            &key(),
            Update::new().replace([cluster("b", 1), cluster("a", 1)]),
        )
        .unwrap();
        let v1 = s1
            .current(&key())
            .unwrap()
            .set(ResourceType::Cluster)
            .version
            .clone();
        let v2 = s2
            .current(&key())
            .unwrap()
            .set(ResourceType::Cluster)
            .version
            .clone();
        assert_eq!(v1, v2);
        s2.publish(&key(), Update::new().upsert([cluster("b", 2)]))
            .unwrap();
        let v3 = s2
            .current(&key())
            .unwrap()
            .set(ResourceType::Cluster)
            .version
            .clone();
        assert_ne!(v1, v3);
    }

    #[tokio::test]
    async fn duplicate_names_are_refused_and_change_nothing() {
        let s = store(Debounce::NONE);
        s.publish(&key(), Update::new().replace([cluster("a", 1)]))
            .unwrap();
        let err = s
            .publish(
                &key(),
                Update::new().replace([cluster("x", 1), cluster("x", 2)]),
            )
            .unwrap_err();
        assert!(matches!(err, PublishError::DuplicateName { ref name, .. } if name == "x"));
        assert!(err.to_string().contains("ingress/dc1"), "{err}");
        let st = s.current(&key()).unwrap();
        assert_eq!(st.generation, 1);
        assert!(st.set(ResourceType::Cluster).get("a").is_some());
    }

    #[tokio::test]
    async fn change_log_falls_back_when_too_old() {
        let s = store(Debounce::NONE);
        for i in 0..(CHANGE_LOG_LEN as i64 + 10) {
            s.publish(&key(), Update::new().upsert([cluster("a", i + 1)]))
                .unwrap();
        }
        let st = s.current(&key()).unwrap();
        assert!(st.changed_since(ResourceType::Cluster, 1).is_none());
        assert!(
            st.changed_since(ResourceType::Cluster, st.generation - 1)
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_within_the_window_become_one_release() {
        let s = store(Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let mut sub = s.subscribe(&key());
        let rx = sub.receiver();
        rx.mark_unchanged();
        for i in 0..5 {
            s.publish(&key(), Update::new().upsert([cluster("a", i + 1)]))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Quiet never reached between publishes; nothing released yet.
        assert!(!rx.has_changed().unwrap());
        rx.changed().await.unwrap();
        let st = rx.borrow_and_update().clone();
        assert_eq!(st.generation, 5);
        assert!(!rx.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_publishes_is_released_at_max() {
        let s = store(Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_millis(500),
        });
        let mut sub = s.subscribe(&key());
        let rx = sub.receiver();
        rx.mark_unchanged();
        let start = Instant::now();
        let mut released_at = None;
        for i in 0..40 {
            s.publish(&key(), Update::new().upsert([cluster("a", i + 1)]))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if released_at.is_none() && rx.has_changed().unwrap() {
                released_at = Some(Instant::now() - start);
            }
        }
        let at = released_at.expect("a release happened while publishes kept coming");
        assert!(at >= Duration::from_millis(500) && at <= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn unpublished_group_is_freed_with_its_last_stream() {
        let s = store(Debounce::NONE);
        let k = GroupKey::new(Role::Egress, "dc9", None);
        let sub = s.subscribe(&k);
        assert_eq!(s.groups().len(), 1);
        drop(sub);
        assert_eq!(s.groups().len(), 0);
        // A published group stays.
        s.publish(&key(), Update::new().upsert([cluster("a", 1)]))
            .unwrap();
        drop(s.subscribe(&key()));
        assert_eq!(s.groups().len(), 1);
    }
}
