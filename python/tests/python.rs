//! The Python package's tests, run by `cargo test` like every other test:
//! a virtual environment of its own, the package built and installed from
//! this folder with pip (maturin, through PEP 517, as a user installs it),
//! then pytest on `tests/`. Python 3 and pip must be on the machine; if
//! they are not, or a step fails, the test fails and says which.
//!
//! The integration tests need a DynamoDB-API server with the table, and
//! the `ratelimit` command: this test starts the one (dynoxide, in
//! process) and builds the other, and hands both to pytest.

use std::path::Path;
use std::process::Command;

mod venv;

use venv::{Venv, run};

/// pytest and mypy (its stubtest checks the stubs), pinned to a major
/// version.
const PYTEST: &str = "pytest>=8,<10";
const MYPY: &str = "mypy>=1.10,<2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_installs_with_pip_and_its_tests_pass() {
    let endpoint = ratelimiter_testing::dynoxide().await;
    let store = ratelimiter_dynamodb::DynamoDbStore::new(
        ratelimiter_dynamodb::client(&ratelimiter_dynamodb::ClientOptions::local(
            &endpoint,
            std::time::Duration::from_secs(5),
        ))
        .await,
        "RateLimits",
    );
    store
        .create_table()
        .await
        .expect("the test table is created");
    let cli = ratelimit_command();
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The dev profile: the tests' build of the workspace is reused. A user's
    // `pip install ./python` builds the release one.
    let venv = Venv::with_package(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv"),
        &[PYTEST, MYPY],
        Some("--profile dev"),
    );
    // From outside the package's folder, so that the installed package is
    // imported, not its sources.
    run(
        "pytest python/tests",
        Command::new(venv.bin("pytest"))
            .args(["-q", "-p", "no:cacheprovider"])
            .arg(package.join("tests"))
            .current_dir(package.parent().expect("python/ is in the workspace"))
            .env("RATELIMIT_TEST_DYNAMODB_ENDPOINT", &endpoint)
            .env("RATELIMIT_TEST_CLI", &cli),
    );
}

/// The `ratelimit` command of this workspace, built if it is not (it is
/// when the whole workspace's tests run).
fn ratelimit_command() -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder holds tmp/")
        .to_owned();
    run(
        "building the ratelimit command",
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--locked",
                "-p",
                "ratelimiter-cli",
                "--bin",
                "ratelimit",
            ])
            .env("CARGO_TARGET_DIR", &target),
    );
    target.join("debug").join("ratelimit")
}
