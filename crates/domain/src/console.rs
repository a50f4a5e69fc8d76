//! What the operator console reads beyond the API's own queries: the conversation list with
//! the filters a person watching calls wants (status, batch, dates), still scoped by tenant.

use crate::call::{CallStatus, Conversation};
use crate::store::{Listed, Page, StoreError};
use crate::{AgentId, Millis, TenantId};
use async_trait::async_trait;

/// Every field narrows the list; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationFilter {
    pub agent: Option<AgentId>,
    pub status: Option<CallStatus>,
    pub batch: Option<i64>,
    /// Created at or after this instant.
    pub created_from: Option<Millis>,
    /// Created strictly before this instant.
    pub created_before: Option<Millis>,
}

#[async_trait]
pub trait ConsoleStore: Send + Sync + 'static {
    /// The tenant's conversations matching `filter`, newest first (creation time, then id), as
    /// `GET /v1/conversations` orders them.
    async fn find_conversations(
        &self,
        tenant: TenantId,
        filter: &ConversationFilter,
        page: Page,
    ) -> Result<Listed<Conversation>, StoreError>;
}
