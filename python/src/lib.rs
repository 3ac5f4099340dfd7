//! `ratelimiter._native`: the Rust service behind the Python package
//! `ratelimiter` (python/ratelimiter), which gives it the integration
//! guide's names.
//!
//! One process-wide tokio runtime runs every call; a call releases the GIL
//! while it waits (`Python::detach`), so Python threads do not serialise on
//! a DynamoDB round trip. The DynamoDB client is made by the first call,
//! not by the import nor the constructor: a module-level
//! `RateLimitService()` costs a Lambda container's start-up nothing but
//! reading its configuration.

use std::sync::{LazyLock, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use ratelimiter::gcra::{Status, ceil_secs};
use ratelimiter::{
    Builder, Config, Kind, MemoryStore, Policies, PolicyId, RateLimitService, Request, Verdict,
};
use ratelimiter_dynamodb::{DynamoDbConfig, DynamoDbStore};

/// The runtime every call runs on: two workers, so that a call's store I/O
/// and timers go on while the calling thread waits.
static RUNTIME: LazyLock<Result<tokio::runtime::Runtime, String>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ratelimiter")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the rate limiter's runtime: {e}"))
});

fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    RUNTIME
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(e.clone()))
}

/// At most this much of a value a caller gave is quoted back in an error.
const QUOTED: usize = 80;

fn quoted(value: &str) -> String {
    let mut cut: String = value.chars().take(QUOTED).collect();
    if cut.len() < value.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// The service on the store it was built for. One per `Service`, made
/// once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Limiter {
    /// This process's memory: for tests, and one process alone.
    Memory(RateLimitService<MemoryStore>),
    /// The DynamoDB table, its client made by the first call.
    Table(Table),
}

struct Table {
    builder: Mutex<Option<Builder>>,
    config: DynamoDbConfig,
    service: tokio::sync::OnceCell<RateLimitService<DynamoDbStore>>,
}

impl Table {
    async fn service(&self) -> PyResult<&RateLimitService<DynamoDbStore>> {
        self.service
            .get_or_try_init(|| async {
                let builder = self
                    .builder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or_else(|| PyRuntimeError::new_err("the service's set-up failed before"))?;
                Ok::<_, PyErr>(builder.build(DynamoDbStore::with_config(&self.config).await))
            })
            .await
    }
}

/// Runs `$body` with `$service` bound to the limiter's service, whatever
/// its store, on the runtime, the GIL released.
macro_rules! on_service {
    ($self:ident, $py:ident, |$service:ident| $body:expr) => {
        $py.detach(|| {
            runtime()?.block_on(async {
                match &$self.limiter {
                    Limiter::Memory($service) => $body,
                    Limiter::Table(table) => {
                        let $service = table.service().await?;
                        $body
                    }
                }
            })
        })
    };
}

/// The rate-limit service: the configuration of this process's
/// environment (`RATE_LIMIT_*`, `RATE_LIMIT_CONFIG`), on DynamoDB or in
/// memory.
#[pyclass(module = "ratelimiter._native", frozen)]
struct Service {
    limiter: Limiter,
}

/// One decision, as the Rust API's `Verdict` holds it.
#[pyclass(module = "ratelimiter._native", frozen)]
struct Decided {
    /// The policy's name.
    #[pyo3(get)]
    policy: String,
    /// Whether the request may proceed.
    #[pyo3(get)]
    allowed: bool,
    /// Whole seconds until the same request would be allowed (0 when
    /// allowed, never 0 when denied).
    #[pyo3(get)]
    retry_after: u64,
    /// Tokens left in the tightest limit.
    #[pyo3(get)]
    remaining: u32,
    /// Every limit's numbers: limit, window, remaining, retry after and
    /// reset, in seconds.
    numbers: Vec<(u32, u64, u32, u64, u64)>,
    /// Store calls this decision made.
    #[pyo3(get)]
    calls: u32,
    /// Answered from what this process knew, without the store.
    #[pyo3(get)]
    cached: bool,
    /// The write capacity units those calls consumed (DynamoDB's: what
    /// the bill counts).
    #[pyo3(get)]
    write_units: u32,
    /// The read capacity units they consumed.
    #[pyo3(get)]
    read_units: u32,
    /// Why the failure mode decided instead of the store, if it did.
    #[pyo3(get)]
    degraded: Option<&'static str>,
    /// Denied by the limit, but allowed: the policy is in shadow mode.
    #[pyo3(get)]
    would_deny: bool,
}

#[pymethods]
impl Decided {
    /// Every limit of the policy, in its order: dicts of `limit`,
    /// `window`, `remaining`, `retry_after` and `reset` (seconds).
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.numbers
            .iter()
            .map(|&(limit, window, remaining, retry_after, reset)| {
                let dict = PyDict::new(py);
                dict.set_item("limit", limit)?;
                dict.set_item("window", window)?;
                dict.set_item("remaining", remaining)?;
                dict.set_item("retry_after", retry_after)?;
                dict.set_item("reset", reset)?;
                Ok(dict)
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let flag = |b: bool| if b { "True" } else { "False" };
        let degraded = match self.degraded {
            Some(why) => format!("'{why}'"),
            None => "None".to_owned(),
        };
        format!(
            "Verdict(policy={:?}, allowed={}, retry_after={}, remaining={}, calls={}, cached={}, degraded={degraded})",
            self.policy,
            flag(self.allowed),
            self.retry_after,
            self.remaining,
            self.calls,
            flag(self.cached),
        )
    }
}

impl Decided {
    fn new(name: &str, verdict: &Verdict) -> Self {
        Self {
            policy: name.to_owned(),
            allowed: verdict.allowed(),
            retry_after: verdict.retry_after_secs(),
            remaining: verdict.decision.remaining,
            numbers: verdict
                .limits()
                .iter()
                .map(|d| {
                    (
                        d.limit,
                        d.window.as_secs(),
                        d.remaining,
                        ceil_secs(d.retry_after),
                        ceil_secs(d.reset_after),
                    )
                })
                .collect(),
            calls: verdict.calls,
            cached: verdict.cached,
            write_units: verdict.capacity.write,
            read_units: verdict.capacity.read,
            degraded: verdict.degraded.map(|d| d.as_str()),
            would_deny: verdict.would_deny(),
        }
    }
}

/// A caller's mistake (a bad configuration, policy, kind or cost), as
/// Python's `ValueError` with the Rust side's message.
fn value_error(error: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(error.to_string())
}

/// The policy named `name` in `policies`, or a `ValueError` listing them.
fn find(policies: &Policies, name: &str) -> PyResult<PolicyId> {
    policies.find(name).map_err(value_error)
}

fn status_dict<'py>(py: Python<'py>, status: &Status) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("count", status.count)?;
    dict.set_item("limit", status.limit)?;
    dict.set_item("reset_in_seconds", status.reset_in_seconds)?;
    dict.set_item("window_duration", status.window_duration)?;
    Ok(dict)
}

#[pymethods]
impl Service {
    /// Reads the configuration now (an invalid one raises `ValueError`
    /// with the same message as the Rust functions'); the store's client
    /// is made by the first call.
    #[new]
    #[pyo3(signature = (store = "dynamodb"))]
    fn new(store: &str) -> PyResult<Self> {
        // Python's logging levels as they are now: a level set after the
        // import but before the service (a handler module's usual order)
        // takes effect.
        if let Some(logging) = LOGGING.get() {
            logging.reset();
        }
        let config = Config::from_env().map_err(value_error)?;
        let limiter = match store {
            "memory" => Limiter::Memory(Builder::from_config(config).in_memory()),
            "dynamodb" => Limiter::Table(Table {
                builder: Mutex::new(Some(Builder::from_config(config))),
                config: DynamoDbConfig::from_env().map_err(value_error)?,
                service: tokio::sync::OnceCell::new(),
            }),
            other => {
                return Err(PyValueError::new_err(format!(
                    "store must be \"dynamodb\" or \"memory\", got {}",
                    quoted(other)
                )));
            }
        };
        Ok(Self { limiter })
    }

    /// The names of every policy, the seed's four first.
    fn policies(&self) -> Vec<String> {
        let policies = match &self.limiter {
            Limiter::Memory(service) => service.policies(),
            Limiter::Table(table) => match table.service.get() {
                Some(service) => service.policies(),
                None => {
                    let builder = table.builder.lock().unwrap_or_else(|e| e.into_inner());
                    return match builder.as_ref() {
                        Some(builder) => names(&builder.config().policies),
                        None => Vec::new(),
                    };
                }
            },
        };
        names(policies)
    }

    /// Takes `cost` tokens of `policy` for `identifier` (in `tier`): the
    /// decision, allowed or not.
    #[pyo3(signature = (policy, identifier, cost = 1, tier = None))]
    fn decide(
        &self,
        py: Python<'_>,
        policy: &str,
        identifier: &str,
        cost: u32,
        tier: Option<&str>,
    ) -> PyResult<Decided> {
        on_service!(self, py, |service| {
            let id = find(service.policies(), policy)?;
            let request = Request::from((id, identifier)).cost(cost).tier(tier);
            let verdict = service.decide(request).await.map_err(value_error)?;
            Ok(Decided::new(policy, &verdict))
        })
    }

    /// Every limit's status of `policy` for `identifier`, counted as
    /// `kind` if given, consuming nothing: a list of the seed's dicts.
    #[pyo3(signature = (policy, identifier, tier = None, kind = None))]
    fn status(
        &self,
        py: Python<'_>,
        policy: &str,
        identifier: &str,
        tier: Option<&str>,
        kind: Option<&str>,
    ) -> PyResult<Vec<Py<PyDict>>> {
        let kind = kind.map(Kind::new).transpose().map_err(value_error)?;
        let statuses = on_service!(self, py, |service| {
            let id = find(service.policies(), policy)?;
            let request = Request::from((id, identifier))
                .tier(tier)
                .kind(kind.as_ref());
            service.status(request).await.map_err(value_error)
        })?;
        statuses
            .iter()
            .map(|status| Ok(status_dict(py, status)?.unbind()))
            .collect()
    }

    /// The seed's status of one key, consuming nothing: for a policy of
    /// several limits, the fullest one's.
    fn get_rate_limit_status(
        &self,
        py: Python<'_>,
        operation: &str,
        identifier_type: &str,
        identifier_value: &str,
    ) -> PyResult<Py<PyDict>> {
        let kind = Kind::new(identifier_type).map_err(value_error)?;
        let status = on_service!(self, py, |service| {
            let id = find(service.policies(), operation)?;
            service
                .get_rate_limit_status(id, &kind, identifier_value)
                .await
                .map_err(value_error)
        })?;
        Ok(status_dict(py, &status)?.unbind())
    }

    /// Empties the buckets of `policy` for `identifier`.
    #[pyo3(signature = (policy, identifier, tier = None))]
    fn reset(
        &self,
        py: Python<'_>,
        policy: &str,
        identifier: &str,
        tier: Option<&str>,
    ) -> PyResult<()> {
        on_service!(self, py, |service| {
            let id = find(service.policies(), policy)?;
            let request = Request::from((id, identifier)).tier(tier);
            service.reset(request).await.map_err(value_error)
        })
    }
}

fn names(policies: &ratelimiter::Policies) -> Vec<String> {
    policies.iter().map(|(_, p)| p.name().to_owned()).collect()
}

/// The bridge from Rust's `log` records to Python's `logging`. It caches
/// each logger's level the first time a Rust module logs, so that a record
/// no logger wants (the AWS SDK's debug records, say) costs no GIL; making
/// a `Service` empties the cache.
static LOGGING: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// The module: Rust's `tracing` events reach Python's `logging` (through
/// the `log` facade), under the Rust module's path with dots
/// (`ratelimiter.failure`) and at their own level.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // Another extension in the process may have installed its own `log`
    // bridge first; records then go through it instead.
    if let Ok(handle) = pyo3_log::try_init() {
        let _ = LOGGING.set(handle);
    }
    module.add_class::<Service>()?;
    module.add_class::<Decided>()?;
    Ok(())
}
