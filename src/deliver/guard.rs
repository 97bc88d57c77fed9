//! The destination guard: outgoing requests may not reach private, loopback,
//! link-local (cloud metadata) or otherwise internal addresses, checked after DNS
//! resolution so that a name cannot be re-pointed inward (DNS rebinding).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::{Ipv4Net, Ipv6Net};

/// Whether `ip` is a public, routable address: not in a block that the IANA IPv4 and
/// IPv6 Special-Purpose Address Registries mark as not globally reachable, not
/// multicast or reserved, and, for IPv6 forms that embed an IPv4 address (mapped,
/// IPv4-compatible, IPv4-translated, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), only if
/// the embedded address is public by the IPv4 rules.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 blocks that are not globally reachable (IANA IPv4 Special-Purpose Address
/// Registry), plus multicast and the reserved 240/4 (with broadcast).
const INTERNAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (carrier-grade NAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local: cloud metadata lives here
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments (but see below)
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, and 255.255.255.255 broadcast
];

/// Inside those blocks, what the registry marks globally reachable: PCP and TURN
/// anycast (192.0.0.9, 192.0.0.10).
const PUBLIC_V4_EXCEPTIONS: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(192, 0, 0, 9), 32),
    (Ipv4Addr::new(192, 0, 0, 10), 32),
];

/// IPv6 blocks that are not globally reachable (IANA IPv6 Special-Purpose Address
/// Registry), plus deprecated site-local, multicast and Teredo (whose client address
/// is obscured, so it cannot be judged). Forms embedding IPv4 are handled before this
/// list is consulted.
const INTERNAL_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use IPv4/IPv6 translation
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64), // dummy prefix
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (but see below)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16), // segment routing SIDs
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local, incl. fd00:ec2::254 metadata
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// Inside 2001::/23, what the registry marks globally reachable (Teredo, 2001::/32,
/// is not among them: it stays refused).
const PUBLIC_V6_EXCEPTIONS: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 1), 128), // port control protocol anycast
    (Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 2), 128), // TURN anycast
    (Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 3), 128), // DNS-SD SRP anycast
    (Ipv6Addr::new(0x2001, 3, 0, 0, 0, 0, 0, 0), 32),  // AMT
    (Ipv6Addr::new(0x2001, 4, 0x112, 0, 0, 0, 0, 0), 48), // AS112-v6
    (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28), // ORCHIDv2
    (Ipv6Addr::new(0x2001, 0x30, 0, 0, 0, 0, 0, 0), 28), // drone remote ID
];

fn in_v4(ip: Ipv4Addr, blocks: &[(Ipv4Addr, u8)]) -> bool {
    blocks
        .iter()
        .any(|&(net, len)| Ipv4Net::new(net, len).is_ok_and(|net| net.contains(&ip)))
}

fn in_v6(ip: Ipv6Addr, blocks: &[(Ipv6Addr, u8)]) -> bool {
    blocks
        .iter()
        .any(|&(net, len)| Ipv6Net::new(net, len).is_ok_and(|net| net.contains(&ip)))
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    in_v4(ip, PUBLIC_V4_EXCEPTIONS) || !in_v4(ip, INTERNAL_V4)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    in_v6(ip, PUBLIC_V6_EXCEPTIONS) || !in_v6(ip, INTERNAL_V6)
}

/// The IPv4 address an IPv6 address stands for, in the forms that embed one: mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated; `::` and `::1` are
/// not), IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, and 6to4
/// `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, high, low16, ..] => Some(Ipv4Addr::new(
            (high >> 8) as u8,
            high as u8,
            (low16 >> 8) as u8,
            low16 as u8,
        )),
        _ => None,
    }
}

/// A resolver that drops internal addresses unless they are allowed: the direct
/// client's connector resolves every name through it, so the check applies to the
/// addresses actually connected to.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

/// Why a name cannot be connected to (its text is what the attempt records).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Refused;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Refused>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| Refused(format!("{host} does not resolve: {e}")))?
                .collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Refused(if found.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    format!(
                        "{host} resolves only to private or internal addresses, which are not allowed"
                    )
                }));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Resolves a URL's host name and checks every address it has (a literal is left to
/// [`check_literal`]). For requests through a proxy, where the client itself only
/// ever resolves the proxy: any internal address refuses the name, since the proxy
/// may pick any of them.
pub async fn check_host(url: &url::Url, allow_private: bool) -> Result<(), String> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    if allow_private {
        return Ok(());
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    match found.iter().find(|a| !is_public(a.ip())) {
        Some(internal) => Err(format!(
            "{host} resolves to {}, a private or internal address, which is not allowed",
            internal.ip()
        )),
        None => Ok(()),
    }
}

/// Checks a URL whose host is an IP literal (the resolver never sees those).
pub fn check_literal(url: &url::Url, allow_private: bool) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        // RFC 6761: these names are loopback wherever they are looked up.
        Some(url::Host::Domain(name))
            if !allow_private
                && (name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost")) =>
        {
            return Err(format!(
                "destination {name} is a loopback name, which is not allowed"
            ));
        }
        _ => return Ok(()),
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(format!(
            "destination {ip} is a private or internal address, which is not allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn judged(internal: &[&str], public: &[&str]) {
        for ip in internal {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be internal");
        }
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} must be public");
        }
    }

    #[test]
    fn internal_addresses_are_not_public() {
        judged(
            &[
                "127.0.0.1",
                "10.1.2.3",
                "172.16.0.1",
                "192.168.1.1",
                "169.254.169.254",
                "0.0.0.0",
                "100.64.0.1",
                "::1",
                "::",
                "fe80::1",
                "fd00:ec2::254",
                "::ffff:127.0.0.1",
                "224.0.0.1",
                "255.255.255.255",
            ],
            &["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"],
        );
    }

    #[test]
    fn nat64_is_judged_by_the_embedded_ipv4_address() {
        judged(
            &[
                "64:ff9b::7f00:1",    // 127.0.0.1
                "64:ff9b::a9fe:a9fe", // 169.254.169.254
                "64:ff9b::10.0.0.1",
                "64:ff9b:1::", // local-use NAT64, whatever it embeds
                "64:ff9b:1::5db8:d822",
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            ],
            &[
                "64:ff9b::5db8:d822", // 93.184.216.34
                "64:ff9b::1.1.1.1",
                "64:ff9b:2::1", // past the local-use /48: ordinary unicast
            ],
        );
    }

    #[test]
    fn six_to_four_is_judged_by_the_embedded_ipv4_address() {
        judged(
            &[
                "2002:7f00:1::1",   // 127.0.0.1
                "2002:a9fe:a9fe::", // 169.254.169.254
                "2002:c0a8:101::1", // 192.168.1.1
                "2002::1",          // 0.0.0.0
            ],
            &["2002:5db8:d822::1", "2002:101:101::"], // 93.184.216.34, 1.1.1.1
        );
        // The neighbours of 2002::/16 are ordinary unicast.
        judged(&[], &["2001:ffff::1", "2003::1"]);
    }

    #[test]
    fn ipv4_compatible_and_translated_forms_are_judged_by_the_ipv4_rules() {
        judged(
            &[
                "::127.0.0.1",
                "::169.254.169.254",
                "::10.0.0.1",
                "::ffff:0:127.0.0.1",
                "::ffff:0:169.254.169.254",
            ],
            &["::93.184.216.34", "::ffff:0:1.1.1.1", "::ffff:1.1.1.1"],
        );
    }

    #[test]
    fn site_local_and_its_neighbours() {
        judged(&["fec0::1", "feff:ffff::1", "fe80::1", "febf::1"], &[]);
        // Below fe80::/10 lies ordinary (if unallocated) unicast space.
        judged(&[], &["fe7f:ffff::1"]);
    }

    #[test]
    fn benchmarking_and_its_neighbours() {
        judged(
            &["198.18.0.0", "198.18.0.1", "198.19.255.255"],
            &["198.17.255.255", "198.20.0.0"],
        );
    }

    #[test]
    fn the_rest_of_the_special_purpose_registries() {
        judged(
            &[
                "192.0.0.1",
                "192.0.0.8",
                "192.0.2.1",
                "198.51.100.1",
                "203.0.113.1",
                "192.88.99.1",
                "240.0.0.1",
                "100::1",
                "100:0:0:1::1",
                "2001::1",   // Teredo
                "2001:2::1", // benchmarking
                "2001:db8::1",
                "3fff::1",
                "5f00::1",
                "ff02::1",
            ],
            &[
                "192.0.0.9",
                "192.0.0.10",
                "192.0.1.1",
                "100.63.255.255",
                "100.128.0.0",
                "2001:3::1",
                "2001:4:112::1",
                "2001:20::1",
                "2001:200::1", // past 2001::/23
                "2620:4f:8000::1",
                "2400:cb00::1",
            ],
        );
    }

    #[test]
    fn literal_urls_are_checked() {
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(check_literal(&url, false).is_err());
        assert!(check_literal(&url, true).is_ok());
        let named = url::Url::parse("http://example.com/").unwrap();
        assert!(check_literal(&named, false).is_ok());
        for internal in [
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::127.0.0.1]/",
            "http://198.18.0.1/",
            "http://localhost:8080/",
            "http://api.LOCALHOST/",
        ] {
            let url = url::Url::parse(internal).unwrap();
            assert!(check_literal(&url, false).is_err(), "{internal}");
            assert!(check_literal(&url, true).is_ok(), "{internal}");
        }
    }
}
