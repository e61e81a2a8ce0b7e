//! The web UI in a real headless Chromium: a daemon with the fake host layer and the web
//! listener on a free loopback port, driven by `tests/web/ui.test.mjs` (Playwright's
//! `playwright-core` with Debian's /usr/bin/chromium).
//!
//! While the browser runs, a feeder plays the guest: it writes CPU ticks and RSS for each fake
//! VMM pid into a fake procfs (so the stats loop has numbers that move) and appends lines to
//! each VM's console log (so the console pane has something to follow). The fake VMM's launch
//! is slowed down so the create page can be caught mid-create for its screenshot.
//!
//! Screenshots go to a temp dir; `BANGER_SCREENSHOTS=docs/screenshots` refreshes the committed ones.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{Vm, WebAccess};
use banger_cli::client::Client;
use banger_testkit::{environment, register_fake_image, workspace_root};

const CONFIG: &str = "stats_poll_interval_secs = 1\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\n\n[web]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";

fn add_image(config: &banger_config::Config, name: &str) {
    register_fake_image(config, name, vec![22]);
}

/// Plays the guests: CPU ticks and RSS in the fake procfs, console lines, a VMM log line.
async fn feed(client: Client, vms_dir: PathBuf, proc_root: PathBuf) {
    let mut tick: u64 = 0;
    let mut ticks: std::collections::HashMap<u32, u64> = Default::default();
    loop {
        tick += 1;
        if let Ok(vms) = client.get::<Vec<Vm>>("/v1/vms").await {
            for vm in vms {
                let vm_dir = vms_dir.join(vm.id.to_string());
                if let Some(pid) = vm.pid {
                    let total = ticks.entry(pid).or_insert(0);
                    // A wavy 10-60 % of one CPU at 100 ticks per second, fed every 250 ms.
                    *total += 3 + (tick * 7 % 13);
                    let dir = proc_root.join(pid.to_string());
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(
                        dir.join("stat"),
                        format!("{pid} (qemu-system-x86) S 1 1 1 0 -1 0 0 0 0 0 {total} 0 0 0 20 0 1 0 1 0 0\n"),
                    );
                    let rss_kib = 180_000 + (tick % 20) * 1024;
                    let _ = std::fs::write(dir.join("status"), format!("VmRSS:\t{rss_kib} kB\n"));
                }
                if vm_dir.is_dir() {
                    use std::io::Write;
                    if let Ok(mut log) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(vm_dir.join("console.log"))
                    {
                        let _ = writeln!(
                            log,
                            "[{:>5}.{:03}] fake console line {tick}: {} is alive",
                            tick / 4,
                            (tick % 4) * 250,
                            vm.name
                        );
                    }
                    let vmm_log = vm_dir.join("vmm.log");
                    if !vmm_log.exists() {
                        let _ = std::fs::write(
                            &vmm_log,
                            "fake vmm log: qemu-system-x86_64 -M microvm started\n",
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium + node + playwright-core; run with --include-ignored"]
async fn web_ui_works_in_headless_chromium() {
    let web_dir = workspace_root().join("tests/web");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "needs Debian's chromium: apt-get install -y chromium"
    );
    assert!(
        web_dir.join("node_modules/playwright-core").is_dir(),
        "needs playwright-core: (cd tests/web && npm ci)"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = banger_config::load(&environment(dir.path(), CONFIG))
        .unwrap()
        .config;
    std::fs::create_dir_all(&config.runtime_dir).unwrap();
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let socket = config.socket_path();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (mut host, fakes) = banger_daemon::Host::fake();
    host.proc_root = dir.path().join("proc");
    fakes.vmm.set_launch_delay(Duration::from_millis(1500));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(banger_daemon::run(
        listener,
        config.clone(),
        host.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = Client::new(&socket);
    let mut access = None;
    for _ in 0..500 {
        if let Ok(a) = client.get::<WebAccess>("/v1/web").await {
            access = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let access = access.expect("the daemon serves /v1/web");
    add_image(&config, "base");
    let feeder = tokio::spawn(feed(
        client.clone(),
        config.vms_dir(),
        host.proc_root.clone(),
    ));

    // The committed screenshots are refreshed only on request (BANGER_SCREENSHOTS=docs/screenshots),
    // so a test run never rewrites tracked files.
    let scratch = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("BANGER_SCREENSHOTS")
        .map(|dir| workspace_root().join(dir))
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let run = tokio::process::Command::new("node")
        .arg(web_dir.join("ui.test.mjs"))
        .arg(&access.url)
        .arg(&access.token)
        .arg(&shots)
        .current_dir(&web_dir)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finished within 4 minutes")
        .expect("node runs");
    feeder.abort();
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    assert!(status.success(), "ui.test.mjs failed: {status}");
}
