//! `RealProcesses` against real processes. No root needed, except for the network-namespace
//! test, which is ignored unless asked for (`cargo test -- --ignored`).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use banger_host::process::{
    ExitInfo, ProcessId, ProcessState, Processes, RealProcesses, SpawnSpec,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Kills the process by pid when the test ends, pass or fail. Only processes the test started.
struct KillOnDrop(ProcessId);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only if it is still the process we started: a recycled pid must not be hit.
        if RealProcesses::new().state(self.0).is_running() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.0.pid as i32), Signal::SIGKILL);
        }
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

fn sleeper() -> SpawnSpec {
    SpawnSpec::new("sleep").args(["30"])
}

#[tokio::test]
async fn sigterm_ends_a_running_child_and_reports_the_signal() {
    let processes = RealProcesses::new();
    let id = processes.spawn(&sleeper()).await.unwrap();
    let _guard = KillOnDrop(id);
    assert_eq!(processes.state(id), ProcessState::Running);
    assert_eq!(
        processes.cmdline(id),
        Some(vec!["sleep".to_string(), "30".to_string()])
    );

    processes.signal(id, Signal::SIGTERM).unwrap();
    let state = processes.wait_exit(id, PATIENCE).await;

    let exit = ExitInfo {
        code: None,
        signal: Some(15),
    };
    assert_eq!(state, ProcessState::Exited(Some(exit)));
    assert_eq!(exit.to_string(), "killed by signal 15 (SIGTERM)");
    assert!(processes.cmdline(id).is_none());
    assert!(matches!(
        processes.signal(id, Signal::SIGKILL),
        Err(banger_host::process::ProcessError::Gone { .. })
    ));
}

#[tokio::test]
async fn exit_code_and_output_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    std::fs::write(&log, "earlier\n").unwrap();
    let spec = SpawnSpec {
        stdout: Some(log.clone()),
        stderr: Some(log.clone()),
        ..SpawnSpec::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"])
    };
    let processes = RealProcesses::new();
    let id = processes.spawn(&spec).await.unwrap();
    let _guard = KillOnDrop(id);

    let state = processes.wait_exit(id, PATIENCE).await;

    assert_eq!(
        state,
        ProcessState::Exited(Some(ExitInfo {
            code: Some(3),
            signal: None
        }))
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "earlier\nhi\noops\n",
        "appended, both streams"
    );
}

#[tokio::test]
async fn env_and_cwd_reach_the_child_and_stdin_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spec = SpawnSpec {
        env: vec![("BANGER_TEST_VALUE".into(), "v42".into())],
        cwd: Some(dir.path().to_path_buf()),
        stdout: Some(out.clone()),
        ..SpawnSpec::new("sh").args(["-c", "echo $BANGER_TEST_VALUE; pwd; cat; echo end"])
    };
    let processes = RealProcesses::new();
    let id = processes.spawn(&spec).await.unwrap();
    let _guard = KillOnDrop(id);

    let state = processes.wait_exit(id, PATIENCE).await;

    assert_eq!(
        state,
        ProcessState::Exited(Some(ExitInfo {
            code: Some(0),
            signal: None
        }))
    );
    let expected = format!(
        "v42\n{}\nend\n",
        dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
}

#[tokio::test]
async fn wait_exit_times_out_as_running() {
    let processes = RealProcesses::new();
    let id = processes.spawn(&sleeper()).await.unwrap();
    let _guard = KillOnDrop(id);

    let state = processes.wait_exit(id, Duration::from_millis(200)).await;

    assert_eq!(state, ProcessState::Running);
}

#[tokio::test]
async fn a_reused_pid_is_not_our_process() {
    let processes = RealProcesses::new();
    let id = processes.spawn(&sleeper()).await.unwrap();
    let _guard = KillOnDrop(id);
    let impostor = ProcessId {
        pid: id.pid,
        start_time: id.start_time + 1,
    };

    assert_eq!(processes.state(impostor), ProcessState::Exited(None));
    assert!(matches!(
        processes.signal(impostor, Signal::SIGKILL),
        Err(banger_host::process::ProcessError::Gone { .. })
    ));
    assert_eq!(processes.cmdline(impostor), None);
    assert_eq!(
        processes.state(id),
        ProcessState::Running,
        "the real one was not signalled"
    );
}

#[tokio::test]
async fn spawned_process_leads_its_own_session() {
    let processes = RealProcesses::new();
    let id = processes.spawn(&sleeper()).await.unwrap();
    let _guard = KillOnDrop(id);
    let pid = Pid::from_raw(id.pid as i32);

    assert_eq!(nix::unistd::getsid(Some(pid)).unwrap(), pid);
    assert_ne!(nix::unistd::getsid(None).unwrap(), pid);
}

#[tokio::test]
async fn another_instance_adopts_a_running_process_and_sees_it_go() {
    let spawner = RealProcesses::new();
    let id = spawner.spawn(&sleeper()).await.unwrap();
    let _guard = KillOnDrop(id);
    // A fresh instance knows nothing of the child, as a restarted daemon would.
    let adopter = RealProcesses::new();
    assert_eq!(adopter.state(id), ProcessState::Running);
    assert_eq!(
        adopter.cmdline(id),
        Some(vec!["sleep".to_string(), "30".to_string()])
    );

    adopter.signal(id, Signal::SIGKILL).unwrap();
    let state = adopter.wait_exit(id, PATIENCE).await;

    assert_eq!(
        state,
        ProcessState::Exited(None),
        "an adopter cannot know the exit status"
    );
    let spawner_view = spawner.wait_exit(id, PATIENCE).await;
    assert_eq!(
        spawner_view,
        ProcessState::Exited(Some(ExitInfo {
            code: None,
            signal: Some(9)
        }))
    );
}

#[tokio::test]
async fn own_child_is_reaped_without_anyone_asking() {
    let processes = RealProcesses::new();
    let id = processes.spawn(&SpawnSpec::new("true")).await.unwrap();
    let _guard = KillOnDrop(id);
    let stat = Path::new("/proc").join(id.pid.to_string()).join("stat");

    // Only the background reaper can make the zombie's /proc entry disappear.
    let deadline = std::time::Instant::now() + PATIENCE;
    while stat.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(!stat.exists(), "child {} left a zombie", id.pid);
    assert_eq!(
        processes.state(id),
        ProcessState::Exited(Some(ExitInfo {
            code: Some(0),
            signal: None
        }))
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_error_naming_it() {
    let processes = RealProcesses::new();
    let err = processes
        .spawn(&SpawnSpec::new("/nonexistent/banger-vmm"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/banger-vmm"), "{err}");
}

#[tokio::test]
async fn unopenable_log_file_is_an_error_naming_it() {
    let spec = SpawnSpec {
        stdout: Some("/nonexistent-dir/vmm.log".into()),
        ..sleeper()
    };
    let err = RealProcesses::new().spawn(&spec).await.unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/vmm.log"),
        "{err}"
    );
}

#[test]
fn state_is_read_from_the_given_proc_root() {
    let root = tempfile::tempdir().unwrap();
    let write_stat = |pid: u32, state: char, start: u64| {
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!(
            "{pid} (fire cracker) {state} 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"
        );
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(
            dir.join("cmdline"),
            b"firecracker\0--api-sock\0/run/x.sock\0",
        )
        .unwrap();
    };
    // Pids far above pid_max, so no real process can answer instead of the fake /proc.
    write_stat(90_000_001, 'S', 555);
    write_stat(90_000_002, 'Z', 777);
    let processes = RealProcesses::with_proc_root(root.path());

    assert_eq!(
        processes.state(ProcessId {
            pid: 90_000_001,
            start_time: 555
        }),
        ProcessState::Running
    );
    assert_eq!(
        processes.state(ProcessId {
            pid: 90_000_001,
            start_time: 556
        }),
        ProcessState::Exited(None)
    );
    assert_eq!(
        processes.state(ProcessId {
            pid: 90_000_002,
            start_time: 777
        }),
        ProcessState::Exited(None)
    );
    assert_eq!(
        processes.state(ProcessId {
            pid: 90_000_003,
            start_time: 1
        }),
        ProcessState::Exited(None)
    );
    assert_eq!(
        processes.cmdline(ProcessId {
            pid: 90_000_001,
            start_time: 555
        }),
        Some(vec![
            "firecracker".to_string(),
            "--api-sock".to_string(),
            "/run/x.sock".to_string()
        ])
    );
}

#[test]
fn process_id_round_trips_through_json() {
    let id = ProcessId {
        pid: 1234,
        start_time: 987_654_321,
    };
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, r#"{"pid":1234,"start_time":987654321}"#);
    assert_eq!(serde_json::from_str::<ProcessId>(&json).unwrap(), id);
}

/// Deletes the namespace when the test ends.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[tokio::test]
#[ignore = "needs root: creates a network namespace"]
async fn netns_spawn_returns_the_programs_own_pid_inside_the_namespace() {
    let name = format!("banger-proc-test-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    let _netns = NetnsGuard(name.clone());
    let spec = SpawnSpec {
        netns: Some(name.clone()),
        ..sleeper()
    };
    let processes = RealProcesses::new();
    let id = processes.spawn(&spec).await.unwrap();
    let _guard = KillOnDrop(id);

    // `ip netns exec` execs in place: soon the pid shows sleep's command line.
    let deadline = std::time::Instant::now() + PATIENCE;
    while processes.cmdline(id).as_deref() != Some(&["sleep".to_string(), "30".to_string()][..]) {
        assert!(
            std::time::Instant::now() < deadline,
            "cmdline stayed {:?}",
            processes.cmdline(id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", id.pid)).unwrap();
    assert_ne!(ours, theirs, "the child runs in the namespace");

    processes.signal(id, Signal::SIGKILL).unwrap();
    assert!(!processes.wait_exit(id, PATIENCE).await.is_running());
}
