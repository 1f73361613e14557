//! Addresses as a process sees its own listeners.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where a process reaches its own listener bound to `addr`: an unspecified
/// address (`0.0.0.0:p`, `[::]:p`, as in a container) on loopback, any
/// other as it is. Used by the binaries' `healthcheck` commands.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_reached_on_loopback() {
        let reached = |addr: &str| reachable(addr.parse().expect("address")).to_string();
        assert_eq!(reached("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(reached("[::]:50051"), "[::1]:50051");
        assert_eq!(reached("10.1.2.3:7000"), "10.1.2.3:7000");
    }
}
