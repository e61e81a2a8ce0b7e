//! `config show`: the effective configuration as annotated TOML, and as JSON.
//!
//! The TOML form is meant to be copied into a config file: it is valid TOML, lists every key in
//! [`crate::KEYS`] order, and re-parses to the same [`Config`]. Each line ends with a `# <origin>`
//! comment (`default`, the file path, or `env VAR`). TOML has no null, so a key without a value is
//! shown as a commented-out `# key unset` line whose origin comment says what banger does instead.
//! Pure functions of a [`LoadedConfig`].

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::load::{LoadedConfig, Origin};
use crate::model::Config;

/// How one key's effective value is shown.
enum Shown {
    Str(String),
    Int(u64),
    Bool(bool),
    /// No value; the text says what banger does instead.
    Unset(String),
}

impl Shown {
    fn path(path: &std::path::Path) -> Self {
        Self::Str(path.display().to_string())
    }

    fn optional_path(path: Option<&std::path::Path>, instead: impl Into<String>) -> Self {
        path.map_or_else(|| Self::Unset(instead.into()), Self::path)
    }

    fn optional_str(value: Option<&str>, instead: impl Into<String>) -> Self {
        value.map_or_else(|| Self::Unset(instead.into()), |v| Self::Str(v.to_owned()))
    }

    fn toml(&self) -> Option<String> {
        match self {
            Self::Str(s) => Some(toml::Value::String(s.clone()).to_string()),
            Self::Int(n) => Some(n.to_string()),
            Self::Bool(b) => Some(b.to_string()),
            Self::Unset(_) => None,
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.clone()),
            Self::Int(n) => json!(n),
            Self::Bool(b) => Value::Bool(*b),
            Self::Unset(_) => Value::Null,
        }
    }
}

/// Every key with its effective value, in [`crate::KEYS`] order.
fn shown(config: &Config) -> Vec<(&'static str, Shown)> {
    use Shown::{Bool, Int, Str};
    let c = config;
    vec![
        ("state_dir", Shown::path(&c.state_dir)),
        ("cache_dir", Shown::path(&c.cache_dir)),
        ("runtime_dir", Shown::path(&c.runtime_dir)),
        ("data_dir", Shown::path(&c.data_dir)),
        (
            "socket_group",
            Shown::optional_str(c.socket_group.as_deref(), "the daemon's primary group"),
        ),
        ("log_level", Str(c.log_level.clone())),
        ("vmm", Str(c.vmm.to_string())),
        (
            "firecracker_bin",
            Shown::optional_path(c.firecracker_bin.as_deref(), "`firecracker` on PATH"),
        ),
        (
            "qemu_bin",
            Shown::optional_path(c.qemu_bin.as_deref(), "`qemu-system-x86_64` on PATH"),
        ),
        (
            "vhost_vsock_bin",
            Shown::optional_path(c.vhost_vsock_bin.as_deref(), "`vhost-device-vsock` on PATH"),
        ),
        (
            "ssh_key",
            Shown::optional_path(
                c.ssh_key.as_deref(),
                format!("{}, generated when missing", c.ssh_key_path().display()),
            ),
        ),
        (
            "default_image",
            Shown::optional_str(
                c.default_image.as_deref(),
                "none; `vm create` needs --image",
            ),
        ),
        ("stop_timeout_secs", Int(c.stop_timeout_secs)),
        ("boot_timeout_secs", Int(c.boot_timeout_secs)),
        ("stats_poll_interval_secs", Int(c.stats_poll_interval_secs)),
        ("extra_kernel_args", Str(c.extra_kernel_args.clone())),
        ("vm_defaults.vcpus", Int(u64::from(c.vm_defaults.vcpus))),
        ("vm_defaults.memory_mib", Int(c.vm_defaults.memory_mib)),
        (
            "vm_defaults.disk_size_mib",
            Int(c.vm_defaults.disk_size_mib),
        ),
        ("network.bridge", Str(c.network.bridge.clone())),
        ("network.subnet", Str(c.network.subnet.to_string())),
        ("network.domain", Str(c.network.domain.clone())),
        (
            "network.netns",
            Shown::optional_str(c.network.netns.as_deref(), "the daemon's own namespace"),
        ),
        (
            "network.tap_pool_size",
            Int(u64::from(c.network.tap_pool_size)),
        ),
        ("network.enabled", Bool(c.network.enabled)),
        (
            "network.publish_address",
            Str(c.network.publish_address.to_string()),
        ),
        (
            "network.dns_upstream",
            if c.network.dns_upstream.is_empty() {
                Shown::Unset("the nameservers of network.resolv_conf".to_owned())
            } else {
                Str(c
                    .network
                    .dns_upstream
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "))
            },
        ),
        (
            "network.resolv_conf",
            Str(c
                .network
                .resolv_conf
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")),
        ),
        (
            "network.host_forward_accept",
            Bool(c.network.host_forward_accept),
        ),
        ("web.enabled", Bool(c.web.enabled)),
        ("web.listen", Str(c.web.listen.to_string())),
        ("web.allow_remote", Bool(c.web.allow_remote)),
    ]
}

impl LoadedConfig {
    /// The effective configuration as TOML: every key, each line followed by `# <origin>`.
    ///
    /// The output re-parses (with [`crate::parse_str`]) to the same [`Config`].
    pub fn render(&self) -> String {
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut table = "";
        for (key, value) in shown(&self.config) {
            let (this_table, name) = key.rsplit_once('.').unwrap_or(("", key));
            if this_table != table {
                lines.push((String::new(), String::new()));
                lines.push((format!("[{this_table}]"), String::new()));
                table = this_table;
            }
            let origin = self
                .origins
                .get(key)
                .map_or_else(|| Origin::Default.to_string(), ToString::to_string);
            match (value.toml(), &value) {
                (Some(v), _) => lines.push((format!("{name} = {v}"), origin)),
                // Only a default can be unset (a file always sets a value), so the origin
                // comment has room to say what banger does instead.
                (None, Shown::Unset(instead)) => {
                    lines.push((format!("# {name} unset"), format!("{origin}: {instead}")));
                }
                (None, _) => lines.push((format!("# {name} unset"), origin)),
            }
        }

        let width = lines
            .iter()
            .filter(|(_, origin)| !origin.is_empty())
            .map(|(body, _)| body.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        out.push_str("# banger configuration in effect (precedence: env > file > default)\n");
        match &self.file {
            Some(path) => out.push_str(&format!("# config file: {}\n", path.display())),
            None => out.push_str("# config file: none found; built-in defaults apply\n"),
        }
        out.push('\n');
        for (body, origin) in lines {
            if origin.is_empty() {
                out.push_str(body.trim_end());
            } else {
                out.push_str(&format!("{body:<width$}  # {origin}"));
            }
            out.push('\n');
        }
        out
    }

    /// The effective configuration as JSON, for `config show --json`:
    /// `{"file": PATH|null, "values": {"dotted.key": {"value": V|null, "origin": "..."}}}`.
    pub fn to_json(&self) -> Value {
        let mut values = Map::new();
        for (key, value) in shown(&self.config) {
            let origin = self.origins.get(key).cloned().unwrap_or(Origin::Default);
            values.insert(
                key.to_owned(),
                json!({ "value": value.json(), "origin": origin.to_string() }),
            );
        }
        json!({
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "values": values,
        })
    }
}

impl Serialize for LoadedConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{defaults, Environment, KEYS};

    #[test]
    fn shown_lists_exactly_the_documented_keys_in_order() {
        let loaded = defaults(&Environment::root::<[(&str, &str); 0], _, _>([])).unwrap();
        let keys: Vec<&str> = shown(&loaded.config).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, KEYS);
    }
}
