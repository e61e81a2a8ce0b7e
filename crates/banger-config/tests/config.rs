//! Loading, validation, origins and `config show` rendering, against hand-built environments and
//! temp files only: nothing here reads the real /etc, $HOME or XDG directories.

// Tests may unwrap: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use banger_config::{
    defaults, load, load_file, parse_str, Config, ConfigError, Environment, Ipv4Net, Origin,
    VmmChoice, KEYS,
};

const FILE: &str = "/etc/banger/config.toml";

fn root_env() -> Environment {
    Environment::root(BTreeMap::<String, String>::new())
}

fn user_env(vars: &[(&str, &str)]) -> Environment {
    Environment::user(vars.iter().copied())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Path::new(FILE), &root_env()).map(|l| l.config)
}

/// A file that sets every key to a non-default value.
const FULL: &str = r#"
state_dir = "/srv/banger/state"
cache_dir = "/srv/banger/cache"
runtime_dir = "/srv/banger/run"
data_dir = "/srv/banger/data"
socket_group = "banger"
log_level = "debug,hyper=warn"
vmm = "qemu"
firecracker_bin = "/opt/fc/firecracker"
qemu_bin = "/opt/qemu/bin/qemu-system-x86_64"
vhost_vsock_bin = "/opt/bin/vhost-device-vsock"
ssh_key = "/srv/keys/banger_ed25519"
default_image = "debian-12"
stop_timeout_secs = 30
boot_timeout_secs = 600
stats_poll_interval_secs = 15
extra_kernel_args = "mitigations=off quiet"

[vm_defaults]
vcpus = 4
memory_mib = 2048
disk_size_mib = 8192

[network]
bridge = "bgr1"
subnet = "10.77.0.0/20"
domain = "sandbox.test"
netns = "banger-test"
tap_pool_size = 0
enabled = false
publish_address = "0.0.0.0"
dns_upstream = "10.0.0.2, 10.0.0.3:5353"
resolv_conf = "/etc/resolv.conf, /srv/resolv.conf"
host_forward_accept = false

[web]
enabled = true
listen = "10.0.0.1:8080"
allow_remote = true
"#;

#[test]
fn root_defaults_use_system_locations() {
    let loaded = defaults(&root_env()).unwrap();
    let c = &loaded.config;
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/banger"));
    assert_eq!(c.cache_dir, PathBuf::from("/var/cache/banger"));
    assert_eq!(c.runtime_dir, PathBuf::from("/run/banger"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/banger"));
    assert_eq!(c.socket_path(), PathBuf::from("/run/banger/bangerd.sock"));
    assert_eq!(c.lock_path(), PathBuf::from("/run/banger/bangerd.lock"));
    assert_eq!(c.db_path(), PathBuf::from("/var/lib/banger/banger.db"));
    assert_eq!(c.vms_dir(), PathBuf::from("/var/lib/banger/vms"));
    assert_eq!(c.images_dir(), PathBuf::from("/var/lib/banger/images"));
    assert_eq!(
        c.daemon_log_path(),
        PathBuf::from("/var/lib/banger/bangerd.log")
    );
    assert_eq!(
        c.ssh_key_path(),
        PathBuf::from("/var/lib/banger/ssh/id_ed25519")
    );
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.origins.len(), KEYS.len());
    assert!(loaded.origins.values().all(|o| *o == Origin::Default));
}

#[test]
fn defaults_match_the_documented_values() {
    let c = defaults(&root_env()).unwrap().config;
    assert_eq!(c.socket_group, None);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.vmm, VmmChoice::Auto);
    assert_eq!(c.firecracker_bin, None);
    assert_eq!(c.qemu_bin, None);
    assert_eq!(c.vhost_vsock_bin, None);
    assert_eq!(c.ssh_key, None);
    assert_eq!(c.default_image, None);
    assert_eq!(c.vm_defaults.vcpus, 2);
    assert_eq!(c.vm_defaults.memory_mib, 1024);
    assert_eq!(c.vm_defaults.disk_size_mib, 4096);
    assert_eq!(c.stop_timeout_secs, 10);
    assert_eq!(c.boot_timeout_secs, 60);
    assert_eq!(c.stats_poll_interval_secs, 5);
    assert_eq!(c.extra_kernel_args, "");
    assert_eq!(c.network.bridge, "banger0");
    assert_eq!(c.network.subnet.to_string(), "172.30.0.0/24");
    assert_eq!(c.network.subnet.gateway(), Ipv4Addr::new(172, 30, 0, 1));
    assert_eq!(c.network.domain, "vm");
    assert_eq!(c.network.netns, None);
    assert_eq!(c.network.tap_pool_size, 4);
    assert!(!c.web.enabled);
    assert_eq!(c.web.listen, SocketAddr::from(([127, 0, 0, 1], 7777)));
    assert!(!c.web.allow_remote);
}

#[test]
fn root_ignores_xdg_variables() {
    let env = Environment::root([
        ("HOME", "/root"),
        ("XDG_STATE_HOME", "/x/state"),
        ("XDG_RUNTIME_DIR", "/x/run"),
    ]);
    let c = defaults(&env).unwrap().config;
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/banger"));
    assert_eq!(c.runtime_dir, PathBuf::from("/run/banger"));
}

#[test]
fn user_defaults_follow_xdg_variables() {
    let env = user_env(&[
        ("HOME", "/home/ada"),
        ("XDG_STATE_HOME", "/xdg/state"),
        ("XDG_CACHE_HOME", "/xdg/cache"),
        ("XDG_DATA_HOME", "/xdg/data"),
        ("XDG_RUNTIME_DIR", "/run/user/1000"),
    ]);
    let c = defaults(&env).unwrap().config;
    assert_eq!(c.state_dir, PathBuf::from("/xdg/state/banger"));
    assert_eq!(c.cache_dir, PathBuf::from("/xdg/cache/banger"));
    assert_eq!(c.data_dir, PathBuf::from("/xdg/data/banger"));
    assert_eq!(c.runtime_dir, PathBuf::from("/run/user/1000/banger"));
    assert_eq!(
        c.socket_path(),
        PathBuf::from("/run/user/1000/banger/bangerd.sock")
    );
    assert_eq!(
        c.ssh_key_path(),
        PathBuf::from("/xdg/data/banger/ssh/id_ed25519")
    );
}

#[test]
fn user_defaults_fall_back_to_home_when_xdg_is_unset() {
    let c = defaults(&user_env(&[("HOME", "/home/ada")]))
        .unwrap()
        .config;
    assert_eq!(c.state_dir, PathBuf::from("/home/ada/.local/state/banger"));
    assert_eq!(c.cache_dir, PathBuf::from("/home/ada/.cache/banger"));
    assert_eq!(c.data_dir, PathBuf::from("/home/ada/.local/share/banger"));
    assert_eq!(
        c.runtime_dir,
        PathBuf::from(format!("/tmp/banger-{}", nix::unistd::getuid()))
    );
}

#[test]
fn relative_or_empty_xdg_values_are_ignored() {
    let env = user_env(&[
        ("HOME", "/home/ada"),
        ("XDG_STATE_HOME", "relative/state"),
        ("XDG_CACHE_HOME", ""),
    ]);
    let c = defaults(&env).unwrap().config;
    assert_eq!(c.state_dir, PathBuf::from("/home/ada/.local/state/banger"));
    assert_eq!(c.cache_dir, PathBuf::from("/home/ada/.cache/banger"));
}

#[test]
fn user_without_home_or_xdg_is_an_error_naming_the_key() {
    let err = defaults(&user_env(&[])).unwrap_err();
    assert_eq!(err.key(), Some("state_dir"));
    let msg = err.to_string();
    assert!(msg.contains("XDG_STATE_HOME"), "{msg}");
    assert!(msg.contains("BANGER_STATE_DIR"), "{msg}");
}

#[test]
fn env_overrides_make_home_unnecessary() {
    let env = user_env(&[
        ("BANGER_STATE_DIR", "/t/state"),
        ("BANGER_CACHE_DIR", "/t/cache"),
        ("BANGER_DATA_DIR", "/t/data"),
        ("BANGER_RUNTIME_DIR", "/t/run"),
    ]);
    let c = defaults(&env).unwrap().config;
    assert_eq!(c.state_dir, PathBuf::from("/t/state"));
    assert_eq!(c.runtime_dir, PathBuf::from("/t/run"));
}

#[test]
fn full_file_overrides_every_key() {
    let loaded = parse_str(FULL, Path::new(FILE), &root_env()).unwrap();
    let c = &loaded.config;
    assert_eq!(c.state_dir, PathBuf::from("/srv/banger/state"));
    assert_eq!(c.cache_dir, PathBuf::from("/srv/banger/cache"));
    assert_eq!(c.runtime_dir, PathBuf::from("/srv/banger/run"));
    assert_eq!(c.data_dir, PathBuf::from("/srv/banger/data"));
    assert_eq!(c.socket_group.as_deref(), Some("banger"));
    assert_eq!(c.log_level, "debug,hyper=warn");
    assert_eq!(c.vmm, VmmChoice::Qemu);
    assert_eq!(
        c.firecracker_bin,
        Some(PathBuf::from("/opt/fc/firecracker"))
    );
    assert_eq!(
        c.qemu_bin,
        Some(PathBuf::from("/opt/qemu/bin/qemu-system-x86_64"))
    );
    assert_eq!(
        c.vhost_vsock_bin,
        Some(PathBuf::from("/opt/bin/vhost-device-vsock"))
    );
    assert_eq!(c.ssh_key_path(), PathBuf::from("/srv/keys/banger_ed25519"));
    assert_eq!(c.default_image.as_deref(), Some("debian-12"));
    assert_eq!(c.stop_timeout_secs, 30);
    assert_eq!(c.boot_timeout_secs, 600);
    assert_eq!(c.stats_poll_interval_secs, 15);
    assert_eq!(c.extra_kernel_args, "mitigations=off quiet");
    assert_eq!(c.vm_defaults.vcpus, 4);
    assert_eq!(c.vm_defaults.memory_mib, 2048);
    assert_eq!(c.vm_defaults.disk_size_mib, 8192);
    assert_eq!(c.network.bridge, "bgr1");
    assert_eq!(
        c.network.subnet,
        Ipv4Net::new(Ipv4Addr::new(10, 77, 0, 0), 20).unwrap()
    );
    assert_eq!(c.network.domain, "sandbox.test");
    assert_eq!(c.network.netns.as_deref(), Some("banger-test"));
    assert_eq!(c.network.tap_pool_size, 0);
    assert!(!c.network.enabled);
    assert_eq!(c.network.publish_address.to_string(), "0.0.0.0");
    assert_eq!(
        c.network.dns_upstream,
        vec![
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "10.0.0.3:5353".parse().unwrap()
        ]
    );
    assert_eq!(
        c.network.resolv_conf,
        vec![
            PathBuf::from("/etc/resolv.conf"),
            PathBuf::from("/srv/resolv.conf")
        ]
    );
    assert!(!c.network.host_forward_accept);
    assert!(c.web.enabled);
    assert_eq!(c.web.listen, "10.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(c.web.allow_remote);

    assert_eq!(loaded.file, Some(PathBuf::from(FILE)));
    let keys: Vec<&str> = loaded.origins.keys().map(String::as_str).collect();
    let mut expected = KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for (key, origin) in &loaded.origins {
        assert_eq!(*origin, Origin::File(PathBuf::from(FILE)), "{key}");
    }
}

#[test]
fn keys_missing_from_the_file_keep_their_default_origin() {
    let loaded = parse_str(
        "[network]\nbridge = \"br9\"\n",
        Path::new(FILE),
        &root_env(),
    )
    .unwrap();
    assert_eq!(
        loaded.origin("network.bridge"),
        Some(&Origin::File(PathBuf::from(FILE)))
    );
    assert_eq!(loaded.origin("network.subnet"), Some(&Origin::Default));
    assert_eq!(loaded.origin("state_dir"), Some(&Origin::Default));
}

fn unknown_key(text: &str) -> (String, String) {
    match parse(text).unwrap_err() {
        err @ ConfigError::UnknownKey { .. } => {
            (err.key().unwrap_or("").to_owned(), err.to_string())
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[test]
fn unknown_top_level_key_names_key_and_file() {
    let (key, msg) = unknown_key("log_levle = \"debug\"\n");
    assert_eq!(key, "log_levle");
    assert!(
        msg.starts_with("unknown key `log_levle` in /etc/banger/config.toml"),
        "{msg}"
    );
    assert!(msg.contains("log_level"), "lists valid keys: {msg}");
}

#[test]
fn unknown_nested_key_names_dotted_key_file_and_line() {
    let (key, msg) = unknown_key("[network]\nbridge = \"x\"\nbrige = \"y\"\n");
    assert_eq!(key, "network.brige");
    assert!(
        msg.starts_with("unknown key `network.brige` in /etc/banger/config.toml:3"),
        "{msg}"
    );
    assert!(
        msg.contains("valid keys in [network]: bridge, subnet, domain, netns, tap_pool_size, enabled, publish_address, dns_upstream, resolv_conf"),
        "{msg}"
    );
}

#[test]
fn unknown_table_names_the_table() {
    let (key, msg) = unknown_key("[netwrk]\nbridge = \"x\"\n");
    assert_eq!(key, "netwrk");
    assert!(msg.contains("/etc/banger/config.toml"), "{msg}");
}

#[test]
fn bad_values_name_key_file_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[vm_defaults]\nvcpus = 0\n",
            "vm_defaults.vcpus",
            "expected an integer 1..=64, got 0",
        ),
        ("[vm_defaults]\nvcpus = 65\n", "vm_defaults.vcpus", "got 65"),
        (
            "[vm_defaults]\nvcpus = \"two\"\n",
            "vm_defaults.vcpus",
            "expected an integer",
        ),
        (
            "[vm_defaults]\nmemory_mib = 64\n",
            "vm_defaults.memory_mib",
            "expected an integer >= 128, got 64",
        ),
        (
            "[vm_defaults]\ndisk_size_mib = 100\n",
            "vm_defaults.disk_size_mib",
            ">= 256",
        ),
        ("stop_timeout_secs = 0\n", "stop_timeout_secs", "1..=600"),
        ("stop_timeout_secs = -5\n", "stop_timeout_secs", "got -5"),
        (
            "boot_timeout_secs = 3601\n",
            "boot_timeout_secs",
            "1..=3600",
        ),
        (
            "stats_poll_interval_secs = 0\n",
            "stats_poll_interval_secs",
            "1..=3600",
        ),
        ("vmm = \"kvm\"\n", "vmm", "`auto`, `firecracker`, `qemu`"),
        ("log_level = \"\"\n", "log_level", "log filter"),
        ("log_level = \"hyper=loud\"\n", "log_level", "not a level"),
        ("socket_group = \"a:b\"\n", "socket_group", "group name"),
        (
            "extra_kernel_args = \"a\\nb\"\n",
            "extra_kernel_args",
            "control characters",
        ),
        (
            "[network]\nbridge = \"this-name-is-too-long\"\n",
            "network.bridge",
            "interface name",
        ),
        (
            "[network]\nsubnet = \"10.0.0.0/8\"\n",
            "network.subnet",
            "16..=29",
        ),
        (
            "[network]\nsubnet = \"10.0.0.1/24\"\n",
            "network.subnet",
            "host bits",
        ),
        (
            "[network]\nsubnet = \"banana\"\n",
            "network.subnet",
            "IPv4 network",
        ),
        (
            "[network]\ndomain = \"-bad\"\n",
            "network.domain",
            "DNS name",
        ),
        ("[network]\nnetns = \"a/b\"\n", "network.netns", "namespace"),
        (
            "[network]\ntap_pool_size = 65\n",
            "network.tap_pool_size",
            "0..=64",
        ),
        (
            "[web]\nenabled = \"yes\"\n",
            "web.enabled",
            "expected a boolean",
        ),
        (
            "[web]\nlisten = \"localhost\"\n",
            "web.listen",
            "address:port",
        ),
        (
            "[web]\nlisten = \"0.0.0.0:7777\"\n",
            "web.listen",
            "not a loopback address",
        ),
        ("network = 5\n", "network", "expected a table"),
    ];
    for (text, key, reason) in cases {
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigError::InvalidValue { .. }),
            "{text:?}: {err:?}"
        );
        assert_eq!(err.key(), Some(*key), "{text:?}: {msg}");
        assert!(
            msg.starts_with(&format!("`{key}` in {FILE}:")),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(reason), "{text:?}: {msg}");
    }
}

#[test]
fn bad_value_message_has_the_documented_shape() {
    let msg = parse("\n[vm_defaults]\nvcpus = 0\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "`vm_defaults.vcpus` in /etc/banger/config.toml:3: expected an integer 1..=64, got 0"
    );
}

#[test]
fn relative_paths_in_the_file_are_errors_naming_the_key() {
    for key in [
        "state_dir",
        "cache_dir",
        "runtime_dir",
        "data_dir",
        "firecracker_bin",
        "qemu_bin",
        "vhost_vsock_bin",
        "ssh_key",
    ] {
        let err = parse(&format!("{key} = \"relative/path\"\n")).unwrap_err();
        assert_eq!(err.key(), Some(key));
        let msg = err.to_string();
        assert!(msg.contains("expected an absolute path"), "{msg}");
        assert!(msg.contains(FILE), "{msg}");
    }
}

#[test]
fn non_loopback_web_listen_is_allowed_with_allow_remote() {
    let c = parse("[web]\nlisten = \"0.0.0.0:7777\"\nallow_remote = true\n").unwrap();
    assert_eq!(c.web.listen, "0.0.0.0:7777".parse::<SocketAddr>().unwrap());
    let c = parse("[web]\nlisten = \"[::1]:7000\"\n").unwrap();
    assert!(c.web.listen.ip().is_loopback());
}

#[test]
fn invalid_toml_is_a_syntax_error_naming_the_file() {
    let err = parse("state_dir = = 1\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains(FILE));
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("line 1"), "{source}");
}

#[test]
fn env_overrides_win_over_file_and_origins_say_so() {
    let env = Environment::root([
        ("BANGER_STATE_DIR", "/tmp/t/state"),
        ("BANGER_RUNTIME_DIR", "/tmp/t/run"),
        ("BANGER_CACHE_DIR", "/tmp/t/cache"),
        ("BANGER_DATA_DIR", "/tmp/t/data"),
    ]);
    let loaded = parse_str(FULL, Path::new(FILE), &env).unwrap();
    let c = &loaded.config;
    assert_eq!(c.state_dir, PathBuf::from("/tmp/t/state"));
    assert_eq!(c.runtime_dir, PathBuf::from("/tmp/t/run"));
    assert_eq!(c.cache_dir, PathBuf::from("/tmp/t/cache"));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/t/data"));
    assert_eq!(c.socket_path(), PathBuf::from("/tmp/t/run/bangerd.sock"));
    for (key, var) in [
        ("state_dir", "BANGER_STATE_DIR"),
        ("runtime_dir", "BANGER_RUNTIME_DIR"),
        ("cache_dir", "BANGER_CACHE_DIR"),
        ("data_dir", "BANGER_DATA_DIR"),
    ] {
        assert_eq!(loaded.origin(key), Some(&Origin::Env(var.to_owned())));
        assert_eq!(
            loaded.origin(key).unwrap().to_string(),
            format!("env {var}")
        );
    }
    assert_eq!(
        loaded.origin("log_level"),
        Some(&Origin::File(PathBuf::from(FILE)))
    );
}

#[test]
fn env_overrides_win_over_defaults() {
    let loaded = defaults(&Environment::root([("BANGER_STATE_DIR", "/tmp/s")])).unwrap();
    assert_eq!(loaded.config.state_dir, PathBuf::from("/tmp/s"));
    assert_eq!(
        loaded.origin("state_dir"),
        Some(&Origin::Env("BANGER_STATE_DIR".into()))
    );
    assert_eq!(loaded.origin("cache_dir"), Some(&Origin::Default));
}

#[test]
fn relative_env_override_is_an_error_naming_the_variable() {
    let err = defaults(&Environment::root([("BANGER_RUNTIME_DIR", "run")])).unwrap_err();
    assert!(matches!(err, ConfigError::InvalidEnv { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "environment variable BANGER_RUNTIME_DIR: expected an absolute path, got `run`"
    );
}

#[test]
fn origin_display_matches_config_show() {
    assert_eq!(Origin::Default.to_string(), "default");
    assert_eq!(
        Origin::File(PathBuf::from(FILE)).to_string(),
        "/etc/banger/config.toml"
    );
    assert_eq!(
        Origin::Env("BANGER_STATE_DIR".into()).to_string(),
        "env BANGER_STATE_DIR"
    );
}

#[test]
fn load_reads_the_file_named_by_banger_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.toml");
    std::fs::write(&path, "log_level = \"trace\"\n").unwrap();
    let env = Environment::root([("BANGER_CONFIG", path.to_str().unwrap())]);
    let loaded = load(&env).unwrap();
    assert_eq!(loaded.config.log_level, "trace");
    assert_eq!(loaded.file, Some(path.clone()));
    assert_eq!(loaded.origin("log_level"), Some(&Origin::File(path)));
}

#[test]
fn load_with_missing_banger_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let env = Environment::root([("BANGER_CONFIG", path.to_str().unwrap())]);
    let err = load(&env).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()));
}

#[test]
fn load_with_no_file_at_the_user_default_path_gives_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let loaded = load(&user_env(&[("HOME", home)])).unwrap();
    assert_eq!(loaded.file, None);
    assert_eq!(
        loaded.config.state_dir,
        dir.path().join(".local/state/banger")
    );
}

#[test]
fn load_reads_the_user_default_path_under_xdg_config_home() {
    let dir = tempfile::tempdir().unwrap();
    let config_home = dir.path().join("cfg");
    std::fs::create_dir_all(config_home.join("banger")).unwrap();
    let path = config_home.join("banger/config.toml");
    std::fs::write(&path, "vmm = \"firecracker\"\n").unwrap();
    let env = user_env(&[
        ("HOME", dir.path().to_str().unwrap()),
        ("XDG_CONFIG_HOME", config_home.to_str().unwrap()),
    ]);
    assert_eq!(banger_config::config_file_path(&env).unwrap(), path);
    let loaded = load(&env).unwrap();
    assert_eq!(loaded.config.vmm, VmmChoice::Firecracker);
    assert_eq!(loaded.file, Some(path));
}

#[test]
fn root_reads_etc_by_default() {
    assert_eq!(
        banger_config::config_file_path(&root_env()).unwrap(),
        PathBuf::from("/etc/banger/config.toml")
    );
    assert_eq!(
        banger_config::config_file_path(&user_env(&[("HOME", "/home/ada")])).unwrap(),
        PathBuf::from("/home/ada/.config/banger/config.toml")
    );
}

#[test]
fn unreadable_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root.
    let err = load_file(dir.path(), &root_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot read config file {}", dir.path().display())
    );
}

/// `render()` re-parsed with no environment must give back the same config.
fn assert_render_round_trips(loaded: &banger_config::LoadedConfig) {
    let text = loaded.render();
    let reparsed = parse_str(&text, Path::new("/re/parsed.toml"), &root_env())
        .unwrap_or_else(|e| panic!("render output does not parse: {e}\n{text}"));
    assert_eq!(reparsed.config, loaded.config, "{text}");
}

#[test]
fn render_reparses_to_the_same_config() {
    assert_render_round_trips(&defaults(&root_env()).unwrap());
    assert_render_round_trips(&parse_str(FULL, Path::new(FILE), &root_env()).unwrap());
    let env = Environment::root([("BANGER_STATE_DIR", "/tmp/with \"quotes\"/state")]);
    assert_render_round_trips(&parse_str(FULL, Path::new(FILE), &env).unwrap());
    let user = defaults(&user_env(&[("HOME", "/home/ada")])).unwrap();
    assert_render_round_trips(&user);
}

#[test]
fn render_has_an_origin_comment_for_every_key() {
    let env = Environment::root([("BANGER_STATE_DIR", "/tmp/s")]);
    let loaded = parse_str("[network]\nbridge = \"br9\"\n", Path::new(FILE), &env).unwrap();
    let text = loaded.render();
    for key in KEYS {
        let name = key.rsplit('.').next().unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name} = ")) || l.starts_with(&format!("# {name} unset"))
            })
            .unwrap_or_else(|| panic!("no line for {key} in\n{text}"));
        let origin = loaded.origin(key).unwrap().to_string();
        assert!(
            line.contains(&format!("  # {origin}")),
            "{key}: {line:?} lacks `# {origin}`"
        );
    }
    assert!(text.contains("state_dir = \"/tmp/s\""), "{text}");
    assert!(text.contains("# env BANGER_STATE_DIR"), "{text}");
    assert!(text.contains("bridge = \"br9\""), "{text}");
    assert!(text.contains("# /etc/banger/config.toml"), "{text}");
}

#[test]
fn render_of_root_defaults_matches_golden_file() {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config_show_root_defaults.txt");
    let actual = defaults(&root_env()).unwrap().render();
    if std::env::var_os("BANGER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with BANGER_UPDATE_GOLDEN=1 to create it",
            golden.display()
        )
    });
    assert_eq!(
        actual, expected,
        "config show output changed; if intended, rerun with BANGER_UPDATE_GOLDEN=1"
    );
}

#[test]
fn to_json_lists_every_key_with_value_and_origin() {
    let env = Environment::root([("BANGER_STATE_DIR", "/tmp/s")]);
    let loaded = parse_str("[vm_defaults]\nvcpus = 8\n", Path::new(FILE), &env).unwrap();
    let json = loaded.to_json();
    assert_eq!(json["file"], FILE);
    let values = json["values"].as_object().unwrap();
    assert_eq!(values.len(), KEYS.len());
    assert_eq!(json["values"]["vm_defaults.vcpus"]["value"], 8);
    assert_eq!(json["values"]["vm_defaults.vcpus"]["origin"], FILE);
    assert_eq!(json["values"]["state_dir"]["value"], "/tmp/s");
    assert_eq!(
        json["values"]["state_dir"]["origin"],
        "env BANGER_STATE_DIR"
    );
    assert_eq!(
        json["values"]["socket_group"]["value"],
        serde_json::Value::Null
    );
    assert_eq!(json["values"]["socket_group"]["origin"], "default");
    assert_eq!(json["values"]["web.enabled"]["value"], false);
    assert_eq!(json["values"]["network.subnet"]["value"], "172.30.0.0/24");
    // Serialize gives the same document.
    assert_eq!(serde_json::to_value(&loaded).unwrap(), json);
    assert_eq!(
        serde_json::to_value(defaults(&root_env()).unwrap()).unwrap()["file"],
        serde_json::Value::Null
    );
}

#[test]
fn config_serializes_with_file_spellings() {
    let c = parse(FULL).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["vmm"], "qemu");
    assert_eq!(json["network"]["subnet"], "10.77.0.0/20");
    assert_eq!(json["web"]["listen"], "10.0.0.1:8080");
    assert_eq!(json["vm_defaults"]["vcpus"], 4);
}

#[test]
fn docs_describe_every_key() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    for key in KEYS {
        assert!(
            text.contains(&format!("`{key}`")),
            "docs/config.md does not document `{key}`"
        );
    }
    for var in [
        "BANGER_CONFIG",
        "BANGER_STATE_DIR",
        "BANGER_RUNTIME_DIR",
        "BANGER_CACHE_DIR",
        "BANGER_DATA_DIR",
    ] {
        assert!(text.contains(var), "docs/config.md does not mention {var}");
    }
}

#[test]
fn example_in_docs_parses() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    let start = text
        .find("```toml\n")
        .expect("docs/config.md has a ```toml example")
        + 8;
    let end = start + text[start..].find("```").unwrap();
    parse_str(&text[start..end], Path::new("docs/config.md"), &root_env())
        .unwrap_or_else(|e| panic!("the example in docs/config.md does not load: {e}"));
}
