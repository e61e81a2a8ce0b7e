//! Port forwards: a port of the host (on the daemon's publish address) forwarded to a port of
//! one VM's guest. Stored durably with the VM, applied while it runs, removed with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The transport protocol of a forward.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl PortProto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PortProto {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(PortProto::Tcp),
            "udp" => Ok(PortProto::Udp),
            other => Err(PortSpecError(format!(
                "unknown protocol `{other}`; expected tcp or udp"
            ))),
        }
    }
}

/// One forward: `host_port` on the host reaches `guest_port` in the guest. Also the body of
/// `POST /v1/vms/{vm}/ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// The port on the host (1..=65535), unique per protocol across all VMs.
    pub host_port: u16,
    /// The port in the guest (1..=65535).
    pub guest_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: PortProto,
}

/// Why a `HOST:GUEST[/udp]` spelling or a forward is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortSpecError(String);

impl PortForward {
    /// Checks that neither port is 0.
    pub fn validate(&self) -> Result<(), PortSpecError> {
        if self.host_port == 0 || self.guest_port == 0 {
            return Err(PortSpecError(format!(
                "port 0 is not a port: {self}; ports are 1..=65535"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host_port, self.guest_port)?;
        if self.proto == PortProto::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

fn parse_port(text: &str, which: &str, spec: &str) -> Result<u16, PortSpecError> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(PortSpecError(format!(
            "`{spec}`: {which} port `{text}` is not a port 1..=65535"
        ))),
    }
}

impl FromStr for PortForward {
    type Err = PortSpecError;

    /// `HOST:GUEST`, `HOST:GUEST/tcp` or `HOST:GUEST/udp`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = match spec.split_once('/') {
            Some((ports, proto)) => (ports, proto.parse()?),
            None => (spec, PortProto::Tcp),
        };
        let (host, guest) = ports.split_once(':').ok_or_else(|| {
            PortSpecError(format!(
                "`{spec}` is not HOST:GUEST[/udp], e.g. 8080:80 or 5353:53/udp"
            ))
        })?;
        Ok(PortForward {
            host_port: parse_port(host, "host", spec)?,
            guest_port: parse_port(guest, "guest", spec)?,
            proto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_tcp_as_default_and_reject_bad_ports() {
        let fw: PortForward = "8080:80".parse().unwrap();
        assert_eq!(
            fw,
            PortForward {
                host_port: 8080,
                guest_port: 80,
                proto: PortProto::Tcp
            }
        );
        let fw: PortForward = "5353:53/udp".parse().unwrap();
        assert_eq!(fw.proto, PortProto::Udp);
        assert_eq!(fw.to_string(), "5353:53/udp");
        for bad in ["8080", "0:80", "80:0", "70000:80", "a:b", "1:2/sctp", ""] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn body_defaults_to_tcp_and_refuses_unknown_fields() {
        let fw: PortForward = serde_json::from_str(r#"{"host_port": 1, "guest_port": 2}"#).unwrap();
        assert_eq!(fw.proto, PortProto::Tcp);
        assert!(serde_json::from_str::<PortForward>(
            r#"{"host_port": 1, "guest_port": 2, "x": 1}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<PortForward>(r#"{"host_port": 70000, "guest_port": 2}"#)
                .is_err()
        );
    }
}
