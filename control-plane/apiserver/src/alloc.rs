//! ClusterIP and NodePort allocation. Each allocated address or port is a key
//! (`/registry/core/ipallocations/<ip>`, `/registry/core/nodeportallocations/<port>`) created in
//! the same store transaction as the Service, so two masters can never hand out the same one,
//! a failed create leaks nothing, and allocations survive restarts.

use std::net::Ipv4Addr;

use rand::Rng;

/// The service CIDR and NodePort range.
#[derive(Clone, Debug)]
pub struct Ranges {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub node_ports: (u16, u16),
}

/// A malformed `--service-cidr` or `--node-port-range`.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} {value:?}")]
pub struct RangeError {
    pub what: &'static str,
    pub value: String,
}

impl Ranges {
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, RangeError> {
        let bad_cidr = || RangeError { what: "service CIDR", value: cidr.to_owned() };
        let (ip, len) = cidr.split_once('/').ok_or_else(bad_cidr)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad_cidr())?;
        let prefix: u8 = len.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(bad_cidr)?;
        let mask = u32::MAX << (32 - prefix);
        let bad_ports = || RangeError { what: "node port range", value: ports.to_owned() };
        let (lo, hi) = ports.split_once('-').ok_or_else(bad_ports)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad_ports())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad_ports())?;
        if lo == 0 || lo > hi {
            return Err(bad_ports());
        }
        Ok(Self { net: Ipv4Addr::from(u32::from(ip) & mask), prefix, node_ports: (lo, hi) })
    }

    /// The first usable address, reserved for the `kubernetes` Service (as upstream).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.net)
    }

    /// A random candidate ClusterIP (network, first and broadcast addresses excluded).
    pub fn random_ip(&self, rng: &mut impl Rng) -> Ipv4Addr {
        let size = 1u32 << (32 - self.prefix);
        Ipv4Addr::from(u32::from(self.net) + rng.random_range(2..size - 1))
    }

    pub fn random_port(&self, rng: &mut impl Rng) -> u16 {
        rng.random_range(self.node_ports.0..=self.node_ports.1)
    }
}

pub fn ip_key(ip: Ipv4Addr) -> String {
    format!("/registry/core/ipallocations/{ip}")
}

pub fn port_key(port: i64) -> String {
    format!("/registry/core/nodeportallocations/{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_stay_inside() {
        let r = Ranges::parse("10.96.0.0/12", "30000-32767").expect("valid");
        assert_eq!(r.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let ip = r.random_ip(&mut rng);
            assert!(r.contains(ip) && ip != r.first_ip(), "{ip}");
            assert!((30000..=32767).contains(&r.random_port(&mut rng)));
        }
        assert!(Ranges::parse("10.96.0.0", "30000-32767").is_err());
        assert!(Ranges::parse("10.96.0.0/12", "5-1").is_err());
    }
}
