//! What the Python test and the Python benchmark share: running a command
//! that must succeed, and a virtual environment with the package installed
//! from this folder by pip, as a user installs it.

// The test and the bench each use part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `command`, which must succeed; `what` names it in the failure.
/// Returns its standard output (also printed, so that
/// `cargo test -- --nocapture` shows what pytest ran).
pub fn run(what: &str, command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A virtual environment under `dir` (made once, kept between runs), with
/// `packages` from PyPI and this folder's package installed anew, built
/// as pip builds it (release), or with `maturin_args` if given
/// (`MATURIN_PEP517_ARGS`, e.g. `--profile dev`).
pub struct Venv(PathBuf);

impl Venv {
    pub fn with_package(dir: &Path, packages: &[&str], maturin_args: Option<&str>) -> Self {
        let venv = Venv::new(dir, packages);
        let mut install = venv.pip(&["--force-reinstall", "--no-deps"]);
        install.arg(env!("CARGO_MANIFEST_DIR"));
        if let Some(args) = maturin_args {
            install.env("MATURIN_PEP517_ARGS", args);
        }
        run("pip install ./python", &mut install);
        venv
    }

    /// A virtual environment under `dir` (made once, kept between runs),
    /// with `packages` from PyPI and not this folder's package.
    pub fn new(dir: &Path, packages: &[&str]) -> Self {
        let venv = Venv(dir.to_owned());
        if !venv.bin("python").exists() {
            run(
                "creating a virtual environment (python3 -m venv)",
                Command::new("python3").args(["-m", "venv"]).arg(dir),
            );
        }
        run(
            &format!("pip install {}", packages.join(" ")),
            &mut venv.pip(packages),
        );
        venv
    }

    /// The folder of the environment's programs, for `PATH`.
    pub fn bin_dir(&self) -> PathBuf {
        self.0.join("bin")
    }

    /// A program of the environment (`python`, `pytest`, ...).
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir().join(program)
    }

    fn pip(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin("pip"));
        command
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(args);
        command
    }
}
