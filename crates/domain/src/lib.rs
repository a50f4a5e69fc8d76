//! outdial's core. Everything here is pure: values are parsed once at the edge into the types of
//! this crate so the rest of the system never re-checks a string, and the adapters (store,
//! dispatch, telephony, api) depend on this crate, never the other way round.

pub mod agent;
pub mod batch;
pub mod call;
pub mod console;
pub mod dispatch;
pub mod do_not_call;
pub mod ids;
pub mod language;
pub mod lifecycle;
pub mod pacing;
pub mod paging;
pub mod phone;
pub mod store;
pub mod telephony;
pub mod template;
pub mod tenant;
pub mod text;
pub mod time;
pub mod transcription;
pub mod webhooks;

pub use agent::AgentConfig;
pub use call::{CallStatus, ConversationId};
pub use ids::{AgentId, ApiKeyId, PhoneNumberId, TenantId, TraceId, TrunkId};
pub use phone::E164;
pub use time::Millis;
