//! Identifiers. Integer ids are what FormantAI's API exposes (`agent_id: 123`); wrapping them keeps
//! an agent id from ever being passed where a tenant id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// A tenant: the unit of isolation. Every row outdial stores belongs to exactly one.
    TenantId
);
int_id!(
    /// An agent, as FormantAI numbers them.
    AgentId
);
int_id!(
    /// A SIP trunk of a tenant.
    TrunkId
);
int_id!(
    /// A phone number a tenant owns on one of its trunks.
    PhoneNumberId
);
int_id!(
    /// An API key's row (not the key itself).
    ApiKeyId
);

/// A fresh UUID v4 per accepted request; it follows the call into logs, the conversation and
/// webhooks so an operator can find everything about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TraceId(pub Uuid);

impl TraceId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for TraceId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TraceId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}
