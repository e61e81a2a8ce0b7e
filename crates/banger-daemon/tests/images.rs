//! Images through the API with the fake host: register validation, promote, delete, lazy
//! derived artifacts, build (cache, failure) and bootstrap.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use banger_api::{ApiError, ErrorCode, Image, Operation, OperationStatus, Vm};
use banger_cli::client::ClientError;
use banger_host::disks::Disks;
use common::Daemon;
use hyper::Method;
use serde_json::json;

/// A kernel, an ext4 rootfs and an ext4 work seed the fake disk tool knows, plus junk files.
struct Artifacts {
    kernel: PathBuf,
    rootfs: PathBuf,
    seed: PathBuf,
    junk: PathBuf,
    empty: PathBuf,
}

async fn artifacts(daemon: &Daemon, dir: &Path) -> Artifacts {
    let user = dir.join("user");
    std::fs::create_dir_all(&user).unwrap();
    let kernel = user.join("vmlinuz");
    std::fs::write(&kernel, banger_host::build_tools::fake_bzimage()).unwrap();
    let rootfs = user.join("rootfs.ext4");
    let seed = user.join("seed.ext4");
    let disks = &daemon.fakes.image_disks;
    disks
        .mkfs_ext4(&rootfs, 64 << 20, None, "rootfs")
        .await
        .unwrap();
    disks
        .mkfs_ext4(&seed, 16 << 20, None, "seed")
        .await
        .unwrap();
    let junk = user.join("junk");
    std::fs::write(&junk, "#!/bin/sh\necho not a kernel\n").unwrap();
    let empty = user.join("empty");
    std::fs::write(&empty, "").unwrap();
    Artifacts {
        kernel,
        rootfs,
        seed,
        junk,
        empty,
    }
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

async fn register(daemon: &Daemon, body: serde_json::Value) -> Result<Image, ApiError> {
    match daemon
        .client
        .call::<Image>(Method::POST, "/v1/images", Some(&body))
        .await
    {
        Ok(image) => Ok(image),
        Err(ClientError::Api(err)) => Err(err),
        Err(other) => panic!("{other}"),
    }
}

async fn images(daemon: &Daemon) -> Vec<Image> {
    daemon.client.get("/v1/images").await.unwrap()
}

#[tokio::test]
async fn register_refuses_every_bad_artifact_naming_the_field_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    let missing = dir.path().join("nope");
    let good = json!({"name": "mine", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs)});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("name", json!("Not A Name")), "name"),
        // Route names: GET/DELETE /v1/images/bootstrap could never reach such an image.
        (with("name", json!("bootstrap")), "name"),
        (with("name", json!("build")), "name"),
        (with("kernel", json!(s(&missing))), "kernel"),
        (with("kernel", json!("relative/vmlinuz")), "kernel"),
        (with("kernel", json!(s(&a.junk))), "kernel"),
        (with("kernel", json!(s(&a.empty))), "kernel"),
        (with("kernel", json!(s(dir.path()))), "kernel"),
        (with("rootfs", json!(s(&missing))), "rootfs"),
        (with("rootfs", json!(s(&a.junk))), "rootfs"),
        (with("initrd", json!(s(&a.empty))), "initrd"),
        (with("initrd", json!(s(&missing))), "initrd"),
        (with("modules", json!(s(&missing))), "modules"),
        (with("work_seed", json!(s(&a.junk))), "work_seed"),
        (with("work_seed", json!(s(&a.kernel))), "work_seed"),
        (
            with("cmdline", json!("console=ttyS0\ninit=/bin/sh")),
            "cmdline",
        ),
        (with("readiness_ports", json!([22, 0])), "readiness_ports"),
    ];
    for (body, field) in cases {
        let err = register(&daemon, body.clone()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput, "{body}: {err:?}");
        assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
    }
    assert!(images(&daemon).await.is_empty(), "nothing may be recorded");
    assert!(
        !daemon.config.images_dir().exists()
            || std::fs::read_dir(daemon.config.images_dir())
                .unwrap()
                .next()
                .is_none()
    );

    let image = register(&daemon, with("work_seed", json!(s(&a.seed))))
        .await
        .unwrap();
    assert!(!image.managed);
    assert_eq!(image.kernel_path, s(&a.kernel));
    assert_eq!(image.sha256.as_ref().map(String::len), Some(64));
    let again = register(&daemon, good.clone()).await.unwrap_err();
    assert_eq!(again.code, ErrorCode::Conflict);
    daemon.stop().await;
}

#[tokio::test]
async fn promote_copies_into_the_store_and_delete_removes_only_the_copies() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    let image = register(
        &daemon,
        json!({"name": "mine", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs), "work_seed": s(&a.seed)}),
    )
    .await
    .unwrap();
    let promoted: Image = daemon
        .client
        .call(Method::POST, "/v1/images/mine/promote", None::<&()>)
        .await
        .unwrap();
    let store_dir = daemon.config.images_dir().join(image.id.to_string());
    assert!(promoted.managed);
    assert_eq!(
        promoted.sha256, image.sha256,
        "same bytes, same fingerprint"
    );
    for path in [&promoted.kernel_path, &promoted.rootfs_path] {
        assert!(Path::new(path).starts_with(&store_dir), "{path}");
        assert!(Path::new(path).is_file(), "{path}");
    }
    assert_eq!(
        std::fs::read(&promoted.kernel_path).unwrap(),
        std::fs::read(&a.kernel).unwrap()
    );
    // Promoting twice is a no-op.
    let twice: Image = daemon
        .client
        .call(Method::POST, "/v1/images/mine/promote", None::<&()>)
        .await
        .unwrap();
    assert_eq!(twice, promoted);

    let _: Image = daemon
        .client
        .call(Method::DELETE, "/v1/images/mine", None::<&()>)
        .await
        .unwrap();
    assert!(!store_dir.exists(), "the store copy goes with the image");
    assert!(
        a.kernel.exists() && a.rootfs.exists(),
        "the user's files stay"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn the_first_vm_makes_a_missing_work_seed_and_updates_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    let image = register(
        &daemon,
        json!({"name": "seedless", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs)}),
    )
    .await
    .unwrap();
    assert_eq!(image.work_seed_path, None);
    daemon
        .create(json!({"name": "one", "image": "seedless"}))
        .await;
    let after: Image = daemon.client.get("/v1/images/seedless").await.unwrap();
    let seed = after.work_seed_path.clone().expect("a derived work seed");
    assert_eq!(
        Path::new(&seed),
        daemon
            .config
            .images_dir()
            .join(image.id.to_string())
            .join("work-seed.ext4")
    );
    assert_ne!(
        after.sha256, image.sha256,
        "the fingerprint covers the seed"
    );
    assert!(!after.managed, "the user's files are still the user's");
    // A second VM reuses it.
    let seeds_made = || {
        daemon
            .fakes
            .image_disks
            .calls()
            .iter()
            .filter(|c| {
                matches!(c, banger_host::disks::DiskCall::MkfsExt4 { path, .. }
                    if path.ends_with("work-seed.ext4.tmp"))
            })
            .count()
    };
    assert_eq!(seeds_made(), 1);
    daemon
        .create(json!({"name": "two", "image": "seedless"}))
        .await;
    assert_eq!(seeds_made(), 1);
    daemon.stop().await;
}

async fn build(daemon: &Daemon, body: serde_json::Value) -> Operation {
    let op = daemon.post_json("/v1/images/build", body).await.unwrap();
    daemon.wait(&op).await
}

#[tokio::test]
async fn an_identical_build_is_answered_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    let base = register(
        &daemon,
        json!({"name": "base", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs), "work_seed": s(&a.seed)}),
    )
    .await
    .unwrap();
    let recipe = json!({"from": "base", "name": "built", "script": "echo hello > /etc/motd\n"});
    let done = build(&daemon, recipe.clone()).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let stages: Vec<&str> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stages,
        ["builder", "script", "capture", "shutdown", "rootfs", "register"]
    );
    let built: Image = daemon.client.get("/v1/images/built").await.unwrap();
    assert_eq!(built.parent_id, Some(base.id));
    assert!(built.managed);
    let commands = daemon.fakes.agent.commands();
    assert!(commands
        .iter()
        .any(|c| c.argv.join(" ").contains("/run/banger-build.sh")));
    let vms: Vec<Vm> = daemon.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "the builder VM is gone: {vms:?}");
    let launches = daemon.fakes.vmm.launches().len();

    // Same base, same recipe: instant, nothing booted, same image.
    let cached = build(&daemon, recipe.clone()).await;
    assert_eq!(cached.status, OperationStatus::Succeeded, "{cached:#?}");
    assert_eq!(cached.stages.len(), 1);
    assert_eq!(cached.stages[0].name, "cache");
    assert_eq!(daemon.fakes.vmm.launches().len(), launches);
    assert_eq!(daemon.fakes.agent.commands().len(), commands.len());
    let same: Image = daemon.client.get("/v1/images/built").await.unwrap();
    assert_eq!(same.id, built.id);

    // Same recipe under another name: a copy of the cached result, still no builder VM.
    let mut renamed = recipe.clone();
    renamed["name"] = json!("built-too");
    let copied = build(&daemon, renamed).await;
    assert_eq!(copied.status, OperationStatus::Succeeded, "{copied:#?}");
    assert_eq!(daemon.fakes.vmm.launches().len(), launches);
    let copy: Image = daemon.client.get("/v1/images/built-too").await.unwrap();
    assert_ne!(copy.id, built.id);
    assert_eq!(copy.sha256, built.sha256);
    daemon.stop().await;
}

#[tokio::test]
async fn a_failing_build_script_leaves_no_image_and_no_builder_vm() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    register(
        &daemon,
        json!({"name": "base", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs)}),
    )
    .await
    .unwrap();
    daemon.fakes.agent.exit_with("/run/banger-build.sh", 3);
    let done = build(
        &daemon,
        json!({"from": "base", "name": "broken", "script": "exit 3"}),
    )
    .await;
    assert_eq!(done.status, OperationStatus::Failed);
    let cleanup = done.stages.iter().find(|s| s.name == "cleanup").unwrap();
    assert!(
        cleanup
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("builder console: [fake vmm] build-"),
        "the builder's last console lines are kept: {cleanup:?}"
    );
    let error = done.error.unwrap();
    let text = format!("{} {}", error.message, error.causes.join(" "));
    assert!(text.contains("exited with status 3"), "{text}");
    let names: Vec<String> = images(&daemon)
        .await
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["base"]);
    let vms: Vec<Vm> = daemon.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:?}");
    let leftovers: Vec<_> = std::fs::read_dir(daemon.config.images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn build_input_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    register(
        &daemon,
        json!({"name": "base", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs)}),
    )
    .await
    .unwrap();
    for (body, field) in [
        (
            json!({"from": "nothing", "name": "x", "script": "true"}),
            "from",
        ),
        (
            json!({"from": "base", "name": "X Y", "script": "true"}),
            "name",
        ),
        (json!({"from": "base", "name": "x"}), "script"),
        (
            json!({"from": "base", "name": "build", "script": "true"}),
            "name",
        ),
        (
            json!({"from": "base", "name": "x", "packages": ["a;b"]}),
            "packages",
        ),
    ] {
        match daemon.post_json("/v1/images/build", body.clone()).await {
            Err(ClientError::Api(err)) => {
                assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    daemon.stop().await;
}

/// The daemon looks for the guest agent through `BANGER_AGENT_BIN`: one stand-in file for the
/// whole test binary.
fn stand_in_agent() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = std::env::temp_dir().join(format!("banger-test-agent-{}", std::process::id()));
        std::fs::write(&path, b"\x7fELF stand-in agent").unwrap();
        std::env::set_var("BANGER_AGENT_BIN", &path);
    });
}

#[tokio::test]
async fn bootstrap_with_fake_tools_registers_a_managed_image_with_sshd_readiness() {
    stand_in_agent();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    daemon
        .fakes
        .build_tools
        .set_kernel(banger_core::images::vmlinux::fake_lz4_bzimage(
            &banger_core::images::vmlinux::fake_elf(),
        ));
    let op = daemon
        .post_json("/v1/images/bootstrap", json!({}))
        .await
        .unwrap();
    let done = daemon.wait(&op).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let stages: Vec<&str> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stages,
        [
            "debootstrap",
            "configure",
            "agent",
            "kernel",
            "rootfs",
            "work-seed",
            "register"
        ]
    );
    let image: Image = daemon.client.get("/v1/images/debian-12").await.unwrap();
    assert!(image.managed);
    assert_eq!(image.readiness_ports, vec![22]);
    assert!(image.cmdline.contains("init=/usr/lib/banger/init"));
    let image_dir = daemon.config.images_dir().join(image.id.to_string());
    assert!(
        image_dir.join("vmlinux").is_file(),
        "the ELF for Firecracker"
    );
    assert_eq!(
        std::fs::read(image_dir.join("vmlinux")).unwrap(),
        banger_core::images::vmlinux::fake_elf()
    );
    // The tree the rootfs was made from: no shared host keys, an empty machine-id.
    let tree = std::fs::read_dir(daemon.config.cache_dir.join("debootstrap"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("tree");
    assert!(!tree.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert_eq!(std::fs::read(tree.join("etc/machine-id")).unwrap(), b"");
    assert!(tree.join("usr/local/bin/banger-agent").is_file());

    // Again under another name: debootstrap is not run twice.
    let op = daemon
        .post_json("/v1/images/bootstrap", json!({"name": "debian-again"}))
        .await
        .unwrap();
    let again = daemon.wait(&op).await;
    assert_eq!(again.status, OperationStatus::Succeeded, "{again:#?}");
    let debootstraps = daemon
        .fakes
        .build_tools
        .calls()
        .iter()
        .filter(|c| matches!(c, banger_host::build_tools::BuildToolCall::Debootstrap(_)))
        .count();
    assert_eq!(debootstraps, 1);

    // A failing debootstrap: a clear error, nothing registered, no staging left.
    daemon.fakes.build_tools.fail("debootstrap");
    let op = daemon
        .post_json(
            "/v1/images/bootstrap",
            json!({"name": "debian-broken", "packages": ["curl"]}),
        )
        .await
        .unwrap();
    let failed = daemon.wait(&op).await;
    assert_eq!(failed.status, OperationStatus::Failed);
    assert!(daemon
        .client
        .get::<Image>("/v1/images/debian-broken")
        .await
        .is_err());
    daemon.stop().await;
}

#[tokio::test]
async fn register_records_the_root_mode_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let a = artifacts(&daemon, dir.path()).await;
    let image = register(
        &daemon,
        json!({"name": "foreign", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs), "root_mode": "clone"}),
    )
    .await
    .unwrap();
    assert_eq!(image.root_mode, banger_api::RootMode::Clone);
    let default = register(
        &daemon,
        json!({"name": "plain", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs)}),
    )
    .await
    .unwrap();
    assert_eq!(default.root_mode, banger_api::RootMode::Overlay);
    let err = register(
        &daemon,
        json!({"name": "odd", "kernel": s(&a.kernel), "rootfs": s(&a.rootfs), "root_mode": "sideways"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, banger_api::ErrorCode::InvalidInput);
    assert_eq!(
        images(&daemon).await.len(),
        2,
        "nothing recorded for the bad request"
    );
}
