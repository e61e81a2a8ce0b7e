//! IPv4 networks and the kernel's route table as `/proc/net/route` shows it.
//!
//! `/proc/net/route` prints each destination, gateway and mask as the 32-bit value of the
//! network-order address printed as a native-endian integer (`%08X`): on x86 that reads as
//! little-endian, so `0100A8C0` is `192.168.0.1`. [`parse_route_table`] undoes exactly that with
//! `to_ne_bytes`, which is right on either byte order.
//!
//! Pure functions, no I/O: the caller reads the file through the probe.

use std::fmt;
use std::net::Ipv4Addr;
use std::num::ParseIntError;

/// An IPv4 network: an address with its host bits cleared, and a prefix length of 0–32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

/// A prefix length longer than 32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix length /{prefix} is longer than 32")]
pub struct InvalidPrefix {
    /// The rejected prefix length.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The network of `addr/prefix` (host bits are cleared: `10.0.0.7/24` is `10.0.0.0/24`).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, InvalidPrefix> {
        if prefix > 32 {
            return Err(InvalidPrefix { prefix });
        }
        Ok(Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & mask_bits(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// Whether `addr` lies in this network.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether the two networks share any address: one of them contains the other.
    pub fn overlaps(self, other: Ipv4Net) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let mask = mask_bits(shorter);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// One row of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The interface the route leaves through.
    pub iface: String,
    /// The destination network.
    pub destination: Ipv4Net,
    /// The next hop (`0.0.0.0` for a directly connected network).
    pub gateway: Ipv4Addr,
}

impl Route {
    /// Whether this is a default route (`0.0.0.0/0`), which overlaps everything by definition.
    pub fn is_default(&self) -> bool {
        self.destination.prefix() == 0
    }
}

/// Why `/proc/net/route` text could not be read as a route table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTableError {
    /// A row has fewer than the 8 columns up to `Mask`.
    #[error("line {line} of the route table has {found} columns, expected at least 8")]
    TooFewColumns {
        /// 1-based line number.
        line: usize,
        /// How many whitespace-separated columns it has.
        found: usize,
    },
    /// A destination, gateway or mask column is not a 32-bit hex number.
    #[error("line {line} of the route table: {column} {text:?} is not a 32-bit hex number")]
    BadHex {
        /// 1-based line number.
        line: usize,
        /// `Destination`, `Gateway` or `Mask`.
        column: &'static str,
        /// The column's text.
        text: String,
        /// The parse failure.
        #[source]
        source: ParseIntError,
    },
    /// A mask whose one-bits are not contiguous from the top.
    #[error("line {line} of the route table: mask {mask} is not a prefix mask")]
    NonContiguousMask {
        /// 1-based line number.
        line: usize,
        /// The mask as an address.
        mask: Ipv4Addr,
    },
}

fn parse_hex_addr(
    line: usize,
    column: &'static str,
    text: &str,
) -> Result<Ipv4Addr, RouteTableError> {
    u32::from_str_radix(text, 16)
        .map(|raw| Ipv4Addr::from(raw.to_ne_bytes()))
        .map_err(|source| RouteTableError::BadHex {
            line,
            column,
            text: text.to_owned(),
            source,
        })
}

/// Parses the text of `/proc/net/route` (the `Iface …` header line is skipped).
pub fn parse_route_table(text: &str) -> Result<Vec<Route>, RouteTableError> {
    let mut routes = Vec::new();
    for (index, row) in text.lines().enumerate() {
        let line = index + 1;
        let columns: Vec<&str> = row.split_whitespace().collect();
        if columns.is_empty() || columns[0] == "Iface" {
            continue;
        }
        if columns.len() < 8 {
            return Err(RouteTableError::TooFewColumns {
                line,
                found: columns.len(),
            });
        }
        let destination = parse_hex_addr(line, "Destination", columns[1])?;
        let gateway = parse_hex_addr(line, "Gateway", columns[2])?;
        let mask = parse_hex_addr(line, "Mask", columns[7])?;
        let mask_value = u32::from(mask);
        let prefix = mask_value.leading_ones();
        if mask_value.count_ones() != prefix {
            return Err(RouteTableError::NonContiguousMask { line, mask });
        }
        // leading_ones of a u32 is at most 32, which always fits and is always a valid prefix.
        let prefix = u8::try_from(prefix).unwrap_or(32);
        let destination = Ipv4Net::new(destination, prefix)
            .map_err(|_| RouteTableError::NonContiguousMask { line, mask })?;
        routes.push(Route {
            iface: columns[0].to_owned(),
            destination,
            gateway,
        });
    }
    Ok(routes)
}

/// The routes whose destination overlaps `subnet`, ignoring default routes and routes on
/// banger's own bridge (which exist because banger put the subnet there).
pub fn overlapping_routes<'a>(
    subnet: Ipv4Net,
    routes: &'a [Route],
    bridge: &str,
) -> Vec<&'a Route> {
    routes
        .iter()
        .filter(|route| !route.is_default() && route.iface != bridge)
        .filter(|route| route.destination.overlaps(subnet))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
banger0\t0063A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    fn net(text: &str) -> Ipv4Net {
        let (addr, prefix) = text.split_once('/').unwrap();
        Ipv4Net::new(addr.parse().unwrap(), prefix.parse().unwrap()).unwrap()
    }

    #[test]
    fn route_table_columns_are_native_endian_hex() {
        let routes = parse_route_table(TABLE).unwrap();
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[0].iface, "eth0");
        assert!(routes[0].is_default());
        assert_eq!(routes[0].gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(routes[1].destination, net("192.0.2.0/24"));
        assert_eq!(routes[2].destination, net("172.17.0.0/16"));
        assert_eq!(routes[3].destination, net("192.168.99.0/24"));
    }

    #[test]
    fn route_table_rejects_short_rows_and_bad_hex() {
        assert_eq!(
            parse_route_table("eth0 00000000 00000000\n"),
            Err(RouteTableError::TooFewColumns { line: 1, found: 3 })
        );
        let err = parse_route_table("eth0 zz000000 00000000 0001 0 0 0 00FFFFFF\n").unwrap_err();
        assert!(matches!(
            err,
            RouteTableError::BadHex {
                line: 1,
                column: "Destination",
                ..
            }
        ));
    }

    #[test]
    fn route_table_rejects_a_non_prefix_mask() {
        let err = parse_route_table("eth0 000200C0 00000000 0001 0 0 0 00FF00FF\n").unwrap_err();
        assert!(matches!(
            err,
            RouteTableError::NonContiguousMask { line: 1, .. }
        ));
    }

    #[test]
    fn empty_route_table_has_no_routes() {
        assert_eq!(
            parse_route_table("Iface\tDestination\tGateway\n"),
            Ok(vec![])
        );
    }

    #[test]
    fn new_clears_host_bits_and_rejects_long_prefixes() {
        assert_eq!(net("10.0.0.7/24").network(), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(
            Ipv4Net::new(Ipv4Addr::LOCALHOST, 33),
            Err(InvalidPrefix { prefix: 33 })
        );
        assert_eq!(net("10.1.2.3/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("10.1.2.3/32").to_string(), "10.1.2.3/32");
    }

    #[test]
    fn networks_overlap_when_one_contains_the_other() {
        assert!(net("172.16.0.0/12").overlaps(net("172.17.0.0/24")));
        assert!(net("172.17.0.0/24").overlaps(net("172.16.0.0/12")));
        assert!(net("10.0.0.0/24").overlaps(net("10.0.0.0/24")));
        assert!(!net("10.0.0.0/24").overlaps(net("10.0.1.0/24")));
        assert!(!net("192.168.0.0/16").overlaps(net("172.16.0.0/12")));
        assert!(net("10.0.0.2/32").overlaps(net("10.0.0.0/30")));
        assert!(!net("10.0.0.5/32").overlaps(net("10.0.0.0/30")));
        assert!(net("10.0.0.0/24").contains(Ipv4Addr::new(10, 0, 0, 255)));
        assert!(!net("10.0.0.0/24").contains(Ipv4Addr::new(10, 0, 1, 0)));
    }

    #[test]
    fn overlap_ignores_default_routes_and_banger_s_own_bridge() {
        let routes = parse_route_table(TABLE).unwrap();
        let own = overlapping_routes(net("192.168.99.0/24"), &routes, "banger0");
        assert!(own.is_empty(), "{own:?}");
        let docker = overlapping_routes(net("172.17.5.0/24"), &routes, "banger0");
        assert_eq!(docker.len(), 1);
        assert_eq!(docker[0].iface, "docker0");
        let other_bridge = overlapping_routes(net("192.168.99.0/24"), &routes, "br1");
        assert_eq!(other_bridge.len(), 1);
        assert_eq!(other_bridge[0].iface, "banger0");
    }
}
