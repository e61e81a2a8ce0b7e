//! A throwaway network namespace per test, so root tests never touch the host's own links or
//! nftables.
//!
//! [`TestNetns::create`] runs `ip netns add banger-t-<unique>`; dropping the guard runs
//! `ip netns delete`, which also removes every link and table created inside it. Each test owns
//! its namespace, so tests run in parallel without sharing anything.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Fails the test (never silently passes it) when not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates a network namespace); run as root with --include-ignored"
    );
}

/// A network namespace that exists for the guard's lifetime.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates a fresh, uniquely named namespace.
    pub fn create() -> Self {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "banger-t-{:x}-{}-{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        run("ip", &["netns", "add", &name]);
        Self { name }
    }

    /// Takes charge of deleting namespace `name`, which the code under test is to create.
    pub fn cleanup_only(name: impl Into<String>) -> Self {
        require_root();
        Self { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program args…` inside the namespace and returns its stdout; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut argv = vec!["netns", "exec", self.name.as_str(), program];
        argv.extend_from_slice(args);
        run("ip", &argv)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if !std::path::Path::new("/run/netns").join(&self.name).exists() {
            return; // Already gone (a test may delete it itself).
        }
        let status = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not delete test netns {}: {status:?}",
                self.name
            );
        }
    }
}

/// Runs a command to completion and returns its stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("could not run {program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The network namespace of the calling thread, as the `net:[inode]` link text.
pub fn thread_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .map(|link| link.to_string_lossy().into_owned())
        .unwrap_or_else(|err| panic!("could not read /proc/thread-self/ns/net: {err}"))
}
