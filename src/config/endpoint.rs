//! `udp:IP:PORT` / `tcp:IP:PORT` endpoint strings of listeners and the upstream.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::transport::Transport;

/// A transport plus socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Transport.
    pub transport: Transport,
    /// Address and port.
    pub addr: SocketAddr,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("expected udp:IP:PORT or tcp:IP:PORT, got {s:?}"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => {
                return Err(format!(
                    "{s:?}: TLS is not implemented yet; use udp: or tcp:"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown transport {scheme:?} in {s:?} (udp or tcp)"
                ))
            }
        };
        let addr = rest
            .parse()
            .map_err(|_| format!("{rest:?} is not IP:PORT (IPv6 as [::1]:5060) in {s:?}"))?;
        Ok(Self { transport, addr })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_and_refuses_junk() {
        let e: Endpoint = "udp:127.0.0.1:5060".parse().unwrap();
        assert_eq!((e.transport, e.addr.port()), (Transport::Udp, 5060));
        let e: Endpoint = "TCP:[::1]:5070".parse().unwrap();
        assert!(e.addr.is_ipv6());
        assert_eq!(e.to_string(), "tcp:[::1]:5070");
        assert!("sctp:1.2.3.4:5".parse::<Endpoint>().is_err());
        assert!("udp:localhost:5060".parse::<Endpoint>().is_err());
        assert!("tls:1.2.3.4:5061"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("TLS"));
        assert!("nonsense".parse::<Endpoint>().is_err());
    }
}
