//! The doctor's verdict: [`Report`], its [`Check`]s, and their rendering for humans.
//!
//! The JSON form (`banger doctor --json`) is the serde form of [`Report`]; statuses and kinds are
//! lowercase strings. [`Report::render_human`] is deterministic (no timestamps, no colours, fixed
//! column widths) so that it can be golden-tested.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How a check came out. Ordered: `Pass < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Pass,
    /// banger works, but worse than it could (slow, missing an optional feature), or doctor could
    /// not tell.
    Warn,
    /// banger cannot create or run VMs until this is fixed.
    Fail,
}

impl Status {
    /// The fixed-width tag that starts a line of [`Report::render_human`].
    pub fn tag(self) -> &'static str {
        match self {
            Status::Pass => "[ ok ]",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
        }
    }
}

/// One question doctor asked of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Short stable name, e.g. `kvm`, `ip_forward`.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// One line saying what was found.
    pub summary: String,
    /// What to do about it: commands to run or config keys to set. Present whenever the status is
    /// not [`Status::Pass`].
    pub hint: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn pass(name: &str, summary: impl Into<String>) -> Self {
        Check {
            name: name.to_owned(),
            status: Status::Pass,
            summary: summary.into(),
            hint: None,
        }
    }

    /// A warning with its fix hint.
    pub fn warn(name: &str, summary: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::with_status(name, Status::Warn, summary, hint)
    }

    /// A failure with its fix hint.
    pub fn fail(name: &str, summary: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::with_status(name, Status::Fail, summary, hint)
    }

    /// A non-passing check whose status is decided by the caller.
    pub fn with_status(
        name: &str,
        status: Status,
        summary: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Check {
            name: name.to_owned(),
            status,
            summary: summary.into(),
            hint: Some(hint.into()),
        }
    }
}

/// What `/dev/kvm` is on this host, which decides which VMM and guest kernel can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// Hardware virtualization (vmx + `kvm_intel`, or svm + `kvm_amd`): any guest kernel boots.
    Hardware,
    /// `/dev/kvm` is provided by `kvm_pvm` (software, page-table based): ordinary guest kernels
    /// fault; only PVM-patched kernels boot, or QEMU TCG without KVM at all.
    Pvm,
    /// `/dev/kvm` opens, but neither hardware virtualization nor `kvm_pvm` could be seen, so
    /// doctor cannot promise that guests boot.
    Unverified,
    /// `/dev/kvm` exists but cannot be opened read-write by this process.
    Unusable,
    /// There is no `/dev/kvm`.
    Absent,
}

/// The VMM backend banger will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmBackend {
    /// `firecracker`.
    Firecracker,
    /// `qemu-system-x86_64 -M microvm` (KVM-accelerated or TCG).
    Qemu,
}

impl VmmBackend {
    /// The value of the `vmm` config key that selects this backend.
    pub fn config_name(self) -> &'static str {
        match self {
            VmmBackend::Firecracker => "firecracker",
            VmmBackend::Qemu => "qemu",
        }
    }
}

/// Everything doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// What `/dev/kvm` is on this host.
    pub kvm: KvmKind,
    /// The backend the configured `vmm` resolves to, `None` when no usable VMM was found.
    pub vmm: Option<VmmBackend>,
}

/// Width of the name column in [`Report::render_human`] (the longest name is
/// `vhost-device-vsock`).
const NAME_WIDTH: usize = 19;

impl Report {
    /// The worst status of any check (`Pass` for an empty report).
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|check| check.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    /// How many checks came out with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks
            .iter()
            .filter(|check| check.status == status)
            .count()
    }

    /// One line per check (`[tag] name summary`), its hint on the next line after `fix: `, then
    /// a line of totals.
    pub fn render_human(&self) -> String {
        let indent = " ".repeat(Status::Pass.tag().len() + 1);
        let mut out = String::new();
        for check in &self.checks {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{} {:<width$} {}",
                check.status.tag(),
                check.name,
                check.summary,
                width = NAME_WIDTH
            );
            if let Some(hint) = &check.hint {
                let mut lines = hint.lines();
                if let Some(first) = lines.next() {
                    let _ = writeln!(out, "{indent}fix: {first}");
                }
                for line in lines {
                    let _ = writeln!(out, "{indent}     {line}");
                }
            }
        }
        let warnings = self.count(Status::Warn);
        let _ = writeln!(
            out,
            "{} passed, {} {}, {} failed",
            self.count(Status::Pass),
            warnings,
            if warnings == 1 { "warning" } else { "warnings" },
            self.count(Status::Fail)
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        Report {
            checks: statuses
                .iter()
                .enumerate()
                .map(|(i, status)| Check {
                    name: format!("c{i}"),
                    status: *status,
                    summary: "s".into(),
                    hint: None,
                })
                .collect(),
            kvm: KvmKind::Absent,
            vmm: None,
        }
    }

    #[test]
    fn worst_is_the_most_severe_status() {
        assert_eq!(report(&[]).worst(), Status::Pass);
        assert_eq!(report(&[Status::Pass, Status::Warn]).worst(), Status::Warn);
        assert_eq!(
            report(&[Status::Fail, Status::Warn, Status::Pass]).worst(),
            Status::Fail
        );
    }

    #[test]
    fn multi_line_hints_stay_aligned_under_fix() {
        let report = Report {
            checks: vec![Check::warn("x", "summary", "one\ntwo")],
            kvm: KvmKind::Hardware,
            vmm: Some(VmmBackend::Firecracker),
        };
        assert_eq!(
            report.render_human(),
            "[warn] x                   summary\n       fix: one\n            two\n\
             0 passed, 1 warning, 0 failed\n"
        );
    }

    #[test]
    fn json_uses_lowercase_statuses_and_kinds() {
        let report = Report {
            checks: vec![Check::fail("kvm", "gone", "modprobe kvm_intel")],
            kvm: KvmKind::Pvm,
            vmm: Some(VmmBackend::Qemu),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][0]["status"], "fail");
        assert_eq!(json["kvm"], "pvm");
        assert_eq!(json["vmm"], "qemu");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}
