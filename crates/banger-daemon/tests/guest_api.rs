//! The guest routes (exec, files, SSH host key, port pipe) against the fake host. Error paths
//! need no guest at all; the happy paths run the real agent server on this host, bound at the
//! fake VM's vsock socket path (the same `serve_vmm_socket` the agent crate's tests use).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use banger_agent::guest::{GuestProbe, RecordingPower};
use banger_agent::server::serve_vmm_socket;
use banger_agent::{AgentServer, AGENT_PORT};
use banger_api::guest::{
    ExecEvent, ExecStart, SshHostKey, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use banger_api::{ApiError, ErrorCode, Vm};
use common::Daemon;
use futures::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::{self, Message};

async fn running(d: &Daemon, name: &str) -> Vm {
    d.create(json!({"name": name, "image": "base"})).await;
    d.client.get(&format!("/v1/vms/{name}")).await.unwrap()
}

fn error_of(status: StatusCode, body: &[u8]) -> (StatusCode, ApiError) {
    (status, serde_json::from_slice(body).unwrap())
}

async fn get_raw(d: &Daemon, path: &str) -> (StatusCode, ApiError) {
    let (status, body) = d
        .client
        .raw(Method::GET, path, None, Vec::new())
        .await
        .unwrap();
    error_of(status, &body)
}

/// Serves the real agent at VM `vm`'s vsock socket (replacing the fake VMM's placeholder file).
fn serve_agent(d: &Daemon, vm: &Vm, dir: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let uds: PathBuf = d
        .config
        .runtime_dir
        .join("vms")
        .join(vm.id.to_string())
        .join("vsock.sock");
    let _ = std::fs::remove_file(&uds);
    let listener = tokio::net::UnixListener::bind(&uds).unwrap();
    let server = Arc::new(
        AgentServer::new(GuestProbe::new("/proc"), Arc::new(RecordingPower::new()))
            .with_ssh_host_key(dir.join("host_key.pub")),
    );
    tokio::spawn(async move {
        let _ = serve_vmm_socket(listener, AGENT_PORT, server).await;
    })
}

async fn websocket(
    d: &Daemon,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<UnixStream>, tungstenite::Error> {
    let stream = UnixStream::connect(d.config.socket_path()).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://localhost{path}"), stream)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn exec_on_a_stopped_vm_is_409_before_any_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "idle", "image": "base", "no_start": true}))
        .await;
    let (status, err) = get_raw(&d, "/v1/vms/idle/exec").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err.code, ErrorCode::Conflict);
    assert!(err.message.contains("must be running"), "{}", err.message);
    // A WebSocket client gets the same answer instead of an upgrade.
    match websocket(&d, "/v1/vms/idle/exec").await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::CONFLICT)
        }
        other => panic!("expected an HTTP 409, got {other:?}"),
    }
    for path in [
        "/v1/vms/idle/ssh-host-key",
        "/v1/vms/idle/connect/22",
        "/v1/vms/idle/files?path=/etc/hostname",
    ] {
        assert_eq!(get_raw(&d, path).await.0, StatusCode::CONFLICT, "{path}");
    }
}

#[tokio::test]
async fn guest_routes_of_an_unknown_vm_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    for path in [
        "/v1/vms/ghost/exec",
        "/v1/vms/ghost/ssh-host-key",
        "/v1/vms/ghost/connect/22",
        "/v1/vms/ghost/files?path=/etc/hostname",
    ] {
        let (status, err) = get_raw(&d, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(err.code, ErrorCode::NotFound, "{path}");
    }
    let (status, _) = d
        .client
        .raw(
            Method::PUT,
            "/v1/vms/ghost/files?path=/x",
            None,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn file_paths_must_be_absolute_and_modes_octal() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    running(&d, "box").await;
    for path in ["relative/file", "/tmp/", "/tmp/../etc/passwd"] {
        let url = format!("/v1/vms/box/files?path={path}");
        let (status, err) = get_raw(&d, &url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(err.field.as_deref(), Some("path"));
        let (status, _) = d
            .client
            .raw(Method::PUT, &url, None, b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
    let (status, body) = d
        .client
        .raw(
            Method::PUT,
            "/v1/vms/box/files?path=/x&mode=999",
            None,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(error_of(status, &body).1.field.as_deref(), Some("mode"));
    assert_eq!(
        get_raw(&d, "/v1/vms/box/connect/99999").await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn create_installs_bangers_public_key_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    running(&d, "keyed").await;
    let public =
        std::fs::read_to_string(format!("{}.pub", d.config.ssh_key_path().display())).unwrap();
    let installed = d.fakes.agent.installed_keys();
    assert_eq!(installed.len(), 1, "{installed:?}");
    assert_eq!(installed[0].1, public.trim());
    assert!(public.starts_with("ssh-ed25519 "));
}

#[tokio::test]
async fn a_failing_key_install_fails_the_agent_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.fakes
        .agent
        .fail_on("install_authorized_key", "read-only file system");
    let op = d
        .post_json("/v1/vms", json!({"name": "nokey", "image": "base"}))
        .await
        .unwrap();
    let done = d.wait(&op).await;
    let err = done.error.expect("create must fail");
    assert!(
        format!("{err:?}").contains("read-only file system"),
        "{err:?}"
    );
    let failed = done.stages.iter().find(|s| s.name == "agent").unwrap();
    assert_eq!(failed.status, banger_api::StageStatus::Failed);
}

#[tokio::test]
async fn exec_over_the_websocket_streams_stdio_and_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());

    let mut ws = websocket(&d, "/v1/vms/live/exec").await.unwrap();
    let start = ExecStart {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "read x; echo got $x; echo oops >&2; exit 7".into(),
        ],
        stdin: true,
        ..ExecStart::default()
    };
    ws.send(Message::text(serde_json::to_string(&start).unwrap()))
        .await
        .unwrap();
    ws.send(Message::binary([&[STREAM_STDIN][..], b"hello\n"].concat()))
        .await
        .unwrap();
    let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            Message::Binary(data) => match data[0] {
                STREAM_STDOUT => stdout.extend_from_slice(&data[1..]),
                STREAM_STDERR => stderr.extend_from_slice(&data[1..]),
                other => panic!("stream {other}"),
            },
            Message::Text(text) => {
                if let ExecEvent::Exit { code, signal, .. } = serde_json::from_str(&text).unwrap() {
                    exit = Some((code, signal));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(stdout, b"got hello\n");
    assert_eq!(stderr, b"oops\n");
    assert_eq!(exit, Some((Some(7), None)));
}

#[tokio::test]
async fn exec_of_a_missing_program_exits_127_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());
    let mut ws = websocket(&d, "/v1/vms/live/exec").await.unwrap();
    let start = ExecStart {
        argv: vec!["/no/such/program".into()],
        ..ExecStart::default()
    };
    ws.send(Message::text(serde_json::to_string(&start).unwrap()))
        .await
        .unwrap();
    let (mut stderr, mut exit) = (Vec::new(), None);
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(data) if data[0] == STREAM_STDERR => {
                stderr.extend_from_slice(&data[1..])
            }
            Message::Text(text) => {
                if let ExecEvent::Exit { code, .. } = serde_json::from_str(&text).unwrap() {
                    exit = code;
                }
            }
            _ => {}
        }
    }
    assert_eq!(exit, Some(127));
    assert!(String::from_utf8_lossy(&stderr).contains("/no/such/program"));
}

#[tokio::test]
async fn exec_with_a_timeout_is_killed_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());
    let mut ws = websocket(&d, "/v1/vms/live/exec").await.unwrap();
    let start = ExecStart {
        argv: vec!["sleep".into(), "30".into()],
        timeout_secs: Some(1),
        ..ExecStart::default()
    };
    let started = std::time::Instant::now();
    ws.send(Message::text(serde_json::to_string(&start).unwrap()))
        .await
        .unwrap();
    let mut exit = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(text) = msg {
            if let event @ ExecEvent::Exit { .. } = serde_json::from_str(&text).unwrap() {
                exit = Some(event);
            }
        }
    }
    assert_eq!(
        exit,
        Some(ExecEvent::Exit {
            code: None,
            signal: Some(9),
            timed_out: true
        })
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[tokio::test]
async fn malformed_exec_messages_end_the_session_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());
    let long_running = ExecStart {
        argv: vec!["sleep".into(), "30".into()],
        stdin: true,
        ..ExecStart::default()
    };
    let bad_after_start: [Message; 3] = [
        Message::text("{\"type\":\"resize\""),
        Message::text("{\"type\":\"explode\"}"),
        Message::binary(vec![9u8, 1, 2]),
    ];
    for bad in bad_after_start {
        let mut ws = websocket(&d, "/v1/vms/live/exec").await.unwrap();
        ws.send(Message::text(serde_json::to_string(&long_running).unwrap()))
            .await
            .unwrap();
        ws.send(bad.clone()).await.unwrap();
        let mut error = None;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                if let Ok(ExecEvent::Error { error: e }) = serde_json::from_str(&text) {
                    error = Some(e);
                }
            }
        }
        let error = error.unwrap_or_else(|| panic!("no error for {bad:?}"));
        assert_eq!(error.code, ErrorCode::InvalidInput, "{bad:?}");
    }
    // A bad first message, and a binary one where the request belongs.
    for bad in [Message::text("not json"), Message::binary(vec![0u8])] {
        let mut ws = websocket(&d, "/v1/vms/live/exec").await.unwrap();
        ws.send(bad).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        let event: ExecEvent = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert!(matches!(event, ExecEvent::Error { .. }), "{event:?}");
    }
    // The daemon still serves.
    let _: Vm = d.client.get("/v1/vms/live").await.unwrap();
}

#[tokio::test]
async fn files_roundtrip_through_the_api_with_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());
    let target = dir.path().join("put.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let url = format!("/v1/vms/live/files?path={}&mode=0750", target.display());
    let (status, body) = d
        .client
        .raw(Method::PUT, &url, None, data.clone())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(std::fs::read(&target).unwrap(), data);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    let (status, body) = d
        .client
        .raw(
            Method::GET,
            &format!("/v1/vms/live/files?path={}", target.display()),
            None,
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_ref() == data.as_slice());

    let missing = format!("/v1/vms/live/files?path={}/nodir/f", dir.path().display());
    let (status, body) = d
        .client
        .raw(Method::PUT, &missing, None, b"x".to_vec())
        .await
        .unwrap();
    let (status, err) = error_of(status, &body);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err.message.contains("does not exist"), "{}", err.message);
}

#[tokio::test]
async fn ssh_host_key_and_port_pipe_reach_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let vm = running(&d, "live").await;
    let _agent = serve_agent(&d, &vm, dir.path());
    std::fs::write(
        dir.path().join("host_key.pub"),
        "ssh-ed25519 AAAAtest root@g\n",
    )
    .unwrap();
    let key: SshHostKey = d.client.get("/v1/vms/live/ssh-host-key").await.unwrap();
    assert_eq!(key.key, "ssh-ed25519 AAAAtest root@g");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf.to_ascii_uppercase()).await.unwrap();
    });
    let mut ws = websocket(&d, &format!("/v1/vms/live/connect/{port}"))
        .await
        .unwrap();
    ws.send(Message::binary(b"hello".to_vec())).await.unwrap();
    let mut got = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(data) => got.extend_from_slice(&data),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(got, b"HELLO");
}
