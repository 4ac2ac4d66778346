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

use serde::Serialize;

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
