//! Adapter configuration.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// How the SIP adapter binds and behaves; one per process.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// UDP address of the SIP endpoint shared by all calls; port 0 picks any free port. TCP
    /// listens on the same address and port, for far ends that reach us back over TCP.
    pub listen: SocketAddr,
    /// Address written into Contact, Via and SDP when `listen` is a wildcard or behind NAT. With
    /// `None` and a wildcard `listen`, the local address of the route to the trunk is used.
    pub public_ip: Option<IpAddr>,
    /// UDP ports for RTP, one per call (even ports are preferred, as RTCP would take odd ones).
    pub rtp_ports: RangeInclusive<u16>,
    /// Where `<conversation_id>.wav` recordings go; `None` disables recording.
    pub recording_dir: Option<PathBuf>,
    /// An answered call with no RTP at all for this long ends as `socket_failure`.
    pub no_rtp_timeout: Duration,
    /// `User-Agent` header value.
    pub user_agent: String,
    /// A transfer whose REFER brings no final 2xx NOTIFY within this long is bridged by
    /// outdial instead (the target dialled on the same trunk).
    pub transfer_timeout: Duration,
    /// PEM file of the certificate authorities trusted for TLS trunks; `None`: the system's
    /// bundle ([`SYSTEM_CA_BUNDLE`]).
    pub tls_ca: Option<PathBuf>,
}

/// Debian's bundle of the public certificate authorities (package `ca-certificates`).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            public_ip: None,
            rtp_ports: 10_000..=20_000,
            recording_dir: None,
            no_rtp_timeout: Duration::from_secs(5),
            user_agent: concat!("outdial/", env!("CARGO_PKG_VERSION")).to_string(),
            transfer_timeout: crate::transfer::DEFAULT_TRANSFER_TIMEOUT,
            tls_ca: None,
        }
    }
}
