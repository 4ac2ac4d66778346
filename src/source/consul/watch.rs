//! One watch: a loop of blocking queries against one endpoint, sending each changed body
//! to the coordinator and keeping its line of the status board.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::Shared;
use super::api::{Answer, FetchError};
use super::metrics::RequestResult;
use super::pacing::{Backoff, RateLimiter, index_step, jitter};

/// What a watch is of. The coordinator owns one running watch per key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKey {
    /// `/v1/catalog/datacenters`.
    Datacenters,
    /// `/v1/catalog/services` of the local datacenter.
    Services,
    /// `/v1/catalog/services?dc=X&filter=ServiceKind == "mesh-gateway"` of a remote one.
    Gateways(String),
    /// `/v1/health/service/:service[?dc=X]`.
    Health { dc: String, service: String },
    /// `/v1/config/:kind`.
    Config(&'static str),
    /// `/v1/connect/ca/roots`.
    CaRoots,
}

/// A watch's news for the coordinator. `id` tells a running watch from an earlier one of
/// the same key that was stopped while its message was under way.
#[derive(Debug)]
pub enum Event {
    /// The body changed (or is the first one).
    Data {
        id: u64,
        key: WatchKey,
        value: Arc<Value>,
    },
    /// The watch started failing (sent once per run of failures).
    Failed { id: u64, key: WatchKey },
}

/// Runs until aborted, or until the coordinator is gone.
pub async fn run(shared: Arc<Shared>, key: WatchKey, id: u64, tx: UnboundedSender<Event>) {
    let target = shared.target(&key);
    let kind = key.kind();
    let mut index = 0u64;
    let mut last_body: Option<Bytes> = None;
    let mut backoff = Backoff::new();
    let mut limiter = RateLimiter::new(Instant::now());
    // The last attempt failed: the next one is a plain read (no index), which answers at
    // once and so tells at once whether Consul is back, and catches up on what was missed.
    let mut failing = false;
    // The error last logged, so that a run of identical failures is logged once.
    let mut logged_error: Option<String> = None;
    loop {
        let ask = (!failing && index != 0).then_some(index);
        let result = shared
            .api
            .get(&target, ask, &shared.wait_param, shared.timeout)
            .await
            .and_then(|answer| decode_if_changed(answer, last_body.as_ref(), &target.display));
        match result {
            Ok((answer, value)) => {
                let step = answer.index.map(|returned| index_step(index, returned));
                let changed = value.is_some();
                shared.metrics.request(
                    kind,
                    if changed {
                        RequestResult::ok
                    } else {
                        RequestResult::unchanged
                    },
                );
                if step.is_some_and(|s| s.reset) {
                    shared.metrics.index_resets.inc();
                    tracing::info!(
                        endpoint = %target.display,
                        previous = index,
                        returned = answer.index,
                        "X-Consul-Index went backwards; reading from index 0 again"
                    );
                }
                let next_index = step.map_or(0, |s| s.next);
                shared
                    .board
                    .lock()
                    .success(id, next_index, SystemTime::now());
                if logged_error.take().is_some() {
                    tracing::info!(endpoint = %target.display, "Consul answers again");
                }
                failing = false;
                backoff.reset();
                if let Some(value) = value {
                    last_body = Some(answer.body);
                    if tx
                        .send(Event::Data {
                            id,
                            key: key.clone(),
                            value,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                index = next_index;
                let now = Instant::now();
                let pause = match step {
                    // An endpoint that does not block (real Consul's datacenter list): poll.
                    None => shared.poll_interval,
                    Some(s) if s.unchanged => limiter.no_progress(now),
                    Some(_) => {
                        limiter.progress(now);
                        Duration::ZERO
                    }
                };
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(e) => {
                shared.metrics.request(
                    kind,
                    if e.is_forbidden() {
                        RequestResult::forbidden
                    } else {
                        RequestResult::error
                    },
                );
                let text = e.to_string();
                if logged_error.as_deref() != Some(text.as_str()) {
                    if e.is_forbidden() {
                        tracing::error!("{text}");
                    } else {
                        tracing::warn!("{text}; retrying, the last good data is kept");
                    }
                }
                shared
                    .board
                    .lock()
                    .failure(id, text.clone(), SystemTime::now());
                logged_error = Some(text);
                if !failing {
                    failing = true;
                    if tx
                        .send(Event::Failed {
                            id,
                            key: key.clone(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(jitter(backoff.next_delay())).await;
            }
        }
    }
}

/// The answer and, when its body differs from the last one, the parsed body.
fn decode_if_changed(
    answer: Answer,
    last: Option<&Bytes>,
    endpoint: &str,
) -> Result<(Answer, Option<Arc<Value>>), FetchError> {
    if last == Some(&answer.body) {
        return Ok((answer, None));
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(v) => Ok((answer, Some(Arc::new(v)))),
        Err(e) => Err(FetchError::Decode {
            endpoint: endpoint.to_string(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_body_is_not_a_change() {
        let body = Bytes::from_static(br#"{"web":[]}"#);
        let a = Answer {
            index: Some(3),
            body: body.clone(),
        };
        let (_, v) = decode_if_changed(a.clone(), Some(&body), "/x").unwrap();
        assert!(v.is_none());
        let (_, v) = decode_if_changed(a, None, "/x").unwrap();
        assert_eq!(v.unwrap()["web"], serde_json::json!([]));
        let bad = Answer {
            index: Some(4),
            body: Bytes::from_static(b"<html>"),
        };
        let e = decode_if_changed(bad, Some(&body), "/v1/catalog/services").unwrap_err();
        assert!(e.to_string().contains("/v1/catalog/services"), "{e}");
    }
}
