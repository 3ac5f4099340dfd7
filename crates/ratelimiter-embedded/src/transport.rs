//! The embedded store's DynamoDB API, reached without a socket.
//!
//! The embedded store is dynoxide (DynamoDB's API on a SQLite file) inside
//! this process, spoken to by the same SDK client and `DynamoDbStore` as a
//! real table. The SDK's HTTP client is pluggable: [`InProcess`] is one that
//! hands each request to a thread owning the database, and hands the answer
//! back, with no socket in between.
//!
//! Why not dynoxide's own HTTP server on a loopback port: that port answers
//! every local process, so any local user could scan the table (raw IPs when
//! no key secret is set) or delete items (reset anyone's limits) while
//! `ratelimit serve` runs. With no listening socket there is nothing to
//! reach; the file itself is created readable by its owner only. It also
//! saves a loopback round trip per call (BENCHMARKS.md, "The embedded
//! store, in process").
//!
//! Invariant: opening the embedded store opens no socket. Checked by
//! `tests/private.rs`, which lists this process's file descriptors.

use std::fmt;
use std::sync::mpsc;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use dynoxide::{Database, DynoxideError};
use tokio::sync::oneshot;

/// The endpoint the SDK is configured with. Endpoint resolution needs one;
/// [`InProcess`] never resolves or connects to it (`.invalid` names resolve
/// nowhere, so a client built with another HTTP client by mistake fails
/// rather than reaching something).
pub const ENDPOINT: &str = "http://embedded-store.invalid";

/// The `X-Amz-Target` prefix of DynamoDB's JSON protocol.
const TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// What the embedded store answers in, as DynamoDB does.
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// The operations the embedded store serves: exactly those the store, its
/// administration and `ratelimit migrate` call. Any other is refused the
/// way DynamoDB refuses an operation it does not know, so a new call in the
/// store fails its tests here rather than doing something unchecked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    CreateTable,
    DescribeTable,
    UpdateTimeToLive,
    GetItem,
    PutItem,
    UpdateItem,
    DeleteItem,
    Scan,
}

impl Operation {
    const ALL: [Operation; 8] = [
        Operation::CreateTable,
        Operation::DescribeTable,
        Operation::UpdateTimeToLive,
        Operation::GetItem,
        Operation::PutItem,
        Operation::UpdateItem,
        Operation::DeleteItem,
        Operation::Scan,
    ];

    /// The operation's name in the protocol.
    fn name(self) -> &'static str {
        match self {
            Operation::CreateTable => "CreateTable",
            Operation::DescribeTable => "DescribeTable",
            Operation::UpdateTimeToLive => "UpdateTimeToLive",
            Operation::GetItem => "GetItem",
            Operation::PutItem => "PutItem",
            Operation::UpdateItem => "UpdateItem",
            Operation::DeleteItem => "DeleteItem",
            Operation::Scan => "Scan",
        }
    }

    /// The operation an `X-Amz-Target` header names, if served here.
    fn from_target(target: &str) -> Option<Self> {
        let name = target.strip_prefix(TARGET_PREFIX)?;
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// One request for the database's thread, and where its answer goes.
struct Job {
    operation: Operation,
    body: Vec<u8>,
    answer: oneshot::Sender<Answer>,
}

/// An HTTP status and a DynamoDB JSON body.
type Answer = (u16, String);

/// An SDK HTTP client that serves DynamoDB requests from a dynoxide
/// [`Database`] in this process.
///
/// The database's calls block the thread that makes them (SQLite, and its
/// lock wait when another process holds the file), so they run on a thread
/// of their own, one at a time as SQLite would serialise them anyway; the
/// caller's runtime only awaits the answer. The thread ends, closing the
/// database, when the last clone of this client is dropped.
#[derive(Clone)]
pub struct InProcess {
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InProcess")
    }
}

impl InProcess {
    /// Serves `database` from a new thread.
    pub fn start(database: Database) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("embedded-store".to_owned())
            .spawn(move || serve(&database, queue))?;
        Ok(Self { jobs })
    }

    /// The answer to `request`, or why there is none.
    fn call(&self, request: &HttpRequest) -> Result<oneshot::Receiver<Answer>, Answer> {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(Operation::from_target)
            .ok_or_else(|| {
                (
                    400,
                    r#"{"__type":"com.amazon.coral.service#UnknownOperationException"}"#.to_owned(),
                )
            })?;
        // The SDK sends DynamoDB's JSON bodies whole, never streamed.
        let body = request.body().bytes().ok_or_else(|| {
            serialization_error("the request body is a stream, not a JSON document")
        })?;
        let (answer, receiver) = oneshot::channel();
        let job = Job {
            operation,
            body: body.to_vec(),
            answer,
        };
        self.jobs
            .send(job)
            .map_err(|_| internal_error("the embedded store's thread has stopped"))?;
        Ok(receiver)
    }
}

impl HttpConnector for InProcess {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let receiver = match InProcess::call(self, &request) {
            Ok(receiver) => receiver,
            Err(answer) => return HttpConnectorFuture::ready(response(answer)),
        };
        HttpConnectorFuture::new(async move {
            match receiver.await {
                Ok(answer) => response(answer),
                // The thread dropped the job without answering: it panicked
                // in the database. Whether the call was applied is unknown,
                // as after a dropped connection.
                Err(_) => Err(ConnectorError::io(
                    "the embedded store stopped before answering".into(),
                )),
            }
        })
    }
}

impl HttpClient for InProcess {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // No connection to set up, so the connect timeout has nothing to
        // bound; the SDK's attempt and operation timeouts still apply.
        SharedHttpConnector::new(self.clone())
    }
}

/// Answers `queue`'s jobs in order, until every sender is gone.
///
/// A job whose caller stopped waiting before it was reached (its timeout
/// passed while the file was locked, or the queue was long) is dropped
/// unrun: the caller has already decided without it, and running a backlog
/// of abandoned writes would only delay the requests still waiting. One
/// already running is finished, as on a real table.
///
/// A job that finds the file locked by another process is run again for
/// as long as its caller waits: dynoxide gives up after its own fixed 5 s
/// and writes nothing, and the embedded store's callers wait longer (its
/// `TIMEOUT`), for every operation alike.
fn serve(database: &Database, queue: mpsc::Receiver<Job>) {
    for job in queue {
        while !job.answer.is_closed() {
            match answer(database, job.operation, &job.body) {
                Ran::Locked => std::thread::sleep(LOCKED_PAUSE),
                Ran::Answered(answer) => {
                    let _ = job.answer.send(answer);
                    break;
                }
            }
        }
    }
}

/// The pause before running again a job that found the file locked.
const LOCKED_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// What running a job came to.
enum Ran {
    /// Another process held the file's lock: nothing was written.
    Locked,
    /// The answer for the caller.
    Answered(Answer),
}

/// Whether dynoxide's `error` says the file was locked by another process
/// (SQLite's busy or locked), as its message says it: the error's source
/// is rusqlite's, of a version only dynoxide names.
fn locked(error: &DynoxideError) -> bool {
    error.to_string().contains("database is locked")
}

/// The HTTP response the SDK reads for `answer`.
fn response((status, body): Answer) -> Result<HttpResponse, ConnectorError> {
    let status = StatusCode::try_from(status).map_err(|e| ConnectorError::other(e.into(), None))?;
    let mut response = HttpResponse::new(status, SdkBody::from(body));
    response.headers_mut().insert("content-type", CONTENT_TYPE);
    Ok(response)
}

/// Runs `operation` on `database` with the JSON request `body`, as
/// dynoxide's HTTP server would: the response's JSON, or the error's with
/// its status.
fn answer(database: &Database, operation: Operation, body: &[u8]) -> Ran {
    // A panic inside the database must not end the thread: every later call
    // would fail. It answers as an internal error, which the store reports.
    let run = std::panic::AssertUnwindSafe(|| run(database, operation, body));
    Ran::Answered(match std::panic::catch_unwind(run) {
        Ok(Ok(json)) => (200, json),
        Ok(Err(error)) if locked(&error) => return Ran::Locked,
        Ok(Err(error)) => (error.status_code(), error.to_json()),
        Err(_) => internal_error(&format!(
            "the embedded store failed on a {} request",
            operation.name()
        )),
    })
}

/// The operation's response as JSON.
fn run(database: &Database, operation: Operation, body: &[u8]) -> Result<String, DynoxideError> {
    match operation {
        Operation::CreateTable => call(body, |r| database.create_table(r)),
        Operation::DescribeTable => call(body, |r| database.describe_table(r)),
        Operation::UpdateTimeToLive => call(body, |r| database.update_time_to_live(r)),
        Operation::GetItem => call(body, |r| database.get_item(r)),
        Operation::PutItem => call(body, |r| database.put_item(r)),
        Operation::UpdateItem => call(body, |r| database.update_item(r)),
        Operation::DeleteItem => call(body, |r| database.delete_item(r)),
        Operation::Scan => call(body, |r| database.scan(r)),
    }
}

/// Reads a request, runs it, and writes its response.
fn call<Req, Resp>(
    body: &[u8],
    operation: impl FnOnce(Req) -> dynoxide::Result<Resp>,
) -> Result<String, DynoxideError>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
{
    let request = serde_json::from_slice(body).map_err(unreadable)?;
    let response = operation(request)?;
    serde_json::to_string(&response).map_err(|e| DynoxideError::InternalServerError(e.to_string()))
}

/// The error for a request body that does not read as the operation's
/// request. The SDK writes every body here, so this is a bug on our side,
/// but it is still answered as DynamoDB would: a `ValidationException` when
/// dynoxide's readers marked the value invalid (their markers, like serde's
/// position suffix, are theirs and not for the answer), else a
/// `SerializationException`.
fn unreadable(error: serde_json::Error) -> DynoxideError {
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(message, _)| message);
    const VALIDATION: [&str; 3] = ["VALIDATION_AS_READ:", "VALIDATION_REQUEST:", "VALIDATION:"];
    const SERIALIZATION: [&str; 2] = ["SERIALIZATION_AS_READ:", "SERIALIZATION:"];
    if let Some(rest) = VALIDATION.iter().find_map(|m| message.strip_prefix(m)) {
        DynoxideError::ValidationException(rest.to_owned())
    } else {
        let rest = SERIALIZATION
            .iter()
            .find_map(|m| message.strip_prefix(m))
            .unwrap_or(message);
        DynoxideError::SerializationException(rest.to_owned())
    }
}

/// A `SerializationException` answer saying `why`.
fn serialization_error(why: &str) -> Answer {
    let error = DynoxideError::SerializationException(why.to_owned());
    (error.status_code(), error.to_json())
}

/// An `InternalServerError` answer saying `why`.
fn internal_error(why: &str) -> Answer {
    let error = DynoxideError::InternalServerError(why.to_owned());
    (error.status_code(), error.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: Option<&str>, body: &str) -> HttpRequest {
        let mut request = HttpRequest::new(SdkBody::from(body));
        if let Some(target) = target {
            request
                .headers_mut()
                .insert("x-amz-target", target.to_owned());
        }
        request
    }

    async fn send(client: &InProcess, request: HttpRequest) -> (u16, String) {
        let response = HttpConnector::call(client, request).await.unwrap();
        let body = std::str::from_utf8(response.body().bytes().unwrap())
            .unwrap()
            .to_owned();
        assert_eq!(response.headers().get("content-type"), Some(CONTENT_TYPE));
        (response.status().as_u16(), body)
    }

    #[test]
    fn every_operation_is_found_by_its_target_and_no_other() {
        for op in Operation::ALL {
            let target = format!("{TARGET_PREFIX}{}", op.name());
            assert_eq!(Operation::from_target(&target), Some(op));
        }
        for target in [
            "DynamoDB_20120810.DeleteTable",
            "DynamoDB_20120810.BatchWriteItem",
            "UpdateItem",
            "DynamoDBStreams_20120810.UpdateItem",
            "",
        ] {
            assert_eq!(Operation::from_target(target), None, "{target}");
        }
    }

    #[tokio::test]
    async fn an_operation_not_served_is_refused_as_unknown() {
        let client = InProcess::start(Database::memory().unwrap()).unwrap();
        for target in [Some("DynamoDB_20120810.DeleteTable"), None] {
            let (status, body) = send(&client, request(target, "{}")).await;
            assert_eq!(status, 400);
            assert!(body.contains("UnknownOperationException"), "{body}");
        }
    }

    #[tokio::test]
    async fn a_malformed_body_is_a_serialization_error_and_the_thread_goes_on() {
        let client = InProcess::start(Database::memory().unwrap()).unwrap();
        let (status, body) = send(
            &client,
            request(Some("DynamoDB_20120810.GetItem"), "{not json"),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body.contains("SerializationException"), "{body}");
        // The same thread answers the next request.
        let (status, body) = send(
            &client,
            request(
                Some("DynamoDB_20120810.DescribeTable"),
                r#"{"TableName":"Missing"}"#,
            ),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body.contains("ResourceNotFoundException"), "{body}");
    }

    #[tokio::test]
    async fn a_job_whose_caller_stopped_waiting_is_not_run() {
        let (jobs, queue) = mpsc::channel::<Job>();
        let job = |operation, body: &str| {
            let (answer, receiver) = oneshot::channel();
            let job = Job {
                operation,
                body: body.as_bytes().to_vec(),
                answer,
            };
            (job, receiver)
        };
        let create = r#"{"TableName":"Table","KeySchema":[{"AttributeName":"pk","KeyType":"HASH"}],
            "AttributeDefinitions":[{"AttributeName":"pk","AttributeType":"S"}],
            "BillingMode":"PAY_PER_REQUEST"}"#;
        // Queued before the thread starts, so the first caller has given up
        // by the time it is reached.
        let (abandoned, gone) = job(Operation::CreateTable, create);
        drop(gone);
        jobs.send(abandoned).unwrap();
        let (describe, answer) = job(Operation::DescribeTable, r#"{"TableName":"Table"}"#);
        jobs.send(describe).unwrap();
        let (created, created_answer) = job(Operation::CreateTable, create);
        jobs.send(created).unwrap();
        std::thread::spawn(move || serve(&Database::memory().unwrap(), queue));
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 400, "the abandoned CreateTable did not run: {body}");
        assert!(body.contains("ResourceNotFoundException"), "{body}");
        // The same request, waited for, runs.
        let (status, body) = created_answer.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn an_invalid_value_is_a_validation_error_without_markers_or_positions() {
        let client = InProcess::start(Database::memory().unwrap()).unwrap();
        let (status, body) = send(
            &client,
            request(
                Some("DynamoDB_20120810.DescribeTable"),
                r#"{"TableName":"T"}"#,
            ),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body.contains("ValidationException"), "{body}");
        assert!(body.contains("TableName must be at least 3"), "{body}");
        assert!(!body.contains("VALIDATION:"), "{body}");
        assert!(!body.contains(" at line "), "{body}");
    }

    #[tokio::test]
    async fn a_stopped_thread_is_a_connector_error_not_a_hang() {
        let (jobs, queue) = mpsc::channel::<Job>();
        // A thread that drops every job unanswered, as one that panicked.
        std::thread::spawn(move || queue.into_iter().for_each(drop));
        let client = InProcess { jobs };
        let error = HttpConnector::call(&client, request(Some("DynamoDB_20120810.GetItem"), "{}"))
            .await
            .unwrap_err();
        assert!(error.is_io(), "{error:?}");

        let (jobs, queue) = mpsc::channel::<Job>();
        drop(queue);
        let client = InProcess { jobs };
        let (status, body) = send(&client, request(Some("DynamoDB_20120810.GetItem"), "{}")).await;
        assert_eq!(status, 500);
        assert!(body.contains("thread has stopped"), "{body}");
    }
}
