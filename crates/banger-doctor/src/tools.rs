//! Free disk in the state dir, and the host tools banger runs: e2fsprogs (disk images),
//! debootstrap (`image bootstrap`) and the OpenSSH client (`vm ssh`).

use crate::first_line;
use crate::probe::HostProbe;
use crate::report::Check;
use crate::DoctorInputs;

const GIB: u64 = 1 << 30;
/// Below this much free space in the state dir, creating a VM or an image will fail.
const FAIL_BELOW: u64 = GIB;
/// Below this much, one image build or a few work disks can fill the disk.
const WARN_BELOW: u64 = 10 * GIB;

fn gib(bytes: u64) -> String {
    // Display only: f64's precision loss on byte counts is far below the one decimal shown.
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// Free space on the file system that holds (or will hold) the state dir.
pub(crate) fn disk_check(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const NAME: &str = "disk";
    let dir = inputs.state_dir.display();
    let (free, total) = match probe.free_bytes(&inputs.state_dir) {
        Ok(sizes) => sizes,
        Err(err) => {
            return Check::warn(
                NAME,
                format!("could not measure free space for {dir} ({err})"),
                format!("check with `df -h {dir}`"),
            )
        }
    };
    let summary = format!("{} free of {} for {dir}", gib(free), gib(total));
    let hint = format!(
        "free space on that file system (`df -h {dir}`, `banger image list`, delete unused VMs), \
         or set state_dir to a larger one"
    );
    if free < FAIL_BELOW {
        Check::fail(NAME, format!("{summary}; at least 1 GiB is needed"), hint)
    } else if free < WARN_BELOW {
        Check::warn(NAME, format!("{summary}; under 10 GiB fills up fast"), hint)
    } else {
        Check::pass(NAME, summary)
    }
}

/// mkfs.ext4 (with `-d`), resize2fs and e2fsck build and grow every root and work disk.
pub(crate) fn e2fsprogs_check(probe: &dyn HostProbe) -> Check {
    const NAME: &str = "e2fsprogs";
    let programs = ["mkfs.ext4", "resize2fs", "e2fsck"];
    let missing: Vec<&str> = programs
        .into_iter()
        .filter(|program| probe.find_in_path(program).is_none())
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} not found on PATH: banger cannot build disks",
                missing.join(", ")
            ),
            "`sudo apt-get install e2fsprogs`",
        );
    }
    // `mkfs.ext4 -V` prints "mke2fs 1.47.0 (5-Feb-2023)"; mkfs.ext4 -d needs 1.43 or later.
    let version = probe
        .find_in_path("mkfs.ext4")
        .and_then(|mkfs| probe.command_output(&mkfs, &["-V"]).ok())
        .map(|output| first_line(&output).to_owned())
        .filter(|line| !line.is_empty());
    match version {
        Some(version) => Check::pass(
            NAME,
            format!("{version}; mkfs.ext4, resize2fs, e2fsck found"),
        ),
        None => Check::pass(NAME, "mkfs.ext4, resize2fs, e2fsck found"),
    }
}

/// debootstrap is needed only by `banger image bootstrap`.
pub(crate) fn debootstrap_check(probe: &dyn HostProbe) -> Check {
    optional_tool(
        probe,
        "debootstrap",
        "debootstrap",
        &["--version"],
        "needed for `banger image bootstrap`",
        "`sudo apt-get install debootstrap`",
    )
}

/// The OpenSSH client is needed only by `banger vm ssh`.
pub(crate) fn ssh_check(probe: &dyn HostProbe) -> Check {
    optional_tool(
        probe,
        "ssh",
        "ssh",
        &["-V"],
        "needed for `banger vm ssh`",
        "`sudo apt-get install openssh-client`",
    )
}

/// A tool whose absence disables one command: warn, never fail.
fn optional_tool(
    probe: &dyn HostProbe,
    name: &str,
    program: &str,
    version_args: &[&str],
    needed_for: &str,
    install: &str,
) -> Check {
    let Some(path) = probe.find_in_path(program) else {
        return Check::warn(
            name,
            format!("{program} not found on PATH; {needed_for}"),
            install,
        );
    };
    match probe.command_output(&path, version_args) {
        Ok(output) if !first_line(&output).is_empty() => Check::pass(
            name,
            format!("{} ({})", first_line(&output), path.display()),
        ),
        _ => Check::pass(name, format!("found at {}", path.display())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::report::Status;
    use crate::FakeHost;

    fn inputs() -> DoctorInputs {
        DoctorInputs {
            state_dir: "/var/lib/banger".into(),
            runtime_dir: "/run/banger".into(),
            vmm: "auto".into(),
            firecracker_bin: None,
            qemu_bin: None,
            vhost_vsock_bin: None,
            subnet: (std::net::Ipv4Addr::new(172, 30, 0, 0), 24),
            bridge: "banger0".into(),
            netns: None,
            host_forward_accept: true,
        }
    }

    fn disk_status(free: u64) -> Status {
        let host = FakeHost::new().with_free("/", free, 100 * GIB);
        disk_check(&host, &inputs()).status
    }

    #[test]
    fn disk_fails_under_one_gib_and_warns_under_ten() {
        assert_eq!(disk_status(GIB - 1), Status::Fail);
        assert_eq!(disk_status(GIB), Status::Warn);
        assert_eq!(disk_status(10 * GIB - 1), Status::Warn);
        assert_eq!(disk_status(10 * GIB), Status::Pass);
    }

    #[test]
    fn disk_shows_gib_with_one_decimal() {
        let host = FakeHost::new().with_free("/var", 12 * GIB + GIB / 2, 40 * GIB);
        assert_eq!(
            disk_check(&host, &inputs()).summary,
            "12.5 GiB free of 40.0 GiB for /var/lib/banger"
        );
    }

    #[test]
    fn e2fsprogs_fails_naming_each_missing_program() {
        let host = FakeHost::new().with_binary("resize2fs", "/usr/sbin/resize2fs", "");
        let check = e2fsprogs_check(&host);
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.summary.starts_with("mkfs.ext4, e2fsck not found"),
            "{}",
            check.summary
        );
    }

    #[test]
    fn missing_debootstrap_and_ssh_only_warn() {
        let host = FakeHost::new();
        assert_eq!(debootstrap_check(&host).status, Status::Warn);
        assert_eq!(ssh_check(&host).status, Status::Warn);
    }
}
