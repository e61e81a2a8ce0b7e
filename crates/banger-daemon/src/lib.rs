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
    }
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
    let manager = Manager::new(
        store,
        host.backends.clone(),
        manager_settings(&config, &host.facts),
    );
    for line in manager.reconcile().await.map_err(DaemonError::Reconcile)? {
        tracing::info!("reconcile: {line}");
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let state = api::AppState {
        manager,
        health: Health {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: chrono::Utc::now(),
        },
        stop: stop.clone(),
    };
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutdown requested by signal"),
                () = stop.notified() => tracing::info!("shutdown requested through the API"),
            }
        })
        .await
        .map_err(DaemonError::Serve)
}
