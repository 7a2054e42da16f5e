//! The HTTP face of `run` (and of `replay` while it runs): Prometheus
//! metrics at `/metrics`, liveness and readiness at `/healthz/live` and
//! `/healthz/ready`, and the query API under `/v1` (start-ups, balances,
//! statements) that any instance answers for any start-up, forwarding to
//! the owner ([`routing`]). The OpenAPI document is at `/openapi.json`.
//!
//! The loop publishes into a [`Service`]; the server runs on the command's
//! tokio runtime and never touches the fold: queries read the committed
//! state from RocksDB, as the last commit cycle left it.

pub mod client;
pub mod metrics;
mod query;
pub mod routing;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

pub use self::metrics::Metrics;
pub use self::query::QueryState;
use crate::config::HttpConfig;

/// The loop must have gone round within this long to be live.
const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// What the loop tells the endpoints about its tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tasks {
    /// Joined the group (or, for a replay, started folding).
    pub joined: bool,
    /// Tasks owned now.
    pub assigned: BTreeSet<u32>,
    /// Of those, the ones still restoring or re-folding.
    pub refolding: BTreeSet<u32>,
}

impl Tasks {
    /// Ready to serve: partitions assigned and every task done restoring;
    /// otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.joined {
            return Err("not joined the consumer group yet".to_owned());
        }
        if self.assigned.is_empty() {
            return Err("no partitions assigned".to_owned());
        }
        if !self.refolding.is_empty() {
            let tasks: Vec<String> = self.refolding.iter().map(u32::to_string).collect();
            return Err(format!("tasks {} are restoring (re-folding up to the committed offsets)", tasks.join(", ")));
        }
        Ok(())
    }

    /// Tasks this instance answers queries for.
    pub fn serving(&self) -> impl Iterator<Item = u32> + '_ {
        self.assigned.difference(&self.refolding).copied()
    }
}

/// Liveness and readiness, as the loop last reported them.
pub struct Health {
    started: Instant,
    beat_millis: AtomicU64,
    tasks: Mutex<Tasks>,
}

impl Health {
    fn new() -> Health {
        Health { started: Instant::now(), beat_millis: AtomicU64::new(0), tasks: Mutex::new(Tasks::default()) }
    }

    /// The loop went round.
    pub fn beat(&self) {
        self.beat_millis.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let since = self.started.elapsed().as_millis() as u64 - self.beat_millis.load(Ordering::Relaxed);
        since <= LIVE_WITHIN.as_millis() as u64
    }

    pub fn set_tasks(&self, tasks: Tasks) {
        *self.tasks.lock().expect("health lock") = tasks;
    }

    pub fn tasks(&self) -> Tasks {
        self.tasks.lock().expect("health lock").clone()
    }
}

/// Everything the endpoints read.
pub struct Service {
    pub metrics: Metrics,
    pub health: Health,
    /// The query API (live processor only), once its store is open.
    query: OnceLock<QueryState>,
    token: Option<String>,
    /// Where other instances reach this one, once it listens.
    advertised_url: OnceLock<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Service").field("queries", &self.query.get().is_some()).finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(metrics: Metrics, token: Option<String>) -> Arc<Service> {
        Arc::new(Service {
            metrics,
            health: Health::new(),
            query: OnceLock::new(),
            token,
            advertised_url: OnceLock::new(),
        })
    }

    /// Where other instances reach this one (once [`start`] has bound).
    pub fn advertised_url(&self) -> Option<String> {
        self.advertised_url.get().cloned()
    }

    /// Turns the query API on.
    pub fn serve_queries(&self, query: QueryState) {
        let _ = self.query.set(query);
    }
}

/// Binds `[http] listen` and serves `service` on the current tokio runtime
/// until the process ends; returns the bound address. The advertised URL
/// is the configured one, or derived from the bound address.
pub async fn start(config: &HttpConfig, service: Arc<Service>) -> crate::Result<SocketAddr> {
    let address = config.listen.context("http.listen is not set")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening for HTTP on {address} (http.listen)"))?;
    let bound = listener.local_addr()?;
    let url = config.advertised_url(bound);
    tracing::info!(address = %bound, advertised_url = %url, "serving metrics, health and queries over HTTP");
    let _ = service.advertised_url.set(url);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(service)).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz/live", get(live))
        .route("/healthz/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .merge(query::routes())
        .with_state(service)
}

type Shared = axum::extract::State<Arc<Service>>;

async fn metrics_text(axum::extract::State(service): Shared) -> Response {
    let text = tokio::task::spawn_blocking(move || service.metrics.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE))], text).into_response()
}

async fn live(axum::extract::State(service): Shared) -> Response {
    if service.health.alive() {
        json_answer(StatusCode::OK, &serde_json::json!({ "live": true }))
    } else {
        let reason = format!("the processing loop has not gone round for over {}s", LIVE_WITHIN.as_secs());
        json_answer(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "live": false, "reason": reason }))
    }
}

async fn ready(axum::extract::State(service): Shared) -> Response {
    let tasks = service.health.tasks();
    match tasks.readiness() {
        Ok(()) => json_answer(StatusCode::OK, &serde_json::json!({ "ready": true, "tasks": tasks.assigned })),
        Err(reason) => json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ready": false, "reason": reason, "tasks": tasks.assigned, "restoring": tasks.refolding }),
        ),
    }
}

/// The OpenAPI 3.1 document of these endpoints.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI).into_response()
}

/// A JSON answer with `status`.
fn json_answer<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

/// A JSON error: `{"error": …}` with `status`.
fn error_answer(status: StatusCode, message: &str) -> Response {
    json_answer(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_partitions_assigned_and_every_task_restored() {
        let mut tasks = Tasks::default();
        assert_eq!(tasks.readiness(), Err("not joined the consumer group yet".to_owned()));
        tasks.joined = true;
        assert_eq!(tasks.readiness(), Err("no partitions assigned".to_owned()));
        tasks.assigned = [0, 2].into();
        tasks.refolding = [2].into();
        assert!(tasks.readiness().unwrap_err().contains("tasks 2 are restoring"));
        assert_eq!(tasks.serving().collect::<Vec<_>>(), vec![0]);
        tasks.refolding.clear();
        assert_eq!(tasks.readiness(), Ok(()));
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")));
        let paths = document["paths"].as_object().expect("paths");
        for path in [
            "/metrics",
            "/healthz/live",
            "/healthz/ready",
            "/v1/startups",
            "/v1/startups/{startup}/balances",
            "/v1/startups/{startup}/statements",
            "/v1/startups/{startup}/statements/{period}",
        ] {
            assert!(paths.contains_key(path), "{path} is not in the OpenAPI document");
        }
    }
}
