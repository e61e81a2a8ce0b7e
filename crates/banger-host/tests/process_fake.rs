//! `FakeProcesses`: the behaviour callers' tests rely on.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use banger_host::process::{
    ExitInfo, FakeProcesses, ProcessError, ProcessOp, ProcessState, Processes, SpawnSpec,
};
use nix::sys::signal::Signal;

const PATIENCE: Duration = Duration::from_secs(10);

fn sleeper() -> SpawnSpec {
    SpawnSpec::new("sleep").args(["30"])
}

#[tokio::test]
async fn fake_records_spawns_and_ends_processes_on_sigterm() {
    let fake = FakeProcesses::new();
    let id = fake
        .spawn(&SpawnSpec::new("firecracker").args(["--id", "vm1"]))
        .await
        .unwrap();
    assert_eq!(fake.state(id), ProcessState::Running);
    assert_eq!(
        fake.cmdline(id),
        Some(vec!["firecracker".into(), "--id".into(), "vm1".into()])
    );

    fake.signal(id, Signal::SIGTERM).unwrap();

    assert_eq!(
        fake.wait_exit(id, PATIENCE).await,
        ProcessState::Exited(Some(ExitInfo {
            code: None,
            signal: Some(15)
        }))
    );
    assert_eq!(fake.signals(), vec![(id, Signal::SIGTERM)]);
    assert_eq!(fake.spawned().len(), 1);
}

#[tokio::test]
async fn fake_stubborn_process_outlasts_sigterm_until_sigkill() {
    let fake = FakeProcesses::new();
    fake.set_stubborn(true);
    let id = fake.spawn(&sleeper()).await.unwrap();

    fake.signal(id, Signal::SIGTERM).unwrap();
    assert_eq!(
        fake.wait_exit(id, Duration::from_millis(100)).await,
        ProcessState::Running
    );
    fake.signal(id, Signal::SIGKILL).unwrap();

    assert!(!fake.wait_exit(id, PATIENCE).await.is_running());
    assert!(matches!(
        fake.signal(id, Signal::SIGKILL),
        Err(ProcessError::Gone { .. })
    ));
}

#[tokio::test]
async fn fake_wait_exit_wakes_when_marked_exited() {
    let fake = Arc::new(FakeProcesses::new());
    let id = fake.spawn(&sleeper()).await.unwrap();
    let marker = Arc::clone(&fake);
    let exit = ExitInfo {
        code: Some(1),
        signal: None,
    };
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        marker.mark_exited(id, exit);
    });

    assert_eq!(
        fake.wait_exit(id, PATIENCE).await,
        ProcessState::Exited(Some(exit))
    );
}

#[tokio::test]
async fn fake_injected_spawn_failure_is_recorded() {
    let fake = FakeProcesses::new();
    fake.fail(ProcessOp::Spawn);

    assert!(fake.spawn(&sleeper()).await.is_err());
    assert_eq!(fake.calls().len(), 1);
    assert!(fake.spawned().is_empty());

    fake.heal(ProcessOp::Spawn);
    assert!(fake.spawn(&sleeper()).await.is_ok());
}

#[tokio::test]
async fn fake_adopted_process_exits_without_status() {
    let fake = FakeProcesses::new();
    let id = fake.adopt(vec!["firecracker".into()]);
    assert_eq!(fake.state(id), ProcessState::Running);

    fake.signal(id, Signal::SIGKILL).unwrap();

    assert_eq!(fake.state(id), ProcessState::Exited(None));
}

#[tokio::test]
async fn fake_and_real_both_serve_as_shared_trait_objects() {
    let all: Vec<Arc<dyn Processes>> = vec![
        Arc::new(FakeProcesses::new()),
        Arc::new(banger_host::process::RealProcesses::new()),
    ];
    for processes in all {
        let gone = banger_host::process::ProcessId {
            pid: 90_000_009,
            start_time: 1,
        };
        assert_eq!(processes.state(gone), ProcessState::Exited(None));
    }
}
