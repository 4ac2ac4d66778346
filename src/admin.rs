//! The admin listener (`--admin-addr`, localhost by default): `/metrics`, `/debug/streams`,
//! `/debug/groups`, `/debug/sources`, `/healthz`, `/readyz`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::source::SourceHandle;
use crate::xds::stream::StreamRegistry;
use crate::xds::{ResourceType, Store};

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub streams: Arc<StreamRegistry>,
    pub store: Store,
    /// Set once the xDS listener is bound and serving.
    pub ready: Arc<AtomicBool>,
    /// The source that fills the model, for `/debug/sources`.
    pub sources: SourceHandle,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/streams", get(streams))
        .route("/debug/groups", get(groups))
        .route("/debug/sources", get(sources))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn streams(State(s): State<AdminState>) -> Response {
    Json(s.streams.snapshot()).into_response()
}

#[derive(Serialize)]
struct GroupView {
    group: String,
    generation: u64,
    types: Vec<TypeSummary>,
}

#[derive(Serialize)]
struct TypeSummary {
    r#type: &'static str,
    version: String,
    resources: usize,
}

async fn groups(State(s): State<AdminState>) -> Response {
    let mut out: Vec<GroupView> = s
        .store
        .groups()
        .into_iter()
        .map(|g| {
            let st = g.current();
            GroupView {
                group: g.key().to_string(),
                generation: st.generation,
                types: ResourceType::ADD_ORDER
                    .into_iter()
                    .map(|t| TypeSummary {
                        r#type: t.short(),
                        version: st.set(t).version.to_string(),
                        resources: st.set(t).len(),
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Json(out).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The source's state: what was accepted, what was refused and why, whether it is stale.
async fn sources(State(s): State<AdminState>) -> Response {
    Json(s.sources.status()).into_response()
}
