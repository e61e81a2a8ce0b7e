//! The network half of startup reconcile, and the periodic sweep of orphaned taps and rules.
//!
//! At start, after the manager re-adopted the VMs that still run, the network adopts them too
//! (taps, DNS names, port forwards) and removes every tap and rule no running VM owns, so a
//! daemon killed at any point leaks nothing past its next start. Then, every
//! [`SWEEP_INTERVAL`], the sweep removes taps that neither the pool nor an attached VM owns.

use std::time::Duration;

use banger_core::Manager;
use tokio::task::JoinHandle;

/// How often the sweep runs after startup.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Startup: the network adopts the running VMs and sweeps the rest. Failures are logged: a
/// daemon that cannot sweep still serves.
pub async fn reconcile(manager: &Manager) {
    match manager.reconcile_network().await {
        Ok(lines) => {
            for line in lines {
                tracing::info!("network reconcile: {line}");
            }
        }
        Err(err) => tracing::warn!(error = %err.chain(), "network reconcile failed"),
    }
}

/// The periodic sweep; abort the handle to stop it.
pub fn spawn_sweep(manager: Manager, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match manager.backends().network.sweep().await {
                Ok(lines) => {
                    for line in lines {
                        tracing::info!("network sweep: {line}");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "network sweep failed"),
            }
        }
    })
}
