//! The Firecracker backend against a fake Firecracker API server.
//!
//! `FakeFirecracker` is a hyper HTTP/1.1 server on a Unix socket in a temp dir that records every
//! request (method, path, JSON body), answers like Firecracker (204 for PUT/PATCH, JSON for GET),
//! can be told to refuse a call with a `fault_message`, and appends a metrics line to the metrics
//! file on `FlushMetrics`, as Firecracker does. Processes are `FakeProcesses`: nothing is started,
//! and the fake server binds the API socket as soon as the backend has "spawned" Firecracker.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_host::process::{ExitInfo, FakeProcesses, ProcessState, Processes};
use banger_vmm::firecracker::client::{ApiError, FirecrackerClient};
use banger_vmm::firecracker::models::{
    ActionType, BootSource, Drive, InstanceState, LogLevel, Logger, MachineConfiguration, Metrics,
    NetworkInterface, VmState, Vsock,
};
use banger_vmm::firecracker::{api_socket_path, FirecrackerVmm};
use banger_vmm::{Drive as SpecDrive, LaunchSpec, NetIface, Vmm, VmmError, VmmHandles, VmmKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// One request the fake server received.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
}

impl Recorded {
    fn call(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

const METRICS_LINE: &str = r#"{"utc_timestamp_ms":1,"net":{"rx_bytes_count":1000,"tx_bytes_count":200,"rx_packets_count":10,"tx_packets_count":2},"net_eth0":{"rx_bytes_count":1000},"block":{"read_bytes":8192,"write_bytes":4096,"read_count":2,"write_count":1},"block_rootfs":{"read_bytes":8192}}"#;

#[derive(Debug, Default)]
struct FakeState {
    requests: Vec<Recorded>,
    /// "METHOD /path" -> (status, body) to answer instead of success.
    faults: HashMap<String, (u16, String)>,
    metrics_path: Option<PathBuf>,
}

/// A fake Firecracker API server.
#[derive(Debug, Clone, Default)]
struct FakeFirecracker {
    state: Arc<Mutex<FakeState>>,
}

impl FakeFirecracker {
    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn calls(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::call).collect()
    }

    fn refuse(&self, call: &str, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(call.to_string(), (status, body.to_string()));
    }

    /// Serves on `socket` until the returned task is aborted.
    fn serve(&self, socket: &Path) -> JoinHandle<()> {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(self.clone().accept_loop(listener))
    }

    /// Serves on `socket` once `processes` shows a spawn, as a starting Firecracker would.
    fn serve_after_spawn(&self, processes: Arc<FakeProcesses>, socket: PathBuf) -> JoinHandle<()> {
        let fake = self.clone();
        tokio::spawn(async move {
            while processes.spawned().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let listener = UnixListener::bind(&socket).unwrap();
            fake.accept_loop(listener).await;
        })
    }

    async fn accept_loop(self, listener: UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let raw = request.into_body().collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap()
        };
        let recorded = Recorded { method, path, body };
        let mut state = self.state.lock().unwrap();
        state.requests.push(recorded.clone());
        if let Some((status, body)) = state.faults.get(&recorded.call()) {
            return Response::builder()
                .status(*status)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
        }
        match (recorded.method.as_str(), recorded.path.as_str()) {
            ("GET", "/") => json_response(json!({
                "app_name": "Firecracker", "id": "vm1", "state": "Running", "vmm_version": "1.16.1"
            })),
            ("GET", "/version") => json_response(json!({"firecracker_version": "1.16.1"})),
            ("GET", _) => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(
                    br#"{"fault_message":"Invalid request method and/or path"}"#,
                )))
                .unwrap(),
            _ => {
                if recorded.path == "/metrics" {
                    state.metrics_path = recorded.body["metrics_path"].as_str().map(PathBuf::from);
                }
                if recorded.body == json!({"action_type": "FlushMetrics"}) {
                    // Like Firecracker, write to the configured file (when it exists here).
                    let file = state
                        .metrics_path
                        .as_ref()
                        .and_then(|path| std::fs::OpenOptions::new().append(true).open(path).ok());
                    if let Some(mut file) = file {
                        writeln!(file, "{METRICS_LINE}").unwrap();
                    }
                }
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        }
    }
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

/// A temp dir with a fake ELF kernel, an initrd and two drive files, and a spec using them.
fn spec_in(dir: &Path) -> LaunchSpec {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01rest-of-a-kernel").unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    std::fs::write(dir.join("rootfs.ext4"), b"rootfs").unwrap();
    std::fs::write(dir.join("work.ext4"), b"work").unwrap();
    let run_dir = dir.join("run");
    LaunchSpec {
        name: "vm1".into(),
        vcpus: 2,
        memory_mib: 512,
        kernel,
        initrd: Some(dir.join("initrd.img")),
        cmdline: "root=/dev/vda ro quiet".into(),
        drives: vec![
            SpecDrive {
                id: "rootfs".into(),
                path: dir.join("rootfs.ext4"),
                read_only: true,
            },
            SpecDrive {
                id: "work".into(),
                path: dir.join("work.ext4"),
                read_only: false,
            },
        ],
        net: Some(NetIface {
            tap: "tap-vm1".into(),
            mac: "02:fc:00:00:00:01".into(),
        }),
        vsock_cid: 3,
        vsock_uds: run_dir.join("vsock.sock"),
        run_dir,
        vmm_log: dir.join("vmm.log"),
        console_log: dir.join("console.log"),
        netns: Some("banger".into()),
    }
}

fn backend(processes: &Arc<FakeProcesses>) -> FirecrackerVmm {
    let processes: Arc<dyn Processes> = processes.clone();
    FirecrackerVmm::new("/opt/fc/firecracker", processes)
        .with_socket_timeout(Duration::from_secs(2))
        .with_api_timeout(Duration::from_secs(2))
        .with_kill_timeout(Duration::from_secs(1))
}

/// Launches `spec` against a fake server that starts serving once the process is spawned.
async fn launch_against_fake(
    spec: &LaunchSpec,
    fake: &FakeFirecracker,
    processes: &Arc<FakeProcesses>,
) -> (Result<VmmHandles, VmmError>, JoinHandle<()>) {
    let server = fake.serve_after_spawn(processes.clone(), api_socket_path(&spec.run_dir));
    let result = backend(processes).launch(spec).await;
    (result, server)
}

#[tokio::test]
async fn client_bodies_and_paths_match_the_swagger() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let fake = FakeFirecracker::default();
    let server = fake.serve(&socket);
    let client = FirecrackerClient::new(&socket);

    client
        .put_machine_config(&MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 1024,
            smt: Some(false),
            track_dirty_pages: None,
        })
        .await
        .unwrap();
    client
        .put_boot_source(&BootSource {
            kernel_image_path: "/k/vmlinux".into(),
            initrd_path: Some("/k/initrd".into()),
            boot_args: Some("console=ttyS0".into()),
        })
        .await
        .unwrap();
    client
        .put_drive(&Drive {
            drive_id: "rootfs".into(),
            path_on_host: "/d/root.ext4".into(),
            is_root_device: true,
            is_read_only: true,
            partuuid: None,
            cache_type: None,
            io_engine: None,
        })
        .await
        .unwrap();
    client
        .put_network_interface(&NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("02:00:00:00:00:01".into()),
        })
        .await
        .unwrap();
    client
        .put_vsock(&Vsock {
            guest_cid: 7,
            uds_path: "/r/vsock.sock".into(),
        })
        .await
        .unwrap();
    client
        .put_logger(&Logger {
            log_path: "/r/fc.log".into(),
            level: Some(LogLevel::Debug),
            show_level: None,
            show_log_origin: None,
        })
        .await
        .unwrap();
    client
        .put_metrics(&Metrics {
            metrics_path: "/r/metrics.json".into(),
        })
        .await
        .unwrap();
    for action in [
        ActionType::InstanceStart,
        ActionType::SendCtrlAltDel,
        ActionType::FlushMetrics,
    ] {
        client.action(action).await.unwrap();
    }
    client.patch_vm(VmState::Paused).await.unwrap();
    client.patch_vm(VmState::Resumed).await.unwrap();
    let info = client.instance_info().await.unwrap();
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.vmm_version, "1.16.1");
    let version = client.version().await.unwrap();
    assert_eq!(version.firecracker_version, "1.16.1");

    let expected = vec![
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}),
        ),
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initrd", "boot_args": "console=ttyS0"}),
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/d/root.ext4", "is_root_device": true, "is_read_only": true}),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}),
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 7, "uds_path": "/r/vsock.sock"}),
        ),
        (
            "PUT",
            "/logger",
            json!({"log_path": "/r/fc.log", "level": "Debug"}),
        ),
        (
            "PUT",
            "/metrics",
            json!({"metrics_path": "/r/metrics.json"}),
        ),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
        ("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"})),
        ("PUT", "/actions", json!({"action_type": "FlushMetrics"})),
        ("PATCH", "/vm", json!({"state": "Paused"})),
        ("PATCH", "/vm", json!({"state": "Resumed"})),
        ("GET", "/", Value::Null),
        ("GET", "/version", Value::Null),
    ];
    let expected: Vec<Recorded> = expected
        .into_iter()
        .map(|(method, path, body)| Recorded {
            method: method.into(),
            path: path.into(),
            body,
        })
        .collect();
    assert_eq!(fake.requests(), expected);
    server.abort();
}

#[tokio::test]
async fn refused_call_surfaces_firecrackers_fault_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let fake = FakeFirecracker::default();
    fake.refuse(
        "PUT /boot-source",
        400,
        r#"{"fault_message":"The kernel file cannot be opened: No such file or directory (os error 2)"}"#,
    );
    let server = fake.serve(&socket);
    let client = FirecrackerClient::new(&socket);
    let err = client
        .put_boot_source(&BootSource {
            kernel_image_path: "/missing".into(),
            initrd_path: None,
            boot_args: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.fault_message(),
        Some("The kernel file cannot be opened: No such file or directory (os error 2)")
    );
    assert!(
        matches!(err, ApiError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    match err.into_vmm_error("vm1", &socket) {
        VmmError::Rejected {
            vmm,
            vm,
            call,
            message,
        } => {
            assert_eq!(
                (vmm, vm.as_str(), call.as_str()),
                (VmmKind::Firecracker, "vm1", "PUT /boot-source")
            );
            assert!(
                message.starts_with("The kernel file cannot be opened"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn missing_socket_is_a_connect_error_naming_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let err = FirecrackerClient::new(&socket)
        .action(ActionType::InstanceStart)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("PUT /actions"), "{err}");
    let vmm_err = err.into_vmm_error("vm1", &socket);
    assert!(matches!(vmm_err, VmmError::Control { .. }), "{vmm_err:?}");
}

#[tokio::test]
async fn launch_spawns_configures_in_order_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    std::fs::write(&spec.vmm_log, "log of an earlier boot\n").unwrap();
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();

    let api_socket = spec.run_dir.join("firecracker.sock");
    assert_eq!(handles.kind, VmmKind::Firecracker);
    assert_eq!(handles.control_socket, api_socket);
    assert_eq!(handles.vsock_uds, spec.vsock_uds);
    assert!(handles.helpers.is_empty());
    assert!(!handles.emulated);

    let spawned = processes.spawned();
    assert_eq!(spawned.len(), 1);
    let (id, spawn) = &spawned[0];
    assert_eq!(*id, handles.process);
    assert_eq!(spawn.program, PathBuf::from("/opt/fc/firecracker"));
    let args: Vec<String> = spawn
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args,
        ["--api-sock", api_socket.to_str().unwrap(), "--id", "vm1"]
    );
    assert_eq!(spawn.stdout.as_deref(), Some(spec.console_log.as_path()));
    assert_eq!(spawn.stderr.as_deref(), Some(spec.console_log.as_path()));
    assert_eq!(spawn.netns.as_deref(), Some("banger"));

    let metrics = spec.run_dir.join("metrics.json");
    assert!(
        metrics.exists(),
        "metrics file must exist before PUT /metrics"
    );
    assert_eq!(
        std::fs::read_to_string(&spec.vmm_log).unwrap(),
        "",
        "vmm_log is emptied"
    );

    let requests = fake.requests();
    let calls: Vec<String> = requests.iter().map(Recorded::call).collect();
    assert_eq!(
        calls,
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/work",
            "PUT /network-interfaces/eth0",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
    let bodies: Vec<&Value> = requests.iter().map(|r| &r.body).collect();
    assert_eq!(
        *bodies[0],
        json!({"log_path": spec.vmm_log, "level": "Info", "show_level": true})
    );
    assert_eq!(*bodies[1], json!({"metrics_path": metrics}));
    assert_eq!(*bodies[2], json!({"vcpu_count": 2, "mem_size_mib": 512}));
    assert_eq!(
        *bodies[3],
        json!({
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": "root=/dev/vda ro quiet console=ttyS0 reboot=k panic=1 pci=off",
        })
    );
    assert_eq!(
        *bodies[4],
        json!({"drive_id": "rootfs", "path_on_host": spec.drives[0].path, "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        *bodies[5],
        json!({"drive_id": "work", "path_on_host": spec.drives[1].path, "is_root_device": false, "is_read_only": false})
    );
    assert_eq!(
        *bodies[6],
        json!({"iface_id": "eth0", "host_dev_name": "tap-vm1", "guest_mac": "02:fc:00:00:00:01"})
    );
    assert_eq!(
        *bodies[7],
        json!({"guest_cid": 3, "uds_path": spec.vsock_uds})
    );
    assert_eq!(*bodies[8], json!({"action_type": "InstanceStart"}));
    assert!(processes.signals().is_empty());
    server.abort();
}

#[tokio::test]
async fn launch_without_net_skips_the_interface_and_removes_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec_in(dir.path());
    spec.net = None;
    spec.drives.clear();
    std::fs::create_dir_all(&spec.run_dir).unwrap();
    // Leftovers of a crashed run: the fake could not bind, nor Firecracker create the vsock.
    std::fs::write(api_socket_path(&spec.run_dir), b"").unwrap();
    std::fs::write(&spec.vsock_uds, b"").unwrap();
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    result.unwrap();
    assert!(!spec.vsock_uds.exists());
    assert_eq!(
        fake.calls(),
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
    server.abort();
}

#[tokio::test]
async fn refused_configuration_kills_the_vmm_removes_sockets_and_names_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    fake.refuse(
        "PUT /drives/work",
        400,
        r#"{"fault_message":"Unable to create the block device: BackingFile(Os { code: 13 })"}"#,
    );
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let err = result.unwrap_err();
    match &err {
        VmmError::Rejected {
            call, message, vm, ..
        } => {
            assert_eq!(vm, "vm1");
            assert_eq!(call, "PUT /drives/work");
            assert!(
                message.contains("Unable to create the block device"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let (id, _) = processes.spawned()[0].clone();
    assert_eq!(processes.signals(), [(id, Signal::SIGKILL)]);
    assert!(!processes.state(id).is_running());
    assert!(!api_socket_path(&spec.run_dir).exists());
    assert!(
        !fake.calls().contains(&"PUT /actions".to_string()),
        "no InstanceStart after a refusal"
    );
    server.abort();
}

#[tokio::test]
async fn refused_instance_start_is_rejected_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    fake.refuse(
        "PUT /actions",
        400,
        r#"{"fault_message":"Cannot start microvm that was already started"}"#,
    );
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, VmmError::Rejected { call, .. } if call == "PUT /actions"),
        "{err:?}"
    );
    assert!(err.to_string().contains("already started"), "{err}");
    assert_eq!(processes.signals().len(), 1);
    server.abort();
}

#[tokio::test]
async fn vmm_exiting_before_its_socket_fails_fast_with_the_output_tail() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    std::fs::write(&spec.console_log, "previous boot's last words\n").unwrap();
    let processes = Arc::new(FakeProcesses::new());
    let console = spec.console_log.clone();
    let crasher = {
        let processes = processes.clone();
        tokio::spawn(async move {
            while processes.spawned().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(&console)
                .unwrap();
            writeln!(log, "Error: Failed to bind API socket: Permission denied").unwrap();
            let (id, _) = processes.spawned()[0].clone();
            processes.mark_exited(
                id,
                ExitInfo {
                    code: Some(1),
                    signal: None,
                },
            );
        })
    };
    let started = std::time::Instant::now();
    let err = backend(&processes)
        .with_socket_timeout(Duration::from_secs(10))
        .launch(&spec)
        .await
        .unwrap_err();
    crasher.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail fast"
    );
    match &err {
        VmmError::Died {
            phase,
            exit,
            tail,
            vmm,
            ..
        } => {
            assert_eq!(*vmm, VmmKind::Firecracker);
            assert_eq!(phase, "startup");
            assert_eq!(exit, "exited with status 1");
            assert!(tail.contains("Failed to bind API socket"), "{tail}");
            assert!(!tail.contains("previous boot"), "{tail}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn socket_that_never_appears_times_out_and_kills() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let err = backend(&processes)
        .with_socket_timeout(Duration::from_millis(150))
        .launch(&spec)
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("firecracker.sock"), "{err}");
    let (id, _) = processes.spawned()[0].clone();
    assert_eq!(processes.signals(), [(id, Signal::SIGKILL)]);
}

#[tokio::test]
async fn unbootable_specs_are_refused_before_spawning() {
    let dir = tempfile::tempdir().unwrap();
    let processes = Arc::new(FakeProcesses::new());
    let vmm = backend(&processes);

    let mut bzimage = spec_in(dir.path());
    std::fs::write(&bzimage.kernel, b"MZ\x00\x00bzImage").unwrap();
    let err = vmm.launch(&bzimage).await.unwrap_err();
    assert!(err.to_string().contains("not an ELF vmlinux"), "{err}");
    bzimage.kernel = dir.path().join("no-such-kernel");
    assert!(matches!(
        vmm.launch(&bzimage).await.unwrap_err(),
        VmmError::InvalidSpec { .. }
    ));

    let mut bad_name = spec_in(dir.path());
    bad_name.name = "vm_1".into();
    assert!(matches!(
        vmm.launch(&bad_name).await.unwrap_err(),
        VmmError::InvalidSpec { .. }
    ));

    let mut too_many = spec_in(dir.path());
    too_many.vcpus = 33;
    assert!(matches!(
        vmm.launch(&too_many).await.unwrap_err(),
        VmmError::InvalidSpec { .. }
    ));

    let mut long_socket = spec_in(dir.path());
    long_socket.vsock_uds = dir.path().join("x".repeat(120));
    let err = vmm.launch(&long_socket).await.unwrap_err();
    assert!(err.to_string().contains("Unix socket address"), "{err}");

    assert!(processes.spawned().is_empty());
}

#[tokio::test]
async fn kill_sigkills_removes_sockets_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();
    std::fs::write(&handles.vsock_uds, b"").unwrap(); // what Firecracker would have bound
    let vmm = backend(&processes);

    assert!(vmm.is_alive(&handles).await);
    vmm.kill(&handles).await.unwrap();
    assert_eq!(processes.signals(), [(handles.process, Signal::SIGKILL)]);
    assert_eq!(
        processes.state(handles.process),
        ProcessState::Exited(Some(ExitInfo {
            code: None,
            signal: Some(9)
        }))
    );
    assert!(!handles.control_socket.exists());
    assert!(!handles.vsock_uds.exists());
    assert!(!vmm.is_alive(&handles).await);
    assert!(vmm.wait_exit(&handles, Duration::from_millis(10)).await);
    assert_eq!(
        vmm.exit_info(&handles),
        Some(ExitInfo {
            code: None,
            signal: Some(9)
        })
    );

    vmm.kill(&handles).await.unwrap();
    assert_eq!(
        processes.signals().len(),
        1,
        "no second signal to a dead process"
    );
    server.abort();
}

#[tokio::test]
async fn is_alive_needs_both_the_process_and_an_answering_socket() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();
    let vmm = backend(&processes);
    assert!(vmm.is_alive(&handles).await);
    assert_eq!(fake.calls().last().unwrap(), "GET /");

    server.abort();
    let _ = server.await;
    std::fs::remove_file(&handles.control_socket).unwrap();
    assert!(
        !vmm.is_alive(&handles).await,
        "process runs but the API is gone"
    );
    assert!(!vmm.wait_exit(&handles, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn counters_flush_first_and_sum_every_metrics_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();
    let vmm = backend(&processes);

    let first = vmm.counters(&handles).await.unwrap();
    assert_eq!(fake.calls().last().unwrap(), "PUT /actions");
    assert_eq!(
        fake.requests().last().unwrap().body,
        json!({"action_type": "FlushMetrics"})
    );
    assert_eq!(first.net_rx_bytes, 1000);
    assert_eq!(first.net_tx_bytes, 200);
    assert_eq!(first.net_rx_packets, 10);
    assert_eq!(first.net_tx_packets, 2);
    assert_eq!(first.block_read_bytes, 8192);
    assert_eq!(first.block_write_bytes, 4096);
    assert_eq!(first.block_read_ops, 2);
    assert_eq!(first.block_write_ops, 1);

    // Firecracker's counters are deltas since the previous flush: two flushes, twice the totals.
    let second = vmm.counters(&handles).await.unwrap();
    assert_eq!(second.net_rx_bytes, 2000);
    assert_eq!(second.block_write_ops, 2);

    // A fresh backend (a restarted daemon) re-reads the whole file and agrees.
    let third = backend(&processes).counters(&handles).await.unwrap();
    assert_eq!(third.net_rx_bytes, 3000);
    server.abort();
}

#[tokio::test]
async fn counters_of_a_refusing_running_vmm_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();
    fake.refuse(
        "PUT /actions",
        400,
        r#"{"fault_message":"metrics system not initialized"}"#,
    );
    let err = backend(&processes).counters(&handles).await.unwrap_err();
    assert!(matches!(err, VmmError::Rejected { .. }), "{err:?}");
    server.abort();
}

#[tokio::test]
async fn request_shutdown_sends_ctrl_alt_del() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let fake = FakeFirecracker::default();
    let (result, server) = launch_against_fake(&spec, &fake, &processes).await;
    let handles = result.unwrap();
    let vmm = backend(&processes);
    vmm.request_shutdown(&handles).await.unwrap();
    assert_eq!(
        fake.requests().last().unwrap().body,
        json!({"action_type": "SendCtrlAltDel"})
    );
    vmm.pause(&handles).await.unwrap();
    vmm.resume(&handles).await.unwrap();
    let last_two: Vec<Value> = fake
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        last_two,
        [json!({"state": "Resumed"}), json!({"state": "Paused"})]
    );
    server.abort();
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn probe_accepts_1_x_and_refuses_older_or_missing_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let processes: Arc<dyn Processes> = Arc::new(FakeProcesses::new());

    let modern = script(
        dir.path(),
        "fc-modern",
        "echo 'Firecracker v1.7.0'; echo; echo '2026 [anonymous-instance:main] exiting'",
    );
    let line = FirecrackerVmm::new(&modern, processes.clone())
        .probe()
        .await
        .unwrap();
    assert_eq!(line, "Firecracker v1.7.0");

    let old = script(dir.path(), "fc-old", "echo 'Firecracker v0.25.2'");
    let err = FirecrackerVmm::new(&old, processes.clone())
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("0.25.2 is too old"), "{err}");

    let odd = script(dir.path(), "fc-odd", "echo 'hello'");
    let err = FirecrackerVmm::new(&odd, processes.clone())
        .probe()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no `Firecracker vX.Y.Z` line"),
        "{err}"
    );

    let missing = dir.path().join("no-firecracker-here");
    let err = FirecrackerVmm::new(&missing, processes)
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("could not run it"), "{err}");
}

#[tokio::test]
async fn cancelled_launch_still_kills_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let processes = Arc::new(FakeProcesses::new());
    let vmm = backend(&processes).with_socket_timeout(Duration::from_secs(30));
    // The socket never appears; the caller gives up first and drops the launch future.
    let outcome = tokio::time::timeout(Duration::from_millis(100), vmm.launch(&spec)).await;
    assert!(outcome.is_err(), "launch should still have been waiting");
    let (id, _) = processes.spawned()[0].clone();
    assert_eq!(processes.signals(), [(id, Signal::SIGKILL)]);
    assert!(!processes.state(id).is_running());
}
