//! What users read: tables, detail views, stage lines, errors. Pure functions of their input
//! (the clock is passed in) so golden-file tests pin them.

use banger_api::{
    ApiError, Image, Operation, RootCloneMethod, RootMode, Stage, StageStatus, Vm, VmDisk,
};
use chrono::{DateTime, Utc};

/// A plain text table: a header row, columns separated by two spaces, no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with `header`.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with every column as wide as its widest cell.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// MiB as `512M` / `2G` / `1.5G`.
pub fn mib(value: u64) -> String {
    if value >= 1024 && value.is_multiple_of(1024) {
        format!("{}G", value / 1024)
    } else if value >= 1024 {
        format!("{:.1}G", value as f64 / 1024.0)
    } else {
        format!("{value}M")
    }
}

/// Bytes as `12K` / `3.4M` / `1.2G`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// `vm list`.
pub fn vm_table(vms: &[Vm], now: DateTime<Utc>) -> String {
    if vms.is_empty() {
        return "No VMs. Create one with `banger vm create`.\n".to_string();
    }
    let mut table = Table::new(&[
        "NAME", "STATE", "IP", "IMAGE", "CPUS", "MEMORY", "DISK", "CREATED",
    ]);
    for vm in vms {
        table.row(vec![
            vm.name.to_string(),
            vm.state.to_string(),
            vm.ip.clone().unwrap_or_else(|| "-".into()),
            vm.image_name.clone(),
            vm.vcpus.to_string(),
            mib(vm.memory_mib),
            mib(vm.disk_size_mib),
            ago(vm.created_at, now),
        ]);
    }
    table.render()
}

/// One forward, `HOST -> GUEST/proto`.
pub fn port_line(forward: &banger_api::PortForward) -> String {
    format!(
        "host port {} -> guest port {} ({})",
        forward.host_port, forward.guest_port, forward.proto
    )
}

/// `vm port NAME`.
pub fn port_table(forwards: &[banger_api::PortForward]) -> String {
    if forwards.is_empty() {
        return "No port forwards. Add one with `banger vm port NAME HOST:GUEST`.\n".to_string();
    }
    let mut table = Table::new(&["HOST", "GUEST", "PROTO"]);
    for forward in forwards {
        table.row(vec![
            forward.host_port.to_string(),
            forward.guest_port.to_string(),
            forward.proto.to_string(),
        ]);
    }
    table.render()
}

/// `vm show`.
pub fn vm_detail(vm: &Vm, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("Name", vm.name.to_string()),
        ("ID", vm.id.to_string()),
        (
            "State",
            format!("{} (wants {})", vm.state, vm.desired_state.as_str()),
        ),
        ("Image", format!("{} ({})", vm.image_name, vm.image_id)),
        ("vCPUs", vm.vcpus.to_string()),
        ("Memory", mib(vm.memory_mib)),
        ("Work disk", mib(vm.disk_size_mib)),
        ("Root", root_line(vm)),
        ("IP", vm.ip.clone().unwrap_or_else(|| "-".into())),
        ("DNS", vm.dns_name.clone().unwrap_or_else(|| "-".into())),
        ("MAC", vm.mac.clone().unwrap_or_else(|| "-".into())),
        (
            "vsock CID",
            vm.vsock_cid
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "VMM",
            match (&vm.vmm, vm.pid) {
                (Some(kind), Some(pid)) => format!("{kind}, pid {pid}"),
                _ => "-".into(),
            },
        ),
        (
            "Created",
            format!(
                "{} ({})",
                vm.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                ago(vm.created_at, now)
            ),
        ),
    ];
    for (i, line) in disk_lines(&vm.disks).into_iter().enumerate() {
        lines.push((if i == 0 { "Disks" } else { "" }, line));
    }
    if !vm.stage_timings.is_empty() {
        let total: u64 = vm.stage_timings.iter().map(|t| t.duration_ms).sum();
        let stages = vm
            .stage_timings
            .iter()
            .map(|t| format!("{} {}ms", t.stage, t.duration_ms))
            .collect::<Vec<_>>();
        lines.push(("Last boot", format!("{total}ms: {}", stages.join(", "))));
    }
    if let Some(err) = &vm.last_error {
        lines.push(("Last error", err.clone()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// How the VM's root is made, for `vm show`.
fn root_line(vm: &Vm) -> String {
    match (vm.root_mode, vm.root_clone_method) {
        (RootMode::Overlay, _) => "overlay over the image's shared read-only base".to_string(),
        (RootMode::Clone, Some(RootCloneMethod::Reflink)) => {
            "clone of the image's base (reflink: extents shared until written)".to_string()
        }
        (RootMode::Clone, Some(RootCloneMethod::SparseCopy)) => {
            "clone of the image's base (sparse copy: the host cannot reflink)".to_string()
        }
        (RootMode::Clone, None) => "clone of the image's base (not made yet)".to_string(),
    }
}

/// One aligned line per disk: name, size the guest sees, space the host allocated, file.
fn disk_lines(disks: &[VmDisk]) -> Vec<String> {
    let name_width = disks.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let sizes: Vec<String> = disks
        .iter()
        .map(|d| {
            format!(
                "{} ({} allocated)",
                bytes(d.apparent_bytes),
                bytes(d.allocated_bytes)
            )
        })
        .collect();
    let size_width = sizes.iter().map(String::len).max().unwrap_or(0);
    disks
        .iter()
        .zip(sizes)
        .map(|(disk, size)| {
            let access = if disk.read_only { ", read-only" } else { "" };
            format!(
                "{:<name_width$}  {size:<size_width$}  {}{access}",
                disk.name, disk.path
            )
        })
        .collect()
}

/// `image list`.
pub fn image_table(images: &[Image], now: DateTime<Utc>) -> String {
    if images.is_empty() {
        return "No images. Register one with `banger image register`.\n".to_string();
    }
    let mut table = Table::new(&["NAME", "MANAGED", "SIZE", "READY PORTS", "CREATED"]);
    for image in images {
        table.row(vec![
            image.name.to_string(),
            if image.managed { "yes" } else { "no" }.to_string(),
            bytes(image.size_bytes),
            if image.readiness_ports.is_empty() {
                "-".to_string()
            } else {
                image
                    .readiness_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            ago(image.created_at, now),
        ]);
    }
    table.render()
}

/// `image show`.
pub fn image_detail(image: &Image) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let lines: Vec<(&str, String)> = vec![
        ("Name", image.name.to_string()),
        ("ID", image.id.to_string()),
        (
            "Managed",
            if image.managed {
                "yes (in banger's store)"
            } else {
                "no (user's files)"
            }
            .into(),
        ),
        ("Kernel", image.kernel_path.clone()),
        ("Initrd", opt(&image.initrd_path)),
        ("Modules", opt(&image.modules_path)),
        ("Rootfs", image.rootfs_path.clone()),
        ("Work seed", opt(&image.work_seed_path)),
        ("Root mode", image.root_mode.to_string()),
        ("Cmdline", image.cmdline.clone()),
        (
            "Ready ports",
            image
                .readiness_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("Agent", opt(&image.agent_version)),
        (
            "Parent",
            image
                .parent_id
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("SHA-256", opt(&image.sha256)),
        ("Size", bytes(image.size_bytes)),
    ];
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// One line for a finished stage: `  ✓ disks        12 ms  detail`.
pub fn stage_line(stage: &Stage) -> String {
    let mark = match stage.status {
        StageStatus::Done => "ok",
        StageStatus::Failed => "FAILED",
        StageStatus::Running => "..",
    };
    let ms = stage
        .duration_ms
        .map(|ms| format!("{ms:>6} ms"))
        .unwrap_or_else(|| "       ..".into());
    let detail = stage
        .detail
        .as_deref()
        .map(|d| format!("  {d}"))
        .unwrap_or_default();
    format!("  {:<9} {ms}  {mark}{detail}", stage.name)
}

/// Prints stages of `op` that finished since `printed` stages were printed; returns the new count.
pub fn new_stage_lines(op: &Operation, printed: usize) -> (Vec<String>, usize) {
    let finished: Vec<&Stage> = op
        .stages
        .iter()
        .filter(|s| s.status != StageStatus::Running)
        .collect();
    let lines = finished
        .iter()
        .skip(printed)
        .map(|s| stage_line(s))
        .collect();
    (lines, finished.len())
}

/// An API error with its cause chain, as the CLI prints it.
pub fn api_error(err: &ApiError) -> String {
    let mut out = format!("error: {}", err.message);
    if let Some(field) = &err.field {
        out.push_str(&format!(" (field `{field}`)"));
    }
    out.push('\n');
    for cause in &err.causes {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    out
}

/// `vm stats`: one row per VM from its latest sample (`-` before the first sample; rates that
/// the VMM cannot report show `?`).
pub fn stats_table(stats: &[banger_api::VmStats]) -> String {
    if stats.is_empty() {
        return "No running VMs.\n".to_string();
    }
    let rate = |known: bool, per_sec: f64| {
        if known {
            format!("{}/s", bytes(per_sec.round() as u64))
        } else {
            "?".to_string()
        }
    };
    let mut table = Table::new(&[
        "NAME",
        "CPU",
        "CPU TIME",
        "RSS",
        "GUEST MEM",
        "NET RX",
        "NET TX",
        "DISK READ",
        "DISK WRITE",
    ]);
    for vm in stats {
        let row = match &vm.latest {
            None => vec![vm.name.clone(), "-".into()],
            Some(s) => vec![
                vm.name.clone(),
                if s.process_known {
                    format!("{:.1}%", s.cpu_percent)
                } else {
                    "?".into()
                },
                if s.process_known {
                    format!("{:.1}s", s.cpu_time_ms as f64 / 1000.0)
                } else {
                    "?".into()
                },
                if s.process_known {
                    bytes(s.rss_bytes)
                } else {
                    "?".into()
                },
                bytes(s.guest_memory_bytes),
                rate(s.io_known, s.net_rx_bytes_per_sec),
                rate(s.io_known, s.net_tx_bytes_per_sec),
                rate(s.io_known, s.block_read_bytes_per_sec),
                rate(s.io_known, s.block_write_bytes_per_sec),
            ],
        };
        table.row(row);
    }
    table.render()
}
