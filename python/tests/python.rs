//! The Python package's tests, run by `cargo test` like every other test:
//! a virtual environment of its own, the package built and installed from
//! this folder with pip (maturin, through PEP 517, as a user installs it),
//! then pytest on `tests/`. Python 3 and pip must be on the machine; if
//! they are not, or a step fails, the test fails and says which.
//!
//! A second test builds the Lambda example's layer (a manylinux wheel) and
//! runs the guide's handlers on it.
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

/// What builds the Lambda example's layer: maturin, and zig to link for
/// glibc 2.17 (manylinux2014).
const MATURIN: &str = "maturin>=1.16,<2";
const ZIG: &str = "ziglang>=0.15,<0.18";

/// A DynamoDB-API server (dynoxide, in this process) with the table
/// `RateLimits`: its endpoint.
async fn table() -> String {
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
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_installs_with_pip_and_its_tests_pass() {
    let endpoint = table().await;
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

/// The Lambda example's layer (examples/python), built as `sam build`
/// builds it: its Makefile makes a manylinux2014 wheel with maturin and
/// zig and unpacks it under `python/`. The wheel is tagged abi3 and
/// manylinux_2_17, its module needs no glibc newer than 2.17, and the
/// example's handlers (the guide's) run on it in a fresh interpreter that
/// has only the layer, as Lambda's Python runtime has `/opt/python`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_examples_layer_is_a_manylinux_wheel_that_runs_the_guides_handlers() {
    let endpoint = table().await;
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lambda-layer");
    let tools = Venv::new(&scratch.join("venv"), &[MATURIN, ZIG]);
    let layer = scratch.join("layer");
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("python/ is in the workspace")
        .join("examples")
        .join("python");
    let path = std::env::join_paths(
        std::iter::once(tools.bin_dir()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .expect("PATH joins");
    run(
        "make build-RateLimiterLayer (the example's layer)",
        Command::new("make")
            .arg("-C")
            .arg(&example)
            .arg("build-RateLimiterLayer")
            .arg(format!("ARTIFACTS_DIR={}", layer.display()))
            .env("PATH", &path),
    );

    let site = layer.join("python");
    let wheel = std::fs::read_dir(&site)
        .expect("the layer has python/")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "dist-info"))
        .expect("the wheel's dist-info is in the layer");
    let tags = std::fs::read_to_string(wheel.join("WHEEL")).expect("the wheel has WHEEL");
    assert!(
        tags.lines()
            .any(|l| l == "Tag: cp39-abi3-manylinux_2_17_x86_64"),
        "the wheel is abi3 (Python 3.9 and later) for glibc 2.17 on x86_64:\n{tags}"
    );
    let module = std::fs::read(site.join("ratelimiter").join("_native.abi3.so"))
        .expect("the native module is in the layer");
    assert_eq!(&module[..4], b"\x7fELF", "the module is an ELF file");
    assert_eq!(
        u16::from_le_bytes([module[18], module[19]]),
        0x3e,
        "the module is built for x86_64"
    );
    // The check can fail: this test's own binary, linked on this machine,
    // needs a newer glibc.
    let own = std::fs::read(std::env::current_exe().expect("the test's path")).expect("readable");
    assert!(
        newest_glibc(&own).is_some_and(|v| v > (2, 17)),
        "this machine's binaries need glibc newer than 2.17"
    );
    let newest = newest_glibc(&module);
    assert!(
        newest.is_some_and(|v| v <= (2, 17)),
        "the module needs glibc {newest:?}, newer than manylinux2014's 2.17"
    );

    // The system's interpreter, with nothing but the layer and the
    // handlers on its path, isolated from the user's site-packages.
    let script = r#"
import json, ratelimiter, heartbeat_handler, connect_handler
event = {"requestContext": {"connectionId": "conn-layer", "identity": {"sourceIp": "203.0.113.50"}}}
beats = [heartbeat_handler.lambda_handler(event, None) for _ in range(3)]
print(json.dumps({"module": ratelimiter.__file__, "beats": beats, "connect": connect_handler.lambda_handler(event, None)}))
"#;
    let printed = run(
        "the guide's handlers on the layer",
        Command::new("python3")
            .args(["-s", "-c", script])
            .current_dir(&scratch)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "PYTHONPATH",
                std::env::join_paths([site.clone(), example.join("handlers")]).unwrap(),
            )
            .env("AWS_ENDPOINT_URL_DYNAMODB", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RATE_LIMIT_TIMEOUT_MS", "5000"),
    );
    let result: serde_json::Value =
        serde_json::from_str(printed.trim().lines().last().unwrap_or_default())
            .expect("the script prints one JSON line");
    assert!(
        result["module"]
            .as_str()
            .is_some_and(|m| Path::new(m).starts_with(&site)),
        "ratelimiter is imported from the layer: {result}"
    );
    let statuses: Vec<_> = result["beats"]
        .as_array()
        .expect("three heartbeats")
        .iter()
        .map(|b| b["statusCode"].as_u64())
        .collect();
    assert_eq!(statuses, [Some(200), Some(200), Some(429)], "{result}");
    assert_eq!(
        result["beats"][2]["headers"]["Retry-After"], "30",
        "{result}"
    );
    // The guide's $connect handler returns nothing when it lets a
    // connection in.
    assert!(result["connect"].is_null(), "{result}");
}

/// The newest `GLIBC_x.y` version an ELF file names: the symbol versions
/// it needs from glibc are among the strings of its dynamic section.
fn newest_glibc(elf: &[u8]) -> Option<(u32, u32)> {
    let marker = b"GLIBC_";
    elf.windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .filter_map(|(at, _)| {
            let rest = &elf[at + marker.len()..];
            let end = rest.iter().position(|&b| b == 0)?;
            let version = std::str::from_utf8(&rest[..end]).ok()?;
            let (major, minor) = version.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .max()
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
