//! Consul's HTTP API as a source (being built: the watcher lands next).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::Snapshot;

pub struct ConsulConfig {
    pub addr: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub datacenter: String,
    pub wait: Duration,
}

#[derive(Clone)]
pub struct ConsulHandle;

impl ConsulHandle {
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({ "source": "consul" })
    }
}

pub fn start(
    _config: ConsulConfig,
    _metrics: Arc<Metrics>,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(ConsulHandle, watch::Receiver<Arc<Snapshot>>)> {
    anyhow::bail!("the Consul source is not available in this build yet")
}
