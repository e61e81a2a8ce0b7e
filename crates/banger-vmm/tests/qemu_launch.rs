//! The QEMU backend's launch, supervision and cleanup, hermetic: processes come from
//! `FakeProcesses`, and a small "world" task plays the two real processes' visible side effects
//! (the helper's vhost-user socket, QEMU's QMP server) as soon as the fake reports their spawn.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_host::process::{ExitInfo, FakeProcesses, ProcessState, Processes, SpawnSpec};
use banger_vmm::qemu::{Accel, HostPaths, QemuVmm};
use banger_vmm::{Drive, LaunchSpec, Vmm, VmmError, VmmHandles};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

const QEMU: &str = "/opt/test/qemu-system-x86_64";
const VHOST: &str = "/opt/test/vhost-device-vsock";

/// What the simulated processes do once spawned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Both come up.
    Healthy,
    /// The helper exits with status 1 before creating its socket.
    HelperDies,
    /// QEMU exits with status 1 before creating its QMP socket, writing an error to the log.
    QemuDies,
    /// QEMU's QMP answers `query-status` with `paused`.
    QemuPaused,
}

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    fake: Arc<FakeProcesses>,
    vmm: QemuVmm,
    /// QMP commands the fake QEMU received.
    qmp_log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn world(script: Script) -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(root.join("rootfs.ext4"), b"disk").unwrap();
    let fake = Arc::new(FakeProcesses::new());
    // A host without /dev/kvm: Auto resolves to TCG.
    let vmm = QemuVmm::with_host(
        QEMU,
        VHOST,
        fake.clone(),
        Accel::Auto,
        HostPaths::under(&root.join("host")),
    );
    let qmp_log = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn(play(fake.clone(), script, qmp_log.clone()));
    World {
        _dir: dir,
        root,
        fake,
        vmm,
        qmp_log,
        task,
    }
}

fn spec(root: &Path) -> LaunchSpec {
    let run_dir = root.join("run/devbox");
    LaunchSpec {
        name: "devbox".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: root.join("vmlinuz"),
        initrd: None,
        cmdline: "quiet".into(),
        drives: vec![Drive {
            id: "rootfs".into(),
            path: root.join("rootfs.ext4"),
            read_only: true,
        }],
        net: None,
        vsock_cid: 3,
        vsock_uds: run_dir.join("vsock.sock"),
        run_dir,
        vmm_log: root.join("logs/devbox.vmm.log"),
        console_log: root.join("logs/devbox.console.log"),
        netns: None,
    }
}

fn arg_after(spec: &SpawnSpec, flag: &str) -> PathBuf {
    let at = spec.args.iter().position(|a| a == flag).unwrap();
    PathBuf::from(&spec.args[at + 1])
}

/// Plays the processes' side effects as the fake spawns them.
async fn play(fake: Arc<FakeProcesses>, script: Script, qmp_log: Arc<Mutex<Vec<String>>>) {
    let mut handled = 0;
    let mut listeners = Vec::new();
    loop {
        let spawned = fake.spawned();
        for (id, spec) in spawned.iter().skip(handled) {
            if spec.program == Path::new(VHOST) {
                if script == Script::HelperDies {
                    fake.mark_exited(
                        *id,
                        ExitInfo {
                            code: Some(1),
                            signal: None,
                        },
                    );
                } else {
                    listeners.push(UnixListener::bind(arg_after(spec, "--socket")).unwrap());
                    listeners.push(UnixListener::bind(arg_after(spec, "--uds-path")).unwrap());
                }
            } else if script == Script::QemuDies {
                let log = spec.stderr.clone().unwrap();
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(log)
                    .unwrap();
                std::io::Write::write_all(
                    &mut file,
                    b"qemu-system-x86_64: could not load kernel\n",
                )
                .unwrap();
                fake.mark_exited(
                    *id,
                    ExitInfo {
                        code: Some(1),
                        signal: None,
                    },
                );
            } else {
                let chardev = spec
                    .args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .find(|a| a.starts_with("socket,id=qmp,"))
                    .unwrap();
                let path = PathBuf::from(chardev.rsplit_once("path=").unwrap().1);
                let status = if script == Script::QemuPaused {
                    "paused"
                } else {
                    "running"
                };
                tokio::spawn(qmp_server(
                    UnixListener::bind(path).unwrap(),
                    status,
                    qmp_log.clone(),
                ));
            }
        }
        handled = spawned.len();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn qmp_server(listener: UnixListener, status: &'static str, log: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"#;
        if write
            .write_all(format!("{greeting}\n").as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap();
            let command = request["execute"].as_str().unwrap().to_string();
            log.lock().unwrap().push(command.clone());
            let reply = match command.as_str() {
                "query-status" => format!(r#"{{"return": {{"status": "{status}", "running": true}}}}"#),
                "query-blockstats" => r#"{"return": [{"device": "rootfs", "stats": {"rd_bytes": 4096, "wr_bytes": 512, "rd_operations": 3, "wr_operations": 1}}]}"#.to_string(),
                _ => r#"{"return": {}}"#.to_string(),
            };
            let event = r#"{"event": "NIC_RX_FILTER_CHANGED", "data": {}, "timestamp": {"seconds": 0, "microseconds": 0}}"#;
            if write
                .write_all(format!("{event}\n{reply}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

fn all_gone(fake: &FakeProcesses) -> bool {
    fake.spawned()
        .iter()
        .all(|(id, _)| !fake.state(*id).is_running())
}

fn leftover_sockets(spec: &LaunchSpec) -> Vec<PathBuf> {
    [
        spec.run_dir.join("qmp.sock"),
        spec.run_dir.join("vhost-vsock.sock"),
        spec.vsock_uds.clone(),
    ]
    .into_iter()
    .filter(|p| p.symlink_metadata().is_ok())
    .collect()
}

async fn launched(world: &World) -> (LaunchSpec, VmmHandles) {
    let spec = spec(&world.root);
    let handles = world.vmm.launch(&spec).await.unwrap();
    (spec, handles)
}

#[tokio::test]
async fn launch_starts_the_vsock_helper_before_qemu_and_returns_both() {
    let world = world(Script::Healthy);
    let (spec, handles) = launched(&world).await;
    let spawned = world.fake.spawned();
    assert_eq!(spawned.len(), 2);
    assert_eq!(spawned[0].1.program, Path::new(VHOST));
    assert_eq!(spawned[1].1.program, Path::new(QEMU));
    assert_eq!(handles.helpers, vec![spawned[0].0]);
    assert_eq!(handles.process, spawned[1].0);
    assert_eq!(handles.control_socket, spec.run_dir.join("qmp.sock"));
    assert_eq!(handles.vsock_uds, spec.vsock_uds);
    assert!(handles.emulated, "no /dev/kvm: TCG");
    for (_, spawn) in &spawned {
        assert_eq!(spawn.stderr.as_deref(), Some(spec.vmm_log.as_path()));
    }
    assert_eq!(
        *world.qmp_log.lock().unwrap(),
        ["qmp_capabilities", "query-status"]
    );
}

#[tokio::test]
async fn helper_death_before_its_socket_fails_launch_without_starting_qemu() {
    let world = world(Script::HelperDies);
    let spec = spec(&world.root);
    let err = world.vmm.launch(&spec).await.unwrap_err();
    match &err {
        VmmError::Died { phase, exit, .. } => {
            assert!(phase.contains("vhost-device-vsock"), "{phase}");
            assert_eq!(exit, "exited with status 1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        world.fake.spawned().len(),
        1,
        "QEMU must not start without its vsock helper"
    );
    assert!(leftover_sockets(&spec).is_empty());
}

#[tokio::test]
async fn qemu_death_at_startup_kills_the_helper_and_quotes_the_log() {
    let world = world(Script::QemuDies);
    let spec = spec(&world.root);
    std::fs::create_dir_all(spec.vmm_log.parent().unwrap()).unwrap();
    std::fs::write(&spec.vmm_log, "a previous run's complaint\n").unwrap();
    let err = world.vmm.launch(&spec).await.unwrap_err();
    match &err {
        VmmError::Died {
            tail, exit, phase, ..
        } => {
            assert_eq!(tail, "qemu-system-x86_64: could not load kernel");
            assert_eq!(exit, "exited with status 1");
            assert_eq!(phase, "startup");
        }
        other => panic!("unexpected {other:?}"),
    }
    let helper = world.fake.spawned()[0].0;
    assert!(world.fake.signals().contains(&(helper, Signal::SIGKILL)));
    assert!(all_gone(&world.fake));
    assert!(
        leftover_sockets(&spec).is_empty(),
        "{:?}",
        leftover_sockets(&spec)
    );
}

#[tokio::test]
async fn a_vm_that_is_not_running_after_start_is_rolled_back() {
    let world = world(Script::QemuPaused);
    let spec = spec(&world.root);
    let err = world.vmm.launch(&spec).await.unwrap_err();
    assert!(
        matches!(&err, VmmError::Rejected { call, .. } if call == "query-status"),
        "{err:?}"
    );
    assert!(all_gone(&world.fake));
    assert!(leftover_sockets(&spec).is_empty());
}

#[tokio::test]
async fn missing_kernel_is_an_invalid_spec_and_starts_nothing() {
    let world = world(Script::Healthy);
    let mut spec = spec(&world.root);
    spec.kernel = world.root.join("no-such-vmlinuz");
    let err = world.vmm.launch(&spec).await.unwrap_err();
    match &err {
        VmmError::InvalidSpec { reason, .. } => {
            assert!(reason.contains("no-such-vmlinuz"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(world.fake.calls().is_empty());
}

#[tokio::test]
async fn spawn_failure_of_qemu_kills_the_helper() {
    let world = world(Script::Healthy);
    let spec = spec(&world.root);
    // Fail only the second spawn: wait for the helper's, then break spawning.
    let fake = world.fake.clone();
    let breaker = tokio::spawn(async move {
        while fake.spawned().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fake.fail(banger_host::process::ProcessOp::Spawn);
    });
    let err = world.vmm.launch(&spec).await.unwrap_err();
    breaker.await.unwrap();
    assert!(
        matches!(&err, VmmError::Spawn { what, .. } if what == "qemu-system-x86_64"),
        "{err:?}"
    );
    assert!(all_gone(&world.fake));
    assert!(leftover_sockets(&spec).is_empty());
}

#[tokio::test]
async fn stale_sockets_of_a_previous_run_are_replaced() {
    let world = world(Script::Healthy);
    let spec = spec(&world.root);
    std::fs::create_dir_all(&spec.run_dir).unwrap();
    for stale in ["qmp.sock", "vhost-vsock.sock", "vsock.sock"] {
        std::fs::write(spec.run_dir.join(stale), b"").unwrap();
    }
    world.vmm.launch(&spec).await.unwrap();
}

#[tokio::test]
async fn kill_ends_both_processes_and_removes_every_socket() {
    let world = world(Script::Healthy);
    let (spec, handles) = launched(&world).await;
    std::fs::write(spec.run_dir.join("vsock.sock_52"), b"").unwrap();
    world.vmm.kill(&handles).await.unwrap();
    assert!(world
        .fake
        .signals()
        .contains(&(handles.process, Signal::SIGKILL)));
    assert!(world
        .fake
        .signals()
        .contains(&(handles.helpers[0], Signal::SIGKILL)));
    assert!(all_gone(&world.fake));
    assert!(leftover_sockets(&spec).is_empty());
    assert!(!spec.run_dir.join("vsock.sock_52").exists());
    // Idempotent.
    world.vmm.kill(&handles).await.unwrap();
}

#[tokio::test]
async fn is_alive_needs_qemu_the_helper_and_an_answering_qmp() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    assert!(world.vmm.is_alive(&handles).await);
    world.fake.mark_exited(
        handles.helpers[0],
        ExitInfo {
            code: None,
            signal: Some(9),
        },
    );
    assert!(!world.vmm.is_alive(&handles).await);
}

#[tokio::test]
async fn is_alive_is_false_when_qmp_does_not_answer() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    std::fs::remove_file(&handles.control_socket).unwrap();
    assert!(!world.vmm.is_alive(&handles).await);
}

#[tokio::test]
async fn helper_death_is_the_vms_death_for_wait_exit() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    assert!(
        !world
            .vmm
            .wait_exit(&handles, Duration::from_millis(300))
            .await
    );
    world.fake.mark_exited(
        handles.helpers[0],
        ExitInfo {
            code: Some(1),
            signal: None,
        },
    );
    assert!(world.vmm.wait_exit(&handles, Duration::from_secs(5)).await);
    assert_eq!(
        world.fake.state(handles.process),
        ProcessState::Exited(Some(ExitInfo {
            code: None,
            signal: Some(9)
        }))
    );
}

#[tokio::test]
async fn qemu_exit_ends_wait_exit_and_takes_the_helper_along() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    world.fake.mark_exited(
        handles.process,
        ExitInfo {
            code: Some(0),
            signal: None,
        },
    );
    assert!(world.vmm.wait_exit(&handles, Duration::from_secs(5)).await);
    assert!(!world.fake.state(handles.helpers[0]).is_running());
    assert_eq!(
        world.vmm.exit_info(&handles),
        Some(ExitInfo {
            code: Some(0),
            signal: None
        })
    );
}

#[tokio::test]
async fn request_shutdown_presses_the_power_button_over_qmp() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    world.vmm.request_shutdown(&handles).await.unwrap();
    assert!(world
        .qmp_log
        .lock()
        .unwrap()
        .contains(&"system_powerdown".to_string()));
}

#[tokio::test]
async fn counters_report_block_io_from_qmp() {
    let world = world(Script::Healthy);
    let (_spec, handles) = launched(&world).await;
    let counters = world.vmm.counters(&handles).await.unwrap();
    assert_eq!(
        (
            counters.block_read_bytes,
            counters.block_write_bytes,
            counters.block_read_ops,
            counters.block_write_ops
        ),
        (4096, 512, 3, 1)
    );
    assert_eq!(counters.net_rx_bytes, 0);
}

#[tokio::test]
async fn kvm_host_launches_unemulated_with_host_cpu() {
    let world = world(Script::Healthy);
    let host = world.root.join("kvmhost");
    std::fs::create_dir_all(host.join("dev")).unwrap();
    std::fs::create_dir_all(host.join("sys/module/kvm")).unwrap();
    std::fs::write(host.join("dev/kvm"), b"").unwrap();
    let vmm = QemuVmm::with_host(
        QEMU,
        VHOST,
        world.fake.clone(),
        Accel::Auto,
        HostPaths::under(&host),
    );
    let handles = vmm.launch(&spec(&world.root)).await.unwrap();
    assert!(!handles.emulated);
    let qemu_args: Vec<String> = world.fake.spawned()[1]
        .1
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        qemu_args
            .windows(2)
            .any(|w| w[0] == "-cpu" && w[1] == "host"),
        "{qemu_args:?}"
    );
}

#[tokio::test]
async fn probe_names_the_package_to_install_when_qemu_is_missing() {
    let world = world(Script::Healthy);
    let vmm = QemuVmm::new(
        "/nonexistent/qemu-system-x86_64",
        "/bin/true",
        world.fake.clone(),
        Accel::Tcg,
    );
    match vmm.probe().await.unwrap_err() {
        VmmError::Unavailable { what, reason } => {
            assert_eq!(what, "/nonexistent/qemu-system-x86_64");
            assert!(
                reason.contains("apt-get install qemu-system-x86"),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn probe_names_the_crate_to_install_when_the_vsock_helper_is_missing() {
    let world = world(Script::Healthy);
    // `echo --version` prints a line, standing in for a working QEMU.
    let vmm = QemuVmm::new(
        "/bin/echo",
        "/nonexistent/vhost-device-vsock",
        world.fake.clone(),
        Accel::Tcg,
    );
    match vmm.probe().await.unwrap_err() {
        VmmError::Unavailable { reason, .. } => {
            assert!(
                reason.contains("cargo install vhost-device-vsock"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}
