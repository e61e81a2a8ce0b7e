//! The web listener, stats, logs and metrics with the fake host: the real daemon on a temp
//! socket plus its loopback TCP listener on a free port.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{ApiError, ErrorCode, Operation, Vm, VmStats, WebAccess};
use bytes::Bytes;
use common::{config_in, Daemon};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// A daemon with the web UI on 127.0.0.1:<free port>, a 1 s stats loop and a fake procfs.
async fn web_daemon(dir: &Path) -> (Daemon, WebAccess, PathBuf) {
    let mut config = config_in(dir);
    config.web.enabled = true;
    config.web.listen = "127.0.0.1:0".parse().unwrap();
    config.stats_poll_interval_secs = 1;
    let (mut host, fakes) = banger_daemon::Host::fake();
    let proc_root = dir.join("proc");
    std::fs::create_dir_all(&proc_root).unwrap();
    host.proc_root = proc_root.clone();
    let d = Daemon::start_configured(config, host, fakes).await;
    let access: WebAccess = d.client.get("/v1/web").await.unwrap();
    (d, access, proc_root)
}

fn addr(access: &WebAccess) -> SocketAddr {
    access.url.trim_start_matches("http://").parse().unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn api_error(&self) -> ApiError {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// One HTTP/1.1 request to the web listener. `Host` is the listener's address unless given.
async fn http(
    access: &WebAccess,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr(access)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request = request.header("host", addr(access).to_string());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let bytes = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&body).unwrap())
        }
        None => Bytes::new(),
    };
    let response = sender
        .send_request(request.body(Full::new(bytes)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn cookie(access: &WebAccess) -> String {
    format!("banger_session={}", access.token)
}

fn bearer(access: &WebAccess) -> String {
    format!("Bearer {}", access.token)
}

#[tokio::test]
async fn web_access_is_refused_when_the_web_ui_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let err = match d.client.get::<WebAccess>("/v1/web").await {
        Err(banger_cli::client::ClientError::Api(api)) => api,
        other => panic!("{other:?}"),
    };
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("web.enabled"), "{}", err.message);
    d.stop().await;
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, _) = web_daemon(dir.path()).await;
    assert_eq!(access.token.len(), 64);
    assert_eq!(
        access.login_url,
        format!("{}/login?token={}", access.url, access.token)
    );
    for path in ["/v1/vms", "/v1/health", "/metrics", "/v1/stats"] {
        let answer = http(&access, Method::GET, path, &[], None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.api_error().code, ErrorCode::Unauthorized);
    }
    let page = http(&access, Method::GET, "/", &[], None).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.text().contains("banger web"), "{}", page.text());
    let wrong = http(
        &access,
        Method::GET,
        "/v1/vms",
        &[
            ("cookie", "banger_session=0000"),
            ("authorization", "Bearer 0000"),
        ],
        None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    d.stop().await;
}

#[tokio::test]
async fn login_exchanges_the_token_for_a_strict_http_only_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, _) = web_daemon(dir.path()).await;
    let bad = http(&access, Method::GET, "/login?token=nope", &[], None).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get("set-cookie").is_none());

    let login = http(
        &access,
        Method::GET,
        &format!("/login?token={}", access.token),
        &[],
        None,
    )
    .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    assert_eq!(login.headers["location"], "/");
    let set_cookie = login.headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.starts_with(&cookie(&access)), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert_eq!(login.headers["referrer-policy"], "no-referrer");

    let jar = set_cookie.split(';').next().unwrap().to_string();
    let page = http(&access, Method::GET, "/", &[("cookie", &jar)], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("Virtual machines"));
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    d.stop().await;
}

#[tokio::test]
async fn state_changing_requests_need_the_listeners_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, _) = web_daemon(dir.path()).await;
    d.add_image("base", vec![]);
    let jar = cookie(&access);
    let body = || Some(json!({"name": "web1", "image": "base"}));

    let foreign = http(
        &access,
        Method::POST,
        "/v1/vms",
        &[("cookie", &jar), ("origin", "http://evil.example")],
        body(),
    )
    .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(foreign.api_error().code, ErrorCode::Unauthorized);
    let no_origin = http(
        &access,
        Method::POST,
        "/v1/vms",
        &[("cookie", &jar)],
        body(),
    )
    .await;
    assert_eq!(no_origin.status, StatusCode::FORBIDDEN);
    let bearer_foreign = http(
        &access,
        Method::POST,
        "/v1/vms",
        &[
            ("authorization", &bearer(&access)),
            ("origin", "http://evil.example"),
        ],
        body(),
    )
    .await;
    assert_eq!(bearer_foreign.status, StatusCode::FORBIDDEN);
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "nothing was created: {vms:?}");

    let ours = http(
        &access,
        Method::POST,
        "/v1/vms",
        &[("cookie", &jar), ("origin", &access.url)],
        body(),
    )
    .await;
    assert_eq!(ours.status, StatusCode::ACCEPTED, "{}", ours.text());
    d.wait(&ours.json::<Operation>()).await;
    let by_bearer = http(
        &access,
        Method::POST,
        "/v1/vms",
        &[("authorization", &bearer(&access))],
        Some(json!({"name": "web2", "image": "base"})),
    )
    .await;
    assert_eq!(
        by_bearer.status,
        StatusCode::ACCEPTED,
        "{}",
        by_bearer.text()
    );
    d.wait(&by_bearer.json::<Operation>()).await;
    d.stop().await;
}

#[tokio::test]
async fn a_foreign_host_header_and_the_token_route_are_refused_on_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, _) = web_daemon(dir.path()).await;
    let rebound = http(
        &access,
        Method::GET,
        "/v1/vms",
        &[
            ("host", "rebound.evil.example"),
            ("authorization", &bearer(&access)),
        ],
        None,
    )
    .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    let token = http(
        &access,
        Method::GET,
        "/v1/web",
        &[("authorization", &bearer(&access))],
        None,
    )
    .await;
    assert_eq!(token.status, StatusCode::NOT_FOUND);
    assert!(!token.text().contains(&access.token));
    let port = addr(&access).port();
    let localhost = http(
        &access,
        Method::GET,
        "/v1/health",
        &[
            ("host", &format!("localhost:{port}")),
            ("cookie", &cookie(&access)),
        ],
        None,
    )
    .await;
    assert_eq!(localhost.status, StatusCode::OK);
    d.stop().await;
}

fn write_fake_proc(proc_root: &Path, pid: u32, ticks: u64, rss_kib: u64) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    // utime = ticks, stime = 0, starttime = 1 (what the fake VMM's handles say).
    std::fs::write(
        dir.join("stat"),
        format!("{pid} (qemu-system-x86) S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 1 0 0\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("status"),
        format!("Name:\tqemu\nVmRSS:\t{rss_kib} kB\n"),
    )
    .unwrap();
}

async fn wait_samples(d: &Daemon, vm: &str, at_least: usize) -> VmStats {
    for _ in 0..100 {
        let stats: VmStats = d.client.get(&format!("/v1/vms/{vm}/stats")).await.unwrap();
        if stats.samples.len() >= at_least {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{vm} never had {at_least} samples");
}

#[tokio::test]
async fn the_stats_loop_samples_running_vms_and_metrics_export_them() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, proc_root) = web_daemon(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "dev", "image": "base", "memory_mib": 512}))
        .await;
    let vm: Vm = d.client.get("/v1/vms/dev").await.unwrap();
    let pid = vm.pid.unwrap();
    write_fake_proc(&proc_root, pid, 1000, 65_536);
    let first = wait_samples(&d, "dev", 1).await;
    let n = first.samples.len();
    // 100 ticks per second of wall time: about 100 % of one CPU.
    write_fake_proc(&proc_root, pid, 1000 + 100 * 5, 65_536);
    let stats = wait_samples(&d, "dev", n + 1).await;
    let latest = stats.latest.clone().unwrap();
    assert_eq!(stats.interval_secs, 1);
    assert!(latest.process_known && latest.io_known, "{latest:?}");
    assert!(latest.cpu_percent > 0.0, "{latest:?}");
    assert_eq!(latest.rss_bytes, 64 << 20);
    assert_eq!(latest.guest_memory_bytes, 512 << 20);
    assert_eq!(latest.net_rx_bytes, 1, "the fake VMM's counters");
    assert!(d
        .fakes
        .vmm
        .calls()
        .iter()
        .any(|c| c.starts_with("counters:")));
    // Once the VM's tap reports traffic, the NIC counters come from it, not from the VMM.
    let tap = d.fakes.network.taps_in_use().pop().unwrap();
    d.fakes.network.set_nic_counters(
        &tap,
        banger_core::backends::NicCounters {
            rx_bytes: 4096,
            tx_bytes: 512,
            rx_packets: 4,
            tx_packets: 2,
        },
    );
    // Polled until the tap's numbers show: a tick between the GET above and set_nic_counters
    // could otherwise satisfy a sample count with the VMM's.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let latest = loop {
        let stats: VmStats = d.client.get("/v1/vms/dev/stats").await.unwrap();
        let latest = stats.latest.clone().unwrap();
        if latest.net_rx_bytes == 4096 {
            break latest;
        }
        assert!(std::time::Instant::now() < deadline, "{latest:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            latest.net_rx_bytes,
            latest.net_tx_bytes,
            latest.net_rx_packets
        ),
        (4096, 512, 4)
    );
    assert_eq!(latest.block_read_bytes, first.samples[0].block_read_bytes);

    let all: Vec<VmStats> = d.client.get("/v1/stats").await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].samples.is_empty() && all[0].latest.is_some());
    let with_history: Vec<VmStats> = d.client.get("/v1/stats?last=2").await.unwrap();
    assert_eq!(with_history[0].samples.len(), 2);

    let metrics = http(
        &access,
        Method::GET,
        "/metrics",
        &[("authorization", &bearer(&access))],
        None,
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad value in `{line}`");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in `{line}`"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    assert!(text.contains("banger_vms{state=\"running\"} 1\n"), "{text}");
    assert!(
        text.contains("banger_vm_rss_bytes{vm=\"dev\"} 67108864\n"),
        "{text}"
    );
    assert!(
        text.contains("banger_vm_cpu_seconds_total{vm=\"dev\"} "),
        "{text}"
    );
    assert!(
        text.contains("banger_vm_network_receive_bytes_total{vm=\"dev\"} 4096\n"),
        "{text}"
    );

    // A stopped VM has no samples; its ring is gone.
    let op: Operation = d
        .client
        .call(Method::POST, "/v1/vms/dev/stop?force=true", None::<&()>)
        .await
        .unwrap();
    d.wait(&op).await;
    let mut cleared = false;
    for _ in 0..50 {
        let stats: VmStats = d.client.get("/v1/vms/dev/stats").await.unwrap();
        if stats.latest.is_none() {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cleared, "stats of a stopped VM are dropped");
    d.stop().await;
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(chunk).unwrap()
}

#[tokio::test]
async fn logs_give_the_tail_then_follow_until_the_vm_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "dev", "image": "base"})).await;
    let vm: Vm = d.client.get("/v1/vms/dev").await.unwrap();
    let vm_dir = d.config.vms_dir().join(vm.id.to_string());
    let console = vm_dir.join("console.log");
    std::fs::write(&console, "one\ntwo\nthree\n").unwrap();
    std::fs::write(vm_dir.join("vmm.log"), "qemu says hi\n").unwrap();

    let (status, body) = d
        .client
        .raw(Method::GET, "/v1/vms/dev/logs?tail=2", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "two\nthree\n");
    let (_, body) = d
        .client
        .raw(Method::GET, "/v1/vms/dev/logs?kind=vmm", None, vec![])
        .await
        .unwrap();
    assert_eq!(body, "qemu says hi\n");
    let (status, _) = d
        .client
        .raw(Method::GET, "/v1/vms/dev/logs?kind=kernel", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = d
        .client
        .raw(Method::GET, "/v1/vms/nope/logs", None, vec![])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let client = d.client.clone();
    let follower = tokio::spawn(async move {
        client
            .stream("/v1/vms/dev/logs?tail=1&follow=true", |chunk| {
                let _ = tx.send(chunk.to_vec());
            })
            .await
    });
    assert_eq!(next(&mut rx).await, "three\n");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .unwrap();
        file.write_all(b"four\n").unwrap();
    }
    assert_eq!(next(&mut rx).await, "four\n");

    let op: Operation = d
        .client
        .call(Method::DELETE, "/v1/vms/dev?force=true", None::<&()>)
        .await
        .unwrap();
    d.wait(&op).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), follower).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "following ends when the VM is deleted: {ended:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn pages_render_the_vm_the_create_form_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let (d, access, _) = web_daemon(dir.path()).await;
    d.add_image("base", vec![22]);
    d.create(json!({"name": "dev", "image": "base"})).await;
    let jar = cookie(&access);
    let get = |path: &'static str| {
        let access = access.clone();
        let jar = jar.clone();
        async move { http(&access, Method::GET, path, &[("cookie", &jar)], None).await }
    };
    let list = get("/").await;
    assert!(
        list.text().contains("<a href=\"/vms/dev\">dev</a>"),
        "{}",
        list.text()
    );
    assert!(list.text().contains("state-running"));
    let form = get("/vms/new").await;
    assert!(form.text().contains("<option value=\"base\">base</option>"));
    assert!(form.text().contains("data-error-for=\"vcpus\""));
    let page = get("/vms/dev").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("data-action=\"delete\""));
    assert_eq!(get("/vms/nope").await.status, StatusCode::NOT_FOUND);
    let images = get("/images").await;
    assert!(images.text().contains("data-delete-image"));
    let js = get("/assets/app.js").await;
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.body.len() < 64 * 1024, "the UI stays small");
    d.stop().await;
}

#[tokio::test]
async fn shutdown_is_not_held_by_a_followed_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("base", vec![]);
    d.create(json!({"name": "dev", "image": "base"})).await;
    let client = d.client.clone();
    let follower =
        tokio::spawn(async move { client.stream("/v1/vms/dev/logs?follow=true", |_| {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(10), d.stop())
        .await
        .expect("the daemon stops while a log is followed");
    let _ = tokio::time::timeout(Duration::from_secs(5), follower).await;
}
