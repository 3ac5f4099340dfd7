//! What the end-to-end tests share: `ratelimit serve` on port 0, in a
//! folder of its own.

// Each test crate uses part of what is here.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `ratelimit serve`, stopped on drop.
pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, &[])
    }

    /// A server with `files` (name, text) in its working folder.
    pub fn start_with(env: &[(&str, &str)], files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self::start_in(dir, env)
    }

    /// Stops the server as a person does (SIGTERM), waits for it to exit,
    /// and starts another in the same folder, on the same store, with
    /// `env`.
    pub fn restart(mut self, env: &[(&str, &str)]) -> Self {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exited = self.child.wait().expect("the server exits");
        assert!(
            exited.success(),
            "the server exits cleanly on SIGTERM: {exited}"
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, env)
    }

    fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ratelimit"));
        for (name, _) in std::env::vars() {
            if name.starts_with("RATE_LIMIT_") || name.starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // The console log is for people; set RATELIMIT_TEST_LOGS to see it.
            .stderr(if std::env::var_os("RATELIMIT_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("ratelimit serve starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .trim()
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/local"))
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            address,
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
