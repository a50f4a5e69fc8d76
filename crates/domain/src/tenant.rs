//! Tenants, their keys, trunks and numbers: the management side of the model.

use crate::pacing::CallsPerSecond;
use crate::telephony::{Srtp, Transport};
use crate::{ApiKeyId, Millis, PhoneNumberId, TenantId, TrunkId, E164};

/// Limits that protect the people a tenant calls and the tenant's own capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLimits {
    /// FormantAI's workspace concurrent call limit; `None` = no limit.
    pub max_concurrent_calls: Option<u32>,
    /// At most this many immediate calls to one destination ...
    pub per_number_calls: u32,
    /// ... in any window of this many seconds.
    pub per_number_window_seconds: u32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: None,
            per_number_calls: 1,
            per_number_window_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub limits: TenantLimits,
    pub created_at: Millis,
}

/// A key as listed: never the secret, which is shown once at creation and kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub tenant: TenantId,
    pub name: String,
    pub lookup: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// What authentication needs: the stored hash to compare in constant time.
#[derive(Debug, Clone)]
pub struct ApiKeyCredential {
    pub id: ApiKeyId,
    pub tenant: TenantId,
    pub secret_hash: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrunk {
    pub name: String,
    /// `sip:host:port`.
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub max_concurrent_calls: Option<u32>,
    /// New INVITEs per second; `None` = unpaced.
    pub max_calls_per_second: Option<CallsPerSecond>,
    pub transport: Transport,
    /// Keep a REGISTER binding with the trunk's credentials.
    pub register: bool,
    /// SRTP for the media (only with TLS).
    pub srtp: Srtp,
}

impl NewTrunk {
    /// A trunk at `uri` with every option at its default: no credentials, no caps, unpaced,
    /// UDP, no REGISTER, no SRTP.
    pub fn new(name: &str, uri: &str) -> Self {
        Self {
            name: name.to_string(),
            uri: uri.to_string(),
            username: None,
            password: None,
            max_concurrent_calls: None,
            max_calls_per_second: None,
            transport: Transport::Udp,
            register: false,
            srtp: Srtp::Off,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub id: TrunkId,
    pub tenant: TenantId,
    pub name: String,
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub max_concurrent_calls: Option<u32>,
    pub max_calls_per_second: Option<CallsPerSecond>,
    pub transport: Transport,
    pub register: bool,
    pub srtp: Srtp,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber {
    pub id: PhoneNumberId,
    pub tenant: TenantId,
    pub number: E164,
    pub trunk: TrunkId,
    pub created_at: Millis,
}
