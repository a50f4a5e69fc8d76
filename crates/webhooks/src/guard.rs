//! Target URL validation: what a customer may point webhooks at.
//!
//! The same address check runs twice: when a target is created ([`UrlPolicy::validate`]) and on
//! every connection the delivery client makes (see [`crate::client`]), so a name that later
//! resolves somewhere private (DNS rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use url::{Host, Url};

/// Environment variable that lets targets resolve to private addresses.
pub const ALLOW_PRIVATE_ENV: &str = "OUTDIAL_WEBHOOK_ALLOW_PRIVATE";

/// Longest target URL accepted; far beyond any real endpoint, short enough for a DB column.
pub const MAX_URL_LEN: usize = 2048;

/// How long creation-time resolution may take before the URL is refused.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A refused target URL. The messages are the API's error strings, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Unparsable, not http/https, has credentials or no host, too long, or does not resolve.
    #[error("invalid url")]
    InvalidUrl,
    /// Resolves to (or is) an address the policy forbids.
    #[error("url not allowed")]
    NotAllowed,
}

/// [`ALLOW_PRIVATE_ENV`] holds something other than a boolean.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OUTDIAL_WEBHOOK_ALLOW_PRIVATE must be true or false, got {0:?}")]
pub struct AllowPrivateEnvError(pub String);

/// Which addresses targets may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Also allow loopback, private, link-local and other non-public addresses (tests,
    /// private deployments).
    pub allow_private: bool,
}

impl UrlPolicy {
    /// Public addresses only.
    pub const PUBLIC_ONLY: UrlPolicy = UrlPolicy {
        allow_private: false,
    };
    /// Any address.
    pub const ALLOW_PRIVATE: UrlPolicy = UrlPolicy {
        allow_private: true,
    };

    /// Interprets a value of [`ALLOW_PRIVATE_ENV`]: unset or empty means public only.
    ///
    /// Anything but true/false/1/0 (any case) is an error, so that a typo such as `yes` stops
    /// the service instead of silently choosing one behaviour.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, AllowPrivateEnvError> {
        let value = value.map(str::trim).unwrap_or_default();
        let allow_private = match value.to_ascii_lowercase().as_str() {
            "" | "false" | "0" => false,
            "true" | "1" => true,
            _ => return Err(AllowPrivateEnvError(value.to_owned())),
        };
        Ok(Self { allow_private })
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }

    /// Creation-time check: see [`AddressPolicy::validate`].
    pub async fn validate(self, raw: &str) -> Result<Url, UrlError> {
        AddressPolicy::validate(&self, raw).await
    }

    /// See [`AddressPolicy::check_literal_host`].
    pub fn check_literal_host(self, url: &Url) -> Result<(), UrlError> {
        AddressPolicy::check_literal_host(&self, url)
    }
}

impl AddressPolicy for UrlPolicy {
    fn permits(&self, ip: IpAddr) -> bool {
        UrlPolicy::permits(*self, ip)
    }
}

/// Which addresses an outbound HTTP client of the service may connect to: webhook targets
/// ([`UrlPolicy`]) and agents' model servers ([`ModelEndpointPolicy`]). The same check runs when
/// a URL is accepted and on every connection (through [`crate::client::guarded_resolver`]), so
/// a name that later resolves somewhere forbidden (DNS rebinding) is still refused.
pub trait AddressPolicy: Send + Sync + 'static {
    /// Whether a connection to `ip` is allowed.
    fn permits(&self, ip: IpAddr) -> bool;

    /// Creation-time check: [`parse_target_url`], then every address the host resolves to
    /// must be permitted (a client may connect to any of them).
    fn validate(&self, raw: &str) -> impl std::future::Future<Output = Result<Url, UrlError>> + Send
    where
        Self: Sized,
    {
        async move {
            let url = parse_target_url(raw)?;
            let port = url.port_or_known_default().ok_or(UrlError::InvalidUrl)?;
            let ips: Vec<IpAddr> = match url.host() {
                Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
                Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
                Some(Host::Domain(name)) => resolve(name, port).await?,
                None => return Err(UrlError::InvalidUrl),
            };
            if ips.iter().all(|ip| self.permits(*ip)) {
                Ok(url)
            } else {
                tracing::debug!(host = url.host_str(), "url resolves to a forbidden address");
                Err(UrlError::NotAllowed)
            }
        }
    }

    /// Checks a URL's host when it is an IP literal, which an HTTP client connects to without
    /// resolving (and so without passing through the guarded resolver).
    fn check_literal_host(&self, url: &Url) -> Result<(), UrlError> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err(UrlError::InvalidUrl),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(UrlError::NotAllowed)
        }
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a network in CIDR notation: {0:?}")]
/// A network that does not parse.
pub struct CidrError(pub String);

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u32>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net.segments(), self.prefix),
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where an agent's model server (the llm brain's `base_url`) may be: any public address, and
/// the networks the operator allows (a model on loopback or the LAN is a normal self-hosted
/// set-up; a tenant cannot widen this). Link-local addresses, where cloud metadata services
/// live, never, whatever the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelEndpointPolicy {
    /// Non-public networks the operator allows model servers in.
    pub allowed: Vec<Cidr>,
}

impl ModelEndpointPolicy {
    /// A comma-separated list of networks (`127.0.0.1/32, 10.0.0.0/8`); empty = public only.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        let allowed = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }
}

impl AddressPolicy for ModelEndpointPolicy {
    fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let link_local = match ip {
            IpAddr::V4(v4) => in_v4(v4, [169, 254, 0, 0], 16),
            IpAddr::V6(v6) => in_v6(v6, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        };
        // fd00:ec2::254 is EC2's IPv6 metadata address; 100.100.100.200 Alibaba's.
        let metadata = ip == IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))
            || ip == IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200));
        !link_local
            && !metadata
            && (is_public(ip) || self.allowed.iter().any(|net| net.contains(ip)))
    }
}

async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, UrlError> {
    // A name that does not resolve cannot be delivered to, and the API has only these two
    // errors; the message does not distinguish it from a malformed URL.
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addrs)) => {
            let ips: Vec<IpAddr> = addrs.map(|addr| addr.ip()).collect();
            if ips.is_empty() {
                Err(UrlError::InvalidUrl)
            } else {
                Ok(ips)
            }
        }
        Ok(Err(err)) => {
            tracing::debug!(host = name, error = %err, "webhook url host does not resolve");
            Err(UrlError::InvalidUrl)
        }
        Err(_) => {
            tracing::debug!(host = name, "webhook url host resolution timed out");
            Err(UrlError::InvalidUrl)
        }
    }
}

/// Syntax-only check: parsable, http or https, a host, no credentials, at most
/// [`MAX_URL_LEN`] bytes. Numeric hosts such as `http://2130706433/` come back as IP hosts
/// (the WHATWG parser normalises them), so address checks see them too.
pub fn parse_target_url(raw: &str) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::InvalidUrl);
    }
    let url = Url::parse(raw).map_err(|_| UrlError::InvalidUrl)?;
    let scheme_ok = matches!(url.scheme(), "http" | "https");
    let has_credentials = !url.username().is_empty() || url.password().is_some();
    let has_host = url.host_str().is_some_and(|host| !host.is_empty());
    if scheme_ok && !has_credentials && has_host {
        Ok(url)
    } else {
        Err(UrlError::InvalidUrl)
    }
}

/// Whether `ip` is a publicly routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

// IANA special-purpose ranges that must not be reached from a webhook sender.
const V4_BLOCKED: &[([u8; 4], u32)] = &[
    ([0, 0, 0, 0], 8),       // "this network", includes 0.0.0.0
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // carrier-grade NAT
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata endpoints
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, includes 255.255.255.255 broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !V4_BLOCKED
        .iter()
        .any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let [.., a, b, c, d] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // Forms that carry an IPv4 address are judged by that address, so `::ffff:127.0.0.1`
    // or `64:ff9b::10.0.0.1` cannot smuggle a private target past the IPv4 rules.
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96)
        || in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    {
        return is_public_v4(low_v4(ip));
    }
    if in_v6(ip, [0; 8], 96) {
        // `::` and `::1` live here too and are rejected by the IPv4 check of 0.0.0.x.
        return is_public_v4(low_v4(ip));
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4 embeds the IPv4 address in bits 16..48.
        let [hi, lo] = [segments[1].to_be_bytes(), segments[2].to_be_bytes()];
        return is_public_v4(Ipv4Addr::new(hi[0], hi[1], lo[0], lo[1]));
    }
    // Only global unicast (2000::/3) is public; that already excludes `::1`, ULA fc00::/7,
    // link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard 100::/64 and the
    // local-use NAT64 prefix 64:ff9b:1::/48.
    let global_unicast = in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3);
    let special = in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) // IETF assignments, Teredo
        || in_v6(ip, [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32) // documentation
        || in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20); // documentation (RFC 9637)
    global_unicast && !special
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn error_messages_are_the_api_strings() {
        assert_eq!(UrlError::InvalidUrl.to_string(), "invalid url");
        assert_eq!(UrlError::NotAllowed.to_string(), "url not allowed");
    }

    #[test]
    fn non_public_ipv4_ranges_are_blocked() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip(s)), "{s} should be blocked");
        }
    }

    #[test]
    fn range_edges_just_outside_are_public() {
        for s in [
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "93.184.216.34",
            "8.8.8.8",
        ] {
            assert!(is_public(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn non_public_ipv6_ranges_are_blocked() {
        for s in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.1.2.3",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
        ] {
            assert!(!is_public(ip(s)), "{s} should be blocked");
        }
    }

    #[test]
    fn public_ipv6_and_embedded_public_ipv4_are_allowed() {
        for s in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:93.184.216.34",
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn policy_can_allow_private_addresses() {
        assert!(!UrlPolicy::PUBLIC_ONLY.permits(ip("127.0.0.1")));
        assert!(UrlPolicy::ALLOW_PRIVATE.permits(ip("127.0.0.1")));
        assert!(UrlPolicy::ALLOW_PRIVATE.permits(ip("::1")));
        assert!(UrlPolicy::PUBLIC_ONLY.permits(ip("93.184.216.34")));
    }

    #[test]
    fn allow_private_env_values() {
        for (value, allow) in [
            (None, false),
            (Some(""), false),
            (Some("false"), false),
            (Some("0"), false),
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some(" 1 "), true),
        ] {
            assert_eq!(
                UrlPolicy::from_env_value(value),
                Ok(UrlPolicy {
                    allow_private: allow
                }),
                "{value:?}"
            );
        }
        assert_eq!(
            UrlPolicy::from_env_value(Some("yes")),
            Err(AllowPrivateEnvError("yes".into()))
        );
    }

    #[test]
    fn syntax_errors_are_invalid_url() {
        for raw in [
            "",
            "not a url",
            "example.com/hook",
            "ftp://example.com/hook",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://user:pass@example.com/hook",
            "http://user@example.com/hook",
            "https://:pass@example.com/hook",
            "http://",
            "http://exa mple.com/",
        ] {
            assert_eq!(parse_target_url(raw), Err(UrlError::InvalidUrl), "{raw:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_target_url(&long), Err(UrlError::InvalidUrl));
        assert!(parse_target_url("https://example.com:8443/hooks?x=1").is_ok());
    }

    #[test]
    fn literal_host_check_only_judges_ip_hosts() {
        let check =
            |s: &str| UrlPolicy::PUBLIC_ONLY.check_literal_host(&parse_target_url(s).unwrap());
        assert_eq!(check("http://127.0.0.1/"), Err(UrlError::NotAllowed));
        assert_eq!(check("http://[::ffff:7f00:1]/"), Err(UrlError::NotAllowed));
        assert_eq!(check("http://93.184.216.34/"), Ok(()));
        // Names are left to the guarded resolver.
        assert_eq!(check("http://localhost/"), Ok(()));
    }

    #[test]
    fn model_endpoints_public_or_operator_allowed_never_link_local() {
        let none = ModelEndpointPolicy::default();
        assert!(none.permits(ip("8.8.8.8")));
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.5",
            "::1",
            "169.254.169.254",
        ] {
            assert!(!none.permits(ip(blocked)), "{blocked}");
        }
        let lan =
            ModelEndpointPolicy::parse("127.0.0.1, 10.0.0.0/8,169.254.0.0/16,fd00::/8").unwrap();
        assert!(lan.permits(ip("127.0.0.1")));
        assert!(lan.permits(ip("::ffff:10.9.9.9")), "mapped form");
        assert!(!lan.permits(ip("127.0.0.2")), "a bare address is one host");
        assert!(!lan.permits(ip("192.168.1.5")));
        // Cloud metadata stays out even when the operator's list covers it.
        for metadata in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
        ] {
            assert!(!lan.permits(ip(metadata)), "{metadata}");
        }
        for bad in ["10.0.0.0/33", "nope", "::1/129", "10.0.0.0/x"] {
            assert!(ModelEndpointPolicy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ModelEndpointPolicy::parse(" ").unwrap(), none);
    }
}
