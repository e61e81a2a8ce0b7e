//! `bangerd`: thin entry point. Process concerns only — config, logging, the instance lock, the
//! socket file, signals — then [`banger_daemon::run`].

use anyhow::Context;
use banger_config::Environment;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bangerd: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("bangerd {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let loaded =
        banger_config::load(&Environment::current()).context("loading the configuration")?;
    let config = loaded.config;
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let _lock = banger_daemon::instance::acquire_lock(&config.lock_path())?;
    let socket = config.socket_path();
    let listener = banger_daemon::instance::bind_socket(&socket, config.socket_group.as_deref())?;
    let key = banger_config::ensure_ssh_key(&config.ssh_key_path())
        .context("preparing banger's SSH key")?;
    tracing::info!(socket = %socket.display(), ssh_key = %key.public_path.display(), pid = std::process::id(), "bangerd starting");

    let host = banger_daemon::Host::real(&config).await;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot watch SIGTERM; only SIGINT will stop the daemon");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = banger_daemon::run(listener, config, host, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("bangerd stopped");
    result.map_err(Into::into)
}
