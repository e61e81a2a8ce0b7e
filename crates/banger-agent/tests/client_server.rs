//! The real client against the real server, over a Unix socket that plays the VMM's vsock
//! socket (`server::serve_vmm_socket`): no VM, no root. Processes run on the test host.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent::client::AgentErrorKind;
use banger_agent::guest::{GuestProbe, PowerAction, RecordingPower};
use banger_agent::protocol::{
    ClientMessage, ErrorCode, ServerCodec, ServerMessage, Version, AGENT_VERSION,
};
use banger_agent::server::serve_vmm_socket;
use banger_agent::{AgentClient, AgentServer, ExecEvent, ExecRequest, TtySize, AGENT_PORT};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

struct TestAgent {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    power: Arc<RecordingPower>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn agent_server(power: Arc<RecordingPower>) -> Arc<AgentServer> {
    Arc::new(AgentServer::new(GuestProbe::new("/proc"), power))
}

async fn start_agent() -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(&uds).unwrap();
    let power = Arc::new(RecordingPower::new());
    let server = agent_server(Arc::clone(&power));
    let task = tokio::spawn(async move {
        let _ = serve_vmm_socket(listener, AGENT_PORT, server).await;
    });
    TestAgent {
        _dir: dir,
        uds,
        power,
        task,
    }
}

async fn client(agent: &TestAgent) -> AgentClient {
    AgentClient::connect(&agent.uds, AGENT_PORT, Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn health_reports_agent_version_and_uptime() {
    let agent = start_agent().await;
    let client = client(&agent).await;
    assert_eq!(client.agent_version(), AGENT_VERSION);
    let health = client.health().await.unwrap();
    assert_eq!(health.agent_version, AGENT_VERSION);
    assert!(health.uptime_secs > 0.0);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(health.boot_id, boot_id.trim());
}

#[tokio::test]
async fn info_reports_hostname_and_kernel_release() {
    let agent = start_agent().await;
    let info = client(&agent).await.info().await.unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(info.hostname, hostname.trim());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(info.kernel, release.trim());
}

#[tokio::test]
async fn exec_separates_stdout_from_stderr_and_reports_exit_code() {
    let agent = start_agent().await;
    let out = client(&agent)
        .await
        .exec_collect(["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));
    assert_eq!(out.status.signal, None);
    assert!(!out.status.timed_out);
}

#[tokio::test]
async fn exec_passes_env_and_cwd() {
    let agent = start_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let mut req = ExecRequest::new(["sh", "-c", "echo \"$GREETING\"; pwd"]);
    req.env = vec![("GREETING".into(), "hello guest".into())];
    req.cwd = Some(dir.path().to_string_lossy().into_owned());
    let out = client(&agent)
        .await
        .exec(req)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let expected = format!("hello guest\n{}\n", dir.path().display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn exec_pipes_one_mebibyte_of_stdin_through_cat_intact() {
    let agent = start_agent().await;
    let input = pseudo_random_bytes(1024 * 1024);
    let out = client(&agent)
        .await
        .exec_with_stdin(ExecRequest::new(["cat"]), &input)
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdout differs from stdin");
}

#[tokio::test]
async fn exec_streams_more_than_ten_megabytes_of_stdout_intact() {
    let agent = start_agent().await;
    let out = client(&agent)
        .await
        .exec_collect(["sh", "-c", "head -c 12000000 /dev/zero | tr '\\0' 'x'"])
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout.len(), 12_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
}

#[tokio::test]
async fn exec_of_a_missing_program_is_not_found() {
    let agent = start_agent().await;
    let err = client(&agent)
        .await
        .exec_collect(["/nonexistent/program"])
        .await
        .unwrap_err();
    match err.kind() {
        AgentErrorKind::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::NotFound);
            assert!(message.contains("/nonexistent/program"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn exec_with_empty_argv_is_a_bad_request() {
    let agent = start_agent().await;
    let err = client(&agent)
        .await
        .exec(ExecRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            AgentErrorKind::Remote {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_process_and_says_so() {
    let agent = start_agent().await;
    let mut req = ExecRequest::new(["sleep", "30"]);
    req.timeout_ms = Some(200);
    let started = Instant::now();
    let out = client(&agent)
        .await
        .exec(req)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn exec_signal_reaches_the_process() {
    let agent = start_agent().await;
    let mut session = client(&agent)
        .await
        .exec(ExecRequest::new(["sh", "-c", "echo ready; exec sleep 30"]))
        .await
        .unwrap();
    assert_eq!(
        session.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(b"ready\n".to_vec()))
    );
    session.signal(libc::SIGTERM).await.unwrap();
    let out = session.collect().await.unwrap();
    assert_eq!(out.status.signal, Some(libc::SIGTERM));
    assert_eq!(out.status.code, None);
}

#[tokio::test]
async fn dropping_an_exec_session_kills_the_process_group() {
    let agent = start_agent().await;
    let mut session = client(&agent)
        .await
        .exec(ExecRequest::new(["sh", "-c", "sleep 30 & echo $!; wait"]))
        .await
        .unwrap();
    let Some(ExecEvent::Stdout(line)) = session.next_event().await.unwrap() else {
        panic!("expected the background pid");
    };
    let bg: i32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    drop(session);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its (killed) parent's reaper.
        if state.is_empty() || state.contains(") Z") {
            break;
        }
        assert!(Instant::now() < deadline, "background sleep {bg} survived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tty_exec_runs_on_a_terminal_of_the_requested_size_and_resizes() {
    let agent = start_agent().await;
    let mut req = ExecRequest::new(["sh", "-c", "test -t 0 && stty size; read x; stty size"]);
    req.stdin = true;
    req.tty = Some(TtySize { rows: 24, cols: 80 });
    let session = client(&agent).await.exec(req).await.unwrap();
    let (mut input, mut events) = session.split();
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains("24 80") {
        match events.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(data)) => output.extend_from_slice(&data),
            other => panic!("unexpected {other:?} after {output:?}"),
        }
    }
    input
        .resize(TtySize {
            rows: 30,
            cols: 100,
        })
        .await
        .unwrap();
    input.write_stdin(b"go\n").await.unwrap();
    let out = events.collect().await.unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("30 100"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stderr.is_empty());
}

#[tokio::test]
async fn shutdown_is_acknowledged_then_powers_off() {
    let agent = start_agent().await;
    client(&agent).await.shutdown(false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.power.actions().is_empty() {
        assert!(Instant::now() < deadline, "power control never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.power.actions(), vec![PowerAction::PowerOff]);
}

#[tokio::test]
async fn shutdown_with_reboot_reboots() {
    let agent = start_agent().await;
    client(&agent).await.shutdown(true).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.power.actions().is_empty() {
        assert!(Instant::now() < deadline, "power control never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.power.actions(), vec![PowerAction::Reboot]);
}

#[tokio::test]
async fn wait_port_answers_once_something_listens() {
    let agent = start_agent().await;
    let client = client(&agent).await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = listener.accept().await;
    });
    let waited = client
        .wait_port(port, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    later.abort();
}

#[tokio::test]
async fn wait_port_times_out_with_a_timeout_error() {
    let agent = start_agent().await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let err = client(&agent)
        .await
        .wait_port(port, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            AgentErrorKind::Remote {
                code: ErrorCode::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn agent_refuses_a_client_with_another_major_version() {
    let (host, guest) = UnixStream::pair().unwrap();
    let server = agent_server(Arc::new(RecordingPower::new()));
    let serving = tokio::spawn(server.serve_connection(guest));
    let mut framed = Framed::new(host, banger_agent::protocol::ClientCodec::new());
    framed
        .send(ClientMessage::Hello {
            version: Version { major: 2, minor: 0 },
        })
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    assert_eq!(
        reply,
        ServerMessage::HelloRefused {
            agent_version: AGENT_VERSION.to_owned(),
            protocol: banger_agent::PROTOCOL_VERSION,
        }
    );
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_accepts_a_client_with_a_newer_minor_version() {
    let (host, guest) = UnixStream::pair().unwrap();
    let server = agent_server(Arc::new(RecordingPower::new()));
    tokio::spawn(server.serve_connection(guest));
    let mut framed = Framed::new(host, banger_agent::protocol::ClientCodec::new());
    let newer = Version {
        major: banger_agent::PROTOCOL_VERSION.major,
        minor: banger_agent::PROTOCOL_VERSION.minor + 1,
    };
    framed
        .send(ClientMessage::Hello { version: newer })
        .await
        .unwrap();
    assert!(matches!(
        framed.next().await.unwrap().unwrap(),
        ServerMessage::HelloOk { .. }
    ));
}

#[tokio::test]
async fn agent_answers_garbage_instead_of_hello_with_bad_request() {
    let (mut host, guest) = UnixStream::pair().unwrap();
    let server = agent_server(Arc::new(RecordingPower::new()));
    let serving = tokio::spawn(server.serve_connection(guest));
    host.write_all(&5u32.to_be_bytes()).await.unwrap();
    host.write_all(b"nope!").await.unwrap();
    let mut reply = Framed::new(host, banger_agent::protocol::ClientCodec::new());
    match reply.next().await.unwrap().unwrap() {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("unexpected {other:?}"),
    }
    assert!(serving.await.unwrap().is_err());
}

#[tokio::test]
async fn agent_answers_a_request_sent_as_hello_with_bad_request() {
    let (host, guest) = UnixStream::pair().unwrap();
    let server = agent_server(Arc::new(RecordingPower::new()));
    tokio::spawn(server.serve_connection(guest));
    let mut framed = Framed::new(host, banger_agent::protocol::ClientCodec::new());
    framed.send(ClientMessage::Health).await.unwrap();
    assert!(matches!(
        framed.next().await.unwrap().unwrap(),
        ServerMessage::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

/// A fake agent behind a fake VMM socket that answers `Hello` with the given protocol version.
async fn start_agent_speaking(protocol: Version) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(&uds).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut line = Vec::new();
            loop {
                let b = stream.read_u8().await.unwrap();
                if b == b'\n' {
                    break;
                }
                line.push(b);
            }
            stream.write_all(b"OK 1024\n").await.unwrap();
            let mut framed = Framed::new(stream, ServerCodec::new());
            let _hello = framed.next().await;
            let _ = framed
                .send(ServerMessage::HelloOk {
                    agent_version: "9.9.9".into(),
                    protocol,
                })
                .await;
        }
    });
    (dir, uds)
}

#[tokio::test]
async fn client_refuses_an_agent_with_another_major_version_without_retrying() {
    let (_dir, uds) = start_agent_speaking(Version { major: 7, minor: 3 }).await;
    let started = Instant::now();
    let err = AgentClient::connect(&uds, AGENT_PORT, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err.kind() {
        AgentErrorKind::VersionMismatch {
            host,
            agent,
            agent_version,
        } => {
            assert_eq!(*host, banger_agent::PROTOCOL_VERSION);
            assert_eq!(*agent, Version { major: 7, minor: 3 });
            assert_eq!(agent_version, "9.9.9");
        }
        other => panic!("unexpected {other:?}"),
    }
    let chain = banger_agent::error_chain(&err);
    let host = banger_agent::PROTOCOL_VERSION.to_string();
    assert!(chain.contains("7.3") && chain.contains(&host), "{chain}");
}

#[tokio::test]
async fn connect_retries_until_the_agent_listens() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let bind_at = uds.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let listener = UnixListener::bind(&bind_at).unwrap();
        let server = agent_server(Arc::new(RecordingPower::new()));
        let _ = serve_vmm_socket(listener, AGENT_PORT, server).await;
    });
    let client = AgentClient::connect(&uds, AGENT_PORT, Duration::from_secs(10))
        .await
        .unwrap();
    client.health().await.unwrap();
    late.abort();
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("missing.vsock");
    let started = Instant::now();
    let err = AgentClient::connect(&uds, AGENT_PORT, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(err.kind(), AgentErrorKind::GaveUp { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.vsock"), "{err}");
}

#[tokio::test]
async fn connect_to_a_port_nobody_listens_on_fails_at_the_deadline() {
    let agent = start_agent().await;
    let err = AgentClient::connect(&agent.uds, AGENT_PORT + 1, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), AgentErrorKind::GaveUp { .. }),
        "{err:?}"
    );
}
