//! File put/get, the SSH host key and the port pipe (protocol 1.1): the real client against
//! the real server over a Unix socket playing the VMM's vsock socket. No VM, no root.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_agent::client::AgentErrorKind;
use banger_agent::guest::{GuestProbe, RecordingPower};
use banger_agent::protocol::{
    ClientCodec, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};
use banger_agent::server::serve_vmm_socket;
use banger_agent::{AgentClient, AgentServer, FilePutRequest, AGENT_PORT};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::codec::Framed;

struct TestAgent {
    dir: tempfile::TempDir,
    uds: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestAgent {
    fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("ssh_host_ed25519_key.pub")
    }

    async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.uds, AGENT_PORT, Duration::from_secs(5))
            .await
            .unwrap()
    }
}

async fn start_agent() -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(&uds).unwrap();
    let server = Arc::new(
        AgentServer::new(GuestProbe::new("/proc"), Arc::new(RecordingPower::new()))
            .with_ssh_host_key(dir.path().join("ssh_host_ed25519_key.pub")),
    );
    let task = tokio::spawn(async move {
        let _ = serve_vmm_socket(listener, AGENT_PORT, server).await;
    });
    TestAgent { dir, uds, task }
}

fn put_request(path: &Path, mode: u32) -> FilePutRequest {
    FilePutRequest {
        path: path.display().to_string(),
        mode,
        ..FilePutRequest::default()
    }
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn remote_code(err: &banger_agent::AgentError) -> Option<ErrorCode> {
    match err.kind() {
        AgentErrorKind::Remote { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn put_then_get_roundtrips_three_mebibytes_and_keeps_the_mode() {
    let agent = start_agent().await;
    let client = agent.client().await;
    let target = agent.dir.path().join("data.bin");
    let data = pseudo_random_bytes(3 * 1024 * 1024 + 17);
    let written = client
        .put_file(put_request(&target, 0o640), data.as_slice())
        .await
        .unwrap();
    assert_eq!(written, data.len() as u64);
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert!(std::fs::read(&target).unwrap() == data);

    let download = client
        .get_file(&target.display().to_string())
        .await
        .unwrap();
    assert_eq!(download.info().size, data.len() as u64);
    assert_eq!(download.info().mode, 0o640);
    assert!(download.collect().await.unwrap() == data);
}

#[tokio::test]
async fn put_replaces_an_existing_file_and_leaves_no_temporary_file() {
    let agent = start_agent().await;
    let client = agent.client().await;
    let dir = agent.dir.path().join("replace");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("f");
    std::fs::write(&target, b"old contents").unwrap();
    client
        .put_file(put_request(&target, 0o600), &b"new"[..])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
}

#[tokio::test]
async fn put_into_a_missing_directory_is_not_found_unless_dir_mode_is_given() {
    let agent = start_agent().await;
    let client = agent.client().await;
    let target = agent.dir.path().join("a/b/authorized_keys");
    let err = client
        .put_file(put_request(&target, 0o600), &b"k"[..])
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::NotFound), "{err:?}");
    assert!(format!("{:?}", err.kind()).contains("does not exist"));

    let me = std::fs::metadata(agent.dir.path()).unwrap();
    let req = FilePutRequest {
        dir_mode: Some(0o700),
        uid: Some(me.uid()),
        gid: Some(me.gid()),
        ..put_request(&target, 0o600)
    };
    client.put_file(req, &b"key\n"[..]).await.unwrap();
    for dir in ["a", "a/b"] {
        let mode = std::fs::metadata(agent.dir.path().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700, "{dir}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"key\n");
}

#[tokio::test]
async fn put_with_a_relative_path_is_a_bad_request() {
    let agent = start_agent().await;
    let err = agent
        .client()
        .await
        .put_file(put_request(Path::new("relative/file"), 0o644), &b""[..])
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::BadRequest));
}

/// Opens a raw connection past `Hello`, as a client that misbehaves would.
async fn raw_connection(agent: &TestAgent) -> Framed<UnixStream, ClientCodec> {
    let mut stream = UnixStream::connect(&agent.uds).await.unwrap();
    stream
        .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .await
        .unwrap();
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await.unwrap();
        if byte == b'\n' {
            break;
        }
        line.push(byte);
    }
    let mut framed = Framed::new(stream, ClientCodec::new());
    framed
        .send(ClientMessage::Hello {
            version: PROTOCOL_VERSION,
        })
        .await
        .unwrap();
    assert!(matches!(
        framed.next().await.unwrap().unwrap(),
        ServerMessage::HelloOk { .. }
    ));
    framed
}

#[tokio::test]
async fn put_abandoned_midway_keeps_the_old_file_and_removes_the_temporary_one() {
    let agent = start_agent().await;
    let dir = agent.dir.path().join("abandoned");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("f");
    std::fs::write(&target, b"old").unwrap();
    let mut conn = raw_connection(&agent).await;
    conn.send(ClientMessage::FilePut(put_request(&target, 0o644)))
        .await
        .unwrap();
    assert_eq!(
        conn.next().await.unwrap().unwrap(),
        ServerMessage::FilePutReady
    );
    conn.send(ClientMessage::FileData {
        data: vec![b'x'; 1000],
    })
    .await
    .unwrap();
    drop(conn);
    for _ in 0..100 {
        if std::fs::read_dir(&dir).unwrap().count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
}

#[tokio::test]
async fn get_of_a_missing_file_is_not_found() {
    let agent = start_agent().await;
    let err = agent
        .client()
        .await
        .get_file("/nonexistent/banger/file")
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn host_key_is_the_first_line_of_the_public_key_file() {
    let agent = start_agent().await;
    let client = agent.client().await;
    let err = client.host_key().await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::NotFound));

    std::fs::write(
        agent.host_key_path(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@guest\n",
    )
    .unwrap();
    assert_eq!(
        client.host_key().await.unwrap(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@guest"
    );
}

#[tokio::test]
async fn port_pipe_carries_bytes_both_ways_and_reports_the_guest_closing() {
    let agent = start_agent().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A line-echo server that closes after "bye".
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            write
                .write_all(format!("echo {line}\n").as_bytes())
                .await
                .unwrap();
            if line == "bye" {
                break;
            }
        }
    });
    let (mut tx, mut rx) = agent.client().await.connect_port(port).await.unwrap();
    tx.send(b"hello\n").await.unwrap();
    let big = "y".repeat(200_000);
    tx.send(format!("{big}\nbye\n").as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while let Some(chunk) = rx.recv().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(received).unwrap(),
        format!("echo hello\necho {big}\necho bye\n")
    );
    server.await.unwrap();
}

#[tokio::test]
async fn port_pipe_to_a_closed_port_is_not_found() {
    let agent = start_agent().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = agent.client().await.connect_port(port).await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::NotFound), "{err:?}");
}
