//! End to end through the `banger` CLI binary with real guests: exec (stdin, >10 MB stdout,
//! stderr, exit codes, TTY), cp of 50 MB both ways and of a directory tree both ways, `vm run --rm`, and `vm ssh` through the
//! system OpenSSH and the agent's port pipe (including a wrong host key being refused).
//!
//! The daemon is the real one in-process ([`RealDaemon`], QEMU under TCG, no guest NIC); the CLI
//! runs as a separate process with the same environment. Ignored by default; run with
//! `cargo test -p banger-testkit --test e2e_guest -- --include-ignored` (needs QEMU,
//! vhost-device-vsock, OpenSSH client and server on this host for the test guest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_api::guest::{ExecEvent, ExecStart, TermSize, STREAM_STDOUT};
use banger_testkit::{banger_binary, environment, pid_alive, test_guest, RealDaemon};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 10\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n";

/// Runs the CLI with the daemon's environment, `stdin` as its standard input.
async fn banger(dir: &Path, args: &[&str], stdin: Option<&Path>) -> Output {
    let env = environment(dir, CONFIG);
    let mut cmd = tokio::process::Command::new(banger_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in &env.vars {
        cmd.env(key, value);
    }
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).unwrap()),
            None => Stdio::null(),
        });
    tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("banger took over 300 s")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn sha256_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, bytes).unwrap();
    sha256(&path)
}

fn random_file(path: &Path, len: usize, mode: u32) {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(path, &data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn start_vm(dir: &Path, name: &str) -> RealDaemon {
    let d = RealDaemon::start(dir, CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    d.expect_ok(
        &d.post("/v1/vms", json!({"name": name, "image": "testguest"}))
            .await,
    )
    .await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock, openssh-server and the Debian test guest; run with --include-ignored"]
async fn exec_streams_stdio_and_exit_codes_and_cp_moves_50_mb_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_vm(dir.path(), "box").await;
    let p = dir.path();

    // stdin streamed in, checksum computed in the guest.
    let input = p.join("input.bin");
    random_file(&input, 1024 * 1024 + 3, 0o644);
    let out = banger(p, &["vm", "exec", "box", "--", "sha256sum"], Some(&input)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&sha256(&input)),
        "{}",
        text(&out.stdout)
    );

    // > 10 MB of stdout intact; stderr separate.
    let out = banger(
        p,
        &["vm", "exec", "box", "--", "sh", "-c",
          "head -c 12000000 /dev/urandom > /tmp/big; sha256sum /tmp/big >&2; cat /tmp/big; rm /tmp/big"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 12_000_000);
    let guest_sum = text(&out.stderr);
    assert!(
        guest_sum.starts_with(&sha256_of(&out.stdout)),
        "stderr: {guest_sum}"
    );
    let out = banger(
        p,
        &[
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
        None,
    )
    .await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );

    // Exit codes: 0, 1, 137 (SIGKILL), 127 (no such program), -e and -w.
    for (argv, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "kill -9 $$"], 137),
        (vec!["/no/such/program"], 127),
    ] {
        let mut args = vec!["vm", "exec", "box", "--"];
        args.extend(argv.iter().copied());
        let out = banger(p, &args, None).await;
        assert_eq!(
            out.status.code(),
            Some(want),
            "{argv:?}: {}",
            text(&out.stderr)
        );
    }
    let out = banger(
        p,
        &[
            "vm",
            "exec",
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "box",
            "--",
            "sh",
            "-c",
            "echo $GREETING; pwd",
        ],
        None,
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "hi there\n/tmp\n",
        "{}",
        text(&out.stderr)
    );

    // A TTY session: -t gives the command a pseudo-terminal...
    let out = banger(p, &["vm", "exec", "-t", "box", "--", "tty"], None).await;
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    // ... of the size the client asks for (over the API: the test has no terminal to measure).
    let (sink_out, size) = tty_size_over_the_api(&d, "box", TermSize { rows: 33, cols: 99 }).await;
    assert_eq!(size, "33 99", "{sink_out}");

    // cp: 50 MB both ways, checksum and mode kept.
    let src = p.join("fifty.bin");
    random_file(&src, 50 * 1024 * 1024, 0o640);
    let started = Instant::now();
    let out = banger(
        p,
        &["vm", "cp", src.to_str().unwrap(), "box:/root/fifty.bin"],
        None,
    )
    .await;
    let up = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = banger(
        p,
        &[
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "sha256sum /root/fifty.bin; stat -c %a /root/fifty.bin",
        ],
        None,
    )
    .await;
    let guest = text(&out.stdout);
    assert!(guest.starts_with(&sha256(&src)), "{guest}");
    assert!(guest.ends_with("640\n"), "{guest}");
    let back = p.join("back");
    std::fs::create_dir(&back).unwrap();
    let started = Instant::now();
    let out = banger(
        p,
        &["vm", "cp", "box:/root/fifty.bin", back.to_str().unwrap()],
        None,
    )
    .await;
    let down = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied = back.join("fifty.bin");
    assert_eq!(sha256(&copied), sha256(&src));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&copied).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    eprintln!(
        "cp 50 MiB: up {up:?} ({:.1} MiB/s), down {down:?} ({:.1} MiB/s)",
        50.0 / up.as_secs_f64(),
        50.0 / down.as_secs_f64()
    );

    // cp into a directory that does not exist: a clear error, non-zero exit.
    let out = banger(
        p,
        &["vm", "cp", src.to_str().unwrap(), "box:/no/such/dir/f"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    // --timeout: killed, status 124 like coreutils' timeout, and a line saying why.
    let started = Instant::now();
    let out = banger(
        p,
        &["vm", "exec", "box", "--timeout", "1", "--", "sleep", "30"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out after 1 s"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(25));

    // cp of a directory tree, both ways (tar through the guest's tar), like `docker cp`.
    let tree = p.join("tree");
    std::fs::create_dir_all(tree.join("sub/deep")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.sh"), "#!/bin/sh\necho b\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/b.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    random_file(&tree.join("sub/deep/c.bin"), 1024 * 1024, 0o600);
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2020-02-02 02:02:02"])
        .arg(tree.join("a.txt"))
        .status()
        .unwrap();
    assert!(touched.success());
    let out = banger(
        p,
        &["vm", "cp", tree.to_str().unwrap(), "box:/root/proj"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = banger(
        p,
        &[
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cd /root/proj && find . | sort && stat -c '%a %n' sub/b.sh sub/deep/c.bin && \
             readlink link && sha256sum sub/deep/c.bin && date -u -r a.txt +%F",
        ],
        None,
    )
    .await;
    let listing = text(&out.stdout);
    for expected in [
        "./a.txt\n",
        "./link\n",
        "./sub/b.sh\n",
        "./sub/deep/c.bin\n",
        "755 sub/b.sh\n",
        "600 sub/deep/c.bin\n",
        "a.txt\n",
        "2020-02-02\n",
    ] {
        assert!(listing.contains(expected), "{expected:?} in {listing}");
    }
    assert!(
        listing.contains(&sha256(&tree.join("sub/deep/c.bin"))),
        "{listing}"
    );
    // Into an existing directory: it lands under its own name.
    let out = banger(
        p,
        &["vm", "cp", tree.to_str().unwrap(), "box:/root/proj"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = banger(
        p,
        &["vm", "exec", "box", "--", "cat", "/root/proj/tree/a.txt"],
        None,
    )
    .await;
    assert_eq!(text(&out.stdout), "alpha\n");

    let down = p.join("down");
    let out = banger(
        p,
        &["vm", "cp", "box:/root/proj", down.to_str().unwrap()],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(down.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read_link(down.join("link")).unwrap(),
        std::path::PathBuf::from("a.txt")
    );
    assert_eq!(
        std::fs::metadata(down.join("sub/b.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        sha256(&down.join("sub/deep/c.bin")),
        sha256(&tree.join("sub/deep/c.bin"))
    );
    assert_eq!(
        std::fs::metadata(down.join("a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        std::fs::metadata(tree.join("a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        "mtime kept both ways"
    );
    assert!(down.join("tree/a.txt").exists(), "the nested copy came too");
    let out = banger(
        p,
        &["vm", "cp", "box:/root/proj", down.to_str().unwrap()],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        down.join("proj/sub/deep/c.bin").exists(),
        "into an existing dir"
    );
    // Neither a file nor a directory: the file API's error, and nothing created here.
    let nowhere = p.join("nowhere");
    let out = banger(
        p,
        &["vm", "cp", "box:/dev/null", nowhere.to_str().unwrap()],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    assert!(!nowhere.exists());

    d.expect_ok(&d.delete("/v1/vms/box?force=true").await).await;
    d.stop().await;
}

/// Runs `stty size` on a TTY of `size` through the exec WebSocket; returns (all output, size).
async fn tty_size_over_the_api(d: &RealDaemon, vm: &str, size: TermSize) -> (String, String) {
    let stream = tokio::net::UnixStream::connect(d.config.socket_path())
        .await
        .unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://localhost/v1/vms/{vm}/exec"), stream)
            .await
            .unwrap();
    let start = ExecStart {
        argv: vec!["stty".into(), "size".into()],
        tty: Some(size),
        ..ExecStart::default()
    };
    ws.send(Message::text(serde_json::to_string(&start).unwrap()))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(data) if data[0] == STREAM_STDOUT => out.extend_from_slice(&data[1..]),
            Message::Text(t) => {
                if let Ok(ExecEvent::Exit { .. }) = serde_json::from_str::<ExecEvent>(&t) {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let all = text(&out);
    (all.clone(), all.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock, openssh-server and the Debian test guest; run with --include-ignored"]
async fn ssh_runs_a_command_and_refuses_a_guest_with_another_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_vm(dir.path(), "sshbox").await;
    let p = dir.path();

    let out = banger(p, &["vm", "ssh", "sshbox", "--", "echo", "ok"], None).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    let known =
        std::fs::read_to_string(d.config.data_dir.join("ssh/known_hosts.d/sshbox")).unwrap();
    assert!(known.starts_with("sshbox ssh-ed25519 "), "{known}");

    // ssh-config names the same key, alias and proxy.
    let out = banger(p, &["ssh-config"], None).await;
    let config = text(&out.stdout);
    assert!(config.contains("Host sshbox"), "{config}");
    assert!(config.contains("StrictHostKeyChecking yes"), "{config}");
    assert!(config.contains("vm proxy sshbox %p"), "{config}");

    // The agent now reports a key sshd does not hold: ssh must refuse to talk.
    let out = banger(
        p,
        &["vm", "exec", "sshbox", "--", "sh", "-c",
          "ssh-keygen -q -t ed25519 -N '' -f /tmp/other && cp /tmp/other.pub /etc/ssh/ssh_host_ed25519_key.pub"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = banger(p, &["vm", "ssh", "sshbox", "--", "echo", "ok"], None).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "stderr: {}",
        text(&out.stderr)
    );

    d.expect_ok(&d.delete("/v1/vms/sshbox?force=true").await)
        .await;
    d.stop().await;
}

fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && pid_alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn run_with_rm_exits_with_the_command_code_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    let p = dir.path();

    let out = banger(
        p,
        &[
            "vm",
            "run",
            "--rm",
            "--name",
            "once",
            "--image",
            "testguest",
            "--",
            "sh",
            "-c",
            "echo hi; echo warn >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "nothing but the command's output on stdout"
    );
    assert_eq!(text(&out.stderr), "warn\n");

    let vms: Vec<banger_api::Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:#?}");
    let left: Vec<_> = std::fs::read_dir(d.config.vms_dir())
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM dirs left: {left:?}");
    let run_dir = d.config.runtime_dir.join("vms");
    assert!(
        processes_mentioning(&run_dir.display().to_string()).is_empty(),
        "processes left"
    );

    // A create that fails (no such image) with --rm leaves nothing either.
    let out = banger(
        p,
        &[
            "vm",
            "run",
            "--rm",
            "--name",
            "never",
            "--image",
            "nosuchimage",
            "--",
            "true",
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    let vms: Vec<banger_api::Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:#?}");

    // Without --rm, a second run reuses the VM (after a stop, it is started again).
    let out = banger(
        p,
        &[
            "vm",
            "run",
            "--name",
            "keep",
            "--image",
            "testguest",
            "--",
            "true",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.expect_ok(&d.post("/v1/vms/keep/stop", json!(null)).await)
        .await;
    let out = banger(
        p,
        &[
            "vm",
            "run",
            "--name",
            "keep",
            "--",
            "cat",
            "/proc/sys/kernel/hostname",
        ],
        None,
    )
    .await;
    assert_eq!(text(&out.stdout), "keep\n", "{}", text(&out.stderr));
    d.expect_ok(&d.delete("/v1/vms/keep?force=true").await)
        .await;
    d.stop().await;
}
