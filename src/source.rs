//! Sources fill the model: a directory of Consul-format files ([`dir`]) or Consul's HTTP API
//! ([`consul`]). Each produces whole [`Snapshot`]s; a state with any error is refused as a
//! whole and the last good snapshot keeps serving.

pub mod consul;
pub mod dir;
pub mod document;
pub mod from_consul;
pub mod services;
pub mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tracing::{error, warn};

use crate::metrics::SourceMetrics;

/// How bad a problem is: an error refuses the state, a warning is reported only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in the input, located at a file and line (line 0: the whole file, or an
/// entry from Consul).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub file: Arc<str>,
    pub line: u32,
    pub severity: Severity,
    pub message: String,
}

impl Problem {
    pub fn error(file: &Arc<str>, line: u32, message: impl Into<String>) -> Problem {
        Problem {
            file: file.clone(),
            line,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(file: &Arc<str>, line: u32, message: impl Into<String>) -> Problem {
        Problem {
            file: file.clone(),
            line,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `file:line: message`, with `warning: ` before a warning's message.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if self.severity == Severity::Warning {
            f.write_str(": warning")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The running source, as the admin API sees it.
#[derive(Clone, Default)]
pub enum SourceHandle {
    /// No source: an empty mesh.
    #[default]
    None,
    Dir(dir::DirSource),
    Consul(from_consul::ConsulHandle),
}

impl SourceHandle {
    /// The status `/debug/sources` shows.
    pub fn status(&self) -> serde_json::Value {
        match self {
            SourceHandle::None => serde_json::json!({ "source": "none" }),
            SourceHandle::Dir(d) => serde_json::to_value(d.status()).unwrap_or_default(),
            SourceHandle::Consul(c) => c.status_json(),
        }
    }
}

/// What both sources report of the states they read (on `/debug/sources` and in metrics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStatus {
    /// Generation of the snapshot being served (0: none yet).
    pub generation: u64,
    /// Unix seconds of the last accepted state.
    pub last_accepted: Option<u64>,
    /// Unix seconds of the last refused state; its errors stay listed until a later state
    /// is accepted.
    pub last_refused: Option<u64>,
    pub errors: Vec<String>,
    /// Warnings of the latest state read.
    pub warnings: Vec<String>,
    pub refused_loads: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl LoadStatus {
    /// Records a state read with `problems`: refused (logged, counted, listed) when any is an
    /// error, else accepted as `generation`. Returns whether it was accepted.
    pub fn record(&mut self, m: &SourceMetrics, generation: u64, problems: &[Problem]) -> bool {
        let (errors, warnings): (Vec<&Problem>, Vec<&Problem>) =
            problems.iter().partition(|p| p.is_error());
        for w in &warnings {
            warn!(problem = %w, "config warning");
        }
        m.warnings.set(warnings.len() as i64);
        self.warnings = warnings.iter().map(|p| p.to_string()).collect();
        if !errors.is_empty() {
            for e in &errors {
                error!(problem = %e, "config error; the last good snapshot keeps serving");
            }
            m.loads_refused.inc();
            m.errors.inc_by(errors.len() as u64);
            m.current_errors.set(errors.len() as i64);
            self.last_refused = Some(unix_now());
            self.errors = errors.iter().map(|p| p.to_string()).collect();
            self.refused_loads += 1;
            return false;
        }
        m.loads_accepted.inc();
        m.current_errors.set(0);
        m.generation.set(generation as i64);
        m.last_accepted.set(unix_now() as f64);
        self.generation = generation;
        self.last_accepted = Some(unix_now());
        self.errors.clear();
        true
    }
}
