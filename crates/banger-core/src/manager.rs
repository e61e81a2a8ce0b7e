//! The lifecycle manager: one actor task per VM, staged operations, startup reconcile.
//!
//! Ownership and concurrency:
//! - The [`Manager`] is cheap to clone and shared by every API handler. It validates requests,
//!   allocates identities (under one allocation lock, with the store's UNIQUE constraints as a
//!   backstop), and hands each VM-changing request to that VM's actor.
//! - Each VM has exactly one actor task (`run_actor`) that mutates it. Requests reach it over a
//!   channel and run one at a time, in order; a stuck VM blocks only its own actor. While the VM
//!   runs, the actor also watches the VMM process and records its death.
//! - Transient handles (VMM process, sockets, tap) live in `Inner::runtime` and in the VM's
//!   `handles.json` (see [`crate::handles`]); durable facts live in the store.
//!
//! Create, as the actor runs it (each line a timed stage; a failure undoes the earlier ones in
//! reverse and leaves the VM in `error` with the cause):
//! ```text
//! allocate (manager: name, IP, MAC, CID, row in `creating`)
//!   -> disks   (VmDisks::prepare)          undo: VmDisks::remove
//!   -> network (VmNetwork::attach)         undo: VmNetwork::detach
//!   -> vmm     (Vmm::launch, handles.json) undo: Vmm::kill, remove handles.json
//!   -> agent   (GuestAgent::wait_healthy, then install_authorized_key)
//!   -> services(GuestAgent::wait_port for each readiness port)
//!   => running
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{
    CreateVmRequest, DesiredState, EditVmRequest, ErrorCode, Image, Operation, OperationKind, Vm,
    VmId, VmName, VmState,
};
use banger_store::records::{ImageRecord, VmRecord};
use banger_store::Store;
use banger_vmm::{LaunchSpec, Vmm};
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::alloc::{self, Subnet};
use crate::backends::{Backends, NetAttachment};
use crate::error::CoreError;
use crate::handles::{self, RuntimeHandles};
use crate::names;
use crate::ops::{OpTracker, Operations};

/// How often a running VM's actor checks that its VMM is still alive.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Largest log file kept across a start; bigger ones are rotated to `<name>.1`.
pub const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// Everything the manager needs to know about the host and the configuration.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Durable per-VM directories live here (`<vms_dir>/<id>`): disks, logs, handles.json.
    pub vms_dir: PathBuf,
    /// Runtime per-VM directories (`<run_dir>/<id>`): sockets.
    pub run_dir: PathBuf,
    /// Default vCPUs.
    pub default_vcpus: u32,
    /// Default memory.
    pub default_memory_mib: u64,
    /// Default work disk.
    pub default_disk_size_mib: u64,
    /// Image used when a create names none.
    pub default_image: Option<String>,
    /// VM subnet.
    pub subnet: Subnet,
    /// DNS domain (`NAME.<domain>`).
    pub domain: String,
    /// Graceful stop wait before killing.
    pub stop_timeout: Duration,
    /// Longest wait for the guest agent after the VMM started.
    pub boot_timeout: Duration,
    /// Host-specific kernel arguments appended to every VM's command line.
    pub extra_kernel_args: String,
    /// CPUs of the host (upper bound for vCPUs).
    pub host_cpus: u32,
    /// Memory of the host in MiB (upper bound for guest memory).
    pub host_memory_mib: u64,
    /// banger's SSH public key (one OpenSSH line), installed as root's authorized key in every
    /// guest once its agent answers; `None` installs nothing.
    pub authorized_key: Option<String>,
    /// Where images and their caches live, and what bootstrap puts into images.
    pub images: crate::images::ImageSettings,
}

/// A request to a VM's actor.
#[derive(Debug)]
enum Command {
    Create {
        op: OpTracker,
        start: bool,
    },
    Start {
        op: OpTracker,
    },
    Stop {
        op: OpTracker,
        force: bool,
    },
    Restart {
        op: OpTracker,
    },
    Delete {
        op: OpTracker,
        force: bool,
    },
    Edit {
        req: EditVmRequest,
        reply: oneshot::Sender<Result<VmRecord, CoreError>>,
    },
}

#[derive(Debug)]
struct Inner {
    store: Store,
    backends: Backends,
    settings: ManagerSettings,
    ops: Operations,
    actors: Mutex<HashMap<VmId, mpsc::UnboundedSender<Command>>>,
    runtime: Mutex<HashMap<VmId, RuntimeHandles>>,
    alloc: tokio::sync::Mutex<()>,
}

/// The lifecycle manager. Clone it freely.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl Inner {
    fn run_dir_of(&self, id: VmId) -> PathBuf {
        self.settings.run_dir.join(id.to_string())
    }

    /// Kills every process that still names this VM's runtime directory (VMM and helpers a
    /// killed daemon left without handles), then removes the directory.
    async fn sweep_processes(&self, vm: &VmRecord) {
        let run_dir = self.run_dir_of(vm.id);
        let needle = run_dir.display().to_string();
        let processes = &self.backends.processes;
        for id in processes.find_mentioning(&needle) {
            tracing::warn!(vm = %vm.name, pid = id.pid, "killing a leftover process of this VM");
            if processes
                .signal(id, nix::sys::signal::Signal::SIGKILL)
                .is_ok()
            {
                let _ = processes.wait_exit(id, Duration::from_secs(5)).await;
            }
        }
        let _ = std::fs::remove_dir_all(&run_dir);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation, so a poisoned lock holds a consistent map.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Manager {
    /// A manager over `store` driving `backends`. Call [`Manager::reconcile`] before serving.
    pub fn new(store: Store, backends: Backends, settings: ManagerSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                backends,
                settings,
                ops: Operations::default(),
                actors: Mutex::new(HashMap::new()),
                runtime: Mutex::new(HashMap::new()),
                alloc: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Long operations, for polling and streaming.
    pub fn operations(&self) -> &Operations {
        &self.inner.ops
    }

    /// The store, for read-only queries by the API layer.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings this manager runs with.
    pub fn settings(&self) -> &ManagerSettings {
        &self.inner.settings
    }

    /// Every VM, by name.
    pub fn list_vms(&self) -> Result<Vec<Vm>, CoreError> {
        let images: HashMap<_, _> = self
            .inner
            .store
            .list_images()?
            .into_iter()
            .map(|image| (image.id, image))
            .collect();
        let vms = self.inner.store.list_vms()?;
        Ok(vms
            .iter()
            .map(|vm| self.to_api(vm, images.get(&vm.image_id)))
            .collect())
    }

    /// One VM by id, name or unique prefix.
    pub fn get_vm(&self, reference: &str) -> Result<Vm, CoreError> {
        let vm = self.resolve_vm(reference)?;
        let image = self.inner.store.get_image(vm.image_id)?;
        Ok(self.to_api(&vm, image.as_ref()))
    }

    /// The durable record of one VM by id, name or unique prefix.
    pub fn resolve_vm(&self, reference: &str) -> Result<VmRecord, CoreError> {
        let vms = self.inner.store.list_vms()?;
        resolve(reference, "VM", vms, |vm| {
            (vm.id.to_string(), vm.name.to_string())
        })
    }

    /// Every image, by name.
    pub fn list_images(&self) -> Result<Vec<Image>, CoreError> {
        Ok(self
            .inner
            .store
            .list_images()?
            .iter()
            .map(ImageRecord::to_api)
            .collect())
    }

    /// One image by id, name or unique prefix.
    pub fn resolve_image(&self, reference: &str) -> Result<ImageRecord, CoreError> {
        let images = self.inner.store.list_images()?;
        resolve(reference, "image", images, |image| {
            (image.id.to_string(), image.name.to_string())
        })
    }

    /// Deletes an image record; refuses (naming them) while VMs use it.
    pub fn delete_image(&self, reference: &str) -> Result<Image, CoreError> {
        let image = self.resolve_image(reference)?;
        let users = self.inner.store.vms_using_image(image.id)?;
        if !users.is_empty() {
            let names: Vec<String> = users.iter().map(ToString::to_string).collect();
            return Err(CoreError::Conflict(format!(
                "image {} is used by VM{} {}; delete {} first",
                image.name,
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" }
            )));
        }
        self.inner.store.delete_image(image.id)?;
        self.remove_image_files(image.id);
        Ok(image.to_api())
    }

    fn to_api(&self, vm: &VmRecord, image: Option<&ImageRecord>) -> Vm {
        let runtime = lock(&self.inner.runtime).get(&vm.id).cloned();
        Vm {
            id: vm.id,
            name: vm.name.clone(),
            image_id: vm.image_id.to_string(),
            image_name: image
                .map(|image| image.name.to_string())
                .unwrap_or_default(),
            root_mode: image.map(|image| image.root_mode).unwrap_or_default(),
            root_clone_method: vm.root_clone_method,
            disks: self.inner.backends.disks.usage(vm, image),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disk_size_mib: vm.disk_size_mib,
            state: vm.state,
            desired_state: vm.desired_state,
            ip: vm.ip.map(|ip| ip.to_string()),
            mac: vm.mac.clone(),
            vsock_cid: vm.vsock_cid,
            dns_name: Some(format!("{}.{}", vm.name, self.inner.settings.domain)),
            last_error: vm.last_error.clone(),
            stage_timings: vm.stage_timings.clone(),
            pid: runtime.as_ref().map(|r| r.vmm.process.pid),
            vmm: runtime.as_ref().map(|r| {
                let kind = r.vmm.kind.to_string();
                if r.vmm.emulated {
                    format!("{kind} (tcg)")
                } else {
                    kind
                }
            }),
            created_at: vm.created_at,
            updated_at: vm.updated_at,
        }
    }

    /// Validates `req`, allocates the VM and starts its create operation. Invalid input fails
    /// here, before anything is persisted.
    pub async fn create_vm(&self, req: CreateVmRequest) -> Result<Operation, CoreError> {
        let settings = &self.inner.settings;
        let vcpus = req.vcpus.unwrap_or(settings.default_vcpus);
        let memory_mib = req.memory_mib.unwrap_or(settings.default_memory_mib);
        let disk_size_mib = req.disk_size_mib.unwrap_or(settings.default_disk_size_mib);
        self.validate_resources(vcpus, memory_mib, disk_size_mib)?;
        for (i, forward) in req.publish.iter().enumerate() {
            forward.validate().map_err(|e| CoreError::InvalidInput {
                field: "publish",
                message: e.to_string(),
            })?;
            if req.publish[..i]
                .iter()
                .any(|f| f.proto == forward.proto && f.host_port == forward.host_port)
            {
                return Err(CoreError::InvalidInput {
                    field: "publish",
                    message: format!("host port {} is published twice", forward.host_port),
                });
            }
        }
        let requested_name = match &req.name {
            Some(name) => Some(VmName::parse(name).map_err(|e| CoreError::InvalidInput {
                field: "name",
                message: e.to_string(),
            })?),
            None => None,
        };
        let image_ref = req.image.clone().or_else(|| settings.default_image.clone()).or_else(|| {
            // No image named and none configured: the image `banger image bootstrap` makes.
            self.inner
                .store
                .get_image_by_name(crate::images::DEFAULT_IMAGE_NAME)
                .ok()
                .flatten()
                .map(|_| crate::images::DEFAULT_IMAGE_NAME.to_string())
        }).ok_or_else(|| {
            CoreError::InvalidInput {
                field: "image",
                message: "no image given and no default_image configured; list images with `banger image list`"
                    .to_string(),
            }
        })?;
        let image = self.resolve_image(&image_ref)?;
        self.check_kernel(&image)?;
        if self.inner.backends.vmm.is_none() {
            let why = self
                .inner
                .backends
                .vmm_unavailable
                .clone()
                .unwrap_or_else(|| "no VMM configured".into());
            return Err(CoreError::Unsatisfiable(format!(
                "no usable VMM on this host: {why}"
            )));
        }

        // Before anything is persisted: a broken image or disks that cannot fit is a clear
        // refusal, not a VM in `error`.
        self.inner
            .backends
            .disks
            .check(&image, disk_size_mib)
            .await?;

        let mut op = self.inner.ops.begin(
            OperationKind::CreateVm,
            None,
            requested_name.as_ref().map(|n| n.to_string()),
        );
        op.stage("allocate");
        let record = {
            let _guard = self.inner.alloc.lock().await;
            let store = &self.inner.store;
            let existing = store.list_vms()?;
            let name = match requested_name {
                Some(name) => {
                    if existing.iter().any(|vm| vm.name == name) {
                        return Err(CoreError::Conflict(format!(
                            "a VM named {name} already exists"
                        )));
                    }
                    name
                }
                None => self.fresh_name(&existing),
            };
            let ip = alloc::next_ip(settings.subnet, &store.used_ips()?).ok_or_else(|| {
                CoreError::Unsatisfiable(format!(
                    "the VM subnet {}/{} has no free address",
                    settings.subnet.network, settings.subnet.prefix
                ))
            })?;
            let cid = alloc::next_cid(&store.used_vsock_cids()?);
            let id = VmId::new();
            let now = Utc::now();
            let record = VmRecord {
                id,
                name,
                image_id: image.id,
                vcpus,
                memory_mib,
                disk_size_mib,
                state: VmState::Creating,
                desired_state: if req.no_start {
                    DesiredState::Stopped
                } else {
                    DesiredState::Running
                },
                ip: Some(ip),
                mac: Some(alloc::mac_for(ip)),
                vsock_cid: Some(cid),
                vm_dir: settings.vms_dir.join(id.to_string()),
                last_error: None,
                stage_timings: Vec::new(),
                root_clone_method: None,
                created_at: now,
                updated_at: now,
            };
            std::fs::create_dir_all(&record.vm_dir).map_err(|source| CoreError::Stage {
                vm: record.name.to_string(),
                stage: "allocate",
                source: Box::new(IoContext {
                    what: format!("creating {}", record.vm_dir.display()),
                    source,
                }),
            })?;
            if let Err(err) = store.insert_vm(&record) {
                let _ = std::fs::remove_dir_all(&record.vm_dir);
                return Err(err.into());
            }
            // `--publish`: claimed with the VM, so a taken host port refuses the create.
            for forward in &req.publish {
                if let Err(err) = store.insert_port_forward(record.id, forward) {
                    let _ = store.delete_vm(record.id);
                    let _ = std::fs::remove_dir_all(&record.vm_dir);
                    return Err(match err {
                        banger_store::StoreError::Conflict { value, .. } => CoreError::Conflict(
                            format!("host port {value} is already forwarded by banger"),
                        ),
                        other => other.into(),
                    });
                }
            }
            record
        };
        op.set_vm(record.id, record.name.as_str());
        op.detail(format!(
            "{} cid {}",
            record.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            record.vsock_cid.unwrap_or(0)
        ));
        let snapshot = op.snapshot();
        self.send(
            record.id,
            record.name.as_str(),
            Command::Create {
                op,
                start: !req.no_start,
            },
        )?;
        Ok(snapshot)
    }

    /// Refuses, before anything is created, a kernel the configured VMM cannot boot.
    fn check_kernel(&self, image: &ImageRecord) -> Result<(), CoreError> {
        let format = crate::kernel::kernel_format(&image.kernel_path).map_err(|err| {
            CoreError::Unsatisfiable(format!(
                "image {}: {}",
                image.name,
                crate::error::chain_of(&err)
            ))
        })?;
        let firecracker = self
            .inner
            .backends
            .vmm
            .as_ref()
            .is_some_and(|v| v.kind() == banger_vmm::VmmKind::Firecracker);
        // An LZ4 bzImage is fine: the disks stage extracts its vmlinux (crate::images).
        if firecracker
            && format != crate::kernel::KernelFormat::Elf
            && !crate::images::firecracker_can_boot(image)
        {
            return Err(CoreError::Unsatisfiable(format!(
                "image {}: Firecracker boots an ELF vmlinux, but {} is a bzImage",
                image.name,
                image.kernel_path.display()
            )));
        }
        Ok(())
    }

    fn fresh_name(&self, existing: &[VmRecord]) -> VmName {
        let mut rng = rand::thread_rng();
        for attempt in 0..64 {
            let candidate = names::random_name(&mut rng, attempt >= 8);
            if let Ok(name) = VmName::parse(&candidate) {
                if !existing.iter().any(|vm| vm.name == name) {
                    return name;
                }
            }
        }
        // 64 collisions in a row: fall back to an id-derived name, unique by construction.
        let fallback = format!("vm-{}", &VmId::new().to_string()[..8]);
        VmName::parse(&fallback).unwrap_or_else(|_| existing[0].name.clone())
    }

    fn validate_resources(
        &self,
        vcpus: u32,
        memory_mib: u64,
        disk_size_mib: u64,
    ) -> Result<(), CoreError> {
        let settings = &self.inner.settings;
        if vcpus == 0 || vcpus > 64 {
            return Err(CoreError::InvalidInput {
                field: "vcpus",
                message: format!("{vcpus} is not between 1 and 64"),
            });
        }
        if vcpus > settings.host_cpus {
            return Err(CoreError::Unsatisfiable(format!(
                "{vcpus} vCPUs requested but this host has {} CPUs",
                settings.host_cpus
            )));
        }
        if memory_mib < 128 {
            return Err(CoreError::InvalidInput {
                field: "memory_mib",
                message: format!("{memory_mib} MiB is below the 128 MiB minimum"),
            });
        }
        if memory_mib > settings.host_memory_mib {
            return Err(CoreError::Unsatisfiable(format!(
                "{memory_mib} MiB of memory requested but this host has {} MiB",
                settings.host_memory_mib
            )));
        }
        if disk_size_mib < 64 {
            return Err(CoreError::InvalidInput {
                field: "disk_size_mib",
                message: format!("{disk_size_mib} MiB is below the 64 MiB minimum"),
            });
        }
        if disk_size_mib > 16 * 1024 * 1024 {
            return Err(CoreError::InvalidInput {
                field: "disk_size_mib",
                message: format!("{disk_size_mib} MiB is above the 16 TiB maximum"),
            });
        }
        Ok(())
    }

    /// Starts a stopped (or failed) VM.
    pub fn start_vm(&self, reference: &str) -> Result<Operation, CoreError> {
        let vm = self.resolve_vm(reference)?;
        if !vm.state.can_transition(VmState::Starting) {
            return Err(CoreError::Conflict(format!(
                "VM {} is {}; only a stopped or failed VM can start",
                vm.name, vm.state
            )));
        }
        self.enqueue(&vm, OperationKind::StartVm, |op| Command::Start { op })
    }

    /// Stops a running VM: graceful first, killed after the stop timeout (at once with `force`).
    pub fn stop_vm(&self, reference: &str, force: bool) -> Result<Operation, CoreError> {
        let vm = self.resolve_vm(reference)?;
        if !matches!(
            vm.state,
            VmState::Running | VmState::Creating | VmState::Starting | VmState::Stopping
        ) {
            return Err(CoreError::Conflict(format!(
                "VM {} is {}, not running",
                vm.name, vm.state
            )));
        }
        self.enqueue(&vm, OperationKind::StopVm, |op| Command::Stop { op, force })
    }

    /// Stops then starts a running VM.
    pub fn restart_vm(&self, reference: &str) -> Result<Operation, CoreError> {
        let vm = self.resolve_vm(reference)?;
        if vm.state != VmState::Running {
            return Err(CoreError::Conflict(format!(
                "VM {} is {}, not running",
                vm.name, vm.state
            )));
        }
        self.enqueue(&vm, OperationKind::RestartVm, |op| Command::Restart { op })
    }

    /// Deletes a VM and everything it owns. A running VM needs `force`.
    pub fn delete_vm(&self, reference: &str, force: bool) -> Result<Operation, CoreError> {
        let vm = self.resolve_vm(reference)?;
        if vm.state.has_process() && !force {
            return Err(CoreError::Conflict(format!(
                "VM {} is {}; stop it first or delete with --force",
                vm.name, vm.state
            )));
        }
        self.enqueue(&vm, OperationKind::DeleteVm, |op| Command::Delete {
            op,
            force,
        })
    }

    /// Changes vCPUs, memory or work disk size of a stopped VM.
    pub async fn edit_vm(&self, reference: &str, req: EditVmRequest) -> Result<Vm, CoreError> {
        let vm = self.resolve_vm(reference)?;
        if req.vcpus.is_none() && req.memory_mib.is_none() && req.disk_size_mib.is_none() {
            return Err(CoreError::InvalidInput {
                field: "body",
                message: "nothing to change: give vcpus, memory_mib or disk_size_mib".into(),
            });
        }
        self.validate_resources(
            req.vcpus.unwrap_or(vm.vcpus),
            req.memory_mib.unwrap_or(vm.memory_mib),
            req.disk_size_mib.unwrap_or(vm.disk_size_mib),
        )?;
        let (reply, rx) = oneshot::channel();
        self.send(vm.id, vm.name.as_str(), Command::Edit { req, reply })?;
        let updated = rx
            .await
            .map_err(|_| CoreError::ActorGone(vm.name.to_string()))??;
        let image = self.inner.store.get_image(updated.image_id)?;
        Ok(self.to_api(&updated, image.as_ref()))
    }

    fn enqueue(
        &self,
        vm: &VmRecord,
        kind: OperationKind,
        make: impl FnOnce(OpTracker) -> Command,
    ) -> Result<Operation, CoreError> {
        let op = self
            .inner
            .ops
            .begin(kind, Some(vm.id), Some(vm.name.to_string()));
        let snapshot = op.snapshot();
        self.send(vm.id, vm.name.as_str(), make(op))?;
        Ok(snapshot)
    }

    fn send(&self, id: VmId, name: &str, command: Command) -> Result<(), CoreError> {
        let mut actors = lock(&self.inner.actors);
        let sender = actors.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_actor(self.inner.clone(), id, rx));
            tx
        });
        sender
            .send(command)
            .map_err(|_| CoreError::ActorGone(name.to_string()))
    }

    /// Startup reconcile: re-adopts every VMM that still runs, tears down what dead ones left,
    /// finishes interrupted deletes. Returns a line per VM it changed.
    pub async fn reconcile(&self) -> Result<Vec<String>, CoreError> {
        let mut report = Vec::new();
        for mut vm in self.inner.store.list_vms()? {
            let saved = handles::read(&vm.vm_dir).unwrap_or_else(|err| {
                tracing::warn!(vm = %vm.name, error = %err, "ignoring unreadable handles.json");
                None
            });
            let alive = match (&saved, &self.inner.backends.vmm) {
                (Some(h), Some(vmm)) => vmm.is_alive(&h.vmm).await,
                _ => false,
            };
            match vm.state {
                VmState::Running if alive => {
                    if let Some(h) = saved {
                        lock(&self.inner.runtime).insert(vm.id, h);
                        self.ensure_actor(vm.id);
                        report.push(format!("{}: re-adopted running VMM", vm.name));
                    }
                }
                VmState::Deleting => {
                    self.teardown_process(&vm, saved.as_ref()).await;
                    self.finish_delete(&vm).await;
                    report.push(format!("{}: finished interrupted delete", vm.name));
                }
                state => {
                    let had_something = saved.is_some();
                    self.teardown_process(&vm, saved.as_ref()).await;
                    let target = match state {
                        VmState::Creating => Some((VmState::Error, "the daemon stopped while this VM was being created; start or delete it")),
                        VmState::Starting => Some((VmState::Error, "the daemon stopped while this VM was starting; start it again")),
                        VmState::Running | VmState::Stopping => Some((VmState::Stopped, "the VMM was not running when the daemon started")),
                        _ => None,
                    };
                    if let Some((to, why)) = target {
                        vm.state = vm.state.transition(to)?;
                        vm.last_error = Some(why.to_string());
                        vm.updated_at = Utc::now();
                        self.inner.store.update_vm(&vm)?;
                        report.push(format!("{}: {state} -> {to} ({why})", vm.name));
                    } else if had_something {
                        report.push(format!("{}: removed stale handles", vm.name));
                    }
                }
            }
        }
        Ok(report)
    }

    fn ensure_actor(&self, id: VmId) {
        let mut actors = lock(&self.inner.actors);
        actors.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_actor(self.inner.clone(), id, rx));
            tx
        });
    }

    async fn teardown_process(&self, vm: &VmRecord, saved: Option<&RuntimeHandles>) {
        if let Some(h) = saved {
            if let Some(vmm) = &self.inner.backends.vmm {
                if let Err(err) = vmm.kill(&h.vmm).await {
                    tracing::warn!(vm = %vm.name, error = %err, "killing leftover VMM");
                }
            }
        }
        self.inner.sweep_processes(vm).await;
        if let Err(err) = self
            .inner
            .backends
            .network
            .detach(vm, saved.and_then(|h| h.tap.as_deref()))
            .await
        {
            tracing::warn!(vm = %vm.name, error = %err, "releasing leftover network");
        }
        let _ = handles::remove(&vm.vm_dir);
        lock(&self.inner.runtime).remove(&vm.id);
    }

    async fn finish_delete(&self, vm: &VmRecord) {
        if let Err(err) = self.inner.backends.disks.remove(vm).await {
            tracing::warn!(vm = %vm.name, error = %err, "removing disks");
        }
        let _ = std::fs::remove_dir_all(&vm.vm_dir);
        let _ = std::fs::remove_dir_all(self.inner.settings.run_dir.join(vm.id.to_string()));
        if let Err(err) = self.inner.store.delete_vm(vm.id) {
            tracing::warn!(vm = %vm.name, error = %err, "deleting VM row");
        }
    }

    /// The transient handles of a running VM (for exec, logs, stats).
    pub fn runtime_handles(&self, id: VmId) -> Option<RuntimeHandles> {
        lock(&self.inner.runtime).get(&id).cloned()
    }

    /// The backends this manager drives.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// The VMM backend, when one is usable.
    pub fn vmm(&self) -> Option<Arc<dyn Vmm>> {
        self.inner.backends.vmm.clone()
    }
}

fn resolve<T>(
    reference: &str,
    kind: &'static str,
    items: Vec<T>,
    keys: impl Fn(&T) -> (String, String),
) -> Result<T, CoreError> {
    let not_found = || CoreError::NotFound {
        kind,
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    let mut prefixed = Vec::new();
    for item in items {
        let (id, name) = keys(&item);
        if id == reference || name == reference {
            return Ok(item);
        }
        if name.starts_with(reference) || id.starts_with(reference) {
            prefixed.push((name, item));
        }
    }
    match prefixed.len() {
        0 => Err(not_found()),
        1 => Ok(prefixed.remove(0).1),
        _ => Err(CoreError::Ambiguous {
            kind,
            reference: reference.to_string(),
            matches: prefixed.into_iter().map(|(name, _)| name).collect(),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct IoContext {
    what: String,
    #[source]
    source: std::io::Error,
}

/// The one task that mutates VM `id`.
async fn run_actor(inner: Arc<Inner>, id: VmId, mut rx: mpsc::UnboundedReceiver<Command>) {
    let actor = Actor {
        inner: inner.clone(),
        id,
    };
    loop {
        let watching = lock(&inner.runtime).contains_key(&id);
        tokio::select! {
            command = rx.recv() => {
                let Some(command) = command else { break };
                if actor.handle(command).await == Flow::Gone {
                    break;
                }
            }
            _ = tokio::time::sleep(WATCH_INTERVAL), if watching => actor.check_vmm().await,
        }
    }
    lock(&inner.actors).remove(&id);
    // Fail anything that was queued behind a delete.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        actor.refuse(command, "the VM was deleted");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Gone,
}

/// What a failed stage leaves to undo, newest last.
#[derive(Debug, Default)]
struct Undo {
    disks: bool,
    tap: Option<Option<String>>,
    vmm: Option<RuntimeHandles>,
}

struct Actor {
    inner: Arc<Inner>,
    id: VmId,
}

impl Actor {
    fn load(&self) -> Result<VmRecord, CoreError> {
        self.inner
            .store
            .get_vm(self.id)?
            .ok_or_else(|| CoreError::NotFound {
                kind: "VM",
                reference: self.id.to_string(),
            })
    }

    fn save_state(
        &self,
        vm: &mut VmRecord,
        to: VmState,
        last_error: Option<String>,
    ) -> Result<(), CoreError> {
        vm.state = vm.state.transition(to)?;
        vm.last_error = last_error;
        vm.updated_at = Utc::now();
        self.inner.store.update_vm(vm)?;
        Ok(())
    }

    fn refuse(&self, command: Command, why: &str) {
        let error = banger_api::ApiError::new(ErrorCode::Conflict, why);
        match command {
            Command::Create { op, .. }
            | Command::Start { op }
            | Command::Stop { op, .. }
            | Command::Restart { op }
            | Command::Delete { op, .. } => {
                op.fail(error);
            }
            Command::Edit { reply, .. } => {
                let _ = reply.send(Err(CoreError::Conflict(why.to_string())));
            }
        }
    }

    async fn handle(&self, command: Command) -> Flow {
        match command {
            Command::Create { mut op, start } => {
                let result = self.create(&mut op, start).await;
                finish(op, result);
                Flow::Continue
            }
            Command::Start { mut op } => {
                let result = self.start(&mut op).await;
                finish(op, result);
                Flow::Continue
            }
            Command::Stop { mut op, force } => {
                let result = self.stop(&mut op, force).await;
                finish(op, result);
                Flow::Continue
            }
            Command::Restart { mut op } => {
                let mut result = self.stop(&mut op, false).await;
                if result.is_ok() {
                    result = self.start(&mut op).await;
                }
                finish(op, result);
                Flow::Continue
            }
            Command::Delete { mut op, force } => {
                let result = self.delete(&mut op, force).await;
                let gone = result.is_ok();
                finish(op, result);
                if gone {
                    Flow::Gone
                } else {
                    Flow::Continue
                }
            }
            Command::Edit { req, reply } => {
                let _ = reply.send(self.edit(req).await);
                Flow::Continue
            }
        }
    }

    async fn create(&self, op: &mut OpTracker, start: bool) -> Result<(), CoreError> {
        let mut vm = self.load()?;
        let image = self.image_of(&vm)?;
        let mut undo = Undo::default();
        let result = async {
            op.stage("disks");
            // Derived artifacts (work seed, Firecracker's vmlinux) are made on first need.
            let image = self
                .prepare_image(&image)
                .await
                .map_err(|source| stage_error(&vm, "disks", source))?;
            let disks = self
                .inner
                .backends
                .disks
                .prepare(&vm, &image)
                .await
                .map_err(|source| stage_error(&vm, "disks", source))?;
            undo.disks = true;
            if disks.root_clone_method.is_some() {
                vm.root_clone_method = disks.root_clone_method;
            }
            if !start {
                return Ok(None);
            }
            self.boot(op, &mut vm, &image, disks, &mut undo)
                .await
                .map(Some)
        }
        .await;
        match result {
            Ok(booted) => {
                op.end_stage_done();
                vm.stage_timings = op.timings();
                let to = if booted.is_some() {
                    VmState::Running
                } else {
                    VmState::Stopped
                };
                self.save_state(&mut vm, to, None)
            }
            Err(err) => {
                self.rollback(&vm, undo, true).await;
                // The rollback removed the disks, the clone root with them.
                vm.root_clone_method = None;
                vm.stage_timings = op.timings();
                let _ = self.save_state(&mut vm, VmState::Error, Some(err.chain()));
                Err(err)
            }
        }
    }

    async fn start(&self, op: &mut OpTracker) -> Result<(), CoreError> {
        let mut vm = self.load()?;
        let image = self.image_of(&vm)?;
        self.save_state(&mut vm, VmState::Starting, None)?;
        vm.desired_state = DesiredState::Running;
        let mut undo = Undo::default();
        let result = async {
            op.stage("disks");
            // Derived artifacts (work seed, Firecracker's vmlinux) are made on first need.
            let image = self
                .prepare_image(&image)
                .await
                .map_err(|source| stage_error(&vm, "disks", source))?;
            let disks = self
                .inner
                .backends
                .disks
                .prepare(&vm, &image)
                .await
                .map_err(|source| stage_error(&vm, "disks", source))?;
            if disks.root_clone_method.is_some() {
                vm.root_clone_method = disks.root_clone_method;
            }
            self.boot(op, &mut vm, &image, disks, &mut undo).await
        }
        .await;
        if result.is_ok() {
            op.end_stage_done();
        }
        vm.stage_timings = op.timings();
        match result {
            Ok(()) => self.save_state(&mut vm, VmState::Running, None),
            Err(err) => {
                self.rollback(&vm, undo, false).await;
                let _ = self.save_state(&mut vm, VmState::Error, Some(err.chain()));
                Err(err)
            }
        }
    }

    /// network -> vmm -> agent -> services. Records what to undo in `undo` as it goes.
    async fn boot(
        &self,
        op: &mut OpTracker,
        vm: &mut VmRecord,
        image: &ImageRecord,
        disks: crate::backends::PreparedDisks,
        undo: &mut Undo,
    ) -> Result<(), CoreError> {
        let backends = &self.inner.backends;
        let settings = &self.inner.settings;
        let vmm = backends.vmm.clone().ok_or_else(|| {
            CoreError::Unsatisfiable(
                backends
                    .vmm_unavailable
                    .clone()
                    .unwrap_or_else(|| "no usable VMM".into()),
            )
        })?;

        op.stage("network");
        let net: Option<NetAttachment> = backends
            .network
            .attach(vm)
            .await
            .map_err(|source| stage_error(vm, "network", source))?;
        undo.tap = Some(net.as_ref().map(|n| n.iface.tap.clone()));
        if let Some(net) = &net {
            op.detail(net.iface.tap.clone());
            for forward in self.inner.store.list_port_forwards(vm.id)? {
                backends
                    .network
                    .publish(vm, &forward)
                    .await
                    .map_err(|err| stage_error(vm, "network", Box::new(err)))?;
            }
        }

        op.stage("vmm");
        let run_dir = settings.run_dir.join(vm.id.to_string());
        prepare_dir(&run_dir).map_err(|source| stage_error(vm, "vmm", Box::new(source)))?;
        let vmm_log = vm.vm_dir.join("vmm.log");
        let console_log = vm.vm_dir.join("console.log");
        rotate_log(&vmm_log);
        rotate_log(&console_log);
        let mut cmdline: Vec<String> = vec![
            image.cmdline.clone(),
            format!("banger.hostname={}", vm.name),
        ];
        cmdline.extend(disks.kernel_args.iter().cloned());
        if let Some(net) = &net {
            cmdline.extend(net.kernel_args.iter().cloned());
        }
        if !settings.extra_kernel_args.trim().is_empty() {
            cmdline.push(settings.extra_kernel_args.trim().to_string());
        }
        let spec = LaunchSpec {
            name: vm.name.to_string(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            kernel: image.kernel_path.clone(),
            initrd: image.initrd_path.clone(),
            cmdline: cmdline
                .into_iter()
                .filter(|part| !part.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            drives: disks.drives.clone(),
            net: net.as_ref().map(|n| n.iface.clone()),
            vsock_cid: vm.vsock_cid.unwrap_or(3),
            vsock_uds: run_dir.join("vsock.sock"),
            run_dir: run_dir.clone(),
            vmm_log,
            console_log,
            netns: backends.network.netns(),
        };
        let vmm_handles = vmm
            .launch(&spec)
            .await
            .map_err(|source| stage_error(vm, "vmm", Box::new(source)))?;
        let runtime = RuntimeHandles {
            vmm: vmm_handles,
            tap: net.as_ref().map(|n| n.iface.tap.clone()),
        };
        undo.vmm = Some(runtime.clone());
        op.detail(format!(
            "{} pid {}",
            runtime.vmm.kind, runtime.vmm.process.pid
        ));
        handles::write(&vm.vm_dir, &runtime)
            .map_err(|source| stage_error(vm, "vmm", Box::new(source)))?;
        lock(&self.inner.runtime).insert(vm.id, runtime.clone());

        op.stage("agent");
        let health = backends
            .agent
            .wait_healthy(&runtime.vmm.vsock_uds, settings.boot_timeout)
            .await
            .map_err(|source| stage_error(vm, "agent", self.with_console_tail(vm, source)))?;
        if let Some(key) = &settings.authorized_key {
            backends
                .agent
                .install_authorized_key(&runtime.vmm.vsock_uds, key)
                .await
                .map_err(|source| stage_error(vm, "agent", source))?;
        }
        op.detail(format!(
            "agent {} after {:.2} s of guest uptime",
            health.version, health.uptime_secs
        ));

        if !image.readiness_ports.is_empty() {
            op.stage("services");
            for port in &image.readiness_ports {
                backends
                    .agent
                    .wait_port(&runtime.vmm.vsock_uds, *port, settings.boot_timeout)
                    .await
                    .map_err(|source| stage_error(vm, "services", source))?;
            }
            op.detail(
                image
                    .readiness_ports
                    .iter()
                    .map(|p| format!(":{p}"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + " answering",
            );
        }
        Ok(())
    }

    fn with_console_tail(
        &self,
        vm: &VmRecord,
        source: crate::backends::BoxError,
    ) -> crate::backends::BoxError {
        let tail = console_tail(&vm.vm_dir.join("console.log"), 5);
        if tail.is_empty() {
            source
        } else {
            Box::new(Contextual {
                message: format!("{source}; last console lines: {tail}"),
                source,
            })
        }
    }

    async fn rollback(&self, vm: &VmRecord, undo: Undo, remove_disks: bool) {
        let backends = &self.inner.backends;
        if let Some(runtime) = undo.vmm {
            if let Some(vmm) = &backends.vmm {
                if let Err(err) = vmm.kill(&runtime.vmm).await {
                    tracing::warn!(vm = %vm.name, error = %err, "rollback: killing VMM");
                }
            }
            let _ = handles::remove(&vm.vm_dir);
            lock(&self.inner.runtime).remove(&vm.id);
        }
        self.inner.sweep_processes(vm).await;
        if let Some(tap) = undo.tap {
            if let Err(err) = backends.network.detach(vm, tap.as_deref()).await {
                tracing::warn!(vm = %vm.name, error = %err, "rollback: releasing network");
            }
        }
        if undo.disks && remove_disks {
            if let Err(err) = backends.disks.remove(vm).await {
                tracing::warn!(vm = %vm.name, error = %err, "rollback: removing disks");
            }
        }
        let _ = std::fs::remove_dir_all(self.inner.settings.run_dir.join(vm.id.to_string()));
    }

    async fn stop(&self, op: &mut OpTracker, force: bool) -> Result<(), CoreError> {
        let mut vm = self.load()?;
        vm.desired_state = DesiredState::Stopped;
        if !vm.state.has_process() {
            if matches!(vm.state, VmState::Stopped) {
                self.inner.store.update_vm(&vm)?;
                return Ok(());
            }
            return Err(CoreError::Conflict(format!(
                "VM {} is {}, not running",
                vm.name, vm.state
            )));
        }
        if vm.state == VmState::Running {
            self.save_state(&mut vm, VmState::Stopping, None)?;
        }
        let runtime = lock(&self.inner.runtime).get(&vm.id).cloned();
        let backends = &self.inner.backends;
        if let (Some(runtime), Some(vmm)) = (&runtime, &backends.vmm) {
            let mut exited = false;
            if !force {
                op.stage("shutdown");
                match backends.agent.shutdown(&runtime.vmm.vsock_uds).await {
                    Ok(()) => op.detail("asked the guest agent"),
                    Err(err) => {
                        tracing::info!(vm = %vm.name, error = %err, "agent shutdown failed; sending the VMM's power button");
                        if let Err(err) = vmm.request_shutdown(&runtime.vmm).await {
                            tracing::warn!(vm = %vm.name, error = %err, "VMM shutdown request failed");
                        }
                        op.detail("sent the VMM's power button");
                    }
                }
                exited = vmm
                    .wait_exit(&runtime.vmm, self.inner.settings.stop_timeout)
                    .await;
            }
            if !exited {
                op.stage("kill");
            }
            vmm.kill(&runtime.vmm)
                .await
                .map_err(|source| stage_error(&vm, "kill", Box::new(source)))?;
        }
        op.stage("network");
        if let Err(err) = backends
            .network
            .detach(&vm, runtime.as_ref().and_then(|r| r.tap.as_deref()))
            .await
        {
            tracing::warn!(vm = %vm.name, error = %err, "releasing network on stop");
        }
        let _ = handles::remove(&vm.vm_dir);
        lock(&self.inner.runtime).remove(&vm.id);
        let _ = std::fs::remove_dir_all(self.inner.settings.run_dir.join(vm.id.to_string()));
        self.save_state(&mut vm, VmState::Stopped, None)
    }

    async fn delete(&self, op: &mut OpTracker, force: bool) -> Result<(), CoreError> {
        let vm = self.load()?;
        if vm.state.has_process() || matches!(vm.state, VmState::Creating | VmState::Starting) {
            if !force {
                return Err(CoreError::Conflict(format!(
                    "VM {} is {}; stop it first or delete with --force",
                    vm.name, vm.state
                )));
            }
            self.stop(op, true).await?;
        }
        let mut vm = self.load()?;
        self.save_state(&mut vm, VmState::Deleting, None)?;
        op.stage("disks");
        if let Err(source) = self.inner.backends.disks.remove(&vm).await {
            let err = stage_error(&vm, "disks", source);
            let _ = self.save_state(&mut vm, VmState::Error, Some(err.chain()));
            return Err(err);
        }
        op.stage("network");
        if let Err(source) = self.inner.backends.network.detach(&vm, None).await {
            let err = stage_error(&vm, "network", source);
            let _ = self.save_state(&mut vm, VmState::Error, Some(err.chain()));
            return Err(err);
        }
        op.stage("records");
        let _ = std::fs::remove_dir_all(&vm.vm_dir);
        let _ = std::fs::remove_dir_all(self.inner.settings.run_dir.join(vm.id.to_string()));
        self.inner.store.delete_vm(vm.id)?;
        Ok(())
    }

    async fn edit(&self, req: EditVmRequest) -> Result<VmRecord, CoreError> {
        let mut vm = self.load()?;
        if vm.state != VmState::Stopped {
            return Err(CoreError::Conflict(format!(
                "VM {} is {}; stop it before editing",
                vm.name, vm.state
            )));
        }
        if let Some(size) = req.disk_size_mib {
            if size < vm.disk_size_mib {
                return Err(CoreError::InvalidInput {
                    field: "disk_size_mib",
                    message: format!(
                        "disks only grow: {size} MiB is smaller than the current {} MiB",
                        vm.disk_size_mib
                    ),
                });
            }
            if size > vm.disk_size_mib {
                self.inner.backends.disks.check_grow(&vm, size).await?;
                self.inner
                    .backends
                    .disks
                    .grow_work(&vm, size)
                    .await
                    .map_err(|source| stage_error(&vm, "disks", source))?;
                vm.disk_size_mib = size;
            }
        }
        if let Some(vcpus) = req.vcpus {
            vm.vcpus = vcpus;
        }
        if let Some(memory) = req.memory_mib {
            vm.memory_mib = memory;
        }
        vm.updated_at = Utc::now();
        self.inner.store.update_vm(&vm)?;
        Ok(vm)
    }

    /// The image as this boot uses it, after making any missing derived artifact.
    async fn prepare_image(
        &self,
        image: &ImageRecord,
    ) -> Result<ImageRecord, crate::backends::BoxError> {
        crate::images::prepare_for_boot(
            &self.inner.store,
            &self.inner.backends.images,
            &self.inner.settings.images,
            self.inner.backends.vmm.as_ref().map(|v| v.kind()),
            image,
        )
        .await
    }

    fn image_of(&self, vm: &VmRecord) -> Result<ImageRecord, CoreError> {
        self.inner
            .store
            .get_image(vm.image_id)?
            .ok_or_else(|| CoreError::NotFound {
                kind: "image",
                reference: vm.image_id.to_string(),
            })
    }

    /// Called periodically while the VM runs: records an unexpected VMM death.
    async fn check_vmm(&self) {
        let Some(runtime) = lock(&self.inner.runtime).get(&self.id).cloned() else {
            return;
        };
        let Some(vmm) = &self.inner.backends.vmm else {
            return;
        };
        if !vmm.wait_exit(&runtime.vmm, Duration::ZERO).await {
            // Still running: keep its logs within their size limit.
            let vm_dir = self.inner.settings.vms_dir.join(self.id.to_string());
            cap_log(&vm_dir.join("console.log"));
            cap_log(&vm_dir.join("vmm.log"));
            return;
        }
        let Ok(mut vm) = self.load() else { return };
        let exit = vmm.exit_info(&runtime.vmm);
        let clean = exit.as_ref().is_some_and(|e| e.code == Some(0));
        let exit_text = exit
            .map(|e| e.to_string())
            .unwrap_or_else(|| "exited (status unknown: not our child)".into());
        let tail = console_tail(&vm.vm_dir.join("console.log"), 5);
        tracing::warn!(vm = %vm.name, exit = %exit_text, "VMM process ended");
        let _ = vmm.kill(&runtime.vmm).await;
        if let Err(err) = self
            .inner
            .backends
            .network
            .detach(&vm, runtime.tap.as_deref())
            .await
        {
            tracing::warn!(vm = %vm.name, error = %err, "releasing network after VMM exit");
        }
        let _ = handles::remove(&vm.vm_dir);
        lock(&self.inner.runtime).remove(&vm.id);
        let _ = std::fs::remove_dir_all(self.inner.settings.run_dir.join(vm.id.to_string()));
        let (to, why) = if clean {
            (VmState::Stopped, None)
        } else {
            let mut why = format!("the VMM process {exit_text}");
            if !tail.is_empty() {
                why.push_str(&format!("; last console lines: {tail}"));
            }
            (VmState::Error, Some(why))
        };
        if vm.state.can_transition(to) {
            if let Err(err) = self.save_state(&mut vm, to, why) {
                tracing::warn!(vm = %vm.name, error = %err, "recording VMM exit");
            }
        }
    }
}

fn finish(op: OpTracker, result: Result<(), CoreError>) {
    match result {
        Ok(()) => {
            op.succeed();
        }
        Err(err) => {
            op.fail(err.to_api());
        }
    }
}

fn stage_error(vm: &VmRecord, stage: &'static str, source: crate::backends::BoxError) -> CoreError {
    CoreError::Stage {
        vm: vm.name.to_string(),
        stage,
        source,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Contextual {
    message: String,
    #[source]
    source: crate::backends::BoxError,
}

fn prepare_dir(dir: &std::path::Path) -> Result<(), IoContext> {
    std::fs::create_dir_all(dir).map_err(|source| IoContext {
        what: format!("creating {}", dir.display()),
        source,
    })
}

/// Moves `path` to `path.1` when it grew beyond [`LOG_ROTATE_BYTES`].
fn rotate_log(path: &std::path::Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.len() > LOG_ROTATE_BYTES {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            let _ = std::fs::rename(path, PathBuf::from(rotated));
        }
    }
}

/// Keeps a log that a running VMM still writes within [`LOG_ROTATE_BYTES`]: its content moves
/// to `<name>.1` (replacing the previous one) and the file is truncated in place. The VMM keeps
/// its descriptor; writers that opened the file with O_APPEND (QEMU's console chardev, the
/// VMM's stdout) continue at the new end.
pub fn cap_log(path: &std::path::Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() <= LOG_ROTATE_BYTES {
        return;
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    if std::fs::copy(path, PathBuf::from(rotated)).is_ok() {
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = file.set_len(0);
        }
    }
}

/// The last `lines` non-empty lines of a log, joined with ` | `.
pub fn console_tail(path: &std::path::Path, lines: usize) -> String {
    let Ok(text) = read_tail(path, 16 * 1024) else {
        return String::new();
    };
    let picked: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    picked[picked.len().saturating_sub(lines)..].join(" | ")
}

/// The last `max` bytes of a file, lossily decoded.
pub fn read_tail(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_prefers_exact_then_unique_prefix() {
        let items = vec![
            ("id-1".to_string(), "alpha".to_string()),
            ("id-2".to_string(), "alpine".to_string()),
        ];
        let keys = |item: &(String, String)| item.clone();
        assert_eq!(
            resolve("alpha", "VM", items.clone(), keys).unwrap().1,
            "alpha"
        );
        assert_eq!(
            resolve("alpi", "VM", items.clone(), keys).unwrap().1,
            "alpine"
        );
        assert_eq!(
            resolve("id-2", "VM", items.clone(), keys).unwrap().1,
            "alpine"
        );
        match resolve("alp", "VM", items.clone(), keys) {
            Err(CoreError::Ambiguous { matches, .. }) => {
                assert_eq!(matches, vec!["alpha", "alpine"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve("beta", "VM", items.clone(), keys),
            Err(CoreError::NotFound { .. })
        ));
        assert!(matches!(
            resolve("", "VM", items, keys),
            Err(CoreError::NotFound { .. })
        ));
    }

    #[test]
    fn a_growing_log_is_capped_while_its_writer_keeps_appending() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer
            .write_all(&vec![b'x'; LOG_ROTATE_BYTES as usize + 1])
            .unwrap();
        cap_log(&path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("console.log.1"))
                .unwrap()
                .len(),
            LOG_ROTATE_BYTES + 1
        );
        writer.write_all(b"after\n").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"after\n",
            "the writer continues at the new end"
        );
        cap_log(&path);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"after\n",
            "small logs are left alone"
        );
    }

    #[test]
    fn console_tail_takes_last_nonempty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "a\n\nb\nc\n  \nd\n").unwrap();
        assert_eq!(console_tail(&path, 2), "c | d");
        assert_eq!(console_tail(&dir.path().join("missing"), 2), "");
    }
}
