//! Time from process start to ready-for-first-event for each Lambda binary:
//! from `spawn` to the binary's first `GET /runtime/invocation/next` on a
//! stand-in Runtime API (the moment Lambda would hand it an event).
//!
//! `cargo bench -p ratelimiter-lambda --bench startup`
//!
//! `connect, caps` is the `connect` binary with a configuration that caps
//! open connections per address, so that it also builds its Management
//! API client (to repair full caps); `connect, soft` the same binary with
//! `RATE_LIMIT_CONNECT_REJECT=soft`, so that it builds that client and
//! the Lambda client of its follow-up.
//!
//! The binaries are the bench profile's (the release settings) unless
//! `LAMBDA_BIN_DIR` names a folder with other builds, such as the shipped
//! ones: `cargo build --profile lambda -p ratelimiter-lambda --bins`, then
//! `LAMBDA_BIN_DIR=target/lambda cargo bench -p ratelimiter-lambda --bench startup`.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 40;

fn time_to_ready(binary: &str, env: &[(&str, &str)]) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut command = Command::new(binary);
    command.env_clear().envs(env.iter().copied());
    let started = Instant::now();
    let mut child = command
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "group")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let mut request = [0u8; 64];
    let n = stream.read(&mut request).unwrap();
    let elapsed = started.elapsed();
    let line = String::from_utf8_lossy(&request[..n]);
    assert!(
        line.starts_with("GET /2018-06-01/runtime/invocation/next"),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    elapsed
}

fn main() {
    println!("binary       min ms   p50 ms   p90 ms   max ms  (of {RUNS} starts)");
    let dir = std::env::var("LAMBDA_BIN_DIR").ok();
    let caps = std::env::temp_dir().join(format!("startup-caps-{}.toml", std::process::id()));
    std::fs::write(
        &caps,
        "[policy.open]\nkey = \"ip\"\nconcurrent = 2\n[connect]\npolicies = [\"open\"]\n",
    )
    .unwrap();
    let caps = caps.to_str().unwrap().to_owned();
    let with_caps = [("RATE_LIMIT_CONFIG", caps.as_str())];
    let soft = [("RATE_LIMIT_CONNECT_REJECT", "soft")];
    for (name, file, built, env) in [
        ("connect", "connect", env!("CARGO_BIN_EXE_connect"), &[][..]),
        (
            "connect, caps",
            "connect",
            env!("CARGO_BIN_EXE_connect"),
            &with_caps[..],
        ),
        (
            "connect, soft",
            "connect",
            env!("CARGO_BIN_EXE_connect"),
            &soft[..],
        ),
        (
            "disconnect",
            "disconnect",
            env!("CARGO_BIN_EXE_disconnect"),
            &[][..],
        ),
        (
            "heartbeat",
            "heartbeat",
            env!("CARGO_BIN_EXE_heartbeat"),
            &[][..],
        ),
        ("message", "message", env!("CARGO_BIN_EXE_message"), &[][..]),
    ] {
        // Relative to the workspace, where the command is documented to run.
        let binary = match &dir {
            Some(dir) => format!("{}/../../{dir}/{file}", env!("CARGO_MANIFEST_DIR")),
            None => built.to_owned(),
        };
        let size = std::fs::metadata(&binary).unwrap().len();
        println!("{name}: {binary} ({size} bytes)");
        time_to_ready(&binary, env); // warm the page cache
        let mut times: Vec<Duration> = (0..RUNS).map(|_| time_to_ready(&binary, env)).collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<14} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            ms(times[0]),
            ms(times[RUNS / 2]),
            ms(times[RUNS * 9 / 10]),
            ms(times[RUNS - 1]),
        );
    }
    let _ = std::fs::remove_file(&caps);
}
