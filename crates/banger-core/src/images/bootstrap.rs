//! `image bootstrap`: a Debian image from Debian's packages, with nothing mounted on the host.
//!
//! Stages of the operation (each timed and reported):
//! ```text
//! debootstrap  debootstrap --variant=minbase --include=... SUITE TREE MIRROR
//!              (cached under <cache_dir>/debootstrap/<suite>-<key>, key = suite + packages +
//!              mirror + services, so a re-run skips the ~100 s download)
//! services     --with opencode: npm pack of the server on the HOST, unpacked into the tree
//! configure    banger's init, sshd + banger's key, networkd, getty; host keys and machine-id
//!              removed (made per VM at first boot)
//! agent        the static guest agent + its unit
//! kernel       vmlinuz + initrd.img from the tree's /boot, plus the ELF vmlinux (LZ4)
//! rootfs       mkfs.ext4 -d TREE (no mount)
//! work-seed    mkfs.ext4 -d of root's home with banger's key
//! register     the staging dir renamed to <images_dir>/<id>, the managed image recorded
//! ```
//! A failure at any stage removes the staging directory: nothing half-registered. The cached
//! tree is kept only once debootstrap finished (`.complete` marker).

use std::path::{Path, PathBuf};

use banger_api::{BootstrapImageRequest, ImageId, Operation, OperationKind};
use banger_host::build_tools::Debootstrap;
use banger_store::records::ImageRecord;

use super::{
    blocking, context, files, fingerprint, guest, image_dir, invalid, io_context, ImageSettings,
};
use crate::backends::BoxError;
use crate::error::CoreError;
use crate::manager::Manager;
use crate::ops::OpTracker;

/// The packages every bootstrapped image has on top of debootstrap's minimal base.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "udev",
    "kmod",
];
/// Default Debian release.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Default base rootfs size.
pub const DEFAULT_ROOTFS_MIB: u64 = 2048;
/// Used when the host's apt sources name no Debian mirror.
pub const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";
/// Optional services `--with` knows.
pub const SERVICES: &[&str] = &["opencode"];

/// The Debian mirror the host's apt uses for `suite`: the first `deb` source (one-line or
/// deb822) listing that suite, else the first one that is not a security archive.
pub fn mirror_from_sources(texts: &[String], suite: &str) -> Option<String> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for text in texts {
        // One-line format: `deb [opts] URI SUITE COMPONENTS...`.
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("deb ") else {
                continue;
            };
            let mut words = rest.split_whitespace().peekable();
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for word in words.by_ref() {
                    if word.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(dist)) = (words.next(), words.next()) {
                entries.push((uri.to_string(), vec![dist.to_string()]));
            }
        }
        // deb822: paragraphs of `Key: value` lines.
        for paragraph in text.split("\n\n") {
            let mut types = Vec::new();
            let mut uris = Vec::new();
            let mut suites = Vec::new();
            for line in paragraph.lines() {
                let line = line.trim();
                if line.starts_with('#') {
                    continue;
                }
                if let Some((key, value)) = line.split_once(':') {
                    let values = value.split_whitespace().map(str::to_string).collect();
                    match key.trim() {
                        "Types" => types = values,
                        "URIs" => uris = values,
                        "Suites" => suites = values,
                        _ => {}
                    }
                }
            }
            if types.iter().any(|t| t == "deb") {
                for uri in uris {
                    entries.push((uri, suites.clone()));
                }
            }
        }
    }
    let plain = |uri: &str| uri.starts_with("http") && !uri.contains("security");
    entries
        .iter()
        .find(|(uri, suites)| plain(uri) && suites.iter().any(|s| s == suite))
        .or_else(|| entries.iter().find(|(uri, _)| plain(uri)))
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
}

fn read_sources(paths: &[PathBuf]) -> Vec<String> {
    let mut texts = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for file in files {
                let name = file.to_string_lossy();
                if name.ends_with(".list") || name.ends_with(".sources") {
                    texts.extend(std::fs::read_to_string(&file).ok());
                }
            }
        } else {
            texts.extend(std::fs::read_to_string(path).ok());
        }
    }
    texts
}

fn valid_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:_=".contains(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A package list is safe to pass to apt and debootstrap: Debian package names (optionally
/// `=version`).
pub(crate) fn check_packages(field: &'static str, packages: &[String]) -> Result<(), CoreError> {
    for package in packages {
        if !valid_word(package) {
            return Err(invalid(
                field,
                format!("`{package}` is not a Debian package name"),
            ));
        }
    }
    Ok(())
}

/// What one bootstrap does, after validation.
#[derive(Debug, Clone)]
struct Plan {
    name: banger_api::VmName,
    suite: String,
    include: Vec<String>,
    mirror: String,
    opencode: bool,
    rootfs_bytes: u64,
    ssh_public_key: String,
    agent_bin: PathBuf,
    settings: ImageSettings,
}

impl Manager {
    /// `POST /v1/images/bootstrap`: validates the request, then builds the image in the
    /// background; the returned operation reports each stage.
    pub fn bootstrap_image(&self, req: BootstrapImageRequest) -> Result<Operation, CoreError> {
        let settings = self.settings().images.clone();
        let suite = req.suite.clone().unwrap_or_else(|| DEFAULT_SUITE.into());
        if !valid_word(&suite) || suite.contains(['=', ':']) {
            return Err(invalid(
                "suite",
                format!("`{suite}` is not a Debian release name"),
            ));
        }
        let default_name = if suite == DEFAULT_SUITE {
            super::DEFAULT_IMAGE_NAME.to_string()
        } else {
            format!("debian-{suite}")
        };
        let name = self.new_image_name("name", req.name.as_deref().unwrap_or(&default_name))?;
        check_packages("packages", &req.packages)?;
        for service in &req.with {
            if !SERVICES.contains(&service.as_str()) {
                return Err(invalid(
                    "with",
                    format!(
                        "unknown service `{service}`; known: {}",
                        SERVICES.join(", ")
                    ),
                ));
            }
        }
        let rootfs_mib = req.rootfs_size_mib.unwrap_or(DEFAULT_ROOTFS_MIB);
        if !(512..=256 * 1024).contains(&rootfs_mib) {
            return Err(invalid(
                "rootfs_size_mib",
                format!("{rootfs_mib} MiB is not between 512 MiB and 256 GiB"),
            ));
        }
        let ssh_public_key = std::fs::read_to_string(&settings.ssh_public_key).map_err(|e| {
            CoreError::Unsatisfiable(format!(
                "banger's public SSH key {} cannot be read ({e}); run any `banger vm` command once to generate it",
                settings.ssh_public_key.display()
            ))
        })?;
        let agent_bin = settings
            .agent_bin
            .clone()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                CoreError::Unsatisfiable(
                    "no static guest agent binary found: install `banger-agent` beside bangerd or set BANGER_AGENT_BIN to its path".into(),
                )
            })?;
        let mirror = mirror_from_sources(&read_sources(&settings.apt_sources), &suite)
            .unwrap_or_else(|| FALLBACK_MIRROR.to_string());
        let mut include: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
        include.extend(req.packages.iter().cloned());
        include.sort();
        include.dedup();
        let plan = Plan {
            name,
            suite,
            include,
            mirror,
            opencode: req.with.iter().any(|s| s == "opencode"),
            rootfs_bytes: rootfs_mib * 1024 * 1024,
            ssh_public_key,
            agent_bin,
            settings,
        };
        let op = self
            .operations()
            .begin(OperationKind::BootstrapImage, None, None);
        let snapshot = op.snapshot();
        let manager = self.clone();
        tokio::spawn(async move {
            let mut op = op;
            let staging = plan
                .settings
                .images_dir
                .join(format!(".bootstrap-{}", ImageId::new()));
            let result = manager.run_bootstrap(&mut op, &plan, &staging).await;
            let _ = super::remove_tree(&staging);
            super::finish_image_op(op, result, "bootstrap", &plan.name.to_string());
        });
        Ok(snapshot)
    }

    async fn run_bootstrap(
        &self,
        op: &mut OpTracker,
        plan: &Plan,
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
        let host = self.backends().images.clone();

        op.stage("debootstrap");
        let key = super::sha256_text(&format!(
            "{}\n{}\n{}\nopencode={}",
            plan.suite,
            plan.include.join(","),
            plan.mirror,
            plan.opencode
        ));
        let cache = plan.settings.cache_dir.join("debootstrap").join(format!(
            "{}-{}",
            plan.suite,
            &key[..16]
        ));
        let tree = cache.join("tree");
        let marker = cache.join(".complete");
        // Two bootstraps of the same tree (two requests, or two daemons sharing a cache) take
        // turns: the second finds the first one's finished tree instead of racing it.
        let lock = plan
            .settings
            .cache_dir
            .join("debootstrap.locks")
            .join(format!("{}-{}.lock", plan.suite, &key[..16]));
        let _tree_lock = lock_tree(lock).await.map_err(fail("debootstrap"))?;
        if marker.exists() && tree.is_dir() {
            op.detail(format!("cached tree {}", tree.display()));
        } else {
            op.detail(format!("{} from {}", plan.suite, plan.mirror));
            // An interrupted earlier run may have left debootstrap's /proc and /sys mounted.
            if cache.exists() {
                if let Err(err) = host.tools.unmount_under(&cache).await {
                    tracing::warn!(error = %err, "releasing mounts of an old debootstrap tree");
                }
            }
            let _ = super::remove_tree(&cache);
            std::fs::create_dir_all(&cache)
                .map_err(|e| fail("debootstrap")(io_context("creating", &cache, e)))?;
            let partial = cache.join("tree.partial");
            let run = host
                .tools
                .debootstrap(&Debootstrap {
                    suite: plan.suite.clone(),
                    include: plan.include.clone(),
                    target: partial.clone(),
                    mirror: plan.mirror.clone(),
                })
                .await;
            if let Err(err) = run {
                if let Err(err) = host.tools.unmount_under(&cache).await {
                    tracing::warn!(error = %err, "releasing the mounts of a failed debootstrap");
                }
                let _ = super::remove_tree(&cache);
                return Err(fail("debootstrap")(Box::new(err)));
            }
            std::fs::rename(&partial, &tree)
                .map_err(|e| fail("debootstrap")(io_context("renaming", &partial, e)))?;
            std::fs::write(&marker, b"")
                .map_err(|e| fail("debootstrap")(io_context("writing", &marker, e)))?;
        }

        if plan.opencode {
            op.stage("services");
            install_opencode(&host, &tree, &plan.settings.cache_dir)
                .await
                .map_err(fail("installing opencode"))?;
            op.detail("opencode server on :4096");
        }

        op.stage("configure");
        let (root, key_text, opencode) = (tree.clone(), plan.ssh_public_key.clone(), plan.opencode);
        blocking(move || {
            guest::configure_tree(
                &root,
                &guest::TreeConfig {
                    ssh_public_key: &key_text,
                    opencode,
                },
            )
            .map_err(|e| io_context("configuring", &root, e))
        })
        .await
        .map_err(fail("configure"))?;

        op.stage("agent");
        let (root, agent) = (tree.clone(), plan.agent_bin.clone());
        blocking(move || {
            guest::install_agent(&root, &agent).map_err(|e| io_context("installing", &agent, e))
        })
        .await
        .map_err(fail("installing the agent"))?;
        op.detail(format!("banger-agent {}", env!("CARGO_PKG_VERSION")));

        op.stage("kernel");
        std::fs::create_dir_all(staging)
            .map_err(|e| fail("kernel")(io_context("creating", staging, e)))?;
        let (vmlinuz, initrd) = boot_files(&tree).map_err(fail("kernel"))?;
        let kernel_path = staging.join(files::KERNEL);
        let initrd_path = staging.join(files::INITRD);
        let _ = host.disks.remove(&kernel_path).await;
        host.disks
            .clone_file(&vmlinuz, &kernel_path)
            .await
            .map_err(|e| fail("kernel")(Box::new(e)))?;
        host.disks
            .clone_file(&initrd, &initrd_path)
            .await
            .map_err(|e| fail("kernel")(Box::new(e)))?;
        super::extract_vmlinux_to(&kernel_path, &staging.join(files::VMLINUX))
            .await
            .map_err(fail("extracting vmlinux"))?;
        op.detail(
            vmlinuz
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );

        op.stage("rootfs");
        let rootfs_path = staging.join(files::ROOTFS);
        let root = tree.clone();
        let used = blocking(move || {
            super::tree_bytes(&root).map_err(|e| io_context("measuring", &root, e))
        })
        .await
        .map_err(fail("rootfs"))?;
        if used + used / 4 > plan.rootfs_bytes {
            return Err(invalid(
                "rootfs_size_mib",
                format!(
                    "the tree holds {} MiB; give at least {} MiB",
                    used >> 20,
                    (used + used / 4 + (1 << 20)) >> 20
                ),
            ));
        }
        host.disks
            .mkfs_ext4(&rootfs_path, plan.rootfs_bytes, Some(&tree), "rootfs")
            .await
            .map_err(|e| fail("rootfs")(Box::new(e)))?;
        op.detail(format!("{} MiB of data", used >> 20));

        op.stage("work-seed");
        let seed_dir = staging.join("work-seed.d");
        let (root, key_text, seed) = (tree.clone(), plan.ssh_public_key.clone(), seed_dir.clone());
        blocking(move || {
            guest::work_seed_tree(&root, &key_text, &seed)
                .map_err(|e| io_context("filling", &seed, e))
        })
        .await
        .map_err(fail("work seed"))?;
        let seed_path = staging.join(files::WORK_SEED);
        host.disks
            .mkfs_ext4(
                &seed_path,
                super::WORK_SEED_BYTES,
                Some(&seed_dir),
                "banger-work",
            )
            .await
            .map_err(|e| fail("work seed")(Box::new(e)))?;
        let _ = super::remove_tree(&seed_dir);

        op.stage("register");
        let id = ImageId::new();
        let final_dir = image_dir(&plan.settings, id);
        let at = |file: &str| final_dir.join(file);
        let mut record = ImageRecord {
            id,
            name: plan.name.clone(),
            kernel_path: at(files::KERNEL),
            initrd_path: Some(at(files::INITRD)),
            modules_path: None,
            rootfs_path: at(files::ROOTFS),
            work_seed_path: Some(at(files::WORK_SEED)),
            cmdline: guest::BOOTSTRAP_CMDLINE.to_string(),
            readiness_ports: if plan.opencode {
                vec![22, guest::OPENCODE_PORT]
            } else {
                vec![22]
            },
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            parent_id: None,
            sha256: None,
            managed: true,
            size_bytes: 0,
            root_mode: Default::default(),
            created_at: chrono::Utc::now(),
        };
        std::fs::rename(staging, &final_dir)
            .map_err(|e| fail("register")(io_context("renaming", staging, e)))?;
        let registered = async {
            let (sha, size) = fingerprint(&record).await.map_err(fail("fingerprinting"))?;
            record.sha256 = Some(sha);
            record.size_bytes = size;
            self.store().insert_image(&record)?;
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(err) = registered {
            let _ = super::remove_tree(&final_dir);
            return Err(err);
        }
        tracing::info!(image = %record.name, "bootstrapped a Debian image");
        Ok(record)
    }
}

/// The newest `vmlinuz-*` in the tree's `/boot` and its `initrd.img-*`.
fn boot_files(tree: &Path) -> Result<(PathBuf, PathBuf), BoxError> {
    let boot = tree.join("boot");
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .map_err(|e| io_context("listing", &boot, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let kernel = kernels.pop().ok_or_else(|| {
        context(
            format!("no vmlinuz-* in {}", boot.display()),
            "missing kernel",
        )
    })?;
    let release = &kernel["vmlinuz-".len()..];
    let initrd = boot.join(format!("initrd.img-{release}"));
    if !initrd.is_file() {
        return Err(context(
            format!("{} is missing", initrd.display()),
            "the cloud kernel's virtio drivers are modules: its initrd is needed",
        ));
    }
    Ok((boot.join(&kernel), initrd))
}

/// Installs the opencode server under `/opt/opencode` of `tree`: `npm pack` of `opencode-ai`
/// on the host tells the version, then its linux-x64 platform package (the native binary).
async fn install_opencode(
    host: &super::ImageHost,
    tree: &Path,
    cache_dir: &Path,
) -> Result<(), BoxError> {
    let scratch = cache_dir.join("npm");
    let _ = super::remove_tree(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| io_context("creating", &scratch, e))?;
    let main = host.tools.npm_pack("opencode-ai", &scratch).await?;
    let unpacked = scratch.join("opencode-ai");
    host.tools.unpack_tar(&main, &unpacked, 1).await?;
    let manifest_path = unpacked.join("package.json");
    let manifest: serde_json::Value = std::fs::read(&manifest_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let version = manifest["optionalDependencies"]["opencode-linux-x64"]
        .as_str()
        .or_else(|| manifest["version"].as_str())
        .unwrap_or("latest")
        .to_string();
    let platform = host
        .tools
        .npm_pack(&format!("opencode-linux-x64@{version}"), &scratch)
        .await?;
    let target = tree.join("opt/opencode");
    let _ = super::remove_tree(&target);
    host.tools.unpack_tar(&platform, &target, 1).await?;
    let _ = super::remove_tree(&scratch);
    Ok(())
}

/// An exclusive lock on the file `path` (outside the tree's directory, which a failed run
/// removes), held while a debootstrap tree is checked or made.
async fn lock_tree(path: PathBuf) -> Result<nix::fcntl::Flock<std::fs::File>, BoxError> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_context("creating", dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_context("opening", &path, e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_context("locking", &path, std::io::Error::from(errno)))
    })
    .await
    .map_err(|e| -> BoxError { Box::new(e) })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_comes_from_deb822_sources_for_the_suite() {
        let sources = "Types: deb\n# http://snapshot\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_sources(&[sources.to_string()], "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn mirror_comes_from_one_line_sources() {
        let sources = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ trixie main\ndeb http://security.debian.org/debian-security trixie-security main\n";
        assert_eq!(
            mirror_from_sources(&[sources.to_string()], "trixie").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_sources(&[], "trixie"), None);
    }

    #[test]
    fn package_names_are_checked() {
        assert!(check_packages("packages", &["curl".into(), "libc6=2.36-9".into()]).is_ok());
        assert!(check_packages("packages", &["curl; rm -rf /".into()]).is_err());
        assert!(check_packages("packages", &["-oAPT::x=1".into()]).is_err());
    }
}
