//! The console's filtered conversation list (`domain::console`).

use crate::{db_err, rows, SqlStore};
use domain::call::Conversation;
use domain::console::{ConsoleStore, ConversationFilter};
use domain::store::{Listed, Page, StoreError};
use domain::TenantId;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

enum Arg {
    Int(i64),
    Text(&'static str),
}

fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: &[Arg],
) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Int(n) => q.bind(*n),
            Arg::Text(s) => q.bind(*s),
        };
    }
    q
}

/// The WHERE clause and its arguments: only the filters given appear, so each shape can use
/// the tenant's (or the tenant and agent's) creation-time index.
fn clause(tenant: TenantId, f: &ConversationFilter) -> (String, Vec<Arg>) {
    let mut args = vec![Arg::Int(tenant.0)];
    let mut conds = vec!["tenant_id = $1".to_string()];
    let mut add = |cond: &str, arg: Arg| {
        args.push(arg);
        conds.push(format!("{cond} ${}", args.len()));
    };
    if let Some(a) = f.agent {
        add("agent_id =", Arg::Int(a.0));
    }
    if let Some(s) = f.status {
        add("status =", Arg::Text(s.as_str()));
    }
    if let Some(b) = f.batch {
        add("batch_id =", Arg::Int(b));
    }
    if let Some(t) = f.created_from {
        add("created_at >=", Arg::Int(t.0));
    }
    if let Some(t) = f.created_before {
        add("created_at <", Arg::Int(t.0));
    }
    conds.push(crate::batches::CALL_SHOWN.to_string());
    (conds.join(" AND "), args)
}

#[async_trait::async_trait]
impl ConsoleStore for SqlStore {
    async fn find_conversations(
        &self,
        tenant: TenantId,
        filter: &ConversationFilter,
        page: Page,
    ) -> Result<Listed<Conversation>, StoreError> {
        let (cond, args) = clause(tenant, filter);
        let n = args.len();
        let sql = format!(
            "SELECT {} FROM calls WHERE {cond} ORDER BY created_at DESC, id DESC LIMIT ${} OFFSET ${}",
            rows::CONVERSATION_COLUMNS,
            n + 1,
            n + 2
        );
        let items = bind_all(sqlx::query(&sql), &args)
            .bind(i64::from(page.limit))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(rows::conversation)
            .collect::<Result<Vec<_>, _>>()?;
        let count = format!("SELECT COUNT(*) AS n FROM calls WHERE {cond}");
        let row = bind_all(sqlx::query(&count), &args)
            .fetch_one(&self.read)
            .await
            .map_err(db_err)?;
        let total: i64 = rows::get(&row, "n")?;
        Ok(Listed {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }
}
