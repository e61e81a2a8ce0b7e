//! `Environment`: the slice of the process environment the loader reads.
//!
//! The loader never calls `std::env` or `geteuid` itself; it is handed an `Environment`, so tests
//! build one by hand around temp dirs and never see the real `/etc`, `$HOME` or XDG directories.
//! Only the binaries call [`Environment::current`]. Plain data, no shared state.

use std::collections::BTreeMap;

/// The process environment the loader reads, passed in so tests never touch the real `/etc` or
/// `$HOME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Whether the process runs as root (effective uid 0): selects the system-wide locations
    /// (`/etc/banger`, `/var/lib/banger`, `/var/cache/banger`, `/run/banger`) over the XDG ones.
    pub is_root: bool,
    /// Environment variables by name.
    pub vars: BTreeMap<String, String>,
}

impl Environment {
    /// The environment of this process: `geteuid() == 0` and its variables.
    ///
    /// Variables whose name or value is not valid UTF-8 are skipped (banger reads none such).
    pub fn current() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self {
            is_root: nix::unistd::geteuid().is_root(),
            vars,
        }
    }

    /// A user (non-root) environment with the given variables; a shorthand for tests and tools.
    pub fn user<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            is_root: false,
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A root environment with the given variables; a shorthand for tests and tools.
    pub fn root<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            is_root: true,
            ..Self::user(vars)
        }
    }

    /// The value of `name`, treating an empty value as unset (as the XDG base-directory
    /// specification asks).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_variable_counts_as_unset() {
        let env = Environment::user([("XDG_STATE_HOME", ""), ("HOME", "/home/a")]);
        assert_eq!(env.var("XDG_STATE_HOME"), None);
        assert_eq!(env.var("HOME"), Some("/home/a"));
        assert_eq!(env.var("NOPE"), None);
    }

    #[test]
    fn current_reads_this_process() {
        let env = Environment::current();
        assert_eq!(env.is_root, nix::unistd::geteuid().is_root());
    }
}
