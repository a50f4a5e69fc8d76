//! Tenants, keys, trunks, numbers and agents.

use crate::rows::{corrupt, get, json};
use crate::{db_err, is_unique_violation, SqlStore};
use domain::agent::AgentConfig;
use domain::pacing::CallsPerSecond;
use domain::store::{Agent, Conflict, Listed, ManageError, Page, StoreError};
use domain::telephony::{Srtp, Transport};
use domain::tenant::{
    ApiKeyCredential, ApiKeyInfo, NewTrunk, PhoneNumber, Tenant, TenantLimits, Trunk,
};
use domain::{AgentId, ApiKeyId, Millis, PhoneNumberId, TenantId, TrunkId, E164};
use sqlx::any::AnyRow;

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

fn tenant(row: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: TenantId(get(row, "id")?),
        name: get(row, "name")?,
        limits: TenantLimits {
            max_concurrent_calls: opt_u32(get(row, "max_concurrent_calls")?),
            per_number_calls: u32::try_from(get::<i64>(row, "per_number_calls")?)
                .map_err(|_| corrupt("tenants"))?,
            per_number_window_seconds: u32::try_from(get::<i64>(row, "per_number_window_seconds")?)
                .map_err(|_| corrupt("tenants"))?,
        },
        created_at: Millis(get(row, "created_at")?),
    })
}

fn api_key(row: &AnyRow) -> Result<ApiKeyInfo, StoreError> {
    Ok(ApiKeyInfo {
        id: ApiKeyId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        name: get(row, "name")?,
        lookup: get(row, "lookup")?,
        created_at: Millis(get(row, "created_at")?),
        revoked_at: get::<Option<i64>>(row, "revoked_at")?.map(Millis),
    })
}

fn trunk(row: &AnyRow) -> Result<Trunk, StoreError> {
    Ok(Trunk {
        id: TrunkId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        name: get(row, "name")?,
        uri: get(row, "uri")?,
        username: get(row, "username")?,
        password: get(row, "password")?,
        max_concurrent_calls: opt_u32(get(row, "max_concurrent_calls")?),
        max_calls_per_second: calls_per_second(row, "max_calls_per_second")?,
        transport: transport(row, "transport")?,
        register: get::<i64>(row, "register")? != 0,
        srtp: srtp(row, "srtp")?,
        created_at: Millis(get(row, "created_at")?),
    })
}

/// A trunk's `max_calls_per_second` column (`None`: unpaced).
pub(crate) fn calls_per_second(
    row: &AnyRow,
    col: &str,
) -> Result<Option<CallsPerSecond>, StoreError> {
    get::<Option<f64>>(row, col)?
        .map(|r| CallsPerSecond::new(r).ok_or_else(|| corrupt("trunks.max_calls_per_second")))
        .transpose()
}

/// A trunk's `transport` column.
pub(crate) fn transport(row: &AnyRow, col: &str) -> Result<Transport, StoreError> {
    let name: String = get(row, col)?;
    Transport::parse(&name).ok_or_else(|| corrupt("trunks.transport"))
}

/// A trunk's `srtp` column.
pub(crate) fn srtp(row: &AnyRow, col: &str) -> Result<Srtp, StoreError> {
    let name: String = get(row, col)?;
    Srtp::parse(&name).ok_or_else(|| corrupt("trunks.srtp"))
}

fn phone_number(row: &AnyRow) -> Result<PhoneNumber, StoreError> {
    Ok(PhoneNumber {
        id: PhoneNumberId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        number: E164::from_trusted(get(row, "number")?),
        trunk: TrunkId(get(row, "trunk_id")?),
        created_at: Millis(get(row, "created_at")?),
    })
}

fn agent(row: &AnyRow) -> Result<Agent, StoreError> {
    let config: String = get(row, "config")?;
    let config = json::<serde_json::Map<String, serde_json::Value>>(&config, "agents.config")?;
    Ok(Agent {
        id: AgentId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        config: AgentConfig::from_json(&config).map_err(|_| corrupt("agents.config"))?,
        created_at: Millis(get(row, "created_at")?),
        updated_at: Millis(get(row, "updated_at")?),
    })
}

const AGENT_COLUMNS: &str = "id, tenant_id, config, created_at, updated_at";

impl SqlStore {
    pub(crate) async fn create_tenant_row(
        &self,
        name: &str,
        now: Millis,
    ) -> Result<Tenant, StoreError> {
        let row = sqlx::query("INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING *")
            .bind(name)
            .bind(now.0)
            .fetch_one(&self.write)
            .await
            .map_err(db_err)?;
        tenant(&row)
    }

    pub(crate) async fn get_tenant_row(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("SELECT * FROM tenants WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?
            .map(|r| tenant(&r))
            .transpose()
    }

    pub(crate) async fn set_tenant_limits(
        &self,
        id: TenantId,
        l: &TenantLimits,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE tenants SET max_concurrent_calls = $1, per_number_calls = $2, per_number_window_seconds = $3 WHERE id = $4",
        )
        .bind(l.max_concurrent_calls.map(i64::from))
        .bind(i64::from(l.per_number_calls))
        .bind(i64::from(l.per_number_window_seconds))
        .bind(id.0)
        .execute(&self.write)
        .await
        .map_err(db_err)?
        .rows_affected();
        Ok(n == 1)
    }

    pub(crate) async fn insert_api_key(
        &self,
        tenant: TenantId,
        name: &str,
        lookup: &str,
        secret_hash: &str,
        now: Millis,
    ) -> Result<ApiKeyInfo, StoreError> {
        let row = sqlx::query(
            "INSERT INTO api_keys (tenant_id, name, lookup, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, tenant_id, name, lookup, created_at, revoked_at",
        )
        .bind(tenant.0)
        .bind(name)
        .bind(lookup)
        .bind(secret_hash)
        .bind(now.0)
        .fetch_one(&self.write)
        .await
        .map_err(db_err)?;
        api_key(&row)
    }

    pub(crate) async fn api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        sqlx::query("SELECT id, tenant_id, name, lookup, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.0)
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(api_key)
            .collect()
    }

    pub(crate) async fn revoke_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(now.0)
            .bind(tenant.0)
            .bind(id.0)
            .execute(&self.write)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(n == 1)
    }

    pub(crate) async fn key_credential(
        &self,
        lookup: &str,
    ) -> Result<Option<ApiKeyCredential>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, tenant_id, secret_hash, revoked_at FROM api_keys WHERE lookup = $1",
        )
        .bind(lookup)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        else {
            return Ok(None);
        };
        Ok(Some(ApiKeyCredential {
            id: ApiKeyId(get(&row, "id")?),
            tenant: TenantId(get(&row, "tenant_id")?),
            secret_hash: get(&row, "secret_hash")?,
            revoked: get::<Option<i64>>(&row, "revoked_at")?.is_some(),
        }))
    }

    pub(crate) async fn insert_trunk(
        &self,
        tenant: TenantId,
        t: &NewTrunk,
        now: Millis,
    ) -> Result<Trunk, ManageError> {
        let row = sqlx::query(
            "INSERT INTO trunks (tenant_id, name, uri, username, password, max_concurrent_calls, \
             max_calls_per_second, transport, register, srtp, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        )
        .bind(tenant.0)
        .bind(t.name.as_str())
        .bind(t.uri.as_str())
        .bind(t.username.clone())
        .bind(self.seal_opt(t.password.as_deref())?)
        .bind(t.max_concurrent_calls.map(i64::from))
        .bind(t.max_calls_per_second.map(CallsPerSecond::get))
        .bind(t.transport.as_str())
        .bind(i64::from(t.register))
        .bind(t.srtp.as_str())
        .bind(now.0)
        .fetch_one(&self.write)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ManageError::Conflict(Conflict::TrunkNameTaken)
            } else {
                db_err(e).into()
            }
        })?;
        Ok(self.opened_trunk(trunk(&row)?)?)
    }

    fn opened_trunk(&self, t: Trunk) -> Result<Trunk, StoreError> {
        Ok(Trunk {
            password: self.open_opt(t.password)?,
            ..t
        })
    }

    fn opened_agent(&self, a: Agent) -> Result<Agent, StoreError> {
        Ok(Agent {
            config: self.agent_key(a.config, false)?,
            ..a
        })
    }

    pub(crate) async fn trunks(&self, tenant: TenantId) -> Result<Vec<Trunk>, StoreError> {
        sqlx::query("SELECT * FROM trunks WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.0)
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| trunk(r).and_then(|t| self.opened_trunk(t)))
            .collect()
    }

    pub(crate) async fn all_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        sqlx::query("SELECT * FROM trunks ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| trunk(r).and_then(|t| self.opened_trunk(t)))
            .collect()
    }

    pub(crate) async fn insert_phone_number(
        &self,
        tenant: TenantId,
        number: &E164,
        trunk_id: TrunkId,
        now: Millis,
    ) -> Result<PhoneNumber, ManageError> {
        // The trunk must be the tenant's own: the insert only happens if the SELECT finds it.
        let row = sqlx::query(
            "INSERT INTO phone_numbers (tenant_id, number, trunk_id, created_at) \
             SELECT $1, $2, id, $4 FROM trunks WHERE tenant_id = $1 AND id = $3 RETURNING *",
        )
        .bind(tenant.0)
        .bind(number.as_str())
        .bind(trunk_id.0)
        .bind(now.0)
        .fetch_optional(&self.write)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ManageError::Conflict(Conflict::NumberExists)
            } else {
                db_err(e).into()
            }
        })?
        .ok_or(ManageError::NotFound("trunk"))?;
        Ok(phone_number(&row)?)
    }

    pub(crate) async fn phone_numbers(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<PhoneNumber>, StoreError> {
        sqlx::query("SELECT * FROM phone_numbers WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.0)
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(phone_number)
            .collect()
    }

    async fn owns_number(&self, tenant: TenantId, cfg: &AgentConfig) -> Result<(), ManageError> {
        let Some(number) = &cfg.phone_number else {
            return Ok(());
        };
        let found =
            sqlx::query("SELECT 1 AS one FROM phone_numbers WHERE tenant_id = $1 AND number = $2")
                .bind(tenant.0)
                .bind(number.as_str())
                .fetch_optional(&self.write)
                .await
                .map_err(db_err)?;
        found
            .map(|_| ())
            .ok_or(ManageError::NotFound("phone number"))
    }

    fn config_text(&self, cfg: &AgentConfig) -> Result<String, StoreError> {
        let sealed = self.agent_key(cfg.clone(), true)?;
        serde_json::to_string(&sealed.to_json()).map_err(|e| StoreError::Database(e.into()))
    }

    pub(crate) async fn insert_agent(
        &self,
        tenant: TenantId,
        cfg: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError> {
        self.owns_number(tenant, cfg).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO agents (tenant_id, phone_number, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(tenant.0)
        .bind(cfg.phone_number.as_ref().map(|n| n.to_string()))
        .bind(self.config_text(cfg)?)
        .bind(now.0)
        .fetch_one(&self.write)
        .await
        .map_err(db_err)?;
        Ok(self.opened_agent(agent(&row)?)?)
    }

    pub(crate) async fn agent_row(
        &self,
        tenant: TenantId,
        id: AgentId,
    ) -> Result<Option<Agent>, StoreError> {
        sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
        ))
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .map(|r| agent(&r).and_then(|a| self.opened_agent(a)))
        .transpose()
    }

    pub(crate) async fn agents(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Listed<Agent>, StoreError> {
        let items = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.0)
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| agent(r).and_then(|a| self.opened_agent(a)))
        .collect::<Result<Vec<_>, _>>()?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL",
        )
        .bind(tenant.0)
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        let total: i64 = get(&row, "n")?;
        Ok(Listed {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    pub(crate) async fn replace_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        cfg: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError> {
        self.owns_number(tenant, cfg).await?;
        let row = sqlx::query(&format!(
            "UPDATE agents SET phone_number = $1, config = $2, updated_at = $3 \
             WHERE tenant_id = $4 AND id = $5 AND deleted_at IS NULL RETURNING {AGENT_COLUMNS}"
        ))
        .bind(cfg.phone_number.as_ref().map(|n| n.to_string()))
        .bind(self.config_text(cfg)?)
        .bind(now.0)
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?
        .ok_or(ManageError::NotFound("agent"))?;
        Ok(self.opened_agent(agent(&row)?)?)
    }

    /// Agents are retired, not erased: their conversations keep pointing at them.
    pub(crate) async fn retire_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE agents SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 AND deleted_at IS NULL")
            .bind(now.0)
            .bind(tenant.0)
            .bind(id.0)
            .execute(&self.write)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(n == 1)
    }
}
