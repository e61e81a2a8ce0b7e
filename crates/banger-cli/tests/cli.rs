//! The `banger` binary against a real `bangerd` binary in a temp dir: autostart, daemon
//! commands, exit codes, stale sockets after SIGKILL, the single-instance lock.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
}

fn bangerd() -> PathBuf {
    let banger = PathBuf::from(env!("CARGO_BIN_EXE_banger"));
    let daemon = banger.with_file_name("bangerd");
    assert!(
        daemon.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        daemon.display()
    );
    daemon
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "log_level = \"info\"\n").unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("BANGER_CONFIG", self.path("config.toml"))
            .env("BANGER_STATE_DIR", self.path("state"))
            .env("BANGER_RUNTIME_DIR", self.path("run"))
            .env("BANGER_CACHE_DIR", self.path("cache"))
            .env("BANGER_DATA_DIR", self.path("data"))
            .env("BANGER_DAEMON_BIN", bangerd());
        cmd
    }

    fn banger(&self, args: &[&str]) -> Output {
        self.command(Path::new(env!("CARGO_BIN_EXE_banger")), args)
            .output()
            .unwrap()
    }

    fn daemon_pid(&self) -> Option<i32> {
        let out = self.banger(&["--json", "daemon", "status"]);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        value["health"]["pid"].as_i64().map(|p| p as i32)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never leave a daemon behind, even when an assertion failed.
        if let Some(pid) = self.daemon_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn autostart_status_stop_and_exit_codes() {
    let env = Env::new();
    let out = env.banger(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("not running"));

    let out = env.banger(&["vm", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("started bangerd (pid"),
        "the CLI says it started the daemon"
    );
    assert!(text(&out.stdout).contains("No VMs"));
    let socket = env.path("run/bangerd.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    assert!(
        env.path("data/ssh/id_ed25519.pub").is_file(),
        "the daemon generated banger's SSH key"
    );

    // The second call finds it running and says nothing about starting.
    let out = env.banger(&["--json", "vm", "list"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    // A second daemon refuses to start and says why.
    let second = env.command(&bangerd(), &[]).output().unwrap();
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("already running"),
        "{}",
        text(&second.stderr)
    );

    // Exit codes: not found 3, invalid input 2, usage 2.
    let out = env.banger(&["vm", "show", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("error: no VM matches `nope`"));
    let out = env.banger(&["vm", "create", "--name", "Bad_Name", "--image", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("(field `name`)"));
    let out = env.banger(&["vm", "create", "--memory", "12X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown unit"));
    let out = env.banger(&["image", "delete", "nothing"]);
    assert_eq!(out.status.code(), Some(3));

    let out = env.banger(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stopped bangerd"));
    for _ in 0..100 {
        if !socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !socket.exists(),
        "a gracefully stopped daemon removes its socket"
    );
    let out = env.banger(&["daemon", "stop"]);
    assert!(text(&out.stdout).contains("not running"));
}

#[test]
fn a_killed_daemon_leaves_a_stale_socket_that_the_next_start_replaces() {
    let env = Env::new();
    let out = env.banger(&["daemon", "start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = env.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        env.path("run/bangerd.sock").exists(),
        "SIGKILL leaves the socket file"
    );
    let out = env.banger(&["vm", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("started bangerd"));
    assert_ne!(env.daemon_pid().unwrap(), pid);
}

#[test]
fn config_show_names_origins_and_bad_config_is_a_usage_error() {
    let env = Env::new();
    let out = env.banger(&["config", "show"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("env BANGER_STATE_DIR"), "{shown}");
    assert!(
        shown.contains(&env.path("config.toml").display().to_string()),
        "log_level came from the file: {shown}"
    );

    std::fs::write(env.path("config.toml"), "[network]\nbrige = \"x\"\n").unwrap();
    let out = env.banger(&["vm", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("network.brige") && err.contains("config.toml"),
        "{err}"
    );
}

#[test]
fn completions_and_version_need_no_daemon() {
    let env = Env::new();
    let out = env.banger(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("_banger"));
    let out = env.banger(&["version"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("bangerd not running"));
    assert!(
        !env.path("run/bangerd.sock").exists(),
        "version does not start the daemon"
    );
}

#[test]
fn web_stats_and_logs_commands_against_a_real_daemon() {
    let env = Env::new();
    // Web UI off: `banger web` explains how to turn it on.
    let out = env.banger(&["web"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("web.enabled"),
        "{}",
        text(&out.stderr)
    );
    let out = env.banger(&["vm", "stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "No running VMs.\n");
    let out = env.banger(&["vm", "logs", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = env.banger(&["vm", "logs", "x", "--console", "--vmm"]);
    assert_eq!(out.status.code(), Some(2), "--console and --vmm conflict");
    assert!(env.banger(&["daemon", "stop"]).status.success());

    // Web UI on (a free port): `banger web` prints a login link that works.
    std::fs::write(
        env.path("config.toml"),
        "log_level = \"info\"\n[web]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = env.banger(&["web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let link = text(&out.stdout).lines().next().unwrap().to_string();
    assert!(link.starts_with("http://127.0.0.1:"), "{link}");
    let (base, token) = link.split_once("/login?token=").unwrap();
    assert_eq!(token.len(), 64);
    let out = env.banger(&["--json", "web"]);
    let access: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(access["url"], base);
    assert_eq!(access["token"], token);
}
