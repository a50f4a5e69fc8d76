//! What the node's engines must serve: every live agent's configuration, across tenants. Read
//! by the node itself (readiness, `outdial doctor`), never by a tenant's request.

use crate::rows::{corrupt, get, json};
use crate::{db_err, SqlStore};
use domain::agent::AgentConfig;
use domain::store::StoreError;
use domain::{AgentId, TenantId};

/// One live agent, as the engine checks see it.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub tenant: TenantId,
    pub id: AgentId,
    pub config: AgentConfig,
}

impl SqlStore {
    /// Every agent not deleted, of every tenant, oldest first.
    pub async fn live_agents(&self) -> Result<Vec<LiveAgent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, config FROM agents WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let config: String = get(row, "config")?;
                let config =
                    json::<serde_json::Map<String, serde_json::Value>>(&config, "agents.config")?;
                Ok(LiveAgent {
                    tenant: TenantId(get(row, "tenant_id")?),
                    id: AgentId(get(row, "id")?),
                    config: AgentConfig::from_json(&config)
                        .map_err(|_| corrupt("agents.config"))?,
                })
            })
            .collect()
    }
}
