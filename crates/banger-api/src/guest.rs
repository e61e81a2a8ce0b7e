//! Wire types of the routes that reach inside a running guest through its agent: exec (a
//! WebSocket), file put/get, the SSH host key and the port pipe (a WebSocket).
//!
//! Exec over a WebSocket (`GET /v1/vms/{vm}/exec`, upgraded):
//! ```text
//!   client                                   daemon
//!   Text  ExecStart (JSON)        ──────▶    (agent starts the process)
//!                                 ◀──────    Text  ExecEvent::Started
//!   Binary [0, stdin bytes…]      ──────▶
//!   Text  ExecControl (JSON)      ──────▶    (stdin_eof, resize, signal)
//!                                 ◀──────    Binary [1, stdout bytes…] | [2, stderr bytes…]
//!                                 ◀──────    Text  ExecEvent::Exit | ExecEvent::Error, then Close
//! ```
//! Closing the WebSocket before `Exit` kills the process (its whole process group).
//! The port pipe (`GET /v1/vms/{vm}/connect/{port}`) carries raw bytes in Binary messages both
//! ways; the daemon closes the WebSocket when the guest end closes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

/// Stream id (first byte of a Binary exec message): stdin, client to daemon.
pub const STREAM_STDIN: u8 = 0;
/// Stream id: the process's stdout (with a TTY, its terminal output).
pub const STREAM_STDOUT: u8 = 1;
/// Stream id: the process's stderr.
pub const STREAM_STDERR: u8 = 2;

/// Response header of `GET /v1/vms/{vm}/files` carrying the file's mode in octal (`0644`).
pub const FILE_MODE_HEADER: &str = "x-banger-mode";

/// Largest file `PUT /v1/vms/{vm}/files` accepts (16 GiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The first message of an exec WebSocket: what to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// Program and arguments (the program is looked up in the guest's `PATH`).
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory in the guest.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run on a pseudo-terminal of this size (stdout and stderr merge).
    #[serde(default)]
    pub tty: Option<TermSize>,
    /// Whether the client sends stdin; when false the process reads /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group (SIGKILL) after this many seconds; the `exit` event then says
    /// `timed_out`. Absent: no limit.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Control messages (Text, JSON) a client sends during an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecControl {
    /// Close the process's stdin.
    StdinEof,
    /// The client's terminal changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Deliver a signal (e.g. 2 for SIGINT) to the process group.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

/// Events (Text, JSON) the daemon sends during an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The process runs.
    Started {
        /// Its pid inside the guest.
        pid: u32,
    },
    /// The process ended and all its output was sent. Last message.
    Exit {
        /// Exit code for a normal exit.
        code: Option<i32>,
        /// Signal number when a signal killed it.
        signal: Option<i32>,
        /// Whether it was killed because `timeout_secs` passed.
        #[serde(default)]
        timed_out: bool,
    },
    /// The exec failed (could not start, agent lost). Last message.
    Error {
        /// Why.
        error: ApiError,
    },
}

impl ExecEvent {
    /// The shell convention for a process's exit: its code, or 128 + the signal that killed it.
    pub fn shell_status(code: Option<i32>, signal: Option<i32>) -> i32 {
        match (code, signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }
}

/// Answer of `GET /v1/vms/{vm}/ssh-host-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshHostKey {
    /// The guest's SSH host public key as one OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub key: String,
}

/// Answer of `PUT /v1/vms/{vm}/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// Absolute path in the guest.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// Mode it was given.
    pub mode: u32,
}

/// Parses an octal file mode (`644`, `0644`, `0o644`) of at most 12 bits.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {text:?} is not an octal number like 0644"))?;
    if mode > 0o7777 {
        return Err(format!("mode {text:?} is larger than 07777"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal_with_or_without_prefix() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn killed_processes_report_128_plus_the_signal() {
        assert_eq!(ExecEvent::shell_status(Some(3), None), 3);
        assert_eq!(ExecEvent::shell_status(None, Some(9)), 137);
    }

    #[test]
    fn exec_control_messages_have_a_type_tag() {
        let json = serde_json::to_string(&ExecControl::Resize {
            rows: 40,
            cols: 120,
        })
        .unwrap_or_default();
        assert_eq!(json, r#"{"type":"resize","rows":40,"cols":120}"#);
    }
}
