//! What banger puts into a Debian tree so it boots as a banger guest, without mounting it.
//!
//! [`configure_tree`] writes banger's early init (`/usr/lib/banger/init`, the overlay root and
//! per-VM identity, see `banger-init.sh`), the systemd units (agent, first-boot SSH host key),
//! sshd settings with banger's public key for root, systemd-networkd and a serial getty,
//! enabling units by the same symlinks `systemctl enable` would make. [`scrub_tree`] removes
//! what must never be shared between VMs (SSH host keys, machine-id, random seed, the
//! builder's hostname and resolver), for bootstrapped trees and captured build roots alike.
//! Every function is blocking and idempotent: running it again over the same tree converges.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// banger's early init script.
pub const INIT_SCRIPT: &str = include_str!("banger-init.sh");
/// Where the init lives in the guest.
pub const INIT_PATH: &str = "usr/lib/banger/init";
/// Where the agent lives in the guest.
pub const AGENT_PATH: &str = "usr/local/bin/banger-agent";
/// The command line of bootstrapped images (the backend adds console/VMM specifics; the
/// manager adds `banger.*` arguments).
pub const BOOTSTRAP_CMDLINE: &str =
    "root=/dev/vda ro console=ttyS0 init=/usr/lib/banger/init panic=-1";
/// Guest port of the opencode server.
pub const OPENCODE_PORT: u16 = 4096;

const AGENT_UNIT: &str = "\
[Unit]
Description=banger guest agent (vsock)
DefaultDependencies=no
After=systemd-udevd.service
Before=sysinit.target

[Service]
ExecStartPre=-/sbin/modprobe -q vmw_vsock_virtio_transport
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
";

const HOSTKEY_UNIT: &str = "\
[Unit]
Description=banger: this VM's own SSH host key (first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=ssh.service
";

const SSHD_CONFIG: &str = "\
# banger: one ed25519 host key per VM (made at first boot), banger's key for root.
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
";

const OPENCODE_UNIT: &str = "\
[Unit]
Description=opencode server (banger's default coding-agent service)
After=network.target

[Service]
Environment=HOME=/root
WorkingDirectory=/root
ExecStart=/opt/opencode/bin/opencode serve --hostname 0.0.0.0 --port 4096
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
";

const FSTAB: &str = "\
# banger: / is an overlay (base image + this VM's layer) mounted by /usr/lib/banger/init;
# /root is this VM's work disk.
overlay / overlay rw 0 0
";

/// What [`configure_tree`] puts in.
#[derive(Debug, Clone, Copy)]
pub struct TreeConfig<'a> {
    /// banger's public key (one OpenSSH line), authorized for root.
    pub ssh_public_key: &'a str,
    /// Install the opencode service (its files must already be under `/opt/opencode`).
    pub opencode: bool,
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Replace symlinks and read-only files rather than writing through them.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates (or replaces) the symlink `link` -> `target`.
fn link(link: &Path, target: &str) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(link);
    symlink(target, link)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Removes per-machine identity from a tree so every VM makes its own at first boot.
pub fn scrub_tree(root: &Path) -> io::Result<()> {
    let ssh = root.join("etc/ssh");
    if let Ok(entries) = std::fs::read_dir(&ssh) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
                remove_if_present(&entry.path())?;
            }
        }
    }
    // Empty, not absent: systemd generates and writes a fresh id on the VM's first boot.
    write_file(&root.join("etc/machine-id"), b"", 0o444)?;
    remove_if_present(&root.join("var/lib/dbus/machine-id"))?;
    remove_if_present(&root.join("var/lib/systemd/random-seed"))?;
    write_file(&root.join("etc/hostname"), b"debian\n", 0o644)?;
    // The builder's resolver means nothing in a VM: banger's init writes this VM's.
    write_file(&root.join("etc/resolv.conf"), b"", 0o644)?;
    Ok(())
}

/// Makes a debootstrapped tree a banger guest (see the module docs).
pub fn configure_tree(root: &Path, config: &TreeConfig<'_>) -> io::Result<()> {
    scrub_tree(root)?;
    write_file(&root.join(INIT_PATH), INIT_SCRIPT.as_bytes(), 0o755)?;
    for dir in ["rw", "root", "oldroot"] {
        std::fs::create_dir_all(root.join("usr/lib/banger").join(dir))?;
    }
    write_file(&root.join("etc/fstab"), FSTAB.as_bytes(), 0o644)?;
    write_file(
        &root.join("etc/hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;

    let units = root.join("etc/systemd/system");
    write_file(
        &units.join("banger-agent.service"),
        AGENT_UNIT.as_bytes(),
        0o644,
    )?;
    link(
        &units.join("sysinit.target.wants/banger-agent.service"),
        "/etc/systemd/system/banger-agent.service",
    )?;
    write_file(
        &root.join("etc/modules-load.d/banger.conf"),
        b"vmw_vsock_virtio_transport\n",
        0o644,
    )?;

    write_file(
        &units.join("banger-ssh-hostkey.service"),
        HOSTKEY_UNIT.as_bytes(),
        0o644,
    )?;
    link(
        &units.join("ssh.service.wants/banger-ssh-hostkey.service"),
        "/etc/systemd/system/banger-ssh-hostkey.service",
    )?;
    write_file(
        &root.join("etc/ssh/sshd_config.d/banger.conf"),
        SSHD_CONFIG.as_bytes(),
        0o644,
    )?;
    let mut key = config.ssh_public_key.trim().to_string();
    key.push('\n');
    write_file(
        &root.join("etc/ssh/banger_authorized_keys"),
        key.as_bytes(),
        0o644,
    )?;

    // systemd-networkd reads the NIC config banger's init writes to /run/systemd/network.
    link(
        &units.join("multi-user.target.wants/systemd-networkd.service"),
        "/lib/systemd/system/systemd-networkd.service",
    )?;
    link(
        &units.join("sockets.target.wants/systemd-networkd.socket"),
        "/lib/systemd/system/systemd-networkd.socket",
    )?;
    link(
        &units.join("getty.target.wants/serial-getty@ttyS0.service"),
        "/lib/systemd/system/serial-getty@.service",
    )?;
    // First boot (empty machine-id) must never stop at an interactive prompt.
    link(&units.join("systemd-firstboot.service"), "/dev/null")?;

    let opencode_unit = units.join("opencode.service");
    let opencode_link = units.join("multi-user.target.wants/opencode.service");
    if config.opencode {
        write_file(&opencode_unit, OPENCODE_UNIT.as_bytes(), 0o644)?;
        link(&opencode_link, "/etc/systemd/system/opencode.service")?;
    } else {
        remove_if_present(&opencode_link)?;
        remove_if_present(&opencode_unit)?;
    }
    Ok(())
}

/// Installs the static guest agent.
pub fn install_agent(root: &Path, agent_bin: &Path) -> io::Result<()> {
    let target = root.join(AGENT_PATH);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&target);
    std::fs::copy(agent_bin, &target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
}

/// Fills `dest` with root's home for a work seed: the tree's `/root` dotfiles and banger's key
/// in `.ssh/authorized_keys`.
pub fn work_seed_tree(root: &Path, ssh_public_key: &str, dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))?;
    if let Ok(entries) = std::fs::read_dir(root.join("root")) {
        for entry in entries.flatten() {
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
            }
        }
    }
    let ssh = dest.join(".ssh");
    std::fs::create_dir_all(&ssh)?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    let mut key = ssh_public_key.trim().to_string();
    key.push('\n');
    write_file(&ssh.join("authorized_keys"), key.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_removes_shared_identity_and_installs_banger() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
        std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        std::fs::write(root.join("etc/ssh/ssh_host_rsa_key.pub"), "pub").unwrap();
        std::fs::write(root.join("etc/machine-id"), "0123\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "builder-host\n").unwrap();
        let config = TreeConfig {
            ssh_public_key: "ssh-ed25519 AAAA banger",
            opencode: false,
        };
        configure_tree(root, &config).unwrap();
        configure_tree(root, &config).unwrap(); // idempotent

        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!root.join("etc/ssh/ssh_host_rsa_key.pub").exists());
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "debian\n"
        );
        let init = root.join(INIT_PATH);
        assert!(std::fs::read_to_string(&init)
            .unwrap()
            .contains("pivot_root"));
        assert_eq!(
            std::fs::metadata(&init).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_link(
                root.join("etc/systemd/system/sysinit.target.wants/banger-agent.service")
            )
            .unwrap(),
            Path::new("/etc/systemd/system/banger-agent.service")
        );
        assert!(
            std::fs::read_to_string(root.join("etc/ssh/banger_authorized_keys"))
                .unwrap()
                .starts_with("ssh-ed25519 AAAA banger")
        );
        assert!(!root.join("etc/systemd/system/opencode.service").exists());
        for dir in ["rw", "root", "oldroot"] {
            assert!(root.join("usr/lib/banger").join(dir).is_dir());
        }
    }

    #[test]
    fn the_work_seed_holds_the_key_for_root_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tree/root")).unwrap();
        std::fs::write(dir.path().join("tree/root/.profile"), "# hi").unwrap();
        let seed = dir.path().join("seed");
        work_seed_tree(&dir.path().join("tree"), "ssh-ed25519 KEY", &seed).unwrap();
        assert!(seed.join(".profile").exists());
        let keys = seed.join(".ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), "ssh-ed25519 KEY\n");
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_init_reads_every_banger_argument() {
        for arg in [
            "banger.overlay=",
            "banger.work=",
            "banger.hostname=",
            "banger.ip=",
            "banger.gw=",
            "banger.dns=",
        ] {
            assert!(INIT_SCRIPT.contains(arg), "{arg}");
        }
    }
}
