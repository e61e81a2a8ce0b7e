//! Durable identity allocation: guest IPv4 addresses, vsock context ids and MAC addresses.
//!
//! Allocation reads what the store already holds and picks the lowest free value; the caller
//! holds the manager's allocation lock across "pick + insert", and the store's UNIQUE
//! constraints are the backstop, so no address or CID is ever handed out twice.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The VM subnet: gateway is the first host, VMs get the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (16..=29).
    pub prefix: u8,
}

impl Subnet {
    /// The gateway (bridge) address: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn host_range(&self) -> std::ops::Range<u32> {
        let base = u32::from(self.network) & self.mask();
        let size = 1u32 << (32 - u32::from(self.prefix));
        // Skip network, gateway; stop before broadcast.
        (base + 2)..(base + size - 1)
    }

    /// The netmask as a u32.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network) & self.mask()
    }
}

/// The lowest free guest address of `subnet`, or `None` when it is full.
pub fn next_ip(subnet: Subnet, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let used: HashSet<u32> = used.iter().map(|ip| u32::from(*ip)).collect();
    subnet
        .host_range()
        .find(|candidate| !used.contains(candidate))
        .map(Ipv4Addr::from)
}

/// The lowest free vsock context id (0-2 are reserved by the vsock spec).
pub fn next_cid(used: &[u32]) -> u32 {
    let used: HashSet<u32> = used.iter().copied().collect();
    (3u32..).find(|cid| !used.contains(cid)).unwrap_or(u32::MAX)
}

/// The guest MAC derived from its address: locally administered, unicast (`06:00:` + the four
/// octets), so a MAC is unique exactly when its IP is.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet {
        Subnet {
            network: Ipv4Addr::new(172, 30, 0, 0),
            prefix: 24,
        }
    }

    #[test]
    fn first_ip_skips_network_and_gateway() {
        assert_eq!(subnet().gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(next_ip(subnet(), &[]), Some(Ipv4Addr::new(172, 30, 0, 2)));
    }

    #[test]
    fn holes_are_reused_and_full_subnet_is_none() {
        let used = [Ipv4Addr::new(172, 30, 0, 2), Ipv4Addr::new(172, 30, 0, 4)];
        assert_eq!(next_ip(subnet(), &used), Some(Ipv4Addr::new(172, 30, 0, 3)));
        let small = Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 29,
        };
        let all: Vec<_> = (2..7).map(|d| Ipv4Addr::new(10, 0, 0, d)).collect();
        assert_eq!(next_ip(small, &all), None);
        assert_eq!(next_ip(small, &all[..4]), Some(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn cids_start_at_three_and_fill_holes() {
        assert_eq!(next_cid(&[]), 3);
        assert_eq!(next_cid(&[3, 4, 6]), 5);
    }

    #[test]
    fn mac_is_locally_administered_unicast() {
        let mac = mac_for(Ipv4Addr::new(172, 30, 0, 5));
        assert_eq!(mac, "06:00:ac:1e:00:05");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b01, 0, "unicast");
    }
}
