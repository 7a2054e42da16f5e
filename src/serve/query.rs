//! `/v1`: start-ups, balances and statements from the committed state.
//!
//! The owner of a start-up is the task of its partition (murmur2, as the
//! producers key it). An instance answers from its own store for the tasks
//! it owns and has restored; for any other it forwards the request once to
//! the owner the members topic names ([`super::routing`]), marked so the
//! owner never forwards it again; while no owner is known (a rebalance) it
//! answers 503 with `Retry-After`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::routing::{now_millis, Directory};
use super::{error_answer, json_answer, Service};
use crate::fold::TopicNames;
use crate::partitioner::partition_for_key;
use crate::store::rocks::{RocksStore, SnapshotReader};
use crate::store::{reads, KvStore};
use crate::units::Month;

/// Marks a request one instance forwarded to another.
pub const FORWARDED: &str = "x-gpuledger-forwarded";
/// The advertised URL of the instance that read the answer.
pub const SERVED_BY: &str = "x-gpuledger-served-by";
/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the query API reads: the processor's store and where the other
/// tasks are.
pub struct QueryState {
    /// Snapshots of the processor's store, read without its lock (a query
    /// never waits for a commit's write); it does not keep RocksDB open
    /// (it must be closed before the process exits).
    store: SnapshotReader,
    partitions: u32,
    names: TopicNames,
    self_url: String,
    directory: Arc<Directory>,
}

impl QueryState {
    pub fn new(
        store: &Arc<Mutex<RocksStore>>,
        partitions: u32,
        names: TopicNames,
        self_url: String,
        directory: Arc<Directory>,
    ) -> QueryState {
        let store = store.lock().expect("store lock").snapshot_reader();
        QueryState { store, partitions, names, self_url, directory }
    }
}

pub(super) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/startups", get(startups))
        .route("/v1/startups/{startup}/balances", get(balances))
        .route("/v1/startups/{startup}/statements", get(statements))
        .route("/v1/startups/{startup}/statements/{period}", get(statement))
}

/// Where a start-up's task is answered.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Here(u32),
    There(String),
    Unknown(String),
}

/// An answer read from this instance's store, or why not.
type Read = crate::Result<Response>;

async fn balances(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    uri: Uri,
    Path(startup): Path<String>,
) -> Response {
    answer(service, headers, uri, startup, |query, store, task, startup| {
        match reads::balances_in(store, task, startup, &query.names)? {
            Some(balances) => Ok(json_answer(StatusCode::OK, &balances)),
            None => Ok(unknown_startup(startup, task)),
        }
    })
    .await
}

async fn statements(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    uri: Uri,
    Path(startup): Path<String>,
) -> Response {
    answer(service, headers, uri, startup, |query, store, task, startup| {
        if reads::startup_in(store, task, startup)?.is_none() {
            return Ok(unknown_startup(startup, task));
        }
        let committed = reads::committed(store, task, &query.names)?;
        let statements = reads::statements_in(store, task, startup)?
            .into_iter()
            .map(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(&bytes))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json_answer(
            StatusCode::OK,
            &json!({
                "startup": startup,
                "task": task,
                "offsets": committed.offsets,
                "digest": committed.digest,
                "statements": statements,
            }),
        ))
    })
    .await
}

async fn statement(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    uri: Uri,
    Path((startup, period)): Path<(String, String)>,
) -> Response {
    let Some(month) = Month::parse(&period) else {
        return error_answer(StatusCode::BAD_REQUEST, &format!("period {period:?} is not a month YYYY-MM"));
    };
    answer(service, headers, uri, startup, move |query, store, task, startup| {
        if reads::startup_in(store, task, startup)?.is_none() {
            return Ok(unknown_startup(startup, task));
        }
        let Some(bytes) = reads::statement_in(store, task, startup, month)? else {
            return Ok(error_answer(
                StatusCode::NOT_FOUND,
                &format!(
                    "start-up {startup:?} has no closed statement for {month} (a month closes once the ledger's clock \
                     passes its end plus the close grace)"
                ),
            ));
        };
        let committed = reads::committed(store, task, &query.names)?;
        let statement: serde_json::Value = serde_json::from_slice(&bytes)?;
        Ok(json_answer(
            StatusCode::OK,
            &json!({ "task": task, "offsets": committed.offsets, "digest": committed.digest, "statement": statement }),
        ))
    })
    .await
}

/// `/v1/startups`: every start-up of every task, each task's from its
/// owner; `?scope=local` (what instances ask each other) only this
/// instance's tasks.
async fn startups(State(service): State<Arc<Service>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(denied) = authorize(&service, &headers) {
        return denied;
    }
    let Some(query) = service.query.get() else { return not_serving() };
    let serving: Vec<u32> = service.health.tasks().serving().collect();
    let local = {
        let service = Arc::clone(&service);
        let tasks = serving.clone();
        tokio::task::spawn_blocking(move || -> crate::Result<Vec<(String, u32)>> {
            let query = service.query.get().expect("serving queries");
            query.store.read(|store| {
                let mut entries = Vec::new();
                for task in tasks {
                    entries.extend(reads::startups_in(store, task)?.into_iter().map(|startup| (startup, task)));
                }
                Ok(entries)
            })
        })
        .await
    };
    let mut entries: BTreeMap<String, u32> = match local {
        Ok(Ok(entries)) => entries.into_iter().collect(),
        Ok(Err(error)) => return internal(&error),
        Err(error) => return internal(&anyhow::anyhow!("{error}")),
    };
    let mut covered: BTreeSet<u32> = serving.iter().copied().collect();
    let local_only = uri.query().is_some_and(|query| query.split('&').any(|pair| pair == "scope=local"))
        || headers.contains_key(FORWARDED);
    if !local_only {
        let mut by_owner: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (task, url) in query.directory.owners(query.partitions, now_millis()) {
            if !covered.contains(&task) && url != query.self_url {
                by_owner.entry(url).or_default().push(task);
            }
        }
        for (url, tasks) in by_owner {
            let Ok(answer) = forward(&format!("{url}/v1/startups?scope=local"), &headers).await else { continue };
            let Ok(body) = answer.json() else { continue };
            let theirs: BTreeSet<u32> = body["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|task| task.as_u64().map(|task| task as u32))
                .filter(|task| tasks.contains(task))
                .collect();
            for entry in body["startups"].as_array().into_iter().flatten() {
                let (Some(startup), Some(task)) = (entry["startup"].as_str(), entry["task"].as_u64()) else { continue };
                if theirs.contains(&(task as u32)) {
                    entries.insert(startup.to_owned(), task as u32);
                }
            }
            covered.extend(theirs);
        }
        let missing: Vec<String> =
            (0..query.partitions).filter(|task| !covered.contains(task)).map(|task| task.to_string()).collect();
        if !missing.is_empty() {
            return unavailable(&format!(
                "tasks {} have no reachable owner right now (rebalancing)",
                missing.join(", ")
            ));
        }
    }
    let list: Vec<_> = entries.into_iter().map(|(startup, task)| json!({ "startup": startup, "task": task })).collect();
    let mut response = json_answer(StatusCode::OK, &json!({ "startups": list, "tasks": covered }));
    served_by(&mut response, &query.self_url);
    response
}

/// Answers for `startup` here (reading the store with `read`) when this
/// instance owns its task, else from the owner.
async fn answer<F>(service: Arc<Service>, headers: HeaderMap, uri: Uri, startup: String, read: F) -> Response
where
    F: FnOnce(&QueryState, &dyn KvStore, u32, &str) -> Read + Send + 'static,
{
    if let Some(denied) = authorize(&service, &headers) {
        return denied;
    }
    let Some(query) = service.query.get() else { return not_serving() };
    match owner(&service, query, &startup, headers.contains_key(FORWARDED)) {
        Owner::Here(task) => {
            let reader = Arc::clone(&service);
            let read = tokio::task::spawn_blocking(move || {
                let query = reader.query.get().expect("serving queries");
                query.store.read(|store| read(query, store, task, &startup))
            })
            .await;
            let mut response = match read {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => internal(&error),
                Err(error) => internal(&anyhow::anyhow!("{error}")),
            };
            served_by(&mut response, &query.self_url);
            response
        }
        Owner::There(url) => {
            let path = uri.path_and_query().map_or(uri.path(), |path| path.as_str());
            match forward(&format!("{url}{path}"), &headers).await {
                Ok(answer) => relay(answer),
                Err(error) => unavailable(&format!("the owner {url} did not answer: {error:#}")),
            }
        }
        Owner::Unknown(reason) => unavailable(&reason),
    }
}

fn owner(service: &Service, query: &QueryState, startup: &str, forwarded: bool) -> Owner {
    let task = partition_for_key(startup.as_bytes(), query.partitions);
    locate(task, &service.health.tasks(), forwarded, &query.directory, &query.self_url, now_millis())
}

/// Who answers for `task`: here when this instance owns it and has
/// restored it; elsewhere when a fresh announcement names another owner and
/// the request was not forwarded already; else nobody now (503).
fn locate(task: u32, tasks: &super::Tasks, forwarded: bool, directory: &Directory, self_url: &str, now: i64) -> Owner {
    if tasks.serving().any(|serving| serving == task) {
        return Owner::Here(task);
    }
    if tasks.assigned.contains(&task) {
        return Owner::Unknown(format!("task {task} is restoring here"));
    }
    if forwarded {
        return Owner::Unknown(format!("task {task} is not here any more (rebalancing)"));
    }
    match directory.owner(task, now) {
        Some(url) if url != self_url => Owner::There(url),
        _ => Owner::Unknown(format!("task {task} has no owner right now (rebalancing)")),
    }
}

/// `None` when `/v1` needs no token or the request carries it.
fn authorize(service: &Service, headers: &HeaderMap) -> Option<Response> {
    let token = service.token.as_deref()?;
    let given = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    if given.and_then(|value| value.strip_prefix("Bearer ")).is_some_and(|given| constant_time_eq(given, token)) {
        return None;
    }
    let mut response = error_answer(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer …)");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// GETs `url` for another instance, with this request's token.
async fn forward(url: &str, headers: &HeaderMap) -> crate::Result<super::client::Answer> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let mut pass: Vec<(&str, &str)> = vec![(FORWARDED, "1")];
    if let Some(authorization) = authorization {
        pass.push(("authorization", authorization));
    }
    super::client::get(url, &pass, FORWARD_TIMEOUT).await
}

/// The owner's answer, as it gave it.
fn relay(answer: super::client::Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, answer.body).into_response();
    for (name, value) in &answer.headers {
        if [header::CONTENT_TYPE.as_str(), SERVED_BY, header::RETRY_AFTER.as_str()].contains(&name.as_str()) {
            if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

fn served_by(response: &mut Response, url: &str) {
    if let Ok(value) = HeaderValue::from_str(url) {
        response.headers_mut().insert(SERVED_BY, value);
    }
}

fn unknown_startup(startup: &str, task: u32) -> Response {
    error_answer(StatusCode::NOT_FOUND, &format!("no start-up {startup:?} (its task would be {task})"))
}

fn unavailable(reason: &str) -> Response {
    let mut response = error_answer(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn not_serving() -> Response {
    unavailable("the query API starts once the processor has opened its state")
}

fn internal(error: &anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{error:#}"), "a query failed");
    error_answer(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_answered_here_by_its_owner_or_not_at_all() {
        use super::super::routing::Announcement;
        use super::super::Tasks;
        let directory = Directory::default();
        let here = "http://a:8080";
        let mut tasks = Tasks { joined: true, assigned: [0, 1].into(), refolding: [1].into() };
        directory.absorb(0, Announcement { url: here.into(), tasks: vec![0, 1], at: 1_000 });
        directory.absorb(1, Announcement { url: "http://b:8080".into(), tasks: vec![2], at: 1_000 });
        assert_eq!(locate(0, &tasks, false, &directory, here, 1_500), Owner::Here(0));
        assert!(
            matches!(locate(1, &tasks, false, &directory, here, 1_500), Owner::Unknown(reason) if reason.contains("restoring"))
        );
        assert_eq!(locate(2, &tasks, false, &directory, here, 1_500), Owner::There("http://b:8080".into()));
        // Forwarded already: never a second hop.
        assert!(
            matches!(locate(2, &tasks, true, &directory, here, 1_500), Owner::Unknown(reason) if reason.contains("rebalancing"))
        );
        // Nobody claims task 3; and b's claim goes stale.
        assert!(matches!(locate(3, &tasks, false, &directory, here, 1_500), Owner::Unknown(_)));
        assert!(matches!(locate(2, &tasks, false, &directory, here, 30_000), Owner::Unknown(_)));
        // A rebalance moved task 0 away, but the table still names this instance.
        tasks.assigned = [1].into();
        assert!(
            matches!(locate(0, &tasks, false, &directory, here, 1_500), Owner::Unknown(reason) if reason.contains("no owner"))
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq("s3cret", "s3cret"));
        assert!(!constant_time_eq("s3cre", "s3cret"));
        assert!(!constant_time_eq("s3creT", "s3cret"));
    }
}
