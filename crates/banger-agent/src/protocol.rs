//! Wire types and framing of the host <-> guest-agent protocol (version [`PROTOCOL_VERSION`]).
//!
//! Every message is one JSON document in one length-delimited frame
//! ([`tokio_util::codec::LengthDelimitedCodec`]: 4-byte big-endian length, at most
//! [`MAX_FRAME_LEN`] bytes). Framing is what makes the protocol safe over vsock: neither
//! Firecracker nor vhost-device-vsock passes a half-close through, so no exchange ever depends on
//! end-of-file. Byte payloads (stdin, stdout, stderr) travel as standard base64 strings.
//!
//! A connection carries exactly one request:
//!
//! ```text
//!   host (client)                          guest (agent)
//!   Hello { version }            ──────▶
//!                                ◀──────   HelloOk { agent_version, protocol } | HelloRefused
//!   Health | Info | Shutdown
//!   | WaitPort | HostKey | Exec
//!   | FilePut | FileGet | Connect ──────▶
//!                                ◀──────   HealthOk | InfoOk | ShutdownOk | WaitPortOk
//!                                          | HostKeyOk | Error
//!   (exec only)
//!   Stdin | StdinEof | Signal
//!   | Resize ...                 ──────▶   ◀──────  ExecStarted, Stdout | Stderr ..., Exit
//!   (file put)                   ◀──────   FilePutReady
//!   FileData ..., FileEnd        ──────▶   ◀──────  FilePutOk
//!   (file get)                   ◀──────   FileInfo, FileData ..., FileEnd
//!   (connect)                    ◀──────   Connected
//!   Data ...                     ◀─────▶   Data ..., ConnectionClosed
//! ```
//!
//! The full description for other implementers is `docs/agent-protocol.md`. This module owns no
//! state and does no I/O; [`MessageCodec`] turns a byte stream into typed messages for
//! [`tokio_util::codec::Framed`].

use std::fmt;
use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The vsock port the agent listens on inside every guest.
pub const AGENT_PORT: u32 = 1024;

/// Largest frame either side accepts or sends (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest chunk of process output put into one `Stdout`/`Stderr` frame, and the size the client
/// splits stdin into. Far below [`MAX_FRAME_LEN`] even after base64.
pub const IO_CHUNK_LEN: usize = 64 * 1024;

/// This build's protocol version.
pub const PROTOCOL_VERSION: Version = Version { major: 1, minor: 1 };

/// The agent's own version (the crate version), reported in `HelloOk` and `HealthOk`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A protocol version. Peers with different `major` refuse each other; `minor` only adds
/// optional fields and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// Whether a peer speaking `other` can talk to one speaking `self`.
    pub fn is_compatible_with(self, other: Version) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Terminal size for a TTY exec and for `Resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// A process to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH` (the agent supplies a standard
    /// `PATH` when it has none).
    pub argv: Vec<String>,
    /// Variables added to (or overriding) the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's own (`/`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Whether the client will send `Stdin` frames; when false the process's stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout and stderr merge into `Stdout`).
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Kill the process group with SIGKILL after this long. `None` means no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// A request running `argv` with no stdin, no TTY and no timeout.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    /// Whether the agent killed it because `timeout_ms` passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exited normally with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Answer to `Health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub agent_version: String,
    /// Seconds since the guest kernel booted (first field of `/proc/uptime`).
    pub uptime_secs: f64,
    /// `/proc/sys/kernel/random/boot_id`: changes on every guest boot.
    pub boot_id: String,
}

/// One address configured on a guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    /// Interface name, e.g. `eth0`.
    pub interface: String,
    /// Address with prefix length, e.g. `10.0.0.2/24` or `fe80::1/64`.
    pub address: String,
}

/// Answer to `Info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    pub addresses: Vec<InterfaceAddress>,
    pub boot_id: String,
}

/// Machine-readable class of an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a valid message, or not one expected at this point.
    BadRequest,
    /// The request is understood but not supported by this agent (e.g. missing platform support).
    Unsupported,
    /// The process could not be started (no such program, bad cwd, ...).
    SpawnFailed,
    /// A wait (e.g. `WaitPort`) ran out of time.
    Timeout,
    /// A file, directory or TCP listener named by the request does not exist (since 1.1).
    NotFound,
    /// Anything else that went wrong inside the agent.
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
        };
        f.write_str(name)
    }
}

/// Where `FilePut` writes and with which metadata (since 1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePutRequest {
    /// Absolute path of the file in the guest. The data goes to a temporary file in the same
    /// directory, renamed over `path` once complete: readers never see half a file.
    pub path: String,
    /// Permission bits (e.g. `0o644`); only the low 12 bits are used.
    pub mode: u32,
    /// Owner; the agent's own (root) when absent.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group; the agent's own when absent.
    #[serde(default)]
    pub gid: Option<u32>,
    /// When set, missing parent directories are created with this mode (and `uid`/`gid`);
    /// when absent a missing parent directory is a `not_found` error.
    #[serde(default)]
    pub dir_mode: Option<u32>,
}

/// What `FileInfo` says about a file `FileGet` is about to stream (since 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes when the transfer starts.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// Frames the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame of every connection.
    Hello {
        version: Version,
    },
    Health,
    Info,
    /// Power the guest off (or reboot it). Answered with `ShutdownOk` before the guest goes down.
    Shutdown {
        reboot: bool,
    },
    /// Answered once a TCP connection to `127.0.0.1:port` in the guest succeeds.
    WaitPort {
        port: u16,
        timeout_ms: u64,
    },
    Exec(ExecRequest),
    /// Bytes for the running process's stdin.
    Stdin {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Close the process's stdin (ignored for a TTY: send `^D` as data instead).
    StdinEof,
    /// Deliver a signal to the process group.
    Signal {
        signal: i32,
    },
    /// Resize the process's terminal.
    Resize(TtySize),
    /// The guest's SSH host public key (since 1.1).
    HostKey,
    /// Write a file; answered with `FilePutReady`, then the host sends `FileData` frames and
    /// one `FileEnd` (since 1.1).
    FilePut(FilePutRequest),
    /// Read a file; answered with `FileInfo`, `FileData` frames and `FileEnd` (since 1.1).
    FileGet {
        path: String,
    },
    /// A byte pipe to TCP `127.0.0.1:port` inside the guest; answered with `Connected`, then
    /// `Data` frames both ways (since 1.1).
    Connect {
        port: u16,
    },
    /// A chunk of a file being put.
    FileData {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The file being put is complete.
    FileEnd,
    /// Bytes for the guest end of a `Connect` pipe.
    Data {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
}

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    HelloOk {
        agent_version: String,
        protocol: Version,
    },
    /// The agent does not speak the client's major version; it closes the connection after this.
    HelloRefused {
        agent_version: String,
        protocol: Version,
    },
    HealthOk(Health),
    InfoOk(GuestInfo),
    ShutdownOk,
    WaitPortOk {
        waited_ms: u64,
    },
    /// The process was started; output and `Exit` follow.
    ExecStarted {
        pid: u32,
    },
    Stdout {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Last frame of an exec: the process ended and all its output was sent.
    Exit(ExitStatus),
    /// Answer to `HostKey`: one OpenSSH public key line, e.g. `ssh-ed25519 AAAA… root@host`.
    HostKeyOk {
        key: String,
    },
    /// The temporary file for a `FilePut` exists; send the data.
    FilePutReady,
    /// The file was written completely and renamed into place.
    FilePutOk {
        size: u64,
    },
    /// First answer to `FileGet`.
    FileInfo(FileInfo),
    /// A chunk of a file being read.
    FileData {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The file being read is complete.
    FileEnd,
    /// The `Connect` pipe is open.
    Connected,
    /// Bytes from the guest end of a `Connect` pipe.
    Data {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The guest end of a `Connect` pipe closed; the agent closes the connection after this.
    ConnectionClosed,
    /// The request failed; the agent closes the connection after this.
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    /// Short name of the message kind, for error messages that must not dump payloads.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::HelloOk { .. } => "hello_ok",
            ServerMessage::HelloRefused { .. } => "hello_refused",
            ServerMessage::HealthOk(_) => "health_ok",
            ServerMessage::InfoOk(_) => "info_ok",
            ServerMessage::ShutdownOk => "shutdown_ok",
            ServerMessage::WaitPortOk { .. } => "wait_port_ok",
            ServerMessage::ExecStarted { .. } => "exec_started",
            ServerMessage::Stdout { .. } => "stdout",
            ServerMessage::Stderr { .. } => "stderr",
            ServerMessage::Exit(_) => "exit",
            ServerMessage::HostKeyOk { .. } => "host_key_ok",
            ServerMessage::FilePutReady => "file_put_ready",
            ServerMessage::FilePutOk { .. } => "file_put_ok",
            ServerMessage::FileInfo(_) => "file_info",
            ServerMessage::FileData { .. } => "file_data",
            ServerMessage::FileEnd => "file_end",
            ServerMessage::Connected => "connected",
            ServerMessage::Data { .. } => "data",
            ServerMessage::ConnectionClosed => "connection_closed",
            ServerMessage::Error { .. } => "error",
        }
    }
}

impl ClientMessage {
    /// Short name of the message kind, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Health => "health",
            ClientMessage::Info => "info",
            ClientMessage::Shutdown { .. } => "shutdown",
            ClientMessage::WaitPort { .. } => "wait_port",
            ClientMessage::Exec(_) => "exec",
            ClientMessage::Stdin { .. } => "stdin",
            ClientMessage::StdinEof => "stdin_eof",
            ClientMessage::Signal { .. } => "signal",
            ClientMessage::Resize(_) => "resize",
            ClientMessage::HostKey => "host_key",
            ClientMessage::FilePut(_) => "file_put",
            ClientMessage::FileGet { .. } => "file_get",
            ClientMessage::Connect { .. } => "connect",
            ClientMessage::FileData { .. } => "file_data",
            ClientMessage::FileEnd => "file_end",
            ClientMessage::Data { .. } => "data",
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed, or a frame header announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("reading or writing a frame failed")]
    Io(#[from] std::io::Error),
    /// A complete frame did not hold a valid message.
    #[error("a {len}-byte frame does not hold a valid message")]
    Malformed {
        len: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be serialized.
    #[error("a {kind} message could not be serialized")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The length-delimited codec both sides use, limited to [`MAX_FRAME_LEN`].
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_LEN)
        .length_field_type::<u32>()
        .new_codec()
}

/// Parses one frame's payload as a message.
pub fn decode_message<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(frame).map_err(|source| FrameError::Malformed {
        len: frame.len(),
        source,
    })
}

/// A typed codec: decodes frames into `In` and encodes `Out` into frames.
///
/// The client uses `MessageCodec<ServerMessage, ClientMessage>`, the agent the reverse.
pub struct MessageCodec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> fmt::Debug for MessageCodec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCodec")
            .field("max_frame_len", &MAX_FRAME_LEN)
            .finish()
    }
}

impl<In, Out> Default for MessageCodec<In, Out> {
    fn default() -> Self {
        MessageCodec {
            frames: frame_codec(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> MessageCodec<In, Out> {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Codec the host side uses.
pub type ClientCodec = MessageCodec<ServerMessage, ClientMessage>;
/// Codec the agent uses.
pub type ServerCodec = MessageCodec<ClientMessage, ServerMessage>;

/// Messages that know their own kind name (for serialization errors).
pub trait Message: Serialize {
    fn kind_name(&self) -> &'static str;
}

impl Message for ClientMessage {
    fn kind_name(&self) -> &'static str {
        self.kind()
    }
}

impl Message for ServerMessage {
    fn kind_name(&self) -> &'static str {
        self.kind()
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.frames.decode(src)? {
            Some(frame) => decode_message(&frame).map(Some),
            None => Ok(None),
        }
    }
}

impl<In, Out: Message> Encoder<Out> for MessageCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let json = serde_json::to_vec(&item).map_err(|source| FrameError::Serialize {
            kind: item.kind_name(),
            source,
        })?;
        self.frames.encode(Bytes::from(json), dst)?;
        Ok(())
    }
}

/// Serde adapter: `Vec<u8>` as a standard base64 string.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_client(msg: ClientMessage) -> ClientMessage {
        let mut enc = ClientCodec::new();
        let mut dec = ServerCodec::new();
        let mut buf = BytesMut::new();
        enc.encode(msg, &mut buf).unwrap();
        dec.decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn stdin_bytes_travel_as_base64_and_roundtrip() {
        let msg = ClientMessage::Stdin {
            data: vec![0, 1, 2, 255],
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(json, r#"{"type":"stdin","data":"AAEC/w=="}"#);
        assert_eq!(roundtrip_client(msg.clone()), msg);
    }

    #[test]
    fn exec_request_fields_default_when_absent() {
        let msg: ClientMessage = decode_message(br#"{"type":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(msg, ClientMessage::Exec(ExecRequest::new(["true"])));
    }

    #[test]
    fn frame_announcing_more_than_the_limit_is_an_error() {
        let mut dec = ServerCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        buf.extend_from_slice(b"{}");
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::Io(_))));
    }

    #[test]
    fn frame_with_invalid_json_is_malformed_not_a_panic() {
        let mut dec = ClientCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(b"{x}");
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::Malformed { len: 3, .. })
        ));
    }

    #[test]
    fn stdout_with_invalid_base64_is_malformed() {
        let err = decode_message::<ServerMessage>(br#"{"type":"stdout","data":"!!"}"#);
        assert!(matches!(err, Err(FrameError::Malformed { .. })));
    }

    fn arb_client_message() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(major, minor)| ClientMessage::Hello {
                version: Version { major, minor }
            }),
            Just(ClientMessage::Health),
            Just(ClientMessage::Info),
            any::<bool>().prop_map(|reboot| ClientMessage::Shutdown { reboot }),
            (any::<u16>(), any::<u64>())
                .prop_map(|(port, timeout_ms)| ClientMessage::WaitPort { port, timeout_ms }),
            (
                proptest::collection::vec(".*", 0..4),
                proptest::option::of(".*"),
                any::<bool>(),
                proptest::option::of((any::<u16>(), any::<u16>())),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(|(argv, cwd, stdin, tty, timeout_ms)| {
                    ClientMessage::Exec(ExecRequest {
                        argv,
                        env: vec![("K".into(), "V".into())],
                        cwd,
                        stdin,
                        tty: tty.map(|(rows, cols)| TtySize { rows, cols }),
                        timeout_ms,
                    })
                }),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ClientMessage::Stdin { data }),
            Just(ClientMessage::StdinEof),
            any::<i32>().prop_map(|signal| ClientMessage::Signal { signal }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(rows, cols)| ClientMessage::Resize(TtySize { rows, cols })),
            Just(ClientMessage::HostKey),
            (
                ".*",
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
            )
                .prop_map(|(path, mode, uid, gid, dir_mode)| {
                    ClientMessage::FilePut(FilePutRequest {
                        path,
                        mode,
                        uid,
                        gid,
                        dir_mode,
                    })
                }),
            ".*".prop_map(|path| ClientMessage::FileGet { path }),
            any::<u16>().prop_map(|port| ClientMessage::Connect { port }),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ClientMessage::FileData { data }),
            Just(ClientMessage::FileEnd),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ClientMessage::Data { data }),
        ]
    }

    fn arb_server_message() -> impl Strategy<Value = ServerMessage> {
        prop_oneof![
            ".*".prop_map(|key| ServerMessage::HostKeyOk { key }),
            Just(ServerMessage::FilePutReady),
            any::<u64>().prop_map(|size| ServerMessage::FilePutOk { size }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(size, mode)| ServerMessage::FileInfo(FileInfo { size, mode })),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ServerMessage::FileData { data }),
            Just(ServerMessage::FileEnd),
            Just(ServerMessage::Connected),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ServerMessage::Data { data }),
            Just(ServerMessage::ConnectionClosed),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|data| ServerMessage::Stdout { data }),
            (
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<i32>()),
                any::<bool>()
            )
                .prop_map(|(code, signal, timed_out)| ServerMessage::Exit(
                    ExitStatus {
                        code,
                        signal,
                        timed_out
                    }
                )),
            (".*").prop_map(|message| ServerMessage::Error {
                code: ErrorCode::NotFound,
                message
            }),
        ]
    }

    fn roundtrip_server(msg: ServerMessage) -> ServerMessage {
        let mut enc = ServerCodec::new();
        let mut dec = ClientCodec::new();
        let mut buf = BytesMut::new();
        enc.encode(msg, &mut buf).unwrap();
        dec.decode(&mut buf).unwrap().unwrap()
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut server = ServerCodec::new();
            let mut client = ClientCodec::new();
            let mut a = BytesMut::new();
            let mut b = BytesMut::new();
            for chunk in chunks {
                a.extend_from_slice(&chunk);
                b.extend_from_slice(&chunk);
                // Errors are fine; panics and infinite loops are not. After an error the
                // stream is abandoned, as the real peers do.
                while let Ok(Some(_)) = server.decode(&mut a) {}
                while let Ok(Some(_)) = client.decode(&mut b) {}
            }
        }

        #[test]
        fn decoder_never_panics_on_well_framed_random_payloads(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            json_ish in r#"\{"type":"(file_put|file_get|file_data|connect|data|host_key|[a-z_]{0,12})"(,"[a-z]{1,6}":("[A-Za-z0-9+/=]{0,12}"|-?[0-9]{1,12}|true|null|\[\]|\{\}))*\}"#,
        ) {
            for body in [payload, json_ish.into_bytes()] {
                let mut buf = BytesMut::new();
                buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
                buf.extend_from_slice(&body);
                let _ = ServerCodec::new().decode(&mut buf.clone());
                let _ = ClientCodec::new().decode(&mut buf);
            }
        }

        #[test]
        fn every_client_message_roundtrips(msg in arb_client_message()) {
            prop_assert_eq!(roundtrip_client(msg.clone()), msg);
        }

        #[test]
        fn every_new_server_message_roundtrips(msg in arb_server_message()) {
            prop_assert_eq!(roundtrip_server(msg.clone()), msg);
        }

        #[test]
        fn decoder_never_panics_on_mutated_valid_frames(
            msg in arb_client_message(),
            reply in arb_server_message(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            // Valid frames with bytes flipped and the tail cut: the shapes a broken or hostile
            // peer produces, far likelier to reach deep decoder paths than random bytes.
            let mut a = BytesMut::new();
            ClientCodec::new().encode(msg, &mut a).unwrap();
            let mut b = BytesMut::new();
            ServerCodec::new().encode(reply, &mut b).unwrap();
            for buf in [&mut a, &mut b] {
                let len = buf.len();
                for (at, byte) in &flips {
                    buf[at % len] ^= byte;
                }
                buf.truncate(len - cut % len);
            }
            while let Ok(Some(_)) = ServerCodec::new().decode(&mut a) {}
            while let Ok(Some(_)) = ClientCodec::new().decode(&mut b) {}
        }
    }
}
