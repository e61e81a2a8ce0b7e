//! `banger-agent`: the guest agent binary. Serves the agent protocol on vsock until killed.
//! All logic lives in the library; this only parses flags and sets up logging.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use banger_agent::guest::{GuestProbe, SystemPower};
use banger_agent::{AgentServer, AGENT_PORT};
use clap::Parser;

/// banger's guest agent: answers the host over vsock (health, info, exec, shutdown).
#[derive(Debug, Parser)]
#[command(name = "banger-agent", version)]
struct Args {
    /// vsock port to listen on.
    #[arg(long, default_value_t = AGENT_PORT)]
    port: u32,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    // A small runtime: the agent serves a handful of connections and must stay light in a
    // 1-vCPU guest.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let server = Arc::new(AgentServer::new(
        GuestProbe::new(args.proc_root),
        Arc::new(SystemPower::new()),
    ));
    runtime
        .block_on(server.serve_vsock(args.port))
        .map_err(|err| anyhow::anyhow!(banger_agent::error_chain(&err)))
}
