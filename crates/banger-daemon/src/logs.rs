//! A VM's log files as HTTP bodies: the last lines, then (when following) every byte appended.
//!
//! The VMM writes `<vm_dir>/console.log` (the guest's serial console) and `<vm_dir>/vmm.log`
//! (the VMM's own output); the manager rotates them to `*.1` at start when they grew too big.
//! Following polls the file's length: new bytes are sent as they appear, a file that shrank
//! (rotated or truncated) is read again from its start, and the stream ends when the VM's
//! directory is gone (the VM was deleted) or the client hangs up (the body is dropped).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;

/// Most bytes read from the end of a log to find its last lines.
pub const TAIL_WINDOW_BYTES: u64 = 1024 * 1024;

/// Largest chunk sent while following.
const FOLLOW_CHUNK_BYTES: usize = 64 * 1024;

/// Which log of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// The guest's serial console (kernel messages, init, getty).
    #[default]
    Console,
    /// The VMM's own log.
    Vmm,
}

impl LogKind {
    /// The file name inside the VM's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            LogKind::Console => "console.log",
            LogKind::Vmm => "vmm.log",
        }
    }
}

/// The last `lines` lines of `path` (at most [`TAIL_WINDOW_BYTES`] of them) and the file's
/// length when read, where following continues. A missing file is empty (the VM never ran).
pub fn tail(path: &Path, lines: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    (&mut file).take(len - start).read_to_end(&mut buf)?;
    Ok((last_lines(&buf, lines).to_vec(), len))
}

/// The suffix of `buf` holding its last `lines` lines (a final line without `\n` counts).
pub fn last_lines(buf: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &buf[buf.len()..];
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

struct Follow {
    path: PathBuf,
    offset: u64,
    poll: Duration,
}

/// Every byte appended to `path` after `offset`, as it appears, checked every `poll`.
pub fn follow(
    path: PathBuf,
    offset: u64,
    poll: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::unfold(Follow { path, offset, poll }, |mut state| async move {
        loop {
            match read_from(&state.path, state.offset) {
                Ok(Some((chunk, next))) => {
                    state.offset = next;
                    return Some((Ok(Bytes::from(chunk)), state));
                }
                Ok(None) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Gone with its directory: the VM was deleted. Only the file: being
                    // rotated, or not written yet.
                    if !state.path.parent().is_some_and(Path::exists) {
                        return None;
                    }
                    state.offset = 0;
                }
                Err(err) => return Some((Err(err), state)),
            }
            tokio::time::sleep(state.poll).await;
        }
    })
}

/// New bytes after `offset` and the next offset, `None` when nothing new. A file shorter than
/// `offset` was rotated or truncated: it is read from its start.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = Vec::new();
    (&mut file)
        .take(FOLLOW_CHUNK_BYTES as u64)
        .read_to_end(&mut chunk)?;
    let next = offset + chunk.len() as u64;
    Ok(Some((chunk, next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn last_lines_counts_a_final_line_without_newline() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn tail_of_a_missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            tail(&dir.path().join("console.log"), 10).unwrap(),
            (vec![], 0)
        );
    }

    #[tokio::test]
    async fn follow_sends_appended_bytes_restarts_after_rotation_and_ends_on_delete() {
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path().join("vm");
        std::fs::create_dir(&vm_dir).unwrap();
        let log = vm_dir.join("console.log");
        std::fs::write(&log, "old line\n").unwrap();
        let (text, offset) = tail(&log, 10).unwrap();
        assert_eq!(text, b"old line\n");
        let mut stream = Box::pin(follow(log.clone(), offset, Duration::from_millis(10)));

        std::fs::write(&log, "old line\nnew line\n").unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "new line\n");
        std::fs::write(&log, "fresh\n").unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "fresh\n");
        std::fs::remove_dir_all(&vm_dir).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the stream ends when the VM is gone"
        );
    }
}
