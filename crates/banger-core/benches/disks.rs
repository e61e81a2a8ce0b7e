//! Disk preparation time: `OverlayDisks::prepare` with the real host layer (`RealDisks`,
//! e2fsprogs) for a VM of a 1 GiB and of a 10 GiB sparse base image.
//!
//! The claim under test: creating a VM does no work proportional to the image's size, so both
//! p50s must be within 10% of each other (the bench exits non-zero otherwise). It also breaks
//! prepare down by host operation (which one dominates), and times the `clone` root mode's
//! sparse copy for contrast (that one grows with the base's data, not its apparent size).
//!
//! Run: `cargo bench -p banger-core --bench disks` (no root, no KVM). Knobs:
//! `BANGER_BENCH_ITERATIONS` (default 30), `BANGER_BENCH_DIR` (default: a temp dir under
//! /var/tmp, the filesystem banger's state dir lives on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use banger_api::{DesiredState, ImageId, RootMode, VmId, VmName, VmState};
use banger_core::disks::OverlayDisks;
use banger_core::VmDisks;
use banger_host::disks::{CloneMethod, DiskError, DiskUsage, Disks, Ext4Info, RealDisks};
use banger_store::records::{ImageRecord, VmRecord};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `RealDisks` that adds up the time spent in each operation.
struct TimedDisks {
    real: RealDisks,
    spent: Mutex<BTreeMap<&'static str, Duration>>,
}

impl TimedDisks {
    fn add(&self, op: &'static str, since: Instant) {
        *self.spent.lock().unwrap().entry(op).or_default() += since.elapsed();
    }

    fn take(&self) -> BTreeMap<&'static str, Duration> {
        std::mem::take(&mut *self.spent.lock().unwrap())
    }
}

#[async_trait]
impl Disks for TimedDisks {
    async fn create_sparse(&self, path: &Path, size_bytes: u64) -> Result<(), DiskError> {
        let t = Instant::now();
        let r = self.real.create_sparse(path, size_bytes).await;
        self.add("create_sparse", t);
        r
    }
    async fn mkfs_ext4(
        &self,
        path: &Path,
        size_bytes: u64,
        source_dir: Option<&Path>,
        label: &str,
    ) -> Result<(), DiskError> {
        let t = Instant::now();
        let r = self
            .real
            .mkfs_ext4(path, size_bytes, source_dir, label)
            .await;
        self.add(
            if label == "banger-upper" {
                "mkfs overlay"
            } else {
                "mkfs work"
            },
            t,
        );
        r
    }
    async fn grow_ext4(&self, path: &Path, new_size_bytes: u64) -> Result<(), DiskError> {
        let t = Instant::now();
        let r = self.real.grow_ext4(path, new_size_bytes).await;
        self.add("grow work (e2fsck + resize2fs)", t);
        r
    }
    async fn check_ext4(&self, path: &Path) -> Result<Ext4Info, DiskError> {
        let t = Instant::now();
        let r = self.real.check_ext4(path).await;
        self.add("read superblocks", t);
        r
    }
    async fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
        let t = Instant::now();
        let r = self.real.clone_file(src, dst).await;
        self.add(
            if dst.ends_with("root.ext4") {
                "clone base"
            } else {
                "clone work seed"
            },
            t,
        );
        r
    }
    fn usage(&self, path: &Path) -> Result<DiskUsage, DiskError> {
        self.real.usage(path)
    }
    fn available_bytes(&self, path: &Path) -> Result<u64, DiskError> {
        self.real.available_bytes(path)
    }
    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.real.remove(path).await
    }
}

fn image(name: &str, rootfs: PathBuf, seed: PathBuf, root_mode: RootMode) -> ImageRecord {
    ImageRecord {
        id: ImageId::new(),
        name: VmName::parse(name).unwrap(),
        kernel_path: "/nonexistent/vmlinux".into(),
        initrd_path: None,
        modules_path: None,
        rootfs_path: rootfs,
        work_seed_path: Some(seed),
        cmdline: String::new(),
        readiness_ports: vec![],
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode,
        created_at: chrono::Utc::now(),
    }
}

fn vm(dir: &Path, image: ImageId) -> VmRecord {
    let id = VmId::new();
    VmRecord {
        id,
        name: VmName::parse("bench").unwrap(),
        image_id: image,
        vcpus: 1,
        memory_mib: 256,
        disk_size_mib: 1024,
        state: VmState::Creating,
        desired_state: DesiredState::Running,
        ip: None,
        mac: None,
        vsock_cid: None,
        vm_dir: dir.join(id.to_string()),
        last_error: None,
        stage_timings: vec![],
        root_clone_method: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

/// A base image of `size` with about 40 MB of files in it (what a small rootfs holds).
async fn make_base(disks: &RealDisks, dir: &Path, size: u64) -> PathBuf {
    let tree = dir.join(format!("tree-{size}"));
    std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
    for i in 0..40 {
        let data: Vec<u8> = (0..MIB).map(|b| (b as u8) ^ (i as u8)).collect();
        std::fs::write(tree.join(format!("usr/lib/blob{i}")), data).unwrap();
    }
    let path = dir.join(format!("base-{}g.ext4", size / GIB));
    disks
        .mkfs_ext4(&path, size, Some(&tree), "rootfs")
        .await
        .unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    path
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Run {
    p50: Duration,
    p95: Duration,
    breakdown: BTreeMap<&'static str, Duration>,
}

/// Prepares (and removes) a VM of each image in turn, `iterations` rounds, so that drift on a
/// shared host (other builds, page cache) hits every image alike.
async fn run(
    timed: &Arc<TimedDisks>,
    disks: &OverlayDisks,
    dir: &Path,
    images: &[&ImageRecord],
    iterations: usize,
) -> Vec<Run> {
    let mut samples = vec![Vec::with_capacity(iterations); images.len()];
    let mut breakdowns = vec![BTreeMap::<&'static str, Duration>::new(); images.len()];
    for _ in 0..iterations {
        for (i, image) in images.iter().enumerate() {
            let vm = vm(dir, image.id);
            timed.take();
            let start = Instant::now();
            disks.prepare(&vm, image).await.unwrap();
            samples[i].push(start.elapsed());
            for (op, spent) in timed.take() {
                *breakdowns[i].entry(op).or_default() += spent;
            }
            disks.remove(&vm).await.unwrap();
            std::fs::remove_dir_all(&vm.vm_dir).unwrap();
        }
    }
    samples
        .into_iter()
        .zip(breakdowns)
        .map(|(mut samples, breakdown)| {
            samples.sort();
            Run {
                p50: percentile(&samples, 50.0),
                p95: percentile(&samples, 95.0),
                breakdown: breakdown
                    .into_iter()
                    .map(|(op, total)| (op, total / iterations as u32))
                    .collect(),
            }
        })
        .collect()
}

fn report(label: &str, run: &Run) {
    let parts: Vec<String> = run
        .breakdown
        .iter()
        .map(|(op, d)| format!("{op} {:.1}", ms(*d)))
        .collect();
    println!(
        "{label:<34} p50 {:>7.1} ms  p95 {:>7.1} ms  | mean per op (ms): {}",
        ms(run.p50),
        ms(run.p95),
        parts.join(", ")
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let iterations: usize = std::env::var("BANGER_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2 } else { 30 });
    let parent = std::env::var_os("BANGER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let scratch = tempfile::Builder::new()
        .prefix("banger-bench-disks-")
        .tempdir_in(&parent)
        .expect("scratch dir");
    let dir = scratch.path();
    let real = RealDisks::new();

    let base_1g = make_base(&real, dir, GIB).await;
    let base_10g = make_base(&real, dir, 10 * GIB).await;
    let seed = dir.join("work-seed.ext4");
    real.mkfs_ext4(&seed, 64 * MIB, None, "banger-work")
        .await
        .unwrap();
    for base in [&base_1g, &base_10g] {
        let usage = real.usage(base).unwrap();
        println!(
            "base {}: {} MiB apparent, {} MiB allocated",
            base.display(),
            usage.apparent_bytes / MIB,
            usage.allocated_bytes / MIB
        );
    }

    let timed = Arc::new(TimedDisks {
        real: RealDisks::new(),
        spent: Mutex::new(BTreeMap::new()),
    });
    let vms = dir.join("vms");
    let disks = OverlayDisks::new(timed.clone(), &vms, 8 * 1024);
    let image_1g = image("base-1g", base_1g.clone(), seed.clone(), RootMode::Overlay);
    let image_10g = image(
        "base-10g",
        base_10g.clone(),
        seed.clone(),
        RootMode::Overlay,
    );
    let clone_1g = image("clone-1g", base_1g, seed.clone(), RootMode::Clone);
    let clone_10g = image("clone-10g", base_10g, seed, RootMode::Clone);

    println!(
        "OverlayDisks::prepare, {iterations} iterations each (overlay 8 GiB, work disk 1 GiB from a 64 MiB seed), in {}",
        parent.display()
    );
    // Warm up (page cache, binaries) first.
    run(&timed, &disks, &vms, &[&image_1g, &image_10g], 2).await;
    let overlay = run(&timed, &disks, &vms, &[&image_1g, &image_10g], iterations).await;
    let clone = run(
        &timed,
        &disks,
        &vms,
        &[&clone_1g, &clone_10g],
        iterations.min(10),
    )
    .await;
    let (r1, r10) = (&overlay[0], &overlay[1]);
    report("overlay, 1 GiB base", r1);
    report("overlay, 10 GiB base", r10);
    report("clone (sparse copy), 1 GiB base", &clone[0]);
    report("clone (sparse copy), 10 GiB base", &clone[1]);

    let diff = (ms(r10.p50) - ms(r1.p50)).abs() / ms(r1.p50);
    println!(
        "p50 difference 1 GiB vs 10 GiB base (overlay): {:.1}%",
        diff * 100.0
    );
    if !smoke && diff >= 0.10 {
        eprintln!("FAIL: disk preparation depends on the base image's size (>= 10%)");
        std::process::exit(1);
    }
}
