//! banger's guest agent and its host-side client.
//!
//! The agent runs inside every guest and listens on vsock port [`AGENT_PORT`]; the host reaches
//! it through the VMM's Unix socket (`CONNECT <port>`), the same way for Firecracker and for QEMU
//! with vhost-device-vsock. Modules:
//!
//! - [`protocol`]: the versioned wire types and the length-delimited JSON codec (no I/O).
//! - [`client`]: the host side, [`AgentClient`] (health, info, shutdown, wait-for-port, exec,
//!   file put/get, SSH host key, port pipe).
//! - [`server`]: the guest side, [`AgentServer`], on vsock or on any byte stream.
//! - [`exec`]: the guest side of one exec (process, pipes or pseudo-terminal, signals).
//! - [`files`]: the guest side of file put/get and of the `Connect` byte pipe.
//! - [`guest`]: guest facts read from `/proc`, and power control behind a trait.
//!
//! The protocol is described for other implementers in `docs/agent-protocol.md`.

pub mod client;
pub mod exec;
pub mod files;
pub mod guest;
pub mod protocol;
pub mod server;

pub use client::{AgentClient, AgentError, AgentErrorKind, ExecEvent, ExecOutput, ExecSession};
pub use protocol::{
    ExecRequest, ExitStatus, FileInfo, FilePutRequest, GuestInfo, Health, TtySize, Version,
    AGENT_PORT, AGENT_VERSION, PROTOCOL_VERSION,
};
pub use server::AgentServer;

/// Renders an error and all its sources as one line (`outer: inner: innermost`), for logs and
/// for error messages sent over the wire.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
