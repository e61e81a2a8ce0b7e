//! `vm create` on a host with no image at all: without a terminal (and without `--yes`) it
//! must not hang on a question but print the exact command that makes the default image.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn bangerd() -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_banger")).with_file_name("bangerd");
    assert!(
        daemon.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        daemon.display()
    );
    daemon
}

#[test]
fn create_without_images_and_without_a_terminal_prints_the_bootstrap_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = |rel: &str| dir.path().join(rel);
    std::fs::write(path("config.toml"), "[network]\nenabled = false\n").unwrap();
    let banger = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_banger"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", path("home"))
            .env("BANGER_CONFIG", path("config.toml"))
            .env("BANGER_STATE_DIR", path("state"))
            .env("BANGER_RUNTIME_DIR", path("run"))
            .env("BANGER_CACHE_DIR", path("cache"))
            .env("BANGER_DATA_DIR", path("data"))
            .env("BANGER_DAEMON_BIN", bangerd())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = banger(&["vm", "create", "--name", "first"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = banger(&["daemon", "stop"]);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("banger image bootstrap"), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
}
