//! The do-not-call list on SQL. A listing and the cancellation of the calls still waiting for
//! the number are one transaction, under the tenant's list lock (exclusive here, shared by the
//! starts of dials: `dispatch::begin_dial_in`), so a number is either dialled before its listing
//! commits or never.

use crate::dispatch::cancel_waiting_in;
use crate::exec::{query, Exec};
use crate::locks::{lock, LockKey};
use crate::rows::{corrupt, get};
use crate::{db_err, encode_err, json_rows, Backend, SqlStore};
use domain::do_not_call::{DoNotCallStore, Entry, Imported, Listing, Source, FAILURE_REASON};
use domain::lifecycle::Transition;
use domain::store::{Listed, Page, StoreError};
use domain::{Millis, TenantId, E164};

/// Rows per INSERT of an import, bound as one JSON parameter.
const IMPORT_CHUNK: usize = 10_000;

const COLUMNS: &str = "number, reason, source, created_at";

fn entry(row: &impl crate::exec::RowRead) -> Result<Entry, StoreError> {
    let source: String = get(row, "source")?;
    Ok(Entry {
        number: E164::from_trusted(get(row, "number")?),
        reason: get(row, "reason")?,
        source: Source::parse(&source).ok_or_else(|| corrupt("do_not_call.source"))?,
        created_at: Millis(get(row, "created_at")?),
    })
}

async fn entry_in<E: Exec>(
    conn: &mut E,
    tenant: i64,
    number: &str,
) -> Result<Option<Entry>, StoreError> {
    query(&format!(
        "SELECT {COLUMNS} FROM do_not_call WHERE tenant_id = $1 AND number = $2"
    ))
    .bind(tenant)
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(entry)
    .transpose()
}

/// Cancels (`do-not-call`) every call of the tenant still waiting for a listed number, in the
/// caller's transaction; `only` narrows it to one number. Returns how many.
async fn cancel_listed_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    tenant: i64,
    only: Option<&str>,
    now: Millis,
) -> Result<u64, StoreError> {
    let cancellable = Transition::Cancel.from_sql();
    let sql = match only {
        Some(_) => format!(
            "SELECT id FROM calls WHERE tenant_id = $1 AND customer_phone = $2 \
             AND status IN ({cancellable})"
        ),
        // Driven by the list, a lookup of each listed number's calls (`calls_number`), not a
        // walk of every call the tenant has.
        None => format!(
            "SELECT id FROM calls WHERE tenant_id = $1 AND status IN ({cancellable}) \
             AND customer_phone IN (SELECT number FROM do_not_call WHERE tenant_id = $1)"
        ),
    };
    let mut query = query(&sql).bind(tenant);
    if let Some(number) = only {
        query = query.bind(number);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut canceled = 0;
    for row in &rows {
        let id: String = get(row, "id")?;
        let reason = Some(FAILURE_REASON);
        if cancel_waiting_in(&mut *conn, backend, &id, tenant, reason, now)
            .await?
            .is_some()
        {
            canceled += 1;
        }
    }
    Ok(canceled)
}

/// Lists one number and cancels the calls waiting for it, in the caller's transaction (which
/// must hold the tenant's list lock). Used by the API and by the settlement of a call whose
/// callee opted out.
pub(crate) async fn list_number_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    tenant: i64,
    listing: &Listing,
    source: Source,
    now: Millis,
) -> Result<Entry, StoreError> {
    query(
        "INSERT INTO do_not_call (tenant_id, number, reason, source, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, number) DO NOTHING",
    )
    .bind(tenant)
    .bind(listing.number.as_str())
    .bind(listing.reason.clone())
    .bind(source.as_str())
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    let canceled = cancel_listed_in(
        &mut *conn,
        backend,
        tenant,
        Some(listing.number.as_str()),
        now,
    )
    .await?;
    if canceled > 0 {
        tracing::info!(canceled, "waiting calls to a listed number canceled");
    }
    entry_in(conn, tenant, listing.number.as_str())
        .await?
        .ok_or_else(|| corrupt("do_not_call"))
}

#[async_trait::async_trait]
impl DoNotCallStore for SqlStore {
    async fn add_do_not_call(
        &self,
        tenant: TenantId,
        listing: Listing,
        source: Source,
        now: Millis,
    ) -> Result<Entry, StoreError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        lock(&mut tx, self.backend, LockKey::do_not_call(tenant.0)).await?;
        // The time the listing holds the lock: every dial that started before it is earlier.
        let now = Millis::now().max(now);
        let entry = list_number_in(&mut tx, self.backend, tenant.0, &listing, source, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(entry)
    }

    async fn import_do_not_call(
        &self,
        tenant: TenantId,
        listings: Vec<Listing>,
        now: Millis,
    ) -> Result<Imported, StoreError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        lock(&mut tx, self.backend, LockKey::do_not_call(tenant.0)).await?;
        let now = Millis::now().max(now);
        // `WHERE true`: SQLite cannot otherwise tell the upsert's ON from a join's.
        let sql = format!(
            "INSERT INTO do_not_call (tenant_id, number, reason, source, created_at) \
             SELECT $1, v.column1, v.column2, $2, $3 FROM {} AS v WHERE true \
             ON CONFLICT (tenant_id, number) DO NOTHING",
            json_rows(self.backend, 4, &["text", "text"])
        );
        let mut added = 0;
        for chunk in listings.chunks(IMPORT_CHUNK) {
            let rows: Vec<(&str, Option<&str>)> = chunk
                .iter()
                .map(|l| (l.number.as_str(), l.reason.as_deref()))
                .collect();
            added += sqlx::query(&sql)
                .bind(tenant.0)
                .bind(Source::Import.as_str())
                .bind(now.0)
                .bind(serde_json::to_string(&rows).map_err(encode_err)?)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        let canceled = cancel_listed_in(&mut tx, self.backend, tenant.0, None, now).await?;
        tx.commit().await.map_err(db_err)?;
        tracing::info!(
            rows = listings.len(),
            added,
            canceled,
            "do-not-call list imported"
        );
        Ok(Imported {
            total: listings.len() as u64,
            added,
        })
    }

    async fn get_do_not_call(
        &self,
        tenant: TenantId,
        number: &E164,
    ) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.read.acquire().await.map_err(db_err)?;
        entry_in(&mut conn, tenant.0, number.as_str()).await
    }

    async fn list_do_not_call(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Listed<Entry>, StoreError> {
        let items = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM do_not_call WHERE tenant_id = $1 \
             ORDER BY created_at DESC, number LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.0)
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?
        .iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM do_not_call WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_one(&self.read)
            .await
            .map_err(db_err)?;
        Ok(Listed {
            items,
            total: u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0),
        })
    }

    async fn delete_do_not_call(
        &self,
        tenant: TenantId,
        number: &E164,
    ) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM do_not_call WHERE tenant_id = $1 AND number = $2")
            .bind(tenant.0)
            .bind(number.as_str())
            .execute(&self.write)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(deleted > 0)
    }
}
