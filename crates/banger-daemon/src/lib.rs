//! `bangerd`: the daemon that owns banger's state, VMs and API.
//!
//! [`run`] is the whole daemon in one call — `(listener, config, host, shutdown)` — so the
//! integration tests start a real daemon on a temp socket with a temp database and the fake
//! host layer, exactly as `main` starts it with the real one. `main` adds only what a process
//! needs: the single-instance lock, the socket file and its permissions, signals, logging.

pub mod agent;
pub mod api;
pub mod host;
pub mod instance;
pub mod logs;
pub mod netsweep;
pub mod stats;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use banger_api::Health;
use banger_config::Config;
use banger_core::alloc::Subnet;
use banger_core::{Manager, ManagerSettings};
use banger_store::Store;
use tokio::net::UnixListener;

pub use host::{Fakes, Host, HostFacts};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The database could not be opened or migrated.
    #[error("opening the database")]
    Store(#[from] banger_store::StoreError),
    /// Startup reconcile failed.
    #[error("reconciling VMs at startup")]
    Reconcile(#[source] banger_core::CoreError),
    /// A directory could not be created.
    #[error("creating {path}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("serving the API")]
    Serve(#[source] std::io::Error),
    /// The web UI listener could not be bound.
    #[error("starting the web UI")]
    Web(#[source] web::BindError),
}

/// The lifecycle settings derived from the config and the host's facts.
pub fn manager_settings(config: &Config, facts: &HostFacts) -> ManagerSettings {
    ManagerSettings {
        vms_dir: config.vms_dir(),
        run_dir: config.runtime_dir.join("vms"),
        default_vcpus: config.vm_defaults.vcpus,
        default_memory_mib: config.vm_defaults.memory_mib,
        default_disk_size_mib: config.vm_defaults.disk_size_mib,
        default_image: config.default_image.clone(),
        subnet: Subnet {
            network: config.network.subnet.addr(),
            prefix: config.network.subnet.prefix(),
        },
        domain: config.network.domain.clone(),
        stop_timeout: Duration::from_secs(config.stop_timeout_secs),
        boot_timeout: Duration::from_secs(config.boot_timeout_secs),
        extra_kernel_args: config.extra_kernel_args.clone(),
        host_cpus: facts.cpus,
        host_memory_mib: facts.memory_mib,
        authorized_key: None,
        images: image_settings(config),
    }
}

/// Where the image pipeline works, from the config and the host.
pub fn image_settings(config: &Config) -> banger_core::images::ImageSettings {
    let mut public_key = config.ssh_key_path().into_os_string();
    public_key.push(".pub");
    banger_core::images::ImageSettings {
        images_dir: config.images_dir(),
        cache_dir: config.cache_dir.clone(),
        ssh_public_key: public_key.into(),
        agent_bin: agent_binary(),
        apt_sources: vec![
            "/etc/apt/sources.list".into(),
            "/etc/apt/sources.list.d".into(),
        ],
    }
}

/// The static guest agent bootstrapped images get: `$BANGER_AGENT_BIN`, else `banger-agent`
/// beside this executable, else on `PATH`.
pub fn agent_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("BANGER_AGENT_BIN") {
        return Some(path.into());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("banger-agent")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("banger-agent"))
            .find(|p| p.is_file())
    })
}

/// Runs the daemon on `listener` until `shutdown` completes or a client asks it to stop.
/// Running VMs are left running: the next daemon re-adopts them.
pub async fn run(
    listener: UnixListener,
    config: Config,
    host: Host,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    for dir in [&config.state_dir, &config.vms_dir(), &config.runtime_dir] {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    let store = Store::open(&config.db_path())?;
    let mut settings = manager_settings(&config, &host.facts);
    // `main` made sure the key exists; an embedding without it (a test) gets one made here.
    settings.authorized_key = match banger_config::ensure_ssh_key(&config.ssh_key_path()) {
        Ok(key) => Some(key.public_openssh.trim().to_string()),
        Err(err) => {
            tracing::warn!(error = %banger_agent::error_chain(&err), "no SSH key: guests get no authorized key");
            None
        }
    };
    let manager = Manager::new(store, host.backends.clone(), settings);
    for line in manager.reconcile().await.map_err(DaemonError::Reconcile)? {
        tracing::info!("reconcile: {line}");
    }
    netsweep::reconcile(&manager).await;
    let sweep_task = netsweep::spawn_sweep(manager.clone(), netsweep::SWEEP_INTERVAL);
    let stop = Arc::new(tokio::sync::Notify::new());
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let web_listener = if config.web.enabled {
        Some(
            web::WebListener::bind(config.web.listen)
                .await
                .map_err(DaemonError::Web)?,
        )
    } else {
        None
    };
    let interval = Duration::from_secs(config.stats_poll_interval_secs.max(1));
    let stats_book = banger_core::stats::StatsBook::new(
        banger_core::stats::RING_CAPACITY,
        stats::clock_ticks_per_sec(),
        interval.as_secs(),
    );
    let stats_task = tokio::spawn(stats::run(
        manager.clone(),
        stats_book.clone(),
        banger_core::stats::ProcReader::new(&host.proc_root, stats::clock_ticks_per_sec()),
        interval,
    ));
    let state = api::AppState {
        manager,
        health: Health {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: chrono::Utc::now(),
        },
        stop: stop.clone(),
        stats: stats_book,
        web: web_listener.as_ref().map(|w| w.access.clone()),
        closing: closing.clone(),
    };
    let web_task = web_listener.map(|w| {
        tracing::info!(url = %w.access.url, "serving the web UI");
        let app = web::router(state.clone(), w.token, w.origins)
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = closing.wait_for(|closing| *closing).await;
            };
            if let Err(err) = axum::serve(w.listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %err, "web UI listener failed");
            }
        })
    });
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(
        vmm = host
            .backends
            .vmm
            .as_ref()
            .map(|v| v.kind().to_string())
            .unwrap_or_else(|| "none".into()),
        "serving the API"
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutdown requested by signal"),
                () = stop.notified() => tracing::info!("shutdown requested through the API"),
            }
            // Ends followed logs, so open streams do not hold the graceful shutdown.
            let _ = closing_tx.send(true);
        })
        .await
        .map_err(DaemonError::Serve);
    stats_task.abort();
    sweep_task.abort();
    if let Some(task) = web_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    served
}
