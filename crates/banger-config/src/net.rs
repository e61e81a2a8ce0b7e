//! `Ipv4Net`: an IPv4 network in CIDR notation, as the `network.subnet` key holds it.
//!
//! The type is parsed, not validated: an `Ipv4Net` that exists has a prefix of 0..=32 and no host
//! bits set in its address, so every caller can compute the gateway, the broadcast address and
//! membership without re-checking. The narrower rule banger applies to its VM subnet (prefix
//! 16..=29) is a configuration policy and lives in the loader, not here. Plain data: `Copy`, no
//! shared state.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network: a network address and a prefix length, e.g. `172.30.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a string is not an IPv4 network in CIDR notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4NetError {
    /// There is no `/` separating address and prefix.
    #[error("expected an IPv4 network such as 172.30.0.0/24, got `{0}`")]
    MissingPrefix(String),
    /// The part before `/` is not a dotted-quad IPv4 address.
    #[error("`{0}` is not an IPv4 address")]
    BadAddress(String),
    /// The part after `/` is not an integer 0..=32.
    #[error("`{0}` is not a prefix length 0..=32")]
    BadPrefix(String),
    /// The address has bits set beyond the prefix, so it names a host, not a network.
    #[error("{addr}/{prefix} has host bits set; the network is {network}/{prefix}")]
    HostBitsSet {
        /// The address as written.
        addr: Ipv4Addr,
        /// The prefix as written.
        prefix: u8,
        /// The network the address belongs to.
        network: Ipv4Addr,
    },
}

impl Ipv4Net {
    /// `172.30.0.0/24`, the default `network.subnet`.
    pub const DEFAULT_VM_SUBNET: Self = Self {
        addr: Ipv4Addr::new(172, 30, 0, 0),
        prefix: 24,
    };

    /// Builds a network from its address and prefix length.
    ///
    /// Refuses a prefix above 32 and an address with host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, Ipv4NetError> {
        if prefix > 32 {
            return Err(Ipv4NetError::BadPrefix(prefix.to_string()));
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        if network != addr {
            return Err(Ipv4NetError::HostBitsSet {
                addr,
                prefix,
                network,
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The network address (all host bits zero).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 0..=32.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask, e.g. `255.255.255.0` for a /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// The gateway banger puts on its bridge: the first host address of the network.
    ///
    /// For a /31 or /32 there is no host range in the classic sense; the result is then the
    /// address after the network address, saturating at the broadcast address.
    pub fn gateway(&self) -> Ipv4Addr {
        let first = u32::from(self.addr).saturating_add(1);
        Ipv4Addr::from(first.min(u32::from(self.broadcast())))
    }

    /// Whether `ip` lies inside this network (network and broadcast addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Number of usable host addresses (excluding network and broadcast) for prefixes up to /30.
    pub fn host_count(&self) -> u64 {
        let size = 1u64 << (32 - u32::from(self.prefix));
        size.saturating_sub(2)
    }
}

/// The netmask for `prefix` as a host-order integer; `prefix` must be at most 32.
fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl FromStr for Ipv4Net {
    type Err = Ipv4NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| Ipv4NetError::MissingPrefix(s.to_owned()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| Ipv4NetError::BadAddress(addr.to_owned()))?;
        // Parse as u8 only after checking it is all digits, so "+24" and " 24" are refused.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Ipv4NetError::BadPrefix(prefix.to_owned()));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| Ipv4NetError::BadPrefix(prefix.to_owned()))?;
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidr_and_derives_gateway_broadcast_and_mask() {
        let net: Ipv4Net = "172.30.0.0/24".parse().unwrap();
        assert_eq!(net.addr(), Ipv4Addr::new(172, 30, 0, 0));
        assert_eq!(net.prefix(), 24);
        assert_eq!(net.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(net.broadcast(), Ipv4Addr::new(172, 30, 0, 255));
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.host_count(), 254);
        assert_eq!(net.to_string(), "172.30.0.0/24");
    }

    #[test]
    fn contains_is_true_only_inside_the_network() {
        let net: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 1, 0, 0)));
        assert!(net.contains(Ipv4Addr::new(10, 1, 255, 255)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!(!net.contains(Ipv4Addr::new(11, 1, 0, 1)));
    }

    #[test]
    fn refuses_malformed_networks() {
        for bad in [
            "172.30.0.0",
            "172.30.0/24",
            "172.30.0.0/33",
            "172.30.0.0/",
            "172.30.0.0/+4",
            "x/24",
            "",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn refuses_host_bits_and_names_the_network() {
        let err = "172.30.0.5/24".parse::<Ipv4Net>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "172.30.0.5/24 has host bits set; the network is 172.30.0.0/24"
        );
    }

    #[test]
    fn default_vm_subnet_is_a_valid_network() {
        assert_eq!(
            Ipv4Net::new(Ipv4Net::DEFAULT_VM_SUBNET.addr(), 24).unwrap(),
            Ipv4Net::DEFAULT_VM_SUBNET
        );
    }

    #[test]
    fn zero_prefix_contains_everything() {
        let net: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
