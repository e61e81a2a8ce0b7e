//! Daemon integration tests: the real daemon (router, manager, store on a temp SQLite file) on a
//! temp Unix socket, with the recording fake host layer.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use banger_api::{
    ApiError, ErrorCode, Operation, OperationStatus, StageStatus, Vm, VmState, MAX_BODY_BYTES,
};
use banger_cli::client::ClientError;
use banger_host::process::ExitInfo;
use common::Daemon;
use hyper::{Method, StatusCode};
use serde_json::json;

fn api_error(err: ClientError) -> ApiError {
    match err {
        ClientError::Api(api) => api,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn vm(d: &Daemon, name: &str) -> Vm {
    d.client.get(&format!("/v1/vms/{name}")).await.unwrap()
}

#[tokio::test]
async fn health_and_openapi_document_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let health: banger_api::Health = d.client.get("/v1/health").await.unwrap();
    assert_eq!(health.pid, std::process::id());
    let doc: serde_json::Value = d.client.get("/v1/openapi.json").await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in banger_daemon::api::all_routes() {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert_eq!(doc["paths"].as_object().unwrap().len(), {
        let mut paths: Vec<_> = banger_daemon::api::all_routes()
            .iter()
            .map(|(_, p)| *p)
            .collect();
        paths.sort();
        paths.dedup();
        paths.len()
    });
    d.stop().await;
}

#[tokio::test]
async fn create_runs_every_stage_and_records_timings() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![22, 4096]);
    let done = d
        .create(json!({"name": "dev", "image": "base", "vcpus": 2, "memory_mib": 512}))
        .await;
    let names: Vec<_> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["allocate", "disks", "network", "vmm", "agent", "services"]
    );
    assert!(done
        .stages
        .iter()
        .all(|s| s.status == StageStatus::Done && s.duration_ms.is_some()));

    let vm = vm(&d, "dev").await;
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.ip.as_deref(), Some("172.30.0.2"));
    assert_eq!(vm.mac.as_deref(), Some("06:00:ac:1e:00:02"));
    assert_eq!(vm.vsock_cid, Some(3));
    assert_eq!(vm.dns_name.as_deref(), Some("dev.vm"));
    assert_eq!(vm.stage_timings.len(), 6);
    assert!(vm.pid.is_some());

    let launch = &d.fakes.vmm.launches()[0];
    assert_eq!(launch.vcpus, 2);
    assert_eq!(launch.memory_mib, 512);
    assert!(
        launch.cmdline.contains("banger.hostname=dev"),
        "{}",
        launch.cmdline
    );
    assert!(launch.cmdline.contains("banger.overlay=/dev/vdb"));
    assert!(d.fakes.agent.calls().iter().any(|c| c.ends_with(":4096")));
    let handles = banger_core::handles::read(&d.config.vms_dir().join(vm.id.to_string()))
        .unwrap()
        .unwrap();
    assert_eq!(handles.vmm.process.pid, vm.pid.unwrap());
    d.stop().await;
}

#[tokio::test]
async fn sse_stream_reports_stages_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.fakes.agent.set_boot_delay(Duration::from_millis(300));
    let op = d.post_json("/v1/vms", json!({"name": "slow"})).await.err();
    // No default image configured: the create must name one.
    assert_eq!(api_error(op.unwrap()).field.as_deref(), Some("image"));
    let op = d
        .post_json("/v1/vms", json!({"name": "slow", "image": "base"}))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = d
        .client
        .follow(op.id, |snapshot| seen.push(snapshot.clone()))
        .await
        .unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert!(
        seen.len() >= 2,
        "expected several snapshots, got {}",
        seen.len()
    );
    assert!(seen.iter().any(|s| s
        .stages
        .last()
        .is_some_and(|st| st.name == "agent" && st.status == StageStatus::Running)));
    let polled: Operation = d
        .client
        .get(&format!("/v1/operations/{}", op.id))
        .await
        .unwrap();
    assert_eq!(polled, done);
    d.stop().await;
}

#[tokio::test]
async fn stop_start_restart_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "box", "image": "base"})).await;

    let op = d.post_json("/v1/vms/box/stop", json!(null)).await;
    // POST without a body is fine; the helper sends `null`, which the stop route ignores.
    let op = match op {
        Ok(op) => op,
        Err(err) => panic!("{err:?}"),
    };
    let done = d.wait(&op).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    assert!(d
        .fakes
        .agent
        .calls()
        .iter()
        .any(|c| c.starts_with("shutdown:")));
    let stopped = vm(&d, "box").await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.pid, None);
    assert!(d.fakes.vmm.alive_pids().is_empty());
    assert!(d.fakes.network.taps_in_use().is_empty());

    let err = api_error(
        d.post_json("/v1/vms/box/stop", json!(null))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Conflict);

    let done = d
        .wait(&d.post_json("/v1/vms/box/start", json!(null)).await.unwrap())
        .await;
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert_eq!(vm(&d, "box").await.state, VmState::Running);

    let done = d
        .wait(
            &d.post_json("/v1/vms/box/restart", json!(null))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(done.status, OperationStatus::Succeeded);
    let names: Vec<_> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["shutdown", "network", "disks", "network", "vmm", "agent"],
        "graceful: no kill stage"
    );
    assert_eq!(d.fakes.vmm.alive_pids().len(), 1);

    // Running VMs need --force to delete.
    let err = api_error(
        d.client
            .call::<Operation>(Method::DELETE, "/v1/vms/box", None::<&()>)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Conflict);
    let op: Operation = d
        .client
        .call(Method::DELETE, "/v1/vms/box?force=true", None::<&()>)
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    let err = api_error(d.client.get::<Vm>("/v1/vms/box").await.unwrap_err());
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(d.fakes.vmm.alive_pids().is_empty());
    assert!(d.vm_dirs().is_empty(), "{:?}", d.vm_dirs());
    assert!(d.fakes.disks.calls().contains(&"remove:box".to_string()));
    d.stop().await;
}

#[tokio::test]
async fn parallel_creates_never_share_an_address_or_cid_and_parallel_deletes_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let creates = (0..16).map(|_| d.post_json("/v1/vms", json!({"image": "base"})));
    let ops: Vec<Operation> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for op in &ops {
        assert_eq!(d.wait(op).await.status, OperationStatus::Succeeded);
    }
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert_eq!(vms.len(), 16);
    let mut ips: Vec<_> = vms.iter().map(|v| v.ip.clone().unwrap()).collect();
    let mut cids: Vec<_> = vms.iter().map(|v| v.vsock_cid.unwrap()).collect();
    let mut names: Vec<_> = vms.iter().map(|v| v.name.to_string()).collect();
    ips.sort();
    ips.dedup();
    cids.sort();
    cids.dedup();
    names.sort();
    names.dedup();
    assert_eq!((ips.len(), cids.len(), names.len()), (16, 16, 16));

    let paths: Vec<String> = vms
        .iter()
        .map(|v| format!("/v1/vms/{}?force=true", v.id))
        .collect();
    let deletes = paths.iter().map(|path| {
        d.client
            .call::<Operation>(Method::DELETE, path, None::<&()>)
    });
    let ops: Vec<Operation> = futures::future::join_all(deletes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for op in &ops {
        assert_eq!(d.wait(op).await.status, OperationStatus::Succeeded);
    }
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());
    assert!(d.fakes.vmm.alive_pids().is_empty());
    assert!(d.fakes.network.taps_in_use().is_empty());
    assert!(d.vm_dirs().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn failure_at_a_late_stage_undoes_every_earlier_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![22]);
    d.fakes.agent.fail_on("wait_port", "sshd never answered");
    let op = d
        .post_json("/v1/vms", json!({"name": "broken", "image": "base"}))
        .await
        .unwrap();
    let done = d.wait(&op).await;
    assert_eq!(done.status, OperationStatus::Failed);
    let last = done.stages.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.status),
        ("services", StageStatus::Failed)
    );
    let err = done.error.unwrap();
    assert!(
        err.causes.iter().any(|c| c.contains("sshd never answered")),
        "{err:?}"
    );

    let vm = vm(&d, "broken").await;
    assert_eq!(vm.state, VmState::Error);
    assert!(vm.last_error.unwrap().contains("sshd never answered"));
    assert!(d.fakes.vmm.alive_pids().is_empty(), "VMM left running");
    assert!(
        d.fakes.network.taps_in_use().is_empty(),
        "tap left attached"
    );
    assert!(
        d.fakes.disks.calls().contains(&"remove:broken".to_string()),
        "disks left behind"
    );
    let vm_dir = d.config.vms_dir().join(vm.id.to_string());
    assert!(!vm_dir.join("handles.json").exists());
    assert!(
        !d.config
            .runtime_dir
            .join("vms")
            .join(vm.id.to_string())
            .exists(),
        "runtime dir left behind"
    );

    // An errored VM can be deleted without --force and leaves nothing.
    let op: Operation = d
        .client
        .call(Method::DELETE, "/v1/vms/broken", None::<&()>)
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    assert!(d.vm_dirs().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn vmm_launch_failure_leaves_error_state_and_no_tap() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.fakes.vmm.fail_on("launch", "kernel is not an ELF");
    let op = d
        .post_json("/v1/vms", json!({"name": "nokernel", "image": "base"}))
        .await
        .unwrap();
    let done = d.wait(&op).await;
    assert_eq!(done.status, OperationStatus::Failed);
    assert_eq!(done.stages.last().unwrap().name, "vmm");
    assert!(d.fakes.network.taps_in_use().is_empty());
    assert_eq!(vm(&d, "nokernel").await.state, VmState::Error);
    d.stop().await;
}

#[tokio::test]
async fn vmm_death_is_noticed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "crashy", "image": "base"})).await;
    let running = vm(&d, "crashy").await;
    std::fs::write(
        d.config
            .vms_dir()
            .join(running.id.to_string())
            .join("console.log"),
        "Kernel panic - not syncing\n",
    )
    .unwrap();
    d.fakes.vmm.exit_process(
        running.pid.unwrap(),
        ExitInfo {
            code: None,
            signal: Some(9),
        },
    );
    let mut state = running.state;
    for _ in 0..100 {
        state = vm(&d, "crashy").await.state;
        if state != VmState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, VmState::Error);
    let after = vm(&d, "crashy").await;
    let why = after.last_error.unwrap();
    assert!(
        why.contains("signal 9") && why.contains("Kernel panic"),
        "{why}"
    );
    assert!(d.fakes.network.taps_in_use().is_empty());

    // A clean exit (the guest powered off) is a stop, not an error.
    let op = d
        .post_json("/v1/vms/crashy/start", json!(null))
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    let pid = vm(&d, "crashy").await.pid.unwrap();
    d.fakes.vmm.exit_process(
        pid,
        ExitInfo {
            code: Some(0),
            signal: None,
        },
    );
    for _ in 0..100 {
        if vm(&d, "crashy").await.state == VmState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = vm(&d, "crashy").await;
    assert_eq!((after.state, after.last_error), (VmState::Stopped, None));
    d.stop().await;
}

#[tokio::test]
async fn restarted_daemon_readopts_live_vms_and_tears_down_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "alive", "image": "base"})).await;
    d.create(json!({"name": "dead", "image": "base"})).await;
    let dead_pid = vm(&d, "dead").await.pid.unwrap();
    let (host, fakes) = d.kill().await;
    // While no daemon runs, one VMM dies.
    fakes.vmm.exit_process(
        dead_pid,
        ExitInfo {
            code: None,
            signal: Some(9),
        },
    );

    let d = Daemon::start_with(dir.path(), host, fakes).await;
    let alive = vm(&d, "alive").await;
    assert_eq!(alive.state, VmState::Running);
    assert!(alive.pid.is_some(), "re-adopted VM has its handles back");
    let dead = vm(&d, "dead").await;
    assert_eq!(dead.state, VmState::Stopped);
    assert!(dead.last_error.unwrap().contains("not running"));
    assert!(!d
        .config
        .vms_dir()
        .join(dead.id.to_string())
        .join("handles.json")
        .exists());
    assert!(
        d.fakes.vmm.calls().iter().any(|c| c.starts_with("kill:")),
        "leftovers of the dead VM are torn down"
    );
    // The re-adopted VM is managed again: it can be stopped.
    let op = d
        .post_json("/v1/vms/alive/stop", json!(null))
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    d.stop().await;
}

#[tokio::test]
async fn daemon_killed_during_create_leaves_an_error_vm_and_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.fakes.agent.set_boot_delay(Duration::from_secs(30));
    let op = d
        .post_json("/v1/vms", json!({"name": "inflight", "image": "base"}))
        .await
        .unwrap();
    // Wait until the VMM has been launched, then kill the daemon mid-boot.
    for _ in 0..200 {
        if !d.fakes.vmm.alive_pids().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(d.fakes.vmm.alive_pids().len(), 1);
    let _ = op;
    let (host, fakes) = d.kill().await;
    fakes.agent.set_boot_delay(Duration::ZERO);
    let d = Daemon::start_with(dir.path(), host, fakes).await;
    let vm = vm(&d, "inflight").await;
    assert_eq!(vm.state, VmState::Error);
    assert!(vm.last_error.unwrap().contains("being created"));
    assert!(
        d.fakes.vmm.alive_pids().is_empty(),
        "the half-created VM's VMM was killed"
    );
    assert!(d.fakes.network.taps_in_use().is_empty());
    // And it can be started from there.
    let op = d
        .post_json("/v1/vms/inflight/start", json!(null))
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    d.stop().await;
}

#[tokio::test]
async fn names_resolve_by_unique_prefix_and_ambiguity_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "alpha", "image": "ba", "no_start": true}))
        .await;
    d.create(json!({"name": "alpine", "image": "base", "no_start": true}))
        .await;
    assert_eq!(vm(&d, "alph").await.name.as_str(), "alpha");
    assert_eq!(vm(&d, "alpi").await.name.as_str(), "alpine");
    let err = api_error(d.client.get::<Vm>("/v1/vms/al").await.unwrap_err());
    assert_eq!(err.code, ErrorCode::Ambiguous);
    assert!(err.message.contains("alpha") && err.message.contains("alpine"));
    assert_eq!(vm(&d, "alpha").await.state, VmState::Stopped);
    d.stop().await;
}

#[tokio::test]
async fn edit_changes_a_stopped_vm_and_refuses_shrinking() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "ed", "image": "base", "no_start": true, "disk_size_mib": 1024}))
        .await;
    let vm: Vm = d
        .client
        .call(
            Method::PATCH,
            "/v1/vms/ed",
            Some(&json!({"vcpus": 4, "memory_mib": 2048, "disk_size_mib": 2048})),
        )
        .await
        .unwrap();
    assert_eq!((vm.vcpus, vm.memory_mib, vm.disk_size_mib), (4, 2048, 2048));
    assert!(d.fakes.disks.calls().contains(&"grow_work:ed".to_string()));
    let err = api_error(
        d.client
            .call::<Vm>(
                Method::PATCH,
                "/v1/vms/ed",
                Some(&json!({"disk_size_mib": 512})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code, err.field.as_deref()),
        (ErrorCode::InvalidInput, Some("disk_size_mib"))
    );
    let err = api_error(
        d.client
            .call::<Vm>(Method::PATCH, "/v1/vms/ed", Some(&json!({"vcpus": 64})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Unsatisfiable);
    d.create(json!({"name": "running", "image": "base"})).await;
    let err = api_error(
        d.client
            .call::<Vm>(Method::PATCH, "/v1/vms/running", Some(&json!({"vcpus": 1})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Conflict);
    d.stop().await;
}

#[tokio::test]
async fn image_delete_refuses_while_used_and_names_the_vms() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "user-one", "image": "base", "no_start": true}))
        .await;
    let err = api_error(
        d.client
            .call::<banger_api::Image>(Method::DELETE, "/v1/images/base", None::<&()>)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Conflict);
    assert!(err.message.contains("user-one"), "{}", err.message);
    let op: Operation = d
        .client
        .call(Method::DELETE, "/v1/vms/user-one", None::<&()>)
        .await
        .unwrap();
    d.wait(&op).await;
    let image: banger_api::Image = d
        .client
        .call(Method::DELETE, "/v1/images/base", None::<&()>)
        .await
        .unwrap();
    assert_eq!(image.name.as_str(), "base");
    let images: Vec<banger_api::Image> = d.client.get("/v1/images").await.unwrap();
    assert!(images.is_empty());
    d.stop().await;
}

/// Sends raw bytes and returns the status and decoded error body.
async fn raw(
    d: &Daemon,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (StatusCode, ApiError) {
    let (status, bytes) = d
        .client
        .raw(method, path, content_type, body.to_vec())
        .await
        .unwrap();
    let err: ApiError =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}: {e}: {:?}", bytes));
    (status, err)
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_code_and_persists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    let json_ct = Some("application/json");

    let (status, err) = raw(&d, Method::POST, "/v1/vms", json_ct, b"{\"name\": ").await;
    assert_eq!(
        (status, err.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
        "malformed JSON"
    );

    let (status, err) = raw(
        &d,
        Method::POST,
        "/v1/vms",
        json_ct,
        br#"{"image":"base","colour":"red"}"#,
    )
    .await;
    assert_eq!(
        (status, err.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
        "unknown field"
    );
    assert!(err.message.contains("colour"), "{}", err.message);

    let (status, err) = raw(
        &d,
        Method::POST,
        "/v1/vms",
        json_ct,
        br#"{"image":"base","vcpus":"two"}"#,
    )
    .await;
    assert_eq!(
        (status, err.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
        "wrong type"
    );
    assert_eq!(err.field.as_deref(), Some("vcpus"));

    let big = format!(
        r#"{{"image":"base","name":"{}"}}"#,
        "a".repeat(MAX_BODY_BYTES)
    );
    let (status, err) = raw(&d, Method::POST, "/v1/vms", json_ct, big.as_bytes()).await;
    assert_eq!(
        (status, err.code),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
    );

    let (status, err) = raw(
        &d,
        Method::POST,
        "/v1/vms",
        Some("text/plain"),
        br#"{"image":"base"}"#,
    )
    .await;
    assert_eq!(
        (status, err.code),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType
        )
    );

    for (body, field) in [
        (json!({"image": "base", "name": "Bad_Name"}), "name"),
        (json!({"image": "base", "name": "-x"}), "name"),
        (json!({"image": "base", "name": "a".repeat(64)}), "name"),
        (json!({"image": "base", "vcpus": 0}), "vcpus"),
        (json!({"image": "base", "memory_mib": 16}), "memory_mib"),
        (
            json!({"image": "base", "disk_size_mib": 1}),
            "disk_size_mib",
        ),
    ] {
        let err = api_error(d.post_json("/v1/vms", body.clone()).await.unwrap_err());
        assert_eq!(
            (err.code, err.field.as_deref()),
            (ErrorCode::InvalidInput, Some(field)),
            "{body}"
        );
    }
    let err = api_error(
        d.post_json("/v1/vms", json!({"image": "base", "vcpus": 9}))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code,
        ErrorCode::Unsatisfiable,
        "more vCPUs than the host has"
    );
    let err = api_error(
        d.post_json("/v1/vms", json!({"image": "base", "memory_mib": 1 << 30}))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code,
        ErrorCode::Unsatisfiable,
        "more memory than the host has"
    );
    let err = api_error(
        d.post_json("/v1/vms", json!({"image": "nope"}))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::NotFound);

    let (status, err) = raw(&d, Method::PUT, "/v1/vms", json_ct, b"{}").await;
    assert_eq!(
        (status, err.code),
        (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
    );
    let (status, err) = raw(&d, Method::GET, "/v2/nothing", None, b"").await;
    assert_eq!(
        (status, err.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    let (status, err) = raw(&d, Method::POST, "/v1/vms/x/stop?force=maybe", None, b"").await;
    assert_eq!(
        (status, err.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput)
    );
    let (status, _) = raw(&d, Method::GET, "/v1/operations/not-a-uuid", None, b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing was persisted or created by any of it.
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());
    assert!(d.vm_dirs().is_empty());
    assert!(d.fakes.vmm.calls().is_empty());
    assert!(d.fakes.disks.calls().is_empty());
    // And a duplicate name is a conflict that leaves the first VM alone.
    d.create(json!({"name": "taken", "image": "base", "no_start": true}))
        .await;
    let err = api_error(
        d.post_json("/v1/vms", json!({"name": "taken", "image": "base"}))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(d.vm_dirs().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn daemon_stop_route_shuts_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let _: serde_json::Value = d
        .client
        .call(Method::POST, "/v1/daemon/stop", None::<&()>)
        .await
        .unwrap();
    d.stop().await;
}

#[tokio::test]
async fn a_kernel_that_is_no_kernel_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let image = d.add_image("junk", vec![]);
    std::fs::write(&image.kernel_path, b"definitely not a kernel").unwrap();
    let err = api_error(
        d.post_json("/v1/vms", json!({"name": "x", "image": "junk"}))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Unsatisfiable);
    assert!(err.message.contains("not a kernel"), "{}", err.message);
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());
    assert!(d.vm_dirs().is_empty());
    assert!(d.fakes.vmm.calls().is_empty() && d.fakes.disks.calls().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn create_too_big_for_the_free_space_is_a_422_and_persists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.fakes.disks.set_free_bytes(1024 << 20);

    let err = api_error(
        d.post_json(
            "/v1/vms",
            json!({"name": "huge", "image": "base", "disk_size_mib": 2048}),
        )
        .await
        .unwrap_err(),
    );

    assert_eq!(err.code, ErrorCode::Unsatisfiable);
    assert_eq!(err.code.http_status(), 422);
    assert!(
        err.message.contains("not enough free space") && err.message.contains("2048 MiB"),
        "{err:?}"
    );
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());
    assert!(d.vm_dirs().is_empty());
    assert!(!d
        .fakes
        .disks
        .calls()
        .iter()
        .any(|call| call.starts_with("prepare")));

    // What fits is created, and shows its disks with their sizes.
    d.create(json!({"name": "fits", "image": "base", "disk_size_mib": 512}))
        .await;
    let shown = vm(&d, "fits").await;
    let names: Vec<&str> = shown.disks.iter().map(|disk| disk.name.as_str()).collect();
    assert_eq!(names, ["overlay", "work"]);
    assert_eq!(shown.root_mode, banger_api::RootMode::Overlay);
    let listed: serde_json::Value = d.client.get("/v1/vms").await.unwrap();
    assert!(
        listed[0]["disks"][0]["allocated_bytes"].is_u64(),
        "{listed:#}"
    );

    // Growing the work disk beyond the free space is refused the same way, changing nothing.
    let stopped = d
        .wait(&d.post_json("/v1/vms/fits/stop", json!(null)).await.unwrap())
        .await;
    assert_eq!(stopped.status, OperationStatus::Succeeded, "{stopped:#?}");
    let err = api_error(
        d.client
            .call::<Vm>(
                Method::PATCH,
                "/v1/vms/fits",
                Some(&json!({"disk_size_mib": 4096})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::Unsatisfiable);
    assert_eq!(vm(&d, "fits").await.disk_size_mib, 512);
    assert!(!d
        .fakes
        .disks
        .calls()
        .contains(&"grow_work:fits".to_string()));
    d.stop().await;
}
