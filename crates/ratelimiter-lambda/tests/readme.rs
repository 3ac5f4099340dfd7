//! The README's Rust examples, compiled (`cargo check`) as a new user
//! compiles them: in a fresh crate whose dependencies are exactly the
//! README's installation block (the git dependencies pointed at this
//! checkout), nothing else. The doctests (`ReadmeDoctests`) run the same
//! examples, but with this crate's dependencies, which would hide one
//! missing from the block.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace exists")
}

/// The contents of each fenced block of `text` whose info string starts
/// with `lang`, with the info string.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<(&'a str, String)> {
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        if info.split(',').next() == Some(lang) {
            found.push((info, body.join("\n")));
        }
    }
    found
}

/// The `[dependencies]` of the installation block, with each dependency on
/// this repository pointed at its crate in this checkout.
fn dependencies(readme: &str, root: &Path) -> String {
    let (_, block) = blocks(readme, "toml")
        .into_iter()
        .find(|(_, body)| body.trim_start().starts_with("[dependencies]"))
        .expect("the README has an installation block starting with [dependencies]");
    let git = r#"{ git = "https://github.com/ws-ratelimiter/ratelimiter" }"#;
    let mut out = Vec::new();
    let mut pointed = 0;
    for line in block.lines() {
        match line.split_once(" = ") {
            Some((name, rest)) if rest.starts_with(git) => {
                let path = root.join("crates").join(name.trim());
                assert!(path.is_dir(), "{name} is not a crate of this repository");
                out.push(format!(
                    "{name} = {{ path = {:?} }}",
                    path.display().to_string()
                ));
                pointed += 1;
            }
            _ => out.push(line.to_owned()),
        }
    }
    assert!(
        pointed >= 3,
        "the block names the repository's crates: {block}"
    );
    out.join("\n")
}

/// Builds every Rust example of `readme` in a fresh crate whose
/// dependencies are its installation block; the compiler's messages when
/// one does not build.
fn build_examples(readme: &str) -> Result<usize, String> {
    let root = workspace();
    let examples = blocks(readme, "rust");
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[package]\nname = \"readme-user\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         # Not a member of the repository's workspace.\n[workspace]\n\n{}\n",
        dependencies(readme, &root)
    );
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    // The versions this repository is tested with; cargo drops what the
    // block does not use, and fetches what a new user's defaults add (such
    // as tracing-subscriber's default features) from crates.io.
    std::fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    for (i, (_, code)) in examples.iter().enumerate() {
        std::fs::write(dir.path().join(format!("examples/readme_{i}.rs")), code).unwrap();
    }
    let output = Command::new(env!("CARGO"))
        // Type-checking is what proves the block names every crate and
        // feature the examples use; code generation would only add disk.
        .args(["check", "--examples", "--quiet"])
        .current_dir(dir.path())
        // A directory of its own, kept between runs: the outer build's may
        // be locked while the tests run.
        .env("CARGO_TARGET_DIR", root.join("target/readme-user"))
        .env("CARGO_INCREMENTAL", "0")
        .output()
        .expect("cargo runs");
    if output.status.success() {
        Ok(examples.len())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn every_readme_example_builds_with_only_the_installation_block() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    match build_examples(&readme) {
        Ok(built) => assert!(built >= 4, "the README's Rust examples: {built}"),
        Err(errors) => {
            panic!("the README's examples do not build with only the installation block:\n{errors}")
        }
    }
}

#[test]
fn an_example_needing_a_crate_the_block_lacks_does_not_build() {
    let readme = "```toml\n[dependencies]\n\
                  ratelimiter = { git = \"https://github.com/ws-ratelimiter/ratelimiter\" }\n\
                  ratelimiter-dynamodb = { git = \"https://github.com/ws-ratelimiter/ratelimiter\" }\n\
                  ratelimiter-lambda = { git = \"https://github.com/ws-ratelimiter/ratelimiter\" }\n```\n\n\
                  ```rust,no_run\nfn main() {\n    let _ = serde_json::json!({});\n}\n```\n";
    let errors = build_examples(readme).expect_err("serde_json is not in the block");
    assert!(errors.contains("serde_json"), "{errors}");
}
