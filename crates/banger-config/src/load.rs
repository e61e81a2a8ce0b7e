//! Loading: find the config file, parse it, resolve every key (env > file > default), validate it,
//! and remember where each value came from.
//!
//! The file schema (`FileConfig`) is private and separate from [`Config`]: every field is optional
//! and spanned, so the resolver knows both *whether* the file set a key (for its [`Origin`]) and
//! *where* (for the line in an error). serde's `deny_unknown_fields` plus `serde_path_to_error`
//! turn typos and type errors into errors naming the dotted key and the file; the range and
//! format rules serde cannot express are checked here, once, so consumers of [`Config`] never
//! re-check them. Loading is pure apart from reading the one file: nothing is created on disk.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::env::Environment;
use crate::error::ConfigError;
use crate::model::{Config, NetworkConfig, VmDefaults, VmmChoice, WebConfig};
use crate::net::Ipv4Net;

/// Names the config file to read instead of the default location; a missing file is then an error.
pub const ENV_CONFIG: &str = "BANGER_CONFIG";
/// Overrides `state_dir`.
pub const ENV_STATE_DIR: &str = "BANGER_STATE_DIR";
/// Overrides `runtime_dir`.
pub const ENV_RUNTIME_DIR: &str = "BANGER_RUNTIME_DIR";
/// Overrides `cache_dir`.
pub const ENV_CACHE_DIR: &str = "BANGER_CACHE_DIR";
/// Overrides `data_dir`.
pub const ENV_DATA_DIR: &str = "BANGER_DATA_DIR";

/// The config file root reads when `BANGER_CONFIG` is unset.
pub const ROOT_CONFIG_FILE: &str = "/etc/banger/config.toml";

/// Every key of the config file, dotted, in the order `config show` prints them.
pub const KEYS: &[&str] = &[
    "state_dir",
    "cache_dir",
    "runtime_dir",
    "data_dir",
    "socket_group",
    "log_level",
    "vmm",
    "firecracker_bin",
    "qemu_bin",
    "vhost_vsock_bin",
    "ssh_key",
    "default_image",
    "stop_timeout_secs",
    "boot_timeout_secs",
    "stats_poll_interval_secs",
    "extra_kernel_args",
    "vm_defaults.vcpus",
    "vm_defaults.memory_mib",
    "vm_defaults.disk_size_mib",
    "network.bridge",
    "network.subnet",
    "network.domain",
    "network.netns",
    "network.tap_pool_size",
    "network.enabled",
    "network.publish_address",
    "network.dns_upstream",
    "network.resolv_conf",
    "network.host_forward_accept",
    "web.enabled",
    "web.listen",
    "web.allow_remote",
];

/// The tables of the config file.
const TABLES: &[&str] = &["vm_defaults", "network", "web"];

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// banger's built-in default (for the running user: root or not).
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// The named environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env(var) => write!(f, "env {var}"),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A loaded configuration with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: Config,
    /// The file that was read, if one existed.
    pub file: Option<PathBuf>,
    /// Dotted key -> origin, for every key in [`KEYS`].
    pub origins: BTreeMap<String, Origin>,
}

impl LoadedConfig {
    /// Where the value of `key` came from; `None` for a key not in [`KEYS`].
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }
}

/// The path of the config file `load` reads: `$BANGER_CONFIG` if set; else, for root,
/// `/etc/banger/config.toml`; else `$XDG_CONFIG_HOME/banger/config.toml` (default
/// `~/.config/banger/config.toml`).
pub fn config_file_path(env: &Environment) -> Result<PathBuf, ConfigError> {
    if let Some(path) = env.var(ENV_CONFIG) {
        return Ok(PathBuf::from(path));
    }
    if env.is_root {
        return Ok(PathBuf::from(ROOT_CONFIG_FILE));
    }
    xdg_dir(
        env,
        "XDG_CONFIG_HOME",
        ".config",
        "config file",
        Some(ENV_CONFIG),
    )
    .map(|dir| dir.join("banger").join("config.toml"))
}

/// Loads the configuration for `env`: the file from [`config_file_path`], environment overrides,
/// then defaults.
///
/// A missing file at the default location means "all defaults"; a missing file named by
/// `BANGER_CONFIG` is an error.
pub fn load(env: &Environment) -> Result<LoadedConfig, ConfigError> {
    let path = config_file_path(env)?;
    if env.var(ENV_CONFIG).is_some() {
        return load_file(&path, env);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_str(&text, &path, env),
        Err(err) if err.kind() == io::ErrorKind::NotFound => defaults(env),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// Loads the configuration from the file at `path` (which must exist), with `env`'s overrides.
pub fn load_file(path: &Path, env: &Environment) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path, env)
}

/// Parses `text` as the config file at `source` (used in origins and errors), with `env`'s
/// overrides.
pub fn parse_str(
    text: &str,
    source: &Path,
    env: &Environment,
) -> Result<LoadedConfig, ConfigError> {
    let file = parse_file(text, source)?;
    let mut resolver = Resolver::new(env, Some((source, text)));
    let config = resolver.resolve(file)?;
    Ok(LoadedConfig {
        config,
        file: Some(source.to_path_buf()),
        origins: resolver.origins,
    })
}

/// The configuration with no file at all: environment overrides, then defaults.
pub fn defaults(env: &Environment) -> Result<LoadedConfig, ConfigError> {
    let mut resolver = Resolver::new(env, None);
    let config = resolver.resolve(FileConfig::default())?;
    Ok(LoadedConfig {
        config,
        file: None,
        origins: resolver.origins,
    })
}

/// A key as the file may set it: absent, or a value with its byte span in the file.
type Field<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Field<String>,
    cache_dir: Field<String>,
    runtime_dir: Field<String>,
    data_dir: Field<String>,
    socket_group: Field<String>,
    log_level: Field<String>,
    vmm: Field<String>,
    firecracker_bin: Field<String>,
    qemu_bin: Field<String>,
    vhost_vsock_bin: Field<String>,
    ssh_key: Field<String>,
    default_image: Field<String>,
    stop_timeout_secs: Field<i64>,
    boot_timeout_secs: Field<i64>,
    stats_poll_interval_secs: Field<i64>,
    extra_kernel_args: Field<String>,
    #[serde(default)]
    vm_defaults: FileVmDefaults,
    #[serde(default)]
    network: FileNetwork,
    #[serde(default)]
    web: FileWeb,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVmDefaults {
    vcpus: Field<i64>,
    memory_mib: Field<i64>,
    disk_size_mib: Field<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    bridge: Field<String>,
    subnet: Field<String>,
    domain: Field<String>,
    netns: Field<String>,
    tap_pool_size: Field<i64>,
    enabled: Field<bool>,
    publish_address: Field<String>,
    dns_upstream: Field<String>,
    resolv_conf: Field<String>,
    host_forward_accept: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWeb {
    enabled: Field<bool>,
    listen: Field<String>,
    allow_remote: Field<bool>,
}

/// Deserializes the file, turning serde's complaints into errors that name key and file.
fn parse_file(text: &str, source: &Path) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        // `Spanned` deserializes through a private struct whose field shows up in the path.
        let path = err
            .path()
            .to_string()
            .split('.')
            .filter(|segment| !segment.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        let inner = err.into_inner();
        let line = inner.span().map(|span| line_of(text, span.start));
        let message = plain_type_names(inner.message());
        if let Some(field) = unknown_field(&message) {
            // serde_path_to_error reports the path of the table holding the unknown key.
            let key = match path.as_str() {
                "" | "." => field.to_owned(),
                table if table.ends_with(&format!(".{field}")) || table == field => {
                    table.to_owned()
                }
                table => format!("{table}.{field}"),
            };
            return ConfigError::UnknownKey {
                valid: valid_keys_beside(&key),
                key,
                file: source.to_path_buf(),
                line,
            };
        }
        if path.is_empty() || path == "." {
            return ConfigError::Syntax {
                file: source.to_path_buf(),
                source: Box::new(inner),
            };
        }
        ConfigError::InvalidValue {
            key: path,
            file: source.to_path_buf(),
            line,
            reason: message,
        }
    })
}

/// serde's messages in the config file's words: `i64` is "an integer", a struct is "a table".
fn plain_type_names(message: &str) -> String {
    let message = message.replace("expected i64", "expected an integer");
    match message.find("expected struct File") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message,
    }
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// The keys (and tables) valid in the table that holds dotted `key`.
fn valid_keys_beside(key: &str) -> Vec<String> {
    match key.rsplit_once('.') {
        Some((table, _)) => KEYS
            .iter()
            .filter_map(|k| k.strip_prefix(table)?.strip_prefix('.'))
            .map(str::to_owned)
            .collect(),
        None => KEYS
            .iter()
            .filter(|k| !k.contains('.'))
            .copied()
            .chain(TABLES.iter().copied())
            .map(str::to_owned)
            .collect(),
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// `$XDG_VAR` if absolute, else `$HOME/<home_rel>`; relative values are ignored as the XDG
/// base-directory specification asks.
fn xdg_dir(
    env: &Environment,
    xdg_var: &'static str,
    home_rel: &str,
    key: &str,
    override_var: Option<&'static str>,
) -> Result<PathBuf, ConfigError> {
    let absolute = |v: &str| Path::new(v).is_absolute();
    if let Some(dir) = env.var(xdg_var).filter(|v| absolute(v)) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = env.var("HOME").filter(|v| absolute(v)) {
        return Ok(Path::new(home).join(home_rel));
    }
    Err(ConfigError::NoHome {
        key: key.to_owned(),
        xdg_var,
        override_var,
    })
}

/// Resolves each key from env, file and default, recording its origin.
struct Resolver<'a> {
    env: &'a Environment,
    /// The file's path and text, when there is a file.
    source: Option<(&'a Path, &'a str)>,
    origins: BTreeMap<String, Origin>,
}

impl<'a> Resolver<'a> {
    fn new(env: &'a Environment, source: Option<(&'a Path, &'a str)>) -> Self {
        Self {
            env,
            source,
            origins: BTreeMap::new(),
        }
    }

    fn resolve(&mut self, file: FileConfig) -> Result<Config, ConfigError> {
        let env = self.env;
        let root = env.is_root;
        let user_dir = |xdg: &'static str, rel: &'static str, key: &'static str, var| {
            move || xdg_dir(env, xdg, rel, key, Some(var)).map(|d| d.join("banger"))
        };

        let state_dir = self.dir(
            "state_dir",
            ENV_STATE_DIR,
            file.state_dir,
            root,
            "/var/lib/banger",
            user_dir("XDG_STATE_HOME", ".local/state", "state_dir", ENV_STATE_DIR),
        )?;
        let cache_dir = self.dir(
            "cache_dir",
            ENV_CACHE_DIR,
            file.cache_dir,
            root,
            "/var/cache/banger",
            user_dir("XDG_CACHE_HOME", ".cache", "cache_dir", ENV_CACHE_DIR),
        )?;
        let runtime_dir = self.dir(
            "runtime_dir",
            ENV_RUNTIME_DIR,
            file.runtime_dir,
            root,
            "/run/banger",
            || {
                Ok(
                    match env
                        .var("XDG_RUNTIME_DIR")
                        .filter(|v| Path::new(v).is_absolute())
                    {
                        Some(dir) => Path::new(dir).join("banger"),
                        None => PathBuf::from(format!("/tmp/banger-{}", nix::unistd::getuid())),
                    },
                )
            },
        )?;
        let data_dir = self.dir(
            "data_dir",
            ENV_DATA_DIR,
            file.data_dir,
            root,
            "/var/lib/banger",
            user_dir("XDG_DATA_HOME", ".local/share", "data_dir", ENV_DATA_DIR),
        )?;

        let socket_group = self.optional("socket_group", file.socket_group, group_name)?;
        let log_level = self.value("log_level", file.log_level, log_filter, || {
            "info".to_owned()
        })?;
        let vmm = self.value(
            "vmm",
            file.vmm,
            |v| v.parse::<VmmChoice>().map_err(|e| e.to_string()),
            VmmChoice::default,
        )?;
        let firecracker_bin =
            self.optional("firecracker_bin", file.firecracker_bin, absolute_path)?;
        let qemu_bin = self.optional("qemu_bin", file.qemu_bin, absolute_path)?;
        let vhost_vsock_bin =
            self.optional("vhost_vsock_bin", file.vhost_vsock_bin, absolute_path)?;
        let ssh_key = self.optional("ssh_key", file.ssh_key, absolute_path)?;
        let default_image = self.optional("default_image", file.default_image, image_name)?;
        let stop_timeout_secs = self.value(
            "stop_timeout_secs",
            file.stop_timeout_secs,
            |v| int_in(v, 1, 600),
            || 10,
        )?;
        let boot_timeout_secs = self.value(
            "boot_timeout_secs",
            file.boot_timeout_secs,
            |v| int_in(v, 1, 3600),
            || 60,
        )?;
        let stats_poll_interval_secs = self.value(
            "stats_poll_interval_secs",
            file.stats_poll_interval_secs,
            |v| int_in(v, 1, 3600),
            || 5,
        )?;
        let extra_kernel_args = self.value(
            "extra_kernel_args",
            file.extra_kernel_args,
            kernel_args,
            String::new,
        )?;

        let defaults = VmDefaults::default();
        let vm_defaults = VmDefaults {
            vcpus: self.value(
                "vm_defaults.vcpus",
                file.vm_defaults.vcpus,
                |v| int_in(v, 1, 64).map(|n| n as u32),
                || defaults.vcpus,
            )?,
            memory_mib: self.value(
                "vm_defaults.memory_mib",
                file.vm_defaults.memory_mib,
                |v| int_at_least(v, 128),
                || defaults.memory_mib,
            )?,
            disk_size_mib: self.value(
                "vm_defaults.disk_size_mib",
                file.vm_defaults.disk_size_mib,
                |v| int_at_least(v, 256),
                || defaults.disk_size_mib,
            )?,
        };

        let defaults = NetworkConfig::default();
        let network = NetworkConfig {
            bridge: self.value(
                "network.bridge",
                file.network.bridge,
                interface_name,
                || defaults.bridge.clone(),
            )?,
            subnet: self.value("network.subnet", file.network.subnet, vm_subnet, || {
                defaults.subnet
            })?,
            domain: self.value("network.domain", file.network.domain, dns_name, || {
                defaults.domain.clone()
            })?,
            netns: self.optional("network.netns", file.network.netns, netns_name)?,
            tap_pool_size: self.value(
                "network.tap_pool_size",
                file.network.tap_pool_size,
                |v| int_in(v, 0, 64).map(|n| n as u32),
                || defaults.tap_pool_size,
            )?,
            enabled: self.value("network.enabled", file.network.enabled, Ok, || {
                defaults.enabled
            })?,
            publish_address: self.value(
                "network.publish_address",
                file.network.publish_address,
                ip_addr,
                || defaults.publish_address,
            )?,
            dns_upstream: self.value(
                "network.dns_upstream",
                file.network.dns_upstream,
                dns_servers,
                || defaults.dns_upstream.clone(),
            )?,
            resolv_conf: self.value(
                "network.resolv_conf",
                file.network.resolv_conf,
                path_list,
                || defaults.resolv_conf.clone(),
            )?,
            host_forward_accept: self.value(
                "network.host_forward_accept",
                file.network.host_forward_accept,
                Ok,
                || defaults.host_forward_accept,
            )?,
        };

        let defaults = WebConfig::default();
        let listen_span = file.web.listen.as_ref().map(Spanned::span);
        let web = WebConfig {
            enabled: self.value("web.enabled", file.web.enabled, Ok, || defaults.enabled)?,
            listen: self.value("web.listen", file.web.listen, socket_addr, || {
                defaults.listen
            })?,
            allow_remote: self.value("web.allow_remote", file.web.allow_remote, Ok, || {
                defaults.allow_remote
            })?,
        };
        if !web.allow_remote && !web.listen.ip().is_loopback() {
            return Err(self.invalid(
                "web.listen",
                listen_span,
                format!(
                    "{} is not a loopback address; the web UI stays on loopback unless \
                     `web.allow_remote = true`",
                    web.listen
                ),
            ));
        }

        Ok(Config {
            state_dir,
            cache_dir,
            runtime_dir,
            data_dir,
            socket_group,
            log_level,
            vmm,
            firecracker_bin,
            qemu_bin,
            vhost_vsock_bin,
            ssh_key,
            default_image,
            vm_defaults,
            stop_timeout_secs,
            boot_timeout_secs,
            stats_poll_interval_secs,
            extra_kernel_args,
            network,
            web,
        })
    }

    /// A directory key: env override, else file, else the root or user default.
    fn dir(
        &mut self,
        key: &str,
        env_var: &str,
        from_file: Field<String>,
        root: bool,
        root_default: &str,
        user_default: impl FnOnce() -> Result<PathBuf, ConfigError>,
    ) -> Result<PathBuf, ConfigError> {
        // The file's value is checked even when the environment overrides it: the file is wrong
        // either way, and the override is usually temporary.
        let file_value = self.checked_file_value(key, from_file, absolute_path)?;
        if let Some(value) = self.env.var(env_var) {
            let path =
                absolute_path(value.to_owned()).map_err(|reason| ConfigError::InvalidEnv {
                    var: env_var.to_owned(),
                    reason,
                })?;
            self.origins
                .insert(key.to_owned(), Origin::Env(env_var.to_owned()));
            return Ok(path);
        }
        match file_value {
            Some(path) => Ok(path),
            None => {
                self.origins.insert(key.to_owned(), Origin::Default);
                if root {
                    Ok(PathBuf::from(root_default))
                } else {
                    user_default()
                }
            }
        }
    }

    /// A key with a default: file value (checked by `check`), else `default()`.
    fn value<R, T>(
        &mut self,
        key: &str,
        from_file: Field<R>,
        check: impl FnOnce(R) -> Result<T, String>,
        default: impl FnOnce() -> T,
    ) -> Result<T, ConfigError> {
        match self.checked_file_value(key, from_file, check)? {
            Some(value) => Ok(value),
            None => {
                self.origins.insert(key.to_owned(), Origin::Default);
                Ok(default())
            }
        }
    }

    /// A key without a default: file value (checked by `check`), else `None`.
    fn optional<R, T>(
        &mut self,
        key: &str,
        from_file: Field<R>,
        check: impl FnOnce(R) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let value = self.checked_file_value(key, from_file, check)?;
        if value.is_none() {
            self.origins.insert(key.to_owned(), Origin::Default);
        }
        Ok(value)
    }

    /// Checks a value the file set and records the file as its origin.
    fn checked_file_value<R, T>(
        &mut self,
        key: &str,
        from_file: Field<R>,
        check: impl FnOnce(R) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(spanned) = from_file else {
            return Ok(None);
        };
        let span = spanned.span();
        let value =
            check(spanned.into_inner()).map_err(|reason| self.invalid(key, Some(span), reason))?;
        if let Some((path, _)) = self.source {
            self.origins
                .insert(key.to_owned(), Origin::File(path.to_path_buf()));
        }
        Ok(Some(value))
    }

    fn invalid(&self, key: &str, span: Option<Range<usize>>, reason: String) -> ConfigError {
        let (file, line) = match self.source {
            Some((path, text)) => (path.to_path_buf(), span.map(|s| line_of(text, s.start))),
            None => (PathBuf::new(), None),
        };
        ConfigError::InvalidValue {
            key: key.to_owned(),
            file,
            line,
            reason,
        }
    }
}

fn absolute_path(value: String) -> Result<PathBuf, String> {
    if value.contains('\0') {
        return Err("a path cannot contain a NUL byte".to_owned());
    }
    let path = PathBuf::from(&value);
    if !path.is_absolute() {
        return Err(format!("expected an absolute path, got `{value}`"));
    }
    Ok(path)
}

fn int_in(value: i64, min: i64, max: i64) -> Result<u64, String> {
    if (min..=max).contains(&value) {
        u64::try_from(value).map_err(|_| format!("expected an integer {min}..={max}, got {value}"))
    } else {
        Err(format!("expected an integer {min}..={max}, got {value}"))
    }
}

fn int_at_least(value: i64, min: i64) -> Result<u64, String> {
    if value >= min {
        u64::try_from(value).map_err(|_| format!("expected an integer >= {min}, got {value}"))
    } else {
        Err(format!("expected an integer >= {min}, got {value}"))
    }
}

fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

fn group_name(value: String) -> Result<String, String> {
    let bad = |c: char| c == ':' || c == ',' || c == '/' || c.is_whitespace() || c.is_control();
    if value.is_empty() || value.chars().any(bad) {
        return Err(format!(
            "expected a group name (no `:`, `,`, `/` or whitespace), got `{value}`"
        ));
    }
    Ok(value)
}

/// `EnvFilter`-style: comma-separated directives, none empty; a `target=level` directive must
/// end in a level.
fn log_filter(value: String) -> Result<String, String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if value.trim().is_empty() {
        return Err("expected a log filter such as `info` or `info,banger_daemon=debug`, got an empty string".to_owned());
    }
    for directive in value.split(',') {
        let directive = directive.trim();
        if directive.is_empty() || has_control(directive) || directive.contains(' ') {
            return Err(format!(
                "expected a log filter such as `info` or `info,banger_daemon=debug`, got `{value}`"
            ));
        }
        // Span filters (`target[span{field=value}]=level`) carry `=` inside brackets; only the
        // level after the last `]` is checked for those.
        let tail = directive
            .rsplit_once(']')
            .map_or(directive, |(_, tail)| tail);
        if let Some((_, level)) = tail.rsplit_once('=') {
            if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "`{level}` in `{directive}` is not a level (trace, debug, info, warn, error, off)"
                ));
            }
        }
    }
    Ok(value)
}

fn image_name(value: String) -> Result<String, String> {
    if value.trim().is_empty() || value.chars().any(char::is_whitespace) || has_control(&value) {
        return Err(format!(
            "expected an image name without whitespace, got `{value}`"
        ));
    }
    Ok(value)
}

fn kernel_args(value: String) -> Result<String, String> {
    if has_control(&value) {
        return Err("kernel arguments cannot contain control characters or newlines".to_owned());
    }
    if value.len() > 1024 {
        return Err(format!(
            "expected at most 1024 bytes of kernel arguments, got {}",
            value.len()
        ));
    }
    Ok(value)
}

/// A Linux interface name: 1..=15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn interface_name(value: String) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 15
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(value)
    } else {
        Err(format!(
            "expected a Linux interface name (1 to 15 bytes, no `/`, `:` or whitespace), got `{value}`"
        ))
    }
}

fn vm_subnet(value: String) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = value.parse().map_err(|e| format!("{e}"))?;
    if !(16..=29).contains(&net.prefix()) {
        return Err(format!(
            "expected a prefix length 16..=29, got /{} in `{value}`",
            net.prefix()
        ));
    }
    Ok(net)
}

/// A DNS name: dot-separated labels of 1..=63 letters, digits and hyphens, not starting or
/// ending with a hyphen; 253 bytes at most.
fn dns_name(value: String) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(value)
    } else {
        Err(format!(
            "expected a DNS name such as `vm` or `vm.example`, got `{value}`"
        ))
    }
}

fn netns_name(value: String) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value != "."
        && value != ".."
        && !value.contains('/')
        && !has_control(&value);
    if ok {
        Ok(value)
    } else {
        Err(format!(
            "expected a network namespace name (a file name under /run/netns), got `{value}`"
        ))
    }
}

fn ip_addr(value: String) -> Result<std::net::IpAddr, String> {
    value
        .parse()
        .map_err(|_| format!("expected an IP address such as 127.0.0.1, got `{value}`"))
}

/// `IP[:PORT]` or `[IPv6]:PORT`, comma-separated; port 53 when absent. Empty: none.
fn dns_servers(value: String) -> Result<Vec<SocketAddr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<SocketAddr>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    format!(
                        "expected comma-separated resolvers such as `10.0.0.2, 10.0.0.3:5353`, got `{item}`"
                    )
                })
        })
        .collect()
}

/// Comma-separated absolute paths, at least one.
fn path_list(value: String) -> Result<Vec<PathBuf>, String> {
    let paths = value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| absolute_path(item.to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    if paths.is_empty() {
        return Err("expected at least one absolute path".to_owned());
    }
    Ok(paths)
}

fn socket_addr(value: String) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("expected an address:port such as 127.0.0.1:7777, got `{value}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_accepts_levels_and_directives() {
        for ok in [
            "info",
            "debug,hyper=warn",
            "banger_daemon",
            "a[span{x=1}]=trace",
        ] {
            assert!(log_filter(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in ["", " ", "info,,debug", "hyper=loud", "in fo"] {
            assert!(log_filter(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(interface_name("banger0".into()).is_ok());
        assert!(interface_name("a".repeat(15)).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a:b", &"a".repeat(16)] {
            assert!(interface_name(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names_need_valid_labels() {
        for ok in ["vm", "vm.example", "a-b.c1"] {
            assert!(dns_name(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in ["", "-vm", "vm-", "vm..x", "vm.", "v_m", &"a".repeat(64)] {
            assert!(dns_name(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn valid_keys_beside_lists_the_same_table() {
        assert_eq!(
            valid_keys_beside("web.x"),
            vec!["enabled", "listen", "allow_remote"]
        );
        let top = valid_keys_beside("x");
        assert!(top.contains(&"state_dir".to_owned()));
        assert!(top.contains(&"network".to_owned()));
        assert!(!top.iter().any(|k| k.contains('.')));
    }
}
