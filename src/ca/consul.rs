//! Leaves from Consul: one blocking query per wanted service on the local agent's
//! `/v1/agent/connect/ca/leaf/:service`. The agent signs the leaf on first request and answers
//! a blocking query when it replaces it (Consul renews between 60% and 90% of the lifetime),
//! so meshgate never rotates these itself. Roots come from the snapshot's `ca_roots`.
//!
//! The loop keeps the rules of the source's watches and reuses their client and pacing
//! ([`crate::source::consul`]): index reset to 0 when `X-Consul-Index` goes backwards, a
//! rate limit on queries that return without progress, backoff with jitter after errors,
//! and a request timeout longer than `wait + wait/16`. Answers carry the private key: a body
//! is never logged, and errors quote only Consul's error bodies (which carry none).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::{CaError, CertSet, Leaf, bump};
use crate::model::Snapshot;
use crate::source::consul::ConsulConfig;
use crate::source::consul::api::{Api, Target};
use crate::source::consul::pacing::{BlockingQuery, MAX_WAIT, request_timeout, wait_param};

/// The leaves of one agent, and the watches that keep them.
pub struct ConsulLeaves {
    api: Arc<Api>,
    local_dc: String,
    wait_param: String,
    timeout: Duration,
    runtime: Handle,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    changes: watch::Sender<u64>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Service → its watch. Local datacenter only.
    watches: BTreeMap<String, AbortHandle>,
    leaves: BTreeMap<String, Arc<Leaf>>,
    /// Wanted leaves of other datacenters, reported once.
    refused: BTreeSet<(String, String)>,
}

impl Drop for ConsulLeaves {
    fn drop(&mut self) {
        for w in self.state.lock().watches.values() {
            w.abort();
        }
    }
}

/// The fields of Consul's `IssuedCert` that meshgate reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IssuedCert {
    serial_number: String,
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    private_key_pem: String,
    #[serde(default)]
    service: String,
}

impl ConsulLeaves {
    pub(super) fn start(
        config: &ConsulConfig,
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        changes: watch::Sender<u64>,
    ) -> Result<Arc<ConsulLeaves>, CaError> {
        let runtime = Handle::try_current().map_err(|_| CaError::NoRuntime)?;
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| CaError::Io {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let api = Api::new(&config.addr, config.token.clone(), ca_pem.as_deref())?;
        let wait = config.wait.min(MAX_WAIT);
        Ok(Arc::new(ConsulLeaves {
            api: Arc::new(api),
            local_dc: config.datacenter.clone(),
            wait_param: wait_param(wait),
            timeout: request_timeout(wait),
            runtime,
            snapshots,
            changes,
            state: Arc::new(Mutex::new(State::default())),
        }))
    }

    pub(super) fn ensure(
        &self,
        wanted: &BTreeSet<(String, String)>,
        trust_domain: &str,
    ) -> Arc<CertSet> {
        let mut state = self.state.lock();
        let local: BTreeSet<&str> = wanted
            .iter()
            .filter(|(_, dc)| *dc == self.local_dc)
            .map(|(svc, _)| svc.as_str())
            .collect();
        for key in wanted.iter().filter(|(_, dc)| *dc != self.local_dc) {
            if state.refused.insert(key.clone()) {
                warn!(service = %key.0, datacenter = %key.1, local = %self.local_dc,
                    "no leaf for another datacenter: the Consul agent signs for its own only");
            }
        }
        state.refused.retain(|k| wanted.contains(k));
        // Stop watching what is no longer wanted.
        state.watches.retain(|svc, watch| {
            let keep = local.contains(svc.as_str());
            if !keep {
                watch.abort();
            }
            keep
        });
        state.leaves.retain(|svc, _| local.contains(svc.as_str()));
        for svc in local {
            if !state.watches.contains_key(svc) {
                let task = self.runtime.spawn(watch_leaf(
                    self.api.clone(),
                    svc.to_string(),
                    self.local_dc.clone(),
                    self.wait_param.clone(),
                    self.timeout,
                    self.state.clone(),
                    self.changes.clone(),
                ));
                state.watches.insert(svc.to_string(), task.abort_handle());
            }
        }
        let leaves = state
            .leaves
            .iter()
            .map(|(svc, leaf)| ((svc.clone(), self.local_dc.clone()), leaf.clone()))
            .collect();
        drop(state);
        let (trust_domain, roots_pem) = match self
            .snapshots
            .borrow()
            .as_ref()
            .and_then(|s| s.ca_roots.clone())
        {
            Some(roots) if !roots.trust_domain.is_empty() => {
                (roots.trust_domain.clone(), bundle(&roots.roots_pem))
            }
            Some(roots) => (trust_domain.to_string(), bundle(&roots.roots_pem)),
            None => (trust_domain.to_string(), String::new()),
        };
        Arc::new(CertSet {
            trust_domain,
            roots_pem,
            leaves,
        })
    }
}

/// Root PEMs as one bundle, each ending with a newline.
fn bundle(pems: &[String]) -> String {
    let mut out = String::new();
    for pem in pems {
        out.push_str(pem.trim_end());
        out.push('\n');
    }
    out
}

/// Follows one service's leaf until aborted.
async fn watch_leaf(
    api: Arc<Api>,
    service: String,
    datacenter: String,
    wait: String,
    timeout: Duration,
    state: Arc<Mutex<State>>,
    changes: watch::Sender<u64>,
) {
    let target = Target {
        segments: ["v1", "agent", "connect", "ca", "leaf", service.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        query: vec![],
        display: format!("/v1/agent/connect/ca/leaf/{service}"),
    };
    let mut query = BlockingQuery::new(&target.display);
    let mut serial: Option<String> = None;
    loop {
        let result = api
            .get(&target, query.index(), &wait, timeout)
            .await
            .and_then(|answer| {
                let leaf = parse_leaf(&answer.body, &service, &datacenter, &target.display)?;
                Ok((answer.index, leaf))
            });
        match result {
            Ok((returned, leaf)) => {
                let step = query.answered(returned);
                if serial.as_deref() != Some(leaf.serial.as_str()) {
                    debug!(service = %service, serial = %leaf.serial, "leaf certificate from Consul");
                    serial = Some(leaf.serial.clone());
                    state.lock().leaves.insert(service.clone(), Arc::new(leaf));
                    bump(&changes);
                }
                // An answer without an index cannot block: poll, gently.
                let pause = query.pause(step, UNINDEXED_POLL);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(e) => {
                let (_, delay) = query.failed(&e, "the current leaf is kept");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How often a leaf endpoint that answers without `X-Consul-Index` is read again.
const UNINDEXED_POLL: Duration = Duration::from_secs(5);

/// A leaf from Consul's JSON answer. Errors name the endpoint and never quote the body.
fn parse_leaf(
    body: &[u8],
    service: &str,
    datacenter: &str,
    endpoint: &str,
) -> Result<Leaf, crate::source::consul::FetchError> {
    let bad = |detail: String| crate::source::consul::FetchError::Decode {
        endpoint: endpoint.to_string(),
        detail,
    };
    // serde_json's messages give a position and an expectation, never the input.
    let issued: IssuedCert =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a leaf certificate: {e}")))?;
    if !issued.service.is_empty() && issued.service != service {
        return Err(bad(format!(
            "the leaf is for service {:?}, not {service:?}",
            issued.service
        )));
    }
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .map_err(|e| bad(format!("CertPEM is not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(format!("CertPEM does not parse: {e}")))?;
    // Checked so that Envoy is never handed a key it cannot load; the error names no part of it.
    rcgen::KeyPair::from_pem(&issued.private_key_pem)
        .map_err(|_| bad("PrivateKeyPEM is not a PEM private key".into()))?;
    let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let validity = cert.validity();
    Ok(Leaf {
        service: service.to_string(),
        datacenter: datacenter.to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.private_key_pem,
        serial: issued.serial_number,
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Authority, RootSource};

    fn leaf() -> (tempfile::TempDir, Leaf) {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            Authority::open(&RootSource::StateDir(dir.path().to_path_buf()), "td.consul").unwrap();
        let leaf = ca
            .issue(
                "web",
                "dc1",
                Duration::from_secs(3600),
                std::time::SystemTime::now(),
            )
            .unwrap();
        (dir, leaf)
    }

    fn body(leaf: &Leaf, cert: &str, key: &str, service: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "SerialNumber": leaf.serial,
            "CertPEM": cert,
            "PrivateKeyPEM": key,
            "Service": service,
            "ServiceURI": "spiffe://td.consul/ns/default/dc/dc1/svc/web",
            "ValidAfter": "2025-01-01T00:00:00Z",
            "ValidBefore": "2025-01-04T00:00:00Z",
        }))
        .unwrap()
    }

    const EP: &str = "/v1/agent/connect/ca/leaf/web";

    #[test]
    fn consul_answer_becomes_a_leaf() {
        let (_d, l) = leaf();
        let got = parse_leaf(&body(&l, &l.cert_pem, l.key_pem(), "web"), "web", "dc1", EP).unwrap();
        assert_eq!(got, l);
    }

    #[test]
    fn errors_name_the_endpoint_and_never_quote_the_key() {
        let (_d, l) = leaf();
        let key_line = l.key_pem().lines().nth(1).unwrap();
        let cases = [
            body(&l, "garbage", l.key_pem(), "web"),
            body(&l, &l.cert_pem, "garbage", "web"),
            body(&l, &l.cert_pem, &l.key_pem()[..60], "web"),
            body(&l, &l.cert_pem, l.key_pem(), "api"),
            // Not JSON at all, with the key inside.
            format!("{{\"PrivateKeyPEM\": {:?}", l.key_pem()).into_bytes(),
        ];
        for b in cases {
            let e = parse_leaf(&b, "web", "dc1", EP).unwrap_err().to_string();
            assert!(e.contains(EP), "{e}");
            assert!(!e.contains(key_line), "{e}");
            assert!(!e.contains("PRIVATE KEY"), "{e}");
        }
    }
}
