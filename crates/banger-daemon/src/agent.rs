//! The real [`GuestAgent`]: banger's vsock agent, reached through the VM's vsock Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use banger_agent::client::AgentClient;
use banger_agent::protocol::AGENT_PORT;
use banger_agent::FilePutRequest;
use banger_core::{AgentHealth, BoxError, GuestAgent};

/// How long a shutdown request may take to be acknowledged before the VMM's power button is
/// used instead.
const SHUTDOWN_CONNECT: Duration = Duration::from_secs(3);

/// How long installing the authorized key may wait for the (already healthy) agent.
const KEY_INSTALL_CONNECT: Duration = Duration::from_secs(10);

/// Where banger's public key goes in every guest.
const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";

/// The host side of `banger-agent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VsockAgent;

#[async_trait::async_trait]
impl GuestAgent for VsockAgent {
    async fn wait_healthy(
        &self,
        vsock_uds: &Path,
        timeout: Duration,
    ) -> Result<AgentHealth, BoxError> {
        let client = AgentClient::connect(vsock_uds, AGENT_PORT, timeout).await?;
        let health = client.health().await?;
        Ok(AgentHealth {
            version: health.agent_version,
            uptime_secs: health.uptime_secs,
        })
    }

    async fn wait_port(
        &self,
        vsock_uds: &Path,
        port: u16,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        let started = Instant::now();
        let client = AgentClient::connect(vsock_uds, AGENT_PORT, timeout).await?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        client.wait_port(port, left).await?;
        Ok(())
    }

    async fn shutdown(&self, vsock_uds: &Path) -> Result<(), BoxError> {
        let client = AgentClient::connect(vsock_uds, AGENT_PORT, SHUTDOWN_CONNECT).await?;
        client.shutdown(false).await?;
        Ok(())
    }

    async fn install_authorized_key(
        &self,
        vsock_uds: &Path,
        public_key: &str,
    ) -> Result<(), BoxError> {
        let client = AgentClient::connect(vsock_uds, AGENT_PORT, KEY_INSTALL_CONNECT).await?;
        let line = format!("{}\n", public_key.trim());
        let req = FilePutRequest {
            path: AUTHORIZED_KEYS.into(),
            mode: 0o600,
            uid: Some(0),
            gid: Some(0),
            dir_mode: Some(0o700),
        };
        client.put_file(req, line.as_bytes()).await?;
        Ok(())
    }

    async fn run_command(
        &self,
        vsock_uds: &Path,
        command: &banger_core::GuestCommand,
        output: &banger_core::backends::LineSink,
    ) -> Result<i32, BoxError> {
        run_command(vsock_uds, command, output).await
    }
}

/// How long an image-build command may take to get connected.
const COMMAND_CONNECT: Duration = Duration::from_secs(30);

/// Splits streamed output into lines for `output`; keeps a partial last line in `pending`.
fn emit_lines(pending: &mut Vec<u8>, bytes: &[u8], output: &banger_core::backends::LineSink) {
    pending.extend_from_slice(bytes);
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        output(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end());
    }
}

/// [`GuestAgent::run_command`] over the agent's streamed exec: stdin fed from a host file while
/// output is read, stdout to a host file or to `output`.
async fn run_command(
    vsock_uds: &Path,
    command: &banger_core::GuestCommand,
    output: &banger_core::backends::LineSink,
) -> Result<i32, BoxError> {
    use banger_agent::client::ExecEvent;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let client = AgentClient::connect(vsock_uds, AGENT_PORT, COMMAND_CONNECT).await?;
    let mut req = banger_agent::protocol::ExecRequest::new(command.argv.clone());
    req.stdin = command.stdin_file.is_some();
    req.timeout_ms = command.timeout.map(|t| t.as_millis() as u64);
    let (mut input, mut events) = client.exec(req).await?.split();
    let feed = async {
        if let Some(path) = &command.stdin_file {
            let mut file = tokio::fs::File::open(path).await?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                input.write_stdin(&buf[..n]).await?;
            }
            input.close_stdin().await?;
        }
        Ok::<(), BoxError>(())
    };
    let drain = async {
        let mut sink = match &command.stdout_file {
            Some(path) => Some(tokio::io::BufWriter::new(
                tokio::fs::File::create(path).await?,
            )),
            None => None,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match events.next_event().await? {
                Some(ExecEvent::Stdout(bytes)) => match sink.as_mut() {
                    Some(file) => file.write_all(&bytes).await?,
                    None => emit_lines(&mut out, &bytes, output),
                },
                Some(ExecEvent::Stderr(bytes)) => emit_lines(&mut err, &bytes, output),
                Some(ExecEvent::Exit(status)) => {
                    if let Some(mut file) = sink {
                        file.flush().await?;
                    }
                    for rest in [out, err] {
                        if !rest.is_empty() {
                            output(String::from_utf8_lossy(&rest).trim_end());
                        }
                    }
                    if status.timed_out {
                        return Err(BoxError::from(format!(
                            "`{}` was killed after its time limit",
                            command.argv.join(" ")
                        )));
                    }
                    return Ok(status
                        .code
                        .unwrap_or_else(|| 128 + status.signal.unwrap_or(0)));
                }
                None => {
                    return Err(BoxError::from(
                        "the agent ended the command without an exit status",
                    ))
                }
            }
        }
    };
    let (fed, code) = tokio::join!(feed, drain);
    let code = code?;
    fed?;
    Ok(code)
}
