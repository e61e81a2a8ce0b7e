//! A recording fake [`Vmm`] for tests of everything above the VMM seam.
//!
//! It "launches" by handing out increasing fake pids and creating the vsock socket path as a
//! plain file (so callers' cleanup is observable), remembers which fake processes are alive,
//! and can be told to fail a given call or to have a process die with a given exit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use banger_host::process::{ExitInfo, ProcessId};

use crate::{LaunchSpec, Vmm, VmmCounters, VmmError, VmmHandles, VmmKind};

#[derive(Debug, Default)]
struct State {
    next_pid: u32,
    alive: HashMap<u32, bool>,
    exits: HashMap<u32, ExitInfo>,
    calls: Vec<String>,
    fail: HashMap<String, String>,
    launches: Vec<LaunchSpec>,
    launch_delay: Option<Duration>,
}

/// The fake VMM. Share it as `Arc<FakeVmm>`; it is also an `Arc<dyn Vmm>`.
#[derive(Debug, Default)]
pub struct FakeVmm {
    state: Mutex<State>,
}

impl FakeVmm {
    /// A fake whose every call succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `call` (`launch`, `request_shutdown`, `kill`, `counters`) fail with `message`.
    pub fn fail_on(&self, call: &str, message: &str) {
        self.lock()
            .fail
            .insert(call.to_string(), message.to_string());
    }

    /// Makes `launch` take `delay` (to catch a create in flight).
    pub fn set_launch_delay(&self, delay: Duration) {
        self.lock().launch_delay = Some(delay);
    }

    /// Every call so far, as `name:vm`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Every launch spec so far.
    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.lock().launches.clone()
    }

    /// Pids of fake processes still alive.
    pub fn alive_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .lock()
            .alive
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Makes fake process `pid` exit as `exit` (the guest powered off, or the VMM crashed).
    pub fn exit_process(&self, pid: u32, exit: ExitInfo) {
        let mut state = self.lock();
        state.alive.insert(pid, false);
        state.exits.insert(pid, exit);
    }

    /// Makes the fake process whose vsock socket is `vsock_uds` exit as `exit` (what a guest
    /// that powers off does to its VMM).
    pub fn exit_by_vsock(&self, vsock_uds: &std::path::Path, exit: ExitInfo) {
        let pid = self
            .lock()
            .launches
            .iter()
            .zip(1u32..)
            .filter(|(spec, _)| spec.vsock_uds == vsock_uds)
            .map(|(_, n)| 100_000 + n)
            .last();
        if let Some(pid) = pid {
            self.exit_process(pid, exit);
        }
    }

    fn record(&self, call: &str, vm: &str) -> Result<(), VmmError> {
        let mut state = self.lock();
        state.calls.push(format!("{call}:{vm}"));
        match state.fail.get(call) {
            Some(message) => Err(VmmError::Rejected {
                vmm: VmmKind::Qemu,
                vm: vm.to_string(),
                call: call.to_string(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn vm_of(handles: &VmmHandles) -> String {
    handles
        .control_socket
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    async fn probe(&self) -> Result<String, VmmError> {
        Ok("fake VMM 1.0".to_string())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<VmmHandles, VmmError> {
        let delay = self.lock().launch_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.record("launch", &spec.name)?;
        // A guest's first console line, as a real VMM's serial console would have.
        if let Some(dir) = spec.console_log.parent() {
            if dir.is_dir() {
                use std::io::Write;
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&spec.console_log)
                    .and_then(|mut log| writeln!(log, "[fake vmm] {} booted", spec.name));
            }
        }
        std::fs::create_dir_all(&spec.run_dir)
            .and_then(|()| std::fs::write(&spec.vsock_uds, b""))
            .map_err(|source| VmmError::Io {
                what: format!("creating {}", spec.vsock_uds.display()),
                source,
            })?;
        let mut state = self.lock();
        state.next_pid += 1;
        let pid = 100_000 + state.next_pid;
        state.alive.insert(pid, true);
        state.launches.push(spec.clone());
        Ok(VmmHandles {
            kind: VmmKind::Qemu,
            process: ProcessId { pid, start_time: 1 },
            helpers: Vec::new(),
            control_socket: spec.run_dir.join("control.sock"),
            vsock_uds: spec.vsock_uds.clone(),
            emulated: false,
        })
    }

    async fn request_shutdown(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        self.record("request_shutdown", &vm_of(handles))
    }

    async fn kill(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        self.record("kill", &vm_of(handles))?;
        self.lock().alive.insert(handles.process.pid, false);
        let _ = std::fs::remove_file(&handles.vsock_uds);
        Ok(())
    }

    async fn is_alive(&self, handles: &VmmHandles) -> bool {
        self.lock()
            .alive
            .get(&handles.process.pid)
            .copied()
            .unwrap_or(false)
    }

    async fn wait_exit(&self, handles: &VmmHandles, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_alive(handles).await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn counters(&self, handles: &VmmHandles) -> Result<VmmCounters, VmmError> {
        self.record("counters", &vm_of(handles))?;
        Ok(VmmCounters {
            net_rx_bytes: 1,
            ..VmmCounters::default()
        })
    }

    fn exit_info(&self, handles: &VmmHandles) -> Option<ExitInfo> {
        self.lock().exits.get(&handles.process.pid).cloned()
    }
}
