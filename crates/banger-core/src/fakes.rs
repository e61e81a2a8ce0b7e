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
    AgentHealth, BoxError, DiskCheckError, GuestAgent, NetAttachment, NicCounters, PreparedDisks,
    PublishError, RunningVm, VmDisks, VmNetwork,
};
use banger_api::{PortForward, PortProto};

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

/// Fake per-VM disks: writes small marker files in the VM's directory. Its `check` refuses a
/// work disk larger than the free space it was told ([`FakeDisks::set_free_bytes`]; unlimited
/// by default); `usage` reports the marker files that exist.
#[derive(Debug, Default)]
pub struct FakeDisks {
    rec: Mutex<Recorder>,
    free_bytes: Mutex<Option<u64>>,
}

impl FakeDisks {
    /// Makes `check` and `check_grow` see `bytes` of free space.
    pub fn set_free_bytes(&self, bytes: u64) {
        *lock(&self.free_bytes) = Some(bytes);
    }

    fn check_space(&self, needed_bytes: u64) -> Result<(), DiskCheckError> {
        match *lock(&self.free_bytes) {
            Some(available_bytes) if needed_bytes > available_bytes => {
                Err(DiskCheckError::NoSpace {
                    dir: "/fake/vms".into(),
                    needed_bytes,
                    available_bytes,
                })
            }
            _ => Ok(()),
        }
    }

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
            root_clone_method: None,
        })
    }

    async fn grow_work(&self, vm: &VmRecord, _new_size_mib: u64) -> Result<(), BoxError> {
        lock(&self.rec).record("grow_work", vm.name.as_str())
    }

    async fn check(&self, image: &ImageRecord, work_size_mib: u64) -> Result<(), DiskCheckError> {
        lock(&self.rec)
            .record("check", image.name.as_str())
            .map_err(DiskCheckError::Host)?;
        self.check_space(work_size_mib << 20)
    }

    async fn check_grow(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), DiskCheckError> {
        lock(&self.rec)
            .record("check_grow", vm.name.as_str())
            .map_err(DiskCheckError::Host)?;
        self.check_space(new_size_mib.saturating_sub(vm.disk_size_mib) << 20)
    }

    fn usage(&self, vm: &VmRecord, _image: Option<&ImageRecord>) -> Vec<banger_api::VmDisk> {
        ["overlay", "work"]
            .into_iter()
            .filter_map(|name| {
                let path = vm.vm_dir.join(format!("{name}.ext4"));
                let len = std::fs::metadata(&path).ok()?.len();
                Some(banger_api::VmDisk {
                    name: name.to_string(),
                    path: path.to_string_lossy().into_owned(),
                    read_only: false,
                    apparent_bytes: len,
                    allocated_bytes: len,
                })
            })
            .collect()
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

/// Fake network: hands out `ftap<N>` names and tracks which are in use, and which port
/// forwards are published for which VM.
#[derive(Debug, Default)]
pub struct FakeNetwork {
    rec: Mutex<Recorder>,
    taps: Mutex<(u32, BTreeSet<String>)>,
    /// Attached VM names, published forwards (host port, proto) -> VM name, ports held by
    /// "another program".
    ports: Mutex<FakePorts>,
    /// What `nic_counters` reports, per tap (nothing: `None`).
    nics: Mutex<HashMap<String, NicCounters>>,
}

#[derive(Debug, Default)]
struct FakePorts {
    attached: BTreeSet<String>,
    published: std::collections::BTreeMap<(PortProto, u16), String>,
    occupied: BTreeSet<u16>,
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
    /// Forwards currently published, as `HOST/proto -> VM`.
    pub fn published(&self) -> Vec<String> {
        lock(&self.ports)
            .published
            .iter()
            .map(|((proto, port), vm)| format!("{port}/{proto}->{vm}"))
            .collect()
    }
    /// Makes `nic_counters(tap)` report `counters`.
    pub fn set_nic_counters(&self, tap: &str, counters: NicCounters) {
        lock(&self.nics).insert(tap.to_string(), counters);
    }
    /// Makes TCP/UDP host port `port` look held by another program.
    pub fn occupy_port(&self, port: u16) {
        lock(&self.ports).occupied.insert(port);
    }
}

#[async_trait::async_trait]
impl VmNetwork for FakeNetwork {
    async fn attach(&self, vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError> {
        lock(&self.rec).record("attach", vm.name.as_str())?;
        lock(&self.ports).attached.insert(vm.name.to_string());
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
        let mut ports = lock(&self.ports);
        ports.attached.remove(vm.name.as_str());
        ports.published.retain(|_, owner| owner != vm.name.as_str());
        Ok(())
    }

    fn netns(&self) -> Option<String> {
        None
    }

    async fn nic_counters(&self, tap: &str) -> Result<Option<NicCounters>, BoxError> {
        Ok(lock(&self.nics).get(tap).copied())
    }

    async fn publish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), PublishError> {
        lock(&self.rec)
            .record("publish", &format!("{}:{forward}", vm.name))
            .map_err(PublishError::Failed)?;
        let mut ports = lock(&self.ports);
        if !ports.attached.contains(vm.name.as_str()) {
            return Ok(());
        }
        let key = (forward.proto, forward.host_port);
        let taken_by_other = ports
            .published
            .get(&key)
            .is_some_and(|owner| owner != vm.name.as_str());
        if taken_by_other || ports.occupied.contains(&forward.host_port) {
            return Err(PublishError::PortInUse {
                forward: *forward,
                address: "127.0.0.1".into(),
                source: Box::new(Injected("address already in use".into())),
            });
        }
        ports.published.insert(key, vm.name.to_string());
        Ok(())
    }

    async fn unpublish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), BoxError> {
        lock(&self.rec).record("unpublish", &format!("{}:{forward}", vm.name))?;
        let mut ports = lock(&self.ports);
        let key = (forward.proto, forward.host_port);
        if ports.published.get(&key).map(String::as_str) == Some(vm.name.as_str()) {
            ports.published.remove(&key);
        }
        Ok(())
    }

    async fn reconcile(&self, running: &[RunningVm]) -> Result<Vec<String>, BoxError> {
        lock(&self.rec).record("reconcile", &running.len().to_string())?;
        let mut ports = lock(&self.ports);
        for vm in running {
            ports.attached.insert(vm.vm.name.to_string());
            for forward in &vm.forwards {
                ports
                    .published
                    .insert((forward.proto, forward.host_port), vm.vm.name.to_string());
            }
        }
        Ok(Vec::new())
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
    keys: Mutex<Vec<(String, String)>>,
    commands: Mutex<Vec<crate::backends::GuestCommand>>,
    command_exits: Mutex<Vec<(String, i32)>>,
}

impl std::fmt::Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgent")
            .field("rec", &self.rec)
            .finish_non_exhaustive()
    }
}

impl FakeAgent {
    /// Makes `call` (`wait_healthy`, `wait_port`, `shutdown`, `install_authorized_key`) fail.
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
    /// Public keys installed so far, as `(vsock socket, key)`.
    pub fn installed_keys(&self) -> Vec<(String, String)> {
        lock(&self.keys).clone()
    }
    /// Commands run through `run_command` so far.
    pub fn commands(&self) -> Vec<crate::backends::GuestCommand> {
        lock(&self.commands).clone()
    }
    /// Makes every later command whose argv (joined with spaces) contains `needle` exit with
    /// `code` after printing `failing: <argv>`.
    pub fn exit_with(&self, needle: &str, code: i32) {
        lock(&self.command_exits).push((needle.to_string(), code));
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

    async fn install_authorized_key(
        &self,
        vsock_uds: &Path,
        public_key: &str,
    ) -> Result<(), BoxError> {
        lock(&self.rec).record("install_authorized_key", &uds_name(vsock_uds))?;
        lock(&self.keys).push((uds_name(vsock_uds), public_key.to_string()));
        Ok(())
    }

    /// Records the command; writes `fake output of <argv>` to its stdout file when it has one,
    /// else prints it; exits 0 unless [`FakeAgent::exit_with`] matched.
    async fn run_command(
        &self,
        vsock_uds: &Path,
        command: &crate::backends::GuestCommand,
        output: &crate::backends::LineSink,
    ) -> Result<i32, BoxError> {
        let argv = command.argv.join(" ");
        lock(&self.rec).record("run_command", &uds_name(vsock_uds))?;
        lock(&self.commands).push(command.clone());
        let code = lock(&self.command_exits)
            .iter()
            .find(|(needle, _)| argv.contains(needle.as_str()))
            .map(|(_, code)| *code);
        if let Some(code) = code {
            output(&format!("failing: {argv}"));
            return Ok(code);
        }
        let text = format!("fake output of {argv}");
        match &command.stdout_file {
            Some(path) => std::fs::write(path, text)?,
            None => output(&text),
        }
        Ok(0)
    }
}
