//! The store port. One trait, implemented for SQLite (the embedded default) and PostgreSQL
//! (scale-out), and one conformance suite that runs against both.

use crate::agent::AgentConfig;
use crate::call::{AcceptedCall, Conversation, ConversationId, NewCall};
use crate::tenant::{
    ApiKeyCredential, ApiKeyInfo, NewTrunk, PhoneNumber, Tenant, TenantLimits, Trunk,
};
use crate::webhooks::WebhookStore;
use crate::{AgentId, ApiKeyId, Millis, TenantId, TraceId, TrunkId, E164};
use async_trait::async_trait;

/// Failures of the storage layer itself. Contract errors are separate enums per operation so the
/// HTTP edge can map each to its exact status and message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The driver's or encoder's own error is kept as the source, for logs and for callers
    /// that need to tell kinds apart; a failure with no underlying error carries its text.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why a `POST /v1/call` was refused by a check that needs the database, in the contract's order.
#[derive(Debug, thiserror::Error)]
pub enum CreateCallError {
    #[error("agent not found")]
    AgentNotFound,
    #[error("agent has no phone number configured")]
    AgentHasNoNumber,
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("number is on the do-not-call list")]
    DoNotCall,
    #[error("idempotency key already used")]
    DuplicateRequest { first_trace_id: TraceId },
    #[error("rate limit exceeded for this number")]
    NumberRateLimited { retry_after_seconds: u64 },
    #[error("concurrent call limit reached. {max} simultaneous calls allowed.")]
    ConcurrentLimit { current: u64, max: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a write was refused by what is already stored. The messages are the contract's (the
/// API answers them as `400`), so a caller matches on the variant, never on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("trunk name already used")]
    TrunkNameTaken,
    #[error("phone number already exists")]
    NumberExists,
    #[error("webhook target name already used")]
    TargetNameTaken,
    /// The sixth target of an agent (`webhooks::MAX_TARGETS_PER_AGENT`).
    #[error("agent has 5 webhook targets")]
    TooManyTargets,
    /// A retry of a delivery whose target is inactive or gone: it could never be leased, so the
    /// retry is refused instead of silently parked.
    #[error("webhook target is not active")]
    TargetInactive,
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Conflict(Conflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: AgentId,
    pub tenant: TenantId,
    pub config: AgentConfig,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: u64,
}

impl<T> Listed<T> {
    pub fn has_more(&self, page: Page) -> bool {
        page.offset.saturating_add(self.items.len() as u64) < self.total
    }
}

#[async_trait]
pub trait Store:
    crate::dispatch::DispatchStore
    + WebhookStore
    + crate::batch::BatchStore
    + crate::do_not_call::DoNotCallStore
    + crate::console::ConsoleStore
    + crate::transcription::TranscriptionStore
    + Send
    + Sync
    + 'static
{
    /// Liveness of the database, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    // Tenants and keys (CLI).
    async fn create_tenant(&self, name: &str, now: Millis) -> Result<Tenant, StoreError>;
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;
    async fn update_tenant_limits(
        &self,
        id: TenantId,
        limits: &TenantLimits,
    ) -> Result<bool, StoreError>;
    async fn create_api_key(
        &self,
        tenant: TenantId,
        name: &str,
        lookup: &str,
        secret_hash: &str,
        now: Millis,
    ) -> Result<ApiKeyInfo, StoreError>;
    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>, StoreError>;
    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        now: Millis,
    ) -> Result<bool, StoreError>;
    async fn find_api_key(&self, lookup: &str) -> Result<Option<ApiKeyCredential>, StoreError>;

    // Trunks and numbers.
    async fn create_trunk(
        &self,
        tenant: TenantId,
        trunk: &NewTrunk,
        now: Millis,
    ) -> Result<Trunk, ManageError>;
    async fn list_trunks(&self, tenant: TenantId) -> Result<Vec<Trunk>, StoreError>;
    /// Every tenant's trunks, credentials opened: what a node registers with and probes.
    async fn trunks_to_keep_up(&self) -> Result<Vec<Trunk>, StoreError>;
    async fn create_phone_number(
        &self,
        tenant: TenantId,
        number: &E164,
        trunk: TrunkId,
        now: Millis,
    ) -> Result<PhoneNumber, ManageError>;
    async fn list_phone_numbers(&self, tenant: TenantId) -> Result<Vec<PhoneNumber>, StoreError>;

    // Agents. A referenced `phone_number` must be one of the tenant's numbers.
    async fn create_agent(
        &self,
        tenant: TenantId,
        config: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError>;
    async fn get_agent(&self, tenant: TenantId, id: AgentId) -> Result<Option<Agent>, StoreError>;
    async fn list_agents(&self, tenant: TenantId, page: Page) -> Result<Listed<Agent>, StoreError>;
    async fn update_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        config: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError>;
    async fn delete_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        now: Millis,
    ) -> Result<bool, StoreError>;

    // Calls.
    /// Runs the database checks of `POST /v1/call` (agent, chain, idempotency, per-number limit,
    /// concurrency limit, in that order) and writes the call row, its first event and the
    /// idempotency claim in one transaction. A refused call writes nothing.
    async fn create_call(&self, call: NewCall) -> Result<AcceptedCall, CreateCallError>;
    async fn get_conversation(
        &self,
        tenant: TenantId,
        id: ConversationId,
    ) -> Result<Option<Conversation>, StoreError>;
    async fn list_conversations(
        &self,
        tenant: TenantId,
        agent: Option<AgentId>,
        page: Page,
    ) -> Result<Listed<Conversation>, StoreError>;
    /// Counts every call row of a tenant (tests and operators use it to prove nothing was written).
    async fn count_calls(&self, tenant: TenantId) -> Result<u64, StoreError>;
}
