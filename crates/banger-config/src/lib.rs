//! banger's configuration: where the config file lives, what it may say, and what the daemon and
//! CLI actually run with.
//!
//! - [`load`] finds the file (`$BANGER_CONFIG`, else `/etc/banger/config.toml` for root, else
//!   `$XDG_CONFIG_HOME/banger/config.toml`), parses it, applies the `BANGER_*_DIR` environment
//!   overrides and defaults (precedence: env > file > default), validates every value, and returns
//!   a [`LoadedConfig`]: the effective [`Config`] plus the [`Origin`] of every key.
//! - Unknown keys and bad values are errors ([`ConfigError`]) that name the dotted key and the
//!   file, so a typo never silently falls back to a default.
//! - [`LoadedConfig::render`] / [`LoadedConfig::to_json`] are `banger config show`.
//! - [`ensure_ssh_key`] creates banger's ed25519 key pair on first use.
//!
//! The loader reads only what it is given: an [`Environment`] (built by the binaries with
//! [`Environment::current`], by hand in tests) and one file. It creates nothing on disk; only
//! [`ensure_ssh_key`] writes. Every key is documented in `docs/config.md`.

// Tests may unwrap: a panic there is a test failure, which is what we want.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod env;
mod error;
mod load;
mod model;
mod net;
mod render;
mod ssh;

pub use env::Environment;
pub use error::ConfigError;
pub use load::{
    config_file_path, defaults, load, load_file, parse_str, LoadedConfig, Origin, ENV_CACHE_DIR,
    ENV_CONFIG, ENV_DATA_DIR, ENV_RUNTIME_DIR, ENV_STATE_DIR, KEYS, ROOT_CONFIG_FILE,
};
pub use model::{Config, NetworkConfig, UnknownVmm, VmDefaults, VmmChoice, WebConfig};
pub use net::{Ipv4Net, Ipv4NetError};
pub use ssh::{ensure_ssh_key, SshKeyError, SshKeyPair};
