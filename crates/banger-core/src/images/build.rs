//! `image build --from BASE --name NEW [--script FILE] [--package P…]`.
//!
//! Stages of the operation:
//! ```text
//! cache      the build key = sha256(base fingerprint, script, packages, size): a hit answers
//!            at once (the same image, or a copy of it under the new name)
//! builder    a VM of BASE, created through the manager like any other (`build-XXXXXXXX`)
//! packages   the guest's dpkg status and apt sources read through the agent; the .debs
//!            downloaded ON THE HOST (apt-get --download-only, resolved for the guest), copied
//!            in through the agent, `dpkg -i` (the builder VM needs no network)
//! script     the script run as root with `sh -e`, its output streamed into the stage detail
//! capture    `tar --one-file-system` of the guest's merged root (the overlay: base + what the
//!            build changed; /proc /sys /dev /run /root are other filesystems and stay out),
//!            streamed out through the agent
//! shutdown   the builder VM deleted
//! rootfs     the tar unpacked on the host, per-VM identity scrubbed, `mkfs.ext4 -d`
//! register   kernel, initrd, modules and work seed copied from BASE; the image recorded with
//!            parent = BASE together with its build key
//! ```
//! Whatever happens, the builder VM is deleted and the scratch and staging directories are
//! removed: a failing script leaves no image and no VM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{
    BuildImageRequest, CreateVmRequest, ImageId, Operation, OperationKind, OperationStatus, VmName,
};
use banger_host::build_tools::AptGuest;
use banger_store::records::ImageRecord;

use super::{
    blocking, context, files, fingerprint, guest, image_dir, invalid, io_context, ImageSettings,
};
use crate::backends::{BoxError, GuestCommand};
use crate::error::CoreError;
use crate::manager::Manager;
use crate::ops::OpTracker;

/// Longest a build script or package installation may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Lines of output kept for the error of a failing step.
const TAIL_LINES: usize = 20;

/// What one build does, after validation.
#[derive(Debug, Clone)]
struct Plan {
    base: ImageRecord,
    name: VmName,
    script: Option<String>,
    packages: Vec<String>,
    rootfs_mib: Option<u64>,
    key: String,
    settings: ImageSettings,
}

/// The build key: what makes two builds identical.
pub fn build_key(
    base_fingerprint: &str,
    script: Option<&str>,
    packages: &[String],
    rootfs_mib: Option<u64>,
) -> String {
    let mut packages = packages.to_vec();
    packages.sort();
    packages.dedup();
    super::sha256_text(&format!(
        "banger-build-v1\nbase={base_fingerprint}\npackages={}\nrootfs={}\nscript={}",
        packages.join(","),
        rootfs_mib.map(|m| m.to_string()).unwrap_or_default(),
        script.unwrap_or_default()
    ))
}

/// The last lines of a step's output, for its error.
#[derive(Debug, Default, Clone)]
struct Tail(Arc<Mutex<Vec<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.push(line.to_string());
        let excess = lines.len().saturating_sub(TAIL_LINES);
        lines.drain(..excess);
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }
}

impl Manager {
    /// `POST /v1/images/build`: validates, answers an identical earlier build from the cache,
    /// else builds in the background; the returned operation reports each stage.
    pub async fn build_image(&self, req: BuildImageRequest) -> Result<Operation, CoreError> {
        let base = self.resolve_image(&req.from).map_err(|err| match err {
            CoreError::NotFound { reference, .. } => {
                invalid("from", format!("no image matches `{reference}`"))
            }
            other => other,
        })?;
        let name = super::parse_image_name("name", &req.name)?;
        super::bootstrap::check_packages("packages", &req.packages)?;
        let script = req.script.clone().filter(|s| !s.trim().is_empty());
        if script.is_none() && req.packages.is_empty() {
            return Err(invalid(
                "script",
                "nothing to build: give a script, packages, or both",
            ));
        }
        if let Some(mib) = req.rootfs_size_mib {
            if !(256..=256 * 1024).contains(&mib) {
                return Err(invalid(
                    "rootfs_size_mib",
                    format!("{mib} MiB is not between 256 MiB and 256 GiB"),
                ));
            }
        }
        let base_fingerprint = match &base.sha256 {
            Some(sha) => sha.clone(),
            None => {
                fingerprint(&base)
                    .await
                    .map_err(|source| CoreError::Image {
                        image: base.name.to_string(),
                        step: "fingerprinting",
                        source,
                    })?
                    .0
            }
        };
        let key = build_key(
            &base_fingerprint,
            script.as_deref(),
            &req.packages,
            req.rootfs_size_mib,
        );
        let cached = match self.store().built_image(&key)? {
            Some(id) => self.store().get_image(id)?,
            None => None,
        };
        let taken = self.store().get_image_by_name(name.as_str())?;
        match (&cached, &taken) {
            (Some(hit), Some(existing)) if hit.id == existing.id => {
                let mut op = self
                    .operations()
                    .begin(OperationKind::BuildImage, None, None);
                op.stage("cache");
                op.detail(format!("identical build: image {} ({})", hit.name, hit.id));
                return Ok(op.succeed());
            }
            (_, Some(existing)) => {
                return Err(CoreError::Conflict(format!(
                    "an image named {} already exists",
                    existing.name
                )))
            }
            _ => {}
        }
        let plan = Plan {
            base,
            name,
            script,
            packages: req.packages.clone(),
            rootfs_mib: req.rootfs_size_mib,
            key,
            settings: self.settings().images.clone(),
        };
        let op = self
            .operations()
            .begin(OperationKind::BuildImage, None, None);
        let snapshot = op.snapshot();
        let manager = self.clone();
        tokio::spawn(async move {
            let mut op = op;
            let result = match cached {
                Some(hit) => manager.copy_cached(&mut op, &plan, &hit).await,
                None => manager.run_build(&mut op, &plan).await,
            };
            super::finish_image_op(op, result, "image build", &plan.name.to_string());
        });
        Ok(snapshot)
    }

    /// A cache hit under another name: the cached image's files copied as a new image.
    async fn copy_cached(
        &self,
        op: &mut OpTracker,
        plan: &Plan,
        hit: &ImageRecord,
    ) -> Result<ImageRecord, CoreError> {
        op.stage("cache");
        op.detail(format!("identical to image {}; copying", hit.name));
        let id = ImageId::new();
        let dir = image_dir(&plan.settings, id);
        let fail = |source| CoreError::Image {
            image: plan.name.to_string(),
            step: "copying a cached build",
            source,
        };
        let mut copy = super::copy_artifacts(self.backends().images.disks.as_ref(), hit, &dir)
            .await
            .map_err(fail)?;
        copy.id = id;
        copy.name = plan.name.clone();
        copy.managed = true;
        copy.created_at = chrono::Utc::now();
        op.stage("register");
        if let Err(err) = self.store().insert_built_image(&copy, &plan.key) {
            let _ = super::remove_tree(&dir);
            return Err(err.into());
        }
        Ok(copy)
    }

    async fn run_build(&self, op: &mut OpTracker, plan: &Plan) -> Result<ImageRecord, CoreError> {
        let scratch = plan
            .settings
            .cache_dir
            .join("builds")
            .join(ImageId::new().to_string());
        let staging = plan
            .settings
            .images_dir
            .join(format!(".build-{}", ImageId::new()));
        let builder = VmName::parse(&format!("build-{}", &ImageId::new().to_string()[..8]))
            .map_err(|e| invalid("name", e.to_string()))?;
        let result = self.build_in(op, plan, &builder, &scratch, &staging).await;
        // Whatever happened: no builder VM, no scratch, no staging.
        if let Ok(vm) = self.resolve_vm(builder.as_str()) {
            if result.is_err() {
                op.stage("cleanup");
                // What the builder's console said last, before it goes with the VM: a guest that
                // died (an OOM kill, a panic) shows there and nowhere else.
                let tail = crate::manager::console_tail(&vm.vm_dir.join("console.log"), 8);
                if !tail.is_empty() {
                    op.detail(format!("builder console: {tail}"));
                }
            }
            self.remove_builder(&builder).await;
        }
        let _ = super::remove_tree(&scratch);
        let _ = super::remove_tree(&staging);
        result
    }

    async fn remove_builder(&self, builder: &VmName) {
        match self.delete_vm(builder.as_str(), true) {
            Ok(op) => {
                if let Some(done) = self.wait_operation(op.id).await {
                    if done.status != OperationStatus::Succeeded {
                        tracing::warn!(vm = %builder, error = ?done.error, "deleting the builder VM");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(vm = %builder, error = %err.chain(), "deleting the builder VM")
            }
        }
    }

    /// Waits for operation `id` to finish; `None` if it is unknown.
    pub async fn wait_operation(&self, id: banger_api::OperationId) -> Option<Operation> {
        let mut rx = self.operations().subscribe(id)?;
        loop {
            let current = rx.borrow_and_update().clone();
            if current.is_finished() {
                return Some(current);
            }
            if rx.changed().await.is_err() {
                return self.operations().get(id);
            }
        }
    }

    async fn build_in(
        &self,
        op: &mut OpTracker,
        plan: &Plan,
        builder: &VmName,
        scratch: &Path,
        staging: &Path,
    ) -> Result<ImageRecord, CoreError> {
        let name = plan.name.to_string();
        let fail = |step: &'static str| {
            let name = name.clone();
            move |source: BoxError| CoreError::Image {
                image: name,
                step,
                source,
            }
        };
        std::fs::create_dir_all(scratch)
            .map_err(|e| fail("preparing")(io_context("creating", scratch, e)))?;
        let host = self.backends().images.clone();
        let agent = self.backends().agent.clone();

        op.stage("builder");
        op.detail(format!("VM {builder} of image {}", plan.base.name));
        let created = self
            .create_vm(CreateVmRequest {
                name: Some(builder.to_string()),
                image: Some(plan.base.id.to_string()),
                ..CreateVmRequest::default()
            })
            .await?;
        let done = self
            .wait_operation(created.id)
            .await
            .ok_or_else(|| fail("booting the builder VM")("its operation vanished".into()))?;
        if done.status != OperationStatus::Succeeded {
            let why = done
                .error
                .map(|e| {
                    std::iter::once(e.message)
                        .chain(e.causes)
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .unwrap_or_else(|| "it failed".into());
            return Err(fail("booting the builder VM")(why.into()));
        }
        let vm = self.resolve_vm(builder.as_str())?;
        let uds = self
            .runtime_handles(vm.id)
            .map(|h| h.vmm.vsock_uds)
            .ok_or_else(|| fail("booting the builder VM")("it is not running".into()))?;

        // Runs one guest command; output lines go to the stage detail and the tail.
        let run = |command: GuestCommand, tail: Tail, op: &mut OpTracker| {
            let agent = agent.clone();
            let uds = uds.clone();
            let progress = op.progress();
            async move {
                let sink = move |line: &str| {
                    tail.push(line);
                    progress(line);
                };
                agent.run_command(&uds, &command, &sink).await
            }
        };
        let checked =
            |code: Result<i32, BoxError>, what: &str, tail: &Tail| -> Result<(), BoxError> {
                match code {
                    Ok(0) => Ok(()),
                    Ok(code) => {
                        let text = tail.text();
                        Err(if text.is_empty() {
                            format!("{what} exited with status {code}").into()
                        } else {
                            format!("{what} exited with status {code}; last output:\n{text}").into()
                        })
                    }
                    Err(err) => Err(context(format!("running {what}"), err)),
                }
            };

        if !plan.packages.is_empty() {
            op.stage("packages");
            op.detail(plan.packages.join(" "));
            let tail = Tail::default();
            let status = scratch.join("dpkg-status");
            let sources = scratch.join("sources.list");
            for (path, file) in [
                (&status, "/var/lib/dpkg/status"),
                (&sources, "/etc/apt/sources.list"),
            ] {
                let command = GuestCommand {
                    stdout_file: Some(path.clone()),
                    ..GuestCommand::new(["cat", file])
                };
                checked(
                    run(command, tail.clone(), op).await,
                    &format!("reading {file} in the builder"),
                    &tail,
                )
                .map_err(fail("installing packages"))?;
            }
            let sources_text = std::fs::read_to_string(&sources).unwrap_or_default();
            let apt = AptGuest {
                dpkg_status: status,
                sources_list: sources,
                state_dir: plan
                    .settings
                    .cache_dir
                    .join("apt")
                    .join(&super::sha256_text(&sources_text)[..16]),
            };
            let debs_dir = scratch.join("debs");
            let debs = host
                .tools
                .download_debs(&plan.packages, &apt, &debs_dir)
                .await
                .map_err(|e| fail("downloading packages on the host")(Box::new(e)))?;
            op.detail(format!("{} .deb files", debs.len()));
            checked(
                run(
                    GuestCommand::new(["mkdir", "-p", "/var/cache/banger-debs"]),
                    tail.clone(),
                    op,
                )
                .await,
                "mkdir",
                &tail,
            )
            .map_err(fail("installing packages"))?;
            for deb in &debs {
                let file = deb
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let command = GuestCommand {
                    stdin_file: Some(deb.clone()),
                    ..GuestCommand::new([
                        "sh",
                        "-c",
                        "cat > \"/var/cache/banger-debs/$1\"",
                        "sh",
                        file.as_str(),
                    ])
                };
                checked(
                    run(command, tail.clone(), op).await,
                    &format!("copying {file} into the builder"),
                    &tail,
                )
                .map_err(fail("installing packages"))?;
            }
            let install = GuestCommand {
                timeout: Some(STEP_TIMEOUT),
                ..GuestCommand::new([
                    "sh",
                    "-c",
                    "set -e; if ls /var/cache/banger-debs/*.deb >/dev/null 2>&1; then \
                     DEBIAN_FRONTEND=noninteractive dpkg -i /var/cache/banger-debs/*.deb; fi; \
                     rm -rf /var/cache/banger-debs",
                ])
            };
            checked(run(install, tail.clone(), op).await, "dpkg -i", &tail)
                .map_err(fail("installing packages"))?;
        }

        if let Some(script) = &plan.script {
            op.stage("script");
            let tail = Tail::default();
            let local = scratch.join("script.sh");
            std::fs::write(&local, script)
                .map_err(|e| fail("running the script")(io_context("writing", &local, e)))?;
            let copy = GuestCommand {
                stdin_file: Some(local),
                ..GuestCommand::new(["sh", "-c", "cat > /run/banger-build.sh"])
            };
            checked(
                run(copy, tail.clone(), op).await,
                "copying the script",
                &tail,
            )
            .map_err(fail("running the script"))?;
            let command = GuestCommand {
                timeout: Some(STEP_TIMEOUT),
                ..GuestCommand::new([
                    "sh",
                    "-c",
                    "cd /root && HOME=/root exec /bin/sh -e /run/banger-build.sh",
                ])
            };
            checked(
                run(command, tail.clone(), op).await,
                "the build script",
                &tail,
            )
            .map_err(fail("running the script"))?;
        }

        op.stage("capture");
        let tail = Tail::default();
        let archive = scratch.join("root.tar");
        let capture = GuestCommand {
            stdout_file: Some(archive.clone()),
            timeout: Some(STEP_TIMEOUT),
            ..GuestCommand::new([
                "sh",
                "-c",
                "sync; tar -C / --one-file-system --numeric-owner --xattrs --xattrs-include='*' \
                 --exclude=./tmp/* --exclude=./var/tmp/* --exclude=./var/cache/apt/archives/*.deb \
                 --exclude=./run/banger-build.sh -cpf - . ; s=$?; [ $s -le 1 ] && exit 0; exit $s",
            ])
        };
        checked(
            run(capture, tail.clone(), op).await,
            "tar of the root",
            &tail,
        )
        .map_err(fail("capturing the root"))?;
        let captured = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        op.detail(format!("{} MiB", captured >> 20));

        op.stage("shutdown");
        self.remove_builder(builder).await;

        op.stage("rootfs");
        let tree = scratch.join("tree");
        host.tools
            .unpack_tar(&archive, &tree, 0)
            .await
            .map_err(|e| fail("unpacking the captured root")(Box::new(e)))?;
        let _ = std::fs::remove_file(&archive);
        let root = tree.clone();
        let used = blocking(move || {
            guest::scrub_tree(&root).map_err(|e| io_context("scrubbing", &root, e))?;
            for dir in ["rw", "root", "oldroot"] {
                let dir = root.join("usr/lib/banger").join(dir);
                if dir.parent().is_some_and(Path::is_dir) {
                    std::fs::create_dir_all(&dir).map_err(|e| io_context("creating", &dir, e))?;
                }
            }
            super::tree_bytes(&root).map_err(|e| io_context("measuring", &root, e))
        })
        .await
        .map_err(fail("preparing the root"))?;
        let base_bytes = host
            .disks
            .check_ext4(&plan.base.rootfs_path)
            .await
            .map(|info| info.size_bytes())
            .unwrap_or(0);
        let wanted = match plan.rootfs_mib {
            Some(mib) => mib << 20,
            None => base_bytes.max(used + used / 4 + (256 << 20)),
        };
        let rootfs_bytes = wanted.div_ceil(1 << 20) << 20;
        std::fs::create_dir_all(staging)
            .map_err(|e| fail("rootfs")(io_context("creating", staging, e)))?;
        host.disks
            .mkfs_ext4(
                &staging.join(files::ROOTFS),
                rootfs_bytes,
                Some(&tree),
                "rootfs",
            )
            .await
            .map_err(|e| fail("rootfs")(Box::new(e)))?;
        let _ = super::remove_tree(&tree);
        op.detail(format!("{} MiB of data", used >> 20));

        op.stage("register");
        let base = &plan.base;
        let copy = |src: Option<&PathBuf>, file: &'static str| {
            let host = host.clone();
            let src = src.cloned();
            let dst = staging.join(file);
            async move {
                match src {
                    Some(src) => super::copy_one(host.disks.as_ref(), &src, &dst)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            }
        };
        let kernel = copy(Some(&base.kernel_path), files::KERNEL)
            .await
            .map_err(fail("copying the kernel"))?;
        let initrd = copy(base.initrd_path.as_ref(), files::INITRD)
            .await
            .map_err(fail("copying the initrd"))?;
        let modules = copy(base.modules_path.as_ref(), files::MODULES)
            .await
            .map_err(fail("copying the modules"))?;
        let seed = copy(base.work_seed_path.as_ref(), files::WORK_SEED)
            .await
            .map_err(fail("copying the work seed"))?;
        let id = ImageId::new();
        let dir = image_dir(&plan.settings, id);
        let moved = |p: Option<PathBuf>| p.and_then(|p| p.file_name().map(|n| dir.join(n)));
        let mut record = ImageRecord {
            id,
            name: plan.name.clone(),
            kernel_path: moved(kernel).unwrap_or_else(|| dir.join(files::KERNEL)),
            initrd_path: moved(initrd),
            modules_path: moved(modules),
            rootfs_path: dir.join(files::ROOTFS),
            work_seed_path: moved(seed),
            cmdline: base.cmdline.clone(),
            readiness_ports: base.readiness_ports.clone(),
            agent_version: base.agent_version.clone(),
            parent_id: Some(base.id),
            sha256: None,
            managed: true,
            size_bytes: 0,
            root_mode: base.root_mode,
            created_at: chrono::Utc::now(),
        };
        std::fs::rename(staging, &dir)
            .map_err(|e| fail("register")(io_context("renaming", staging, e)))?;
        let registered = async {
            let (sha, size) = fingerprint(&record).await.map_err(fail("fingerprinting"))?;
            record.sha256 = Some(sha);
            record.size_bytes = size;
            self.store().insert_built_image(&record, &plan.key)?;
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(err) = registered {
            let _ = super::remove_tree(&dir);
            return Err(err);
        }
        tracing::info!(image = %record.name, base = %base.name, "built an image");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_key_ignores_package_order_but_not_the_script() {
        let a = build_key("base", Some("echo hi"), &["b".into(), "a".into()], None);
        let b = build_key("base", Some("echo hi"), &["a".into(), "b".into()], None);
        assert_eq!(a, b);
        assert_ne!(
            a,
            build_key("base", Some("echo ho"), &["a".into(), "b".into()], None)
        );
        assert_ne!(
            a,
            build_key("other", Some("echo hi"), &["a".into(), "b".into()], None)
        );
    }
}
