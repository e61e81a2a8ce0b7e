//! Guest side of `FilePut`, `FileGet` and `Connect`: files streamed in and out of the guest,
//! and a byte pipe to a TCP port inside it.
//!
//! `FilePut` writes into a temporary file beside the target (`.NAME.banger-put-PID-N`, created
//! with `O_EXCL`), then sets mode and owner, fsyncs and renames it over the target, so a reader
//! sees the old file or the whole new one, never a part. Any failure or a vanished client
//! removes the temporary file. `FileGet` streams a file in [`IO_CHUNK_LEN`] chunks after a
//! `FileInfo` frame. `Connect` copies bytes between frames and a TCP connection to
//! `127.0.0.1:PORT`; the pipe ends when either side closes (a TCP end-of-file is reported with
//! `ConnectionClosed`, since vsock carries no half-close).
//!
//! Every function here owns its connection until it returns; nothing is shared between
//! connections except the temp-name counter.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::{
    ClientMessage, ErrorCode, FileInfo, FilePutRequest, FrameError, ServerMessage, IO_CHUNK_LEN,
};

/// How long `Connect` waits for the TCP connection inside the guest.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `FilePut` client may stay silent between two frames.
pub const PUT_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// A request failed in a way the client is told about with an `Error` frame.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }

    fn io(what: String, err: &io::Error) -> Self {
        let code = match err.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        RequestError::new(code, format!("{what}: {err}"))
    }

    fn into_message(self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
        }
    }
}

/// The client could not be answered (it went away mid-transfer).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("sending a frame to the client")]
    Send(#[source] FrameError),
    #[error("reading the client's frames")]
    Receive(#[source] FrameError),
}

/// Checks that `path` is absolute, names a file (not `/`), and has no `..`.
pub fn checked_path(path: &str) -> Result<PathBuf, RequestError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            format!("path {path:?} is not absolute"),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            format!("path {path:?} contains `..`"),
        ));
    }
    if p.file_name().is_none() || path.ends_with('/') {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            format!("path {path:?} does not name a file"),
        ));
    }
    Ok(p.to_path_buf())
}

fn temp_name(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.banger-put-{}-{n}", std::process::id()))
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid)
}

/// Creates the missing ancestors of `dir` with `mode`, owned by `uid`/`gid`.
fn create_parents(dir: &Path, mode: u32, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cursor = d.parent();
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(mode & 0o7777).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        // The umask may have masked bits off; the caller asked for exactly `mode`.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode & 0o7777))?;
        chown(d, uid, gid)?;
    }
    Ok(())
}

/// Removes the temporary file of a put unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn send<S>(sink: &mut S, msg: ServerMessage) -> Result<(), TransferError>
where
    S: Sink<ServerMessage, Error = FrameError> + Unpin,
{
    sink.send(msg).await.map_err(TransferError::Send)
}

/// Serves `FilePut`: `frames` and `sink` are the connection after the request frame.
pub async fn put<S, R>(mut sink: S, mut frames: R, req: FilePutRequest) -> Result<(), TransferError>
where
    S: Sink<ServerMessage, Error = FrameError> + Unpin,
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
{
    let prepared = prepare_put(&req);
    let (target, mut file, mut temp) = match prepared {
        Ok(ok) => ok,
        Err(err) => return send(&mut sink, err.into_message()).await,
    };
    send(&mut sink, ServerMessage::FilePutReady).await?;
    let mut size: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(PUT_FRAME_TIMEOUT, frames.next()).await {
            Err(_) => {
                let err = RequestError::new(
                    ErrorCode::Timeout,
                    format!("no file data for {PUT_FRAME_TIMEOUT:?}"),
                );
                return send(&mut sink, err.into_message()).await;
            }
            // The client went away: the temp file is removed on drop.
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                let message = crate::error_chain(&e);
                let _ = send(
                    &mut sink,
                    RequestError::new(ErrorCode::BadRequest, message).into_message(),
                )
                .await;
                return Err(TransferError::Receive(e));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            ClientMessage::FileData { data } => {
                if let Err(e) = file.write_all(&data).await {
                    let err = RequestError::io(format!("writing {}", temp.path.display()), &e);
                    return send(&mut sink, err.into_message()).await;
                }
                size += data.len() as u64;
            }
            ClientMessage::FileEnd => break,
            other => {
                let err = RequestError::new(
                    ErrorCode::BadRequest,
                    format!("expected file_data or file_end, got {}", other.kind()),
                );
                return send(&mut sink, err.into_message()).await;
            }
        }
    }
    let finish = async {
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        std::fs::set_permissions(
            &temp.path,
            std::fs::Permissions::from_mode(req.mode & 0o7777),
        )?;
        chown(&temp.path, req.uid, req.gid)?;
        std::fs::rename(&temp.path, &target)
    };
    match finish.await {
        Ok(()) => {
            temp.armed = false;
            send(&mut sink, ServerMessage::FilePutOk { size }).await
        }
        Err(e) => {
            let err = RequestError::io(format!("completing {}", target.display()), &e);
            send(&mut sink, err.into_message()).await
        }
    }
}

fn prepare_put(req: &FilePutRequest) -> Result<(PathBuf, tokio::fs::File, TempFile), RequestError> {
    let target = checked_path(&req.path)?;
    let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    if let Some(dir_mode) = req.dir_mode {
        create_parents(&dir, dir_mode, req.uid, req.gid)
            .map_err(|e| RequestError::io(format!("creating directory {}", dir.display()), &e))?;
    }
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("{} is not a directory", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RequestError::new(
                ErrorCode::NotFound,
                format!("directory {} does not exist", dir.display()),
            ))
        }
        Err(e) => {
            return Err(RequestError::io(
                format!("inspecting {}", dir.display()),
                &e,
            ))
        }
    }
    if target.is_dir() {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            format!("{} is a directory", target.display()),
        ));
    }
    let temp_path = temp_name(&target);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp_path)
        .map_err(|e| RequestError::io(format!("creating {}", temp_path.display()), &e))?;
    Ok((
        target,
        tokio::fs::File::from_std(file),
        TempFile {
            path: temp_path,
            armed: true,
        },
    ))
}

/// Serves `FileGet`.
pub async fn get<S>(mut sink: S, path: String) -> Result<(), TransferError>
where
    S: Sink<ServerMessage, Error = FrameError> + Unpin,
{
    let opened = async {
        let path = checked_path(&path)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| RequestError::io(format!("opening {}", path.display()), &e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| RequestError::io(format!("inspecting {}", path.display()), &e))?;
        if !meta.is_file() {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok((path, file, meta))
    };
    let (path, mut file, meta) = match opened.await {
        Ok(ok) => ok,
        Err(err) => return send(&mut sink, err.into_message()).await,
    };
    let info = FileInfo {
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
    };
    send(&mut sink, ServerMessage::FileInfo(info)).await?;
    let mut buf = vec![0u8; IO_CHUNK_LEN];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                send(
                    &mut sink,
                    ServerMessage::FileData {
                        data: buf[..n].to_vec(),
                    },
                )
                .await?
            }
            Err(e) => {
                let err = RequestError::io(format!("reading {}", path.display()), &e);
                return send(&mut sink, err.into_message()).await;
            }
        }
    }
    send(&mut sink, ServerMessage::FileEnd).await
}

/// Serves `Connect`: pipes frames to and from TCP `127.0.0.1:port`.
pub async fn connect<S, R>(mut sink: S, mut frames: R, port: u16) -> Result<(), TransferError>
where
    S: Sink<ServerMessage, Error = FrameError> + Unpin,
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
{
    let attempt = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await;
    let stream = match attempt {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let err = RequestError::new(
                ErrorCode::NotFound,
                format!("nothing listens on 127.0.0.1:{port} in the guest"),
            );
            return send(&mut sink, err.into_message()).await;
        }
        Ok(Err(e)) => {
            let err = RequestError::io(format!("connecting to 127.0.0.1:{port}"), &e);
            return send(&mut sink, err.into_message()).await;
        }
        Err(_) => {
            let err = RequestError::new(
                ErrorCode::Timeout,
                format!("connecting to 127.0.0.1:{port} took over {CONNECT_TIMEOUT:?}"),
            );
            return send(&mut sink, err.into_message()).await;
        }
    };
    let _ = stream.set_nodelay(true);
    send(&mut sink, ServerMessage::Connected).await?;
    let (mut tcp_read, mut tcp_write) = stream.into_split();

    let upstream = async {
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(ClientMessage::Data { data }) => {
                    if tcp_write.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(other) => {
                    tracing::debug!(kind = other.kind(), "unexpected frame on a connect pipe");
                    break;
                }
                Err(e) => return Err(TransferError::Receive(e)),
            }
        }
        Ok(())
    };
    let downstream = async {
        let mut buf = vec![0u8; IO_CHUNK_LEN];
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    sink.send(ServerMessage::Data { data })
                        .await
                        .map_err(TransferError::Send)?;
                }
            }
        }
        sink.send(ServerMessage::ConnectionClosed)
            .await
            .map_err(TransferError::Send)
    };
    // Whichever side ends first ends the pipe: the client closing drops the TCP connection,
    // the TCP peer closing is reported and the agent closes the vsock connection.
    tokio::select! {
        up = upstream => up,
        down = downstream => down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_file_paths_without_dotdot_are_accepted() {
        assert!(checked_path("/root/.ssh/authorized_keys").is_ok());
        for bad in ["relative", "/", "/tmp/", "/tmp/../etc/passwd", ""] {
            let err = checked_path(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn temp_file_lives_beside_the_target_and_is_hidden() {
        let temp = temp_name(Path::new("/srv/data/file.bin"));
        assert_eq!(temp.parent(), Some(Path::new("/srv/data")));
        let name = temp
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".file.bin.banger-put-"), "{name}");
    }
}
