//! Keeping a directory's snapshot current: file events (notify, debounced) and a periodic
//! rescan as a fallback for file systems that drop events (network mounts, some container
//! volumes). A reload is cheap to skip: the directory's digest (paths and contents) is
//! compared first, and only a changed directory is parsed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{Loaded, ParseCache, load_cached};
use crate::metrics::Metrics;
use crate::model::{Snapshot, SnapshotCounts};
use crate::source::{LoadStatus, Problem};

/// What `/debug/sources` shows for a directory source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirStatus {
    pub source: &'static str,
    pub dir: String,
    #[serde(flatten)]
    pub load: LoadStatus,
    pub files: usize,
    pub documents: usize,
    pub counts: SnapshotCounts,
}

/// A directory source: the current status, and the task that watches the directory.
#[derive(Clone)]
pub struct DirSource {
    dir: PathBuf,
    datacenter: String,
    status: Arc<Mutex<DirStatus>>,
    metrics: Arc<Metrics>,
    /// Digest of the last state read (accepted or refused): the same files are not read twice.
    last_digest: Arc<Mutex<u64>>,
    /// The last accepted snapshot: a new one shares its unchanged instance lists.
    last: Arc<Mutex<Option<Arc<Snapshot>>>>,
    /// Files parsed by the last read: an edit parses only the files it changed.
    parsed: Arc<Mutex<ParseCache>>,
}

impl DirSource {
    /// Reads the directory once. A directory with errors is refused: the caller gets every
    /// problem (there is no last good snapshot yet to keep serving).
    pub fn open(
        dir: &Path,
        datacenter: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(DirSource, Arc<Snapshot>), Vec<Problem>> {
        let source = DirSource {
            dir: dir.to_path_buf(),
            datacenter: datacenter.to_owned(),
            status: Arc::new(Mutex::new(DirStatus {
                source: "directory",
                dir: dir.display().to_string(),
                ..Default::default()
            })),
            metrics,
            last_digest: Arc::new(Mutex::new(0)),
            last: Arc::new(Mutex::new(None)),
            parsed: Arc::default(),
        };
        match source.reload(1) {
            Reload::Accepted(snapshot) => Ok((source, snapshot)),
            Reload::Refused(problems) => Err(problems),
            Reload::Unchanged => unreachable!("the first read always reads"),
        }
    }

    pub fn status(&self) -> DirStatus {
        self.status.lock().clone()
    }

    /// Reads the directory if it changed since the last read; `generation` numbers the
    /// snapshot if it is accepted.
    fn reload(&self, generation: u64) -> Reload {
        let started = Instant::now();
        let m = &self.metrics.source;
        // A rescan of an unchanged directory reads the files but parses nothing. (A directory
        // that cannot be read is loaded, so that the error is reported.)
        if generation > 1
            && let Ok(digest) = super::digest(&self.dir)
            && digest == *self.last_digest.lock()
        {
            m.loads_unchanged.inc();
            return Reload::Unchanged;
        }
        let loaded: Loaded = load_cached(
            &self.dir,
            &self.datacenter,
            generation,
            &mut self.parsed.lock(),
        );
        *self.last_digest.lock() = loaded.digest;
        m.snapshot_build.observe(started.elapsed().as_secs_f64());
        let mut status = self.status.lock();
        if !status.load.record(m, generation, &loaded.problems) {
            return Reload::Refused(loaded.problems);
        }
        status.files = loaded.files;
        status.documents = loaded.documents;
        status.counts = loaded.snapshot.counts();
        let (services, instances) = (status.counts.services, status.counts.instances);
        drop(status);
        let mut snapshot = loaded.snapshot;
        let mut last = self.last.lock();
        if let Some(prev) = last.as_ref() {
            snapshot.share_unchanged(prev);
        }
        let snapshot = Arc::new(snapshot);
        *last = Some(snapshot.clone());
        drop(last);
        info!(
            generation,
            files = loaded.files,
            services,
            instances,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config directory read"
        );
        Reload::Accepted(snapshot)
    }

    /// Starts watching the directory (before returning, so no change made after this call
    /// is missed) and returns the task that reloads it until `shutdown`, sending each
    /// accepted snapshot to `tx`. Events are debounced by `debounce`; the directory is also
    /// rescanned every `rescan`.
    pub fn watch(
        self,
        tx: watch::Sender<Option<Arc<Snapshot>>>,
        debounce: Duration,
        rescan: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (events_tx, events_rx) = mpsc::unbounded_channel::<()>();
        // The debouncer runs its own thread; it is dropped (and stops) when this task ends.
        let debouncer = new_debouncer(debounce, None, move |result| {
            if let Ok(events) = result {
                let events: Vec<notify_debouncer_full::DebouncedEvent> = events;
                // Reads (our own, when a rescan computes the digest) are not changes: counting
                // them would make every rescan trigger another read.
                if events.iter().any(|e| !e.kind.is_access()) {
                    let _ = events_tx.send(());
                }
            }
        });
        let debouncer = match debouncer {
            Ok(mut d) => match d.watch(&self.dir, RecursiveMode::Recursive) {
                Ok(()) => Some(d),
                Err(e) => {
                    warn!(dir = %self.dir.display(), error = %e, "cannot watch the config directory; rescanning every {rescan:?} instead");
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, "no file watcher; rescanning every {rescan:?} instead");
                None
            }
        };
        self.reload_loop(tx, rescan, events_rx, debouncer, shutdown)
    }

    async fn reload_loop<D: Send + 'static>(
        self,
        tx: watch::Sender<Option<Arc<Snapshot>>>,
        rescan: Duration,
        mut events_rx: mpsc::UnboundedReceiver<()>,
        // Kept alive (watching) as long as the loop runs.
        _debouncer: D,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut generation = tx.borrow().as_ref().map_or(0, |s| s.generation);
        let mut ticker = tokio::time::interval(rescan);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                event = events_rx.recv() => if event.is_none() { return },
                _ = ticker.tick() => {}
            }
            // Coalesce events that queued up while the last read ran.
            while events_rx.try_recv().is_ok() {}
            let this = self.clone();
            let next = generation + 1;
            let result = tokio::task::spawn_blocking(move || this.reload(next)).await;
            match result {
                Ok(Reload::Accepted(snapshot)) => {
                    generation = next;
                    tx.send_replace(Some(snapshot));
                }
                Ok(Reload::Refused(_) | Reload::Unchanged) => {}
                Err(e) => error!(error = %e, "config directory read panicked"),
            }
        }
    }
}

enum Reload {
    Accepted(Arc<Snapshot>),
    Refused(Vec<Problem>),
    Unchanged,
}
