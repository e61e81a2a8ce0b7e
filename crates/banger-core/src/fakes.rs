//! Recording fakes of the lifecycle's plug points ([`VmDisks`], [`VmNetwork`], [`GuestAgent`]),
//! compiled always so the daemon's integration tests can drive the whole lifecycle without
//! root, KVM or a guest. Each records its calls and can be told to fail one.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use banger_store::records::{ImageRecord, VmRecord};
use banger_vmm::{Drive, NetIface};

use crate::backends::{
    AgentHealth, BoxError, GuestAgent, NetAttachment, PreparedDisks, VmDisks, VmNetwork,
};

#[derive(Debug, thiserror::Error)]
#[error("injected failure: {0}")]
struct Injected(String);

#[derive(Debug, Default)]
struct Recorder {
    calls: Vec<String>,
    fail: HashMap<String, String>,
}

impl Recorder {
    fn record(&mut self, call: &str, vm: &str) -> Result<(), BoxError> {
        self.calls.push(format!("{call}:{vm}"));
        match self.fail.get(call) {
            Some(message) => Err(Box::new(Injected(message.clone()))),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fake per-VM disks: writes small marker files in the VM's directory.
#[derive(Debug, Default)]
pub struct FakeDisks {
    rec: Mutex<Recorder>,
}

impl FakeDisks {
    /// Makes `call` (`prepare`, `grow_work`, `remove`) fail.
    pub fn fail_on(&self, call: &str, message: &str) {
        lock(&self.rec).fail.insert(call.into(), message.into());
    }
    /// Calls so far, as `call:vm`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.rec).calls.clone()
    }
}

#[async_trait::async_trait]
impl VmDisks for FakeDisks {
    async fn prepare(&self, vm: &VmRecord, image: &ImageRecord) -> Result<PreparedDisks, BoxError> {
        lock(&self.rec).record("prepare", vm.name.as_str())?;
        std::fs::create_dir_all(&vm.vm_dir)?;
        let overlay = vm.vm_dir.join("overlay.ext4");
        let work = vm.vm_dir.join("work.ext4");
        if !overlay.exists() {
            std::fs::write(&overlay, b"overlay")?;
        }
        if !work.exists() {
            std::fs::write(&work, b"work")?;
        }
        Ok(PreparedDisks {
            drives: vec![
                Drive {
                    id: "rootfs".into(),
                    path: image.rootfs_path.clone(),
                    read_only: true,
                },
                Drive {
                    id: "overlay".into(),
                    path: overlay,
                    read_only: false,
                },
                Drive {
                    id: "work".into(),
                    path: work,
                    read_only: false,
                },
            ],
            kernel_args: vec!["banger.overlay=/dev/vdb".into()],
        })
    }

    async fn grow_work(&self, vm: &VmRecord, _new_size_mib: u64) -> Result<(), BoxError> {
        lock(&self.rec).record("grow_work", vm.name.as_str())
    }

    async fn remove(&self, vm: &VmRecord) -> Result<(), BoxError> {
        lock(&self.rec).record("remove", vm.name.as_str())?;
        for file in ["overlay.ext4", "work.ext4"] {
            match std::fs::remove_file(vm.vm_dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Box::new(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Fake network: hands out `ftap<N>` names and tracks which are in use.
#[derive(Debug, Default)]
pub struct FakeNetwork {
    rec: Mutex<Recorder>,
    taps: Mutex<(u32, BTreeSet<String>)>,
}

impl FakeNetwork {
    /// Makes `call` (`attach`, `detach`) fail.
    pub fn fail_on(&self, call: &str, message: &str) {
        lock(&self.rec).fail.insert(call.into(), message.into());
    }
    /// Calls so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.rec).calls.clone()
    }
    /// Taps currently attached to a VM.
    pub fn taps_in_use(&self) -> Vec<String> {
        lock(&self.taps).1.iter().cloned().collect()
    }
}

#[async_trait::async_trait]
impl VmNetwork for FakeNetwork {
    async fn attach(&self, vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError> {
        lock(&self.rec).record("attach", vm.name.as_str())?;
        let mut taps = lock(&self.taps);
        taps.0 += 1;
        let tap = format!("ftap{}", taps.0);
        taps.1.insert(tap.clone());
        Ok(Some(NetAttachment {
            iface: NetIface {
                tap,
                mac: vm.mac.clone().unwrap_or_default(),
            },
            kernel_args: vec![format!(
                "banger.ip={}/24",
                vm.ip.map(|ip| ip.to_string()).unwrap_or_default()
            )],
        }))
    }

    async fn detach(&self, vm: &VmRecord, tap: Option<&str>) -> Result<(), BoxError> {
        lock(&self.rec).record("detach", vm.name.as_str())?;
        if let Some(tap) = tap {
            lock(&self.taps).1.remove(tap);
        }
        Ok(())
    }

    fn netns(&self) -> Option<String> {
        None
    }
}

/// What the fake agent does when asked to shut the guest down.
pub type ShutdownHook = Box<dyn Fn(&Path) + Send + Sync>;

/// Fake guest agent: healthy at once unless told otherwise.
#[derive(Default)]
pub struct FakeAgent {
    rec: Mutex<Recorder>,
    delay: Mutex<Option<Duration>>,
    on_shutdown: Mutex<Option<ShutdownHook>>,
}

impl std::fmt::Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgent")
            .field("rec", &self.rec)
            .finish_non_exhaustive()
    }
}

impl FakeAgent {
    /// Makes `call` (`wait_healthy`, `wait_port`, `shutdown`) fail.
    pub fn fail_on(&self, call: &str, message: &str) {
        lock(&self.rec).fail.insert(call.into(), message.into());
    }
    /// Runs `hook` with the VM's vsock socket when a shutdown is acknowledged (a test wires it to
    /// the fake VMM so the "guest" really powers off).
    pub fn on_shutdown(&self, hook: ShutdownHook) {
        *lock(&self.on_shutdown) = Some(hook);
    }

    /// Makes `wait_healthy` take `delay`.
    pub fn set_boot_delay(&self, delay: Duration) {
        *lock(&self.delay) = Some(delay);
    }
    /// Calls so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.rec).calls.clone()
    }
}

fn uds_name(path: &Path) -> String {
    path.display().to_string()
}

#[async_trait::async_trait]
impl GuestAgent for FakeAgent {
    async fn wait_healthy(
        &self,
        vsock_uds: &Path,
        _timeout: Duration,
    ) -> Result<AgentHealth, BoxError> {
        let delay = *lock(&self.delay);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        lock(&self.rec).record("wait_healthy", &uds_name(vsock_uds))?;
        Ok(AgentHealth {
            version: "fake-1.0.0".into(),
            uptime_secs: 0.25,
        })
    }

    async fn wait_port(
        &self,
        vsock_uds: &Path,
        port: u16,
        _timeout: Duration,
    ) -> Result<(), BoxError> {
        lock(&self.rec).record("wait_port", &format!("{}:{port}", uds_name(vsock_uds)))
    }

    async fn shutdown(&self, vsock_uds: &Path) -> Result<(), BoxError> {
        lock(&self.rec).record("shutdown", &uds_name(vsock_uds))?;
        if let Some(hook) = lock(&self.on_shutdown).as_ref() {
            hook(vsock_uds);
        }
        Ok(())
    }
}
