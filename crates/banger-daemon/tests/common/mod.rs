//! A real daemon on a temp socket with a temp SQLite file and a fake host layer.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{Image, ImageId, Operation, OperationStatus, VmName};
use banger_cli::client::Client;
use banger_config::{Config, Environment};
use banger_daemon::{Fakes, Host};
use banger_store::records::ImageRecord;
use banger_store::Store;
use hyper::Method;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Daemon {
    pub client: Client,
    pub config: Config,
    pub fakes: Fakes,
    pub host: Host,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), banger_daemon::DaemonError>>>,
}

/// Config rooted in `dir`, as a non-root user with every directory overridden.
pub fn config_in(dir: &Path) -> Config {
    let env = Environment::user([
        ("HOME", dir.join("home").display().to_string()),
        ("BANGER_STATE_DIR", dir.join("state").display().to_string()),
        ("BANGER_RUNTIME_DIR", dir.join("run").display().to_string()),
        ("BANGER_CACHE_DIR", dir.join("cache").display().to_string()),
        ("BANGER_DATA_DIR", dir.join("data").display().to_string()),
        (
            "BANGER_CONFIG",
            dir.join("config.toml").display().to_string(),
        ),
    ]);
    std::fs::write(dir.join("config.toml"), "").unwrap();
    banger_config::load(&env).unwrap().config
}

impl Daemon {
    pub async fn start(dir: &Path) -> Daemon {
        let (host, fakes) = Host::fake();
        Self::start_with(dir, host, fakes).await
    }

    pub async fn start_with(dir: &Path, host: Host, fakes: Fakes) -> Daemon {
        Self::start_configured(config_in(dir), host, fakes).await
    }

    /// Starts with a config the test adjusted (web listener, stats interval, ...).
    pub async fn start_configured(config: Config, host: Host, fakes: Fakes) -> Daemon {
        std::fs::create_dir_all(&config.runtime_dir).unwrap();
        let socket = config.socket_path();
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(banger_daemon::run(
            listener,
            config.clone(),
            host.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::new(socket);
        for _ in 0..200 {
            if client.get::<banger_api::Health>("/v1/health").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Daemon {
            client,
            config,
            fakes,
            host,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop; returns the host so a new daemon can re-adopt its fake VMs.
    pub async fn stop(mut self) -> (Host, Fakes) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        (self.host.clone(), self.fakes.clone())
    }

    /// Like SIGKILL: the server task is aborted mid-flight, nothing is flushed.
    pub async fn kill(mut self) -> (Host, Fakes) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        (self.host.clone(), self.fakes.clone())
    }

    pub fn store(&self) -> Store {
        Store::open(&self.config.db_path()).unwrap()
    }

    /// Registers an image directly in the store (image registration has its own API).
    pub fn add_image(&self, name: &str, ports: Vec<u16>) -> Image {
        let dir = self.config.state_dir.join("images").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"\x7fELF fake kernel for the fake VMM").unwrap();
        std::fs::write(dir.join("rootfs.ext4"), b"rootfs").unwrap();
        let record = ImageRecord {
            id: ImageId::new(),
            name: VmName::parse(name).unwrap(),
            kernel_path: dir.join("vmlinux"),
            initrd_path: None,
            modules_path: None,
            rootfs_path: dir.join("rootfs.ext4"),
            work_seed_path: None,
            cmdline: "console=ttyS0".into(),
            readiness_ports: ports,
            agent_version: None,
            parent_id: None,
            sha256: None,
            managed: true,
            size_bytes: 12,
            root_mode: banger_api::RootMode::Overlay,
            created_at: chrono::Utc::now(),
        };
        self.store().insert_image(&record).unwrap();
        record.to_api()
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Operation, banger_cli::client::ClientError> {
        self.client.call(Method::POST, path, Some(&body)).await
    }

    /// Follows `op` to its end through the SSE stream.
    pub async fn wait(&self, op: &Operation) -> Operation {
        tokio::time::timeout(Duration::from_secs(20), self.client.follow(op.id, |_| {}))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn create(&self, body: serde_json::Value) -> Operation {
        let op = self.post_json("/v1/vms", body).await.unwrap();
        let done = self.wait(&op).await;
        assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
        done
    }

    pub fn vm_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.config.vms_dir()) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}
