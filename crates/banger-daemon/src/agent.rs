//! The real [`GuestAgent`]: banger's vsock agent, reached through the VM's vsock Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use banger_agent::client::AgentClient;
use banger_agent::protocol::AGENT_PORT;
use banger_core::{AgentHealth, BoxError, GuestAgent};

/// How long a shutdown request may take to be acknowledged before the VMM's power button is
/// used instead.
const SHUTDOWN_CONNECT: Duration = Duration::from_secs(3);

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
}
