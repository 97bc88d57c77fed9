//! Who sent a request: lists of networks (`allowed_ips`, `trusted_proxies`) and the
//! client address, which is the TCP peer unless that peer is a trusted proxy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Networks given as CIDRs or bare addresses. IPv4-mapped IPv6 addresses
/// (`::ffff:1.2.3.4`), on either side, are compared as the IPv4 address they carry,
/// so a dual-stack listener matches IPv4 entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetList(Vec<IpNet>);

impl NetList {
    /// Parses every entry; the error names the first bad one and why.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<NetList, String> {
        entries
            .iter()
            .map(|entry| parse_net(entry.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(NetList)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl fmt::Display for NetList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

fn parse_net(entry: &str) -> Result<IpNet, String> {
    let text = entry.trim();
    let net = match text.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        Err(_) => text.parse::<IpNet>().map_err(|_| {
            format!(
                "{entry:?} is not an IP address or CIDR (e.g. \"52.194.91.27\", \"10.0.0.0/8\", \"2001:db8::/32\")"
            )
        })?,
    };
    // "10.0.0.1/8" is more likely a typo for /32 than a way to write 10.0.0.0/8.
    if net.trunc() != net {
        return Err(format!(
            "{entry:?} has bits set after its prefix: write {} for the network, or {} for the one address",
            net.trunc(),
            IpNet::from(net.addr())
        ));
    }
    Ok(canonical_net(net))
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 network it denotes.
fn canonical_net(net: IpNet) -> IpNet {
    match (net, net.addr().to_canonical()) {
        (IpNet::V6(v6), IpAddr::V4(v4)) if v6.prefix_len() >= 96 => {
            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
        }
        _ => net,
    }
}

/// Who sent a request: the TCP peer, and the client address judged from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The direct TCP peer (IPv4-mapped addresses shown as IPv4).
    pub peer: SocketAddr,
    /// The sender: the peer itself, or the address a trusted proxy forwarded.
    pub ip: IpAddr,
}

impl ClientAddr {
    /// Takes the client from `X-Forwarded-For` only when the peer is a trusted proxy:
    /// walking the forwarded addresses from the right (the ones the nearest proxies
    /// appended), trusted proxies are skipped and the first other address is the
    /// client. A malformed entry reached on that walk, or a list of trusted proxies
    /// only, leaves the peer as the client: what lies further left was written by
    /// someone no trusted proxy vouches for.
    pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &NetList) -> ClientAddr {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let direct = ClientAddr {
            peer,
            ip: peer.ip(),
        };
        if !trusted.contains(peer.ip()) {
            return direct;
        }
        let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        for value in values.into_iter().rev() {
            let Ok(value) = value.to_str() else {
                return direct;
            };
            for entry in value.rsplit(',').map(str::trim) {
                if entry.is_empty() {
                    continue; // empty list elements are ignored (RFC 9110, 5.6.1)
                }
                let Some(ip) = parse_forwarded(entry) else {
                    return direct;
                };
                if !trusted.contains(ip) {
                    return ClientAddr { peer, ip };
                }
            }
        }
        direct
    }

    pub fn is_forwarded(&self) -> bool {
        self.ip != self.peer.ip()
    }
}

/// As the rejection log records it: `ip:port` of the peer, or `client via ip:port`
/// when a trusted proxy forwarded the request.
impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_forwarded() {
            write!(f, "{} via {}", self.ip, self.peer)
        } else {
            write!(f, "{}", self.peer)
        }
    }
}

/// An `X-Forwarded-For` entry: an address, or one with a port as some proxies write it
/// (`1.2.3.4:5678`, `[2001:db8::1]:5678`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or("")
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> NetList {
        NetList::parse(entries).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn bare_addresses_and_cidrs_of_both_families_match() {
        let nets = list(&["52.194.91.27", "10.0.0.0/8", "2001:db8::/32", "::1"]);
        for yes in ["52.194.91.27", "10.200.3.4", "2001:db8:1::5", "::1"] {
            assert!(nets.contains(ip(yes)), "{yes}");
        }
        for no in ["52.194.91.28", "11.0.0.1", "2001:db9::1", "::2"] {
            assert!(!nets.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_entries_and_back() {
        assert!(list(&["1.2.3.0/24"]).contains(ip("::ffff:1.2.3.4")));
        assert!(list(&["::ffff:1.2.3.0/120"]).contains(ip("1.2.3.4")));
        assert!(!list(&["1.2.3.0/24"]).contains(ip("::1.2.3.4")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let not_ip = NetList::parse(&["10.0.0/8"]).unwrap_err();
        assert!(
            not_ip.contains("\"10.0.0/8\" is not an IP address"),
            "{not_ip}"
        );
        let host_bits = NetList::parse(&["10.0.0.1/8"]).unwrap_err();
        assert!(
            host_bits.contains("10.0.0.0/8") && host_bits.contains("10.0.0.1/32"),
            "{host_bits}"
        );
        assert!(NetList::parse(&["1.2.3.4/33"]).is_err());
    }

    fn forwarded(peer: &str, values: &[&str], trusted: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        ClientAddr::resolve(peer.parse().unwrap(), &headers, &list(trusted)).to_string()
    }

    #[test]
    fn forwarded_entries_with_ports_brackets_and_gaps_are_read() {
        let t = &["10.0.0.1"];
        assert_eq!(
            forwarded("10.0.0.1:9", &["1.2.3.4:80"], t),
            "1.2.3.4 via 10.0.0.1:9"
        );
        assert_eq!(
            forwarded("10.0.0.1:9", &["[2001:db8::1]:80"], t),
            "2001:db8::1 via 10.0.0.1:9"
        );
        assert_eq!(
            forwarded("10.0.0.1:9", &["[2001:db8::1]"], t),
            "2001:db8::1 via 10.0.0.1:9"
        );
        assert_eq!(
            forwarded("10.0.0.1:9", &["5.6.7.8, ,"], t),
            "5.6.7.8 via 10.0.0.1:9"
        );
        assert_eq!(
            forwarded("[::ffff:10.0.0.1]:9", &["::ffff:5.6.7.8"], t),
            "5.6.7.8 via 10.0.0.1:9"
        );
    }

    #[test]
    fn a_malformed_entry_or_only_trusted_entries_leave_the_peer() {
        let t = &["10.0.0.0/8"];
        assert_eq!(
            forwarded("10.0.0.1:9", &["1.2.3.4, unknown, 10.0.0.2"], t),
            "10.0.0.1:9"
        );
        assert_eq!(
            forwarded("10.0.0.1:9", &["10.0.0.3, 10.0.0.2"], t),
            "10.0.0.1:9"
        );
        assert_eq!(forwarded("10.0.0.1:9", &[], t), "10.0.0.1:9");
        // A malformed entry left of the client does not matter.
        assert_eq!(
            forwarded("10.0.0.1:9", &["junk, 1.2.3.4"], t),
            "1.2.3.4 via 10.0.0.1:9"
        );
    }
}
