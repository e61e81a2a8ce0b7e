//! Starting bangerd on demand.
//!
//! When nothing answers on the socket (no file, or a stale file left by a killed daemon), the
//! CLI starts `bangerd` detached — its own session, stdin closed, output appended to the daemon
//! log — waits until `/v1/health` answers, and says that it did. A daemon that exits during
//! startup (say, another instance holds the lock, or the config is invalid) is reported with
//! the tail of its log.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use banger_api::Health;
use banger_config::{Config, Environment};

use crate::client::Client;
use crate::{exit, Failure};

/// How long a freshly started daemon may take to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of a running daemon, starting one if needed.
pub async fn ensure_running(config: &Config) -> Result<Client, Failure> {
    ensure_running_reporting(config).await?;
    Ok(Client::new(config.socket_path()))
}

/// Like [`ensure_running`]; returns the pid of the daemon it started, if it started one.
pub async fn ensure_running_reporting(config: &Config) -> Result<Option<u32>, Failure> {
    let client = Client::new(config.socket_path());
    match client.get::<Health>("/v1/health").await {
        Ok(_) => Ok(None),
        Err(err) if err.is_unreachable() => start(config, &client).await.map(Some),
        Err(err) => Err(err.into()),
    }
}

async fn start(config: &Config, client: &Client) -> Result<u32, Failure> {
    let bin = crate::daemon_binary(&Environment::current());
    let log_path = config.daemon_log_path();
    let fail = |text: String| Failure {
        code: exit::DAEMON,
        text,
    };
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("error: creating {}: {e}\n", dir.display())))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| {
            fail(format!(
                "error: opening the daemon log {}: {e}\n",
                log_path.display()
            ))
        })?;
    let log_err = log.try_clone().map_err(|e| fail(format!("error: {e}\n")))?;
    let mut command = std::process::Command::new(&bin);
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent; it detaches the
    // daemon from our session and terminal so Ctrl-C in this shell never reaches it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|e| {
        fail(format!(
            "error: could not start {}: {e}\n  hint: install bangerd beside banger or set BANGER_DAEMON_BIN\n",
            bin.display()
        ))
    })?;
    let pid = child.id();
    let started = Instant::now();
    loop {
        if client.get::<Health>("/v1/health").await.is_ok() {
            eprintln!(
                "banger: started bangerd (pid {pid}); it logs to {}",
                log_path.display()
            );
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "error: bangerd exited during startup ({status})\n{}",
                log_tail(&log_path)
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(fail(format!(
                "error: bangerd (pid {pid}) did not answer on {} within {:?}\n{}",
                config.socket_path().display(),
                START_TIMEOUT,
                log_tail(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    let mut out = format!("  last lines of {}:\n", path.display());
    for line in tail {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Waits (up to 10 s) until the daemon with `pid` stops answering on `socket`.
pub async fn wait_gone(socket: &Path, pid: u32) {
    let client = Client::new(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match client.get::<Health>("/v1/health").await {
            Ok(health) if health.pid == pid => tokio::time::sleep(Duration::from_millis(25)).await,
            _ => return,
        }
    }
}
