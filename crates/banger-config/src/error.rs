//! `ConfigError`: why a configuration could not be loaded.
//!
//! Every variant names what the user has to fix: the file and the dotted key (and the line when
//! the TOML parser knows it), or the environment variable. Messages never repeat their `#[source]`;
//! print the whole chain at the edge.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why loading banger's configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named by `BANGER_CONFIG`) but could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },

    /// The file is not valid TOML.
    #[error("{} is not valid TOML", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's complaint, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },

    /// The file sets a key banger does not know (often a typo).
    #[error("unknown key `{key}` in {}; valid keys{}: {}", Location(file, *line), table_label(key), valid.join(", "))]
    UnknownKey {
        /// The dotted key, e.g. `network.brige`.
        key: String,
        /// The file.
        file: PathBuf,
        /// 1-based line of the key, when known.
        line: Option<usize>,
        /// The keys valid in the same table.
        valid: Vec<String>,
    },

    /// The file sets a known key to a value of the wrong type or out of range.
    #[error("`{key}` in {}: {reason}", Location(file, *line))]
    InvalidValue {
        /// The dotted key, e.g. `vm_defaults.vcpus`.
        key: String,
        /// The file.
        file: PathBuf,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// What was expected and what was found.
        reason: String,
    },

    /// An environment override (`BANGER_STATE_DIR`, ...) holds an unusable value.
    #[error("environment variable {var}: {reason}")]
    InvalidEnv {
        /// The variable.
        var: String,
        /// What was expected and what was found.
        reason: String,
    },

    /// A user-mode default needs `$HOME` (or the XDG variable) and neither is set to an absolute
    /// path.
    #[error("cannot place `{key}`: neither ${xdg_var} nor $HOME is set to an absolute path (set one of them{})", env_hint(override_var))]
    NoHome {
        /// The dotted key whose default could not be computed (or `config file`).
        key: String,
        /// The XDG variable consulted first.
        xdg_var: &'static str,
        /// The banger variable that would override it, if any.
        override_var: Option<&'static str>,
    },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::InvalidValue { key, .. }
            | Self::NoHome { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } | Self::InvalidEnv { .. } => None,
        }
    }
}

/// `FILE` or `FILE:LINE`.
struct Location<'a>(&'a PathBuf, Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(line) => write!(f, "{}:{line}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

fn table_label(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((table, _)) => format!(" in [{table}]"),
        None => " at the top level".to_owned(),
    }
}

fn env_hint(var: &Option<&'static str>) -> String {
    match var {
        Some(var) => format!(", or {var}"),
        None => String::new(),
    }
}
