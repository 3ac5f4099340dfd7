//! Invariants of ARCHITECTURE.md that the code's text can show, checked on
//! the workspace's sources (tests, doc comments and test modules aside).
//! `.ci/run` checks the dependency rules on the crate graph.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The code of every `.rs` file under `dir`: comments dropped, and nothing
/// from the first `#[cfg(test)]` on.
fn code_under(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![workspace().join(dir)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else {
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let before_tests = text.split("#[cfg(test)]").next().unwrap();
                let code: Vec<&str> = before_tests
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("//"))
                    .collect();
                files.push((path, code.join("\n")));
            }
        }
    }
    assert!(!files.is_empty(), "no sources under {dir}");
    files
}

/// Every place in `dirs` (but `except`) where one of `words` appears.
fn find(dirs: &[&str], except: &[&str], words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for (path, code) in code_under(dir) {
            if except.iter().any(|e| path.ends_with(e)) {
                continue;
            }
            for word in words {
                if code.contains(word) {
                    found.push(format!("{}: {word}", path.display()));
                }
            }
        }
    }
    found
}

const SOURCES: [&str; 4] = [
    "crates/ratelimiter/src",
    "crates/ratelimiter-dynamodb/src",
    "crates/ratelimiter-lambda/src",
    "crates/ratelimiter-cli/src",
];

#[test]
fn time_comes_only_from_the_clock() {
    let found = find(
        &SOURCES,
        &["ratelimiter/src/clock.rs"],
        &[
            "SystemTime::now",
            "Instant::now",
            "wall_clock(",
            "UNIX_EPOCH",
        ],
    );
    assert_eq!(found, Vec::<String>::new(), "read the time from a Clock");
}

#[test]
fn stores_never_compute_a_decision() {
    // Stores see steps and TATs only: no quota, no decision numbers.
    let found = find(
        &[
            "crates/ratelimiter/src/store.rs",
            "crates/ratelimiter/src/memory.rs",
            "crates/ratelimiter/src/cache.rs",
            "crates/ratelimiter-dynamodb/src",
        ],
        &[],
        &["Quota", "Decision", ".decision("],
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_core_names_no_transport() {
    let found = find(
        &["crates/ratelimiter/src"],
        &[],
        &["tokio", "aws_", "lambda_runtime", "http::", "hyper", "axum"],
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_checks_can_fail() {
    // The scanner sees what it must: the clock reads the system time.
    let found = find(&["crates/ratelimiter/src"], &[], &["SystemTime::now"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("clock.rs"), "{found:?}");
}
