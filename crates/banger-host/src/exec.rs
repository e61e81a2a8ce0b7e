//! The one way banger runs an external command.
//!
//! [`execute`] runs a [`CommandSpec`] to completion and returns its stdout, or a
//! [`CommandError`] that records the argv, the exit status and both output streams, so an error
//! printed at the edge says exactly what was run and what it said.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// A command to run: program, arguments, optional stdin bytes, optional network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// Program name (looked up on PATH) or path.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Bytes written to stdin, then stdin is closed.
    pub stdin: Option<Vec<u8>>,
    /// Run inside this network namespace (through `ip netns exec NAME`).
    pub netns: Option<String>,
    /// Give up (and kill the process) after this long.
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    /// `program` with no arguments.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Feeds `bytes` on stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs inside network namespace `netns` when it is `Some`.
    pub fn in_netns(mut self, netns: Option<&str>) -> Self {
        self.netns = netns.map(str::to_string);
        self
    }

    /// Kills the command after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The full argv as it will run, `ip netns exec` prefix included.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = Vec::with_capacity(self.args.len() + 4);
        if let Some(ns) = &self.netns {
            argv.extend([
                "ip".into(),
                "netns".into(),
                "exec".into(),
                OsString::from(ns),
            ]);
        }
        argv.push(self.program.clone().into_os_string());
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// The argv of a command, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<OsString>);

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            {
                write!(f, "'{}'", arg.replace('\'', "'\\''"))?;
            } else {
                f.write_str(&arg)?;
            }
        }
        Ok(())
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started at all (missing binary, permissions).
    #[error("could not run `{argv}`")]
    Spawn {
        /// What was run.
        argv: Argv,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// It ran and exited unsuccessfully.
    #[error("`{argv}` failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        /// What was run.
        argv: Argv,
        /// How it ended.
        status: ExitStatus,
        /// Everything it wrote to stdout.
        stdout: String,
        /// Everything it wrote to stderr.
        stderr: String,
    },
    /// It did not finish in time and was killed.
    #[error("`{argv}` did not finish within {timeout:?}")]
    TimedOut {
        /// What was run.
        argv: Argv,
        /// The limit.
        timeout: Duration,
    },
}

fn stderr_tail(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    let tail: Vec<&str> = trimmed
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(": {}", tail.join(" / "))
}

impl CommandError {
    /// The argv of the failed command.
    pub fn argv(&self) -> &Argv {
        match self {
            CommandError::Spawn { argv, .. }
            | CommandError::Failed { argv, .. }
            | CommandError::TimedOut { argv, .. } => argv,
        }
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// stdout, lossily decoded.
    pub stdout: String,
    /// stderr, lossily decoded.
    pub stderr: String,
}

/// Runs `spec` to completion. Success means exit status 0.
pub async fn execute(spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
    let argv = spec.argv();
    let printable = Argv(argv.clone());
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!(argv = %printable, "execute");
    let mut child = command.spawn().map_err(|source| CommandError::Spawn {
        argv: printable.clone(),
        source,
    })?;
    if let (Some(bytes), Some(mut stdin)) = (spec.stdin.as_ref(), child.stdin.take()) {
        // A child that exits without reading its stdin is not our failure; its status says.
        let _ = stdin.write_all(bytes).await;
        drop(stdin);
    }
    let wait = child.wait_with_output();
    let output = match spec.timeout {
        Some(limit) => match tokio::time::timeout(limit, wait).await {
            Ok(result) => result,
            Err(_) => {
                return Err(CommandError::TimedOut {
                    argv: printable,
                    timeout: limit,
                })
            }
        },
        None => wait.await,
    }
    .map_err(|source| CommandError::Spawn {
        argv: printable.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(CommandOutput { stdout, stderr })
    } else {
        Err(CommandError::Failed {
            argv: printable,
            status: output.status,
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_returns_stdout() {
        let out = execute(&CommandSpec::new("sh").args(["-c", "echo hi; echo there >&2"]))
            .await
            .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "there\n");
    }

    #[tokio::test]
    async fn failure_records_argv_status_and_streams() {
        let err =
            execute(&CommandSpec::new("sh").args(["-c", "echo out; echo 'bad thing' >&2; exit 3"]))
                .await
                .unwrap_err();
        match &err {
            CommandError::Failed {
                status,
                stdout,
                stderr,
                ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stdout, "out\n");
                assert_eq!(stderr, "bad thing\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("sh -c 'echo out; echo '\\''bad thing'\\'' >&2; exit 3'"),
            "{text}"
        );
        assert!(text.ends_with(": bad thing"), "{text}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = execute(&CommandSpec::new("/nonexistent/banger-test-binary"))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
    }

    #[tokio::test]
    async fn stdin_is_fed_and_timeout_kills() {
        let out = execute(&CommandSpec::new("cat").stdin("payload"))
            .await
            .unwrap();
        assert_eq!(out.stdout, "payload");
        let err = execute(
            &CommandSpec::new("sleep")
                .arg("5")
                .timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }));
    }

    #[test]
    fn netns_prefixes_ip_netns_exec() {
        let spec = CommandSpec::new("nft").arg("list").in_netns(Some("t1"));
        assert_eq!(Argv(spec.argv()).to_string(), "ip netns exec t1 nft list");
    }
}
