//! One watch: a loop of blocking queries against one endpoint, sending each changed body
//! to the coordinator and keeping its line of the status board.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::Shared;
use super::api::{Answer, FetchError};
use super::metrics::RequestResult;
use super::pacing::BlockingQuery;

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
    let mut query = BlockingQuery::new(&target.display);
    let mut last_body: Option<Bytes> = None;
    loop {
        let result = shared
            .api
            .get(&target, query.index(), &shared.wait_param, shared.timeout)
            .await
            .and_then(|answer| decode_if_changed(answer, last_body.as_ref(), &target.display));
        match result {
            Ok((answer, value)) => {
                let changed = value.is_some();
                shared.metrics.request(
                    kind,
                    if changed {
                        RequestResult::ok
                    } else {
                        RequestResult::unchanged
                    },
                );
                let step = query.answered(answer.index);
                if step.is_some_and(|s| s.reset) {
                    shared.metrics.index_resets.inc();
                }
                shared
                    .board
                    .lock()
                    .success(id, query.next_index(), SystemTime::now());
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
                // An endpoint that does not block (real Consul's datacenter list): poll.
                let pause = query.pause(step, shared.poll_interval);
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
                shared
                    .board
                    .lock()
                    .failure(id, e.to_string(), SystemTime::now());
                let (first, delay) = query.failed(&e, "the last good data is kept");
                if first
                    && tx
                        .send(Event::Failed {
                            id,
                            key: key.clone(),
                        })
                        .is_err()
                {
                    return;
                }
                tokio::time::sleep(delay).await;
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
