//! Rediscovering processes by what their command line mentions.
#![allow(clippy::unwrap_used)]

use banger_host::process::{Processes, RealProcesses};

#[tokio::test]
async fn find_mentioning_sees_a_foreign_process_and_can_kill_it() {
    let marker = format!("/tmp/banger-find-test-{}", std::process::id());
    // Started outside RealProcesses: like a VMM whose daemon was SIGKILLed.
    let mut child = std::process::Command::new("python3")
        .args(["-c", "import time; time.sleep(30)", &marker])
        .spawn()
        .unwrap();
    let processes = RealProcesses::new();
    // The child's /proc/PID/cmdline can briefly still be the parent's (fork before exec), so look
    // again for a moment before judging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut found = processes.find_mentioning(&marker);
    while found.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        found = processes.find_mentioning(&marker);
    }
    assert_eq!(
        found.iter().map(|id| id.pid).collect::<Vec<_>>(),
        vec![child.id()]
    );
    processes
        .signal(found[0], nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let left = processes.find_mentioning(&marker);
    assert!(
        left.is_empty(),
        "{left:?} {:?}",
        left.iter()
            .map(|id| std::fs::read_to_string(format!("/proc/{}/stat", id.pid)))
            .collect::<Vec<_>>()
    );
}
