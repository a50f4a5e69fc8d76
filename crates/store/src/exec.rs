//! One statement interface over two drivers, so that a transaction's steps are written once:
//! sqlx (`AnyConnection`: PostgreSQL, and SQLite without the group-commit writer) and rusqlite
//! on the SQLite writer's own thread ([`Lite`]). Background work (dial starts, marks,
//! settlements) is written over [`Exec`] as a [`Job`]; on SQLite the writer thread runs it
//! between its batches of calls, each statement a call into SQLite with no hop to sqlx's
//! connection thread and back (two task wake-ups each), which is what held the one writer
//! longest per dialled call (docs/design-notes.md, "Background work on the writer's thread").
//!
//! The statements keep sqlx's `$N` placeholders: SQLite reads `$N` as a named parameter, and
//! [`Lite`] binds each by the number in its name, as sqlx does.

use crate::db_err;
use domain::store::StoreError;
use rusqlite::types::{ToSqlOutput, Value};
use sqlx::any::AnyRow;
use std::sync::Arc;

/// A bound value, typed even when null: PostgreSQL types a parameter by its binding.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(($conv)(v))
            }
        }
    )*};
}

arg_from!(Int: i64 => Some, Option<i64> => |v| v);
arg_from!(Real: f64 => Some, Option<f64> => |v| v);
arg_from!(Text:
    String => Some,
    Option<String> => |v| v,
    &str => |v: &str| Some(v.to_string()),
    &String => |v: &String| Some(v.clone()),
    Option<&str> => |v: Option<&str>| v.map(str::to_string),
);

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(v) => v.map_or(ToSqlOutput::Owned(Value::Null), |v| v.into()),
            Arg::Real(v) => v.map_or(ToSqlOutput::Owned(Value::Null), |v| v.into()),
            Arg::Text(v) => v
                .as_deref()
                .map_or(ToSqlOutput::Owned(Value::Null), |v| v.into()),
        })
    }
}

/// A statement and its arguments; run with [`Query::execute`] and the `fetch_*` methods on any
/// [`Exec`].
pub(crate) struct Query<'q> {
    sql: &'q str,
    args: Vec<Arg>,
}

pub(crate) fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

impl<'q> Query<'q> {
    pub(crate) fn bind(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Rows changed.
    pub(crate) async fn execute<E: Exec>(self, e: &mut E) -> Result<u64, StoreError> {
        e.execute_query(self).await
    }

    pub(crate) async fn fetch_all<E: Exec>(self, e: &mut E) -> Result<Vec<E::Row>, StoreError> {
        e.fetch_query(self, None).await
    }

    pub(crate) async fn fetch_optional<E: Exec>(
        self,
        e: &mut E,
    ) -> Result<Option<E::Row>, StoreError> {
        Ok(e.fetch_query(self, Some(1)).await?.pop())
    }

    pub(crate) async fn fetch_one<E: Exec>(self, e: &mut E) -> Result<E::Row, StoreError> {
        self.fetch_optional(e)
            .await?
            .ok_or_else(|| StoreError::Database("a statement returned no row".into()))
    }
}

/// A connection in a transaction that runs [`Query`]s. Not `Send`-bounded: [`Lite`] borrows a
/// rusqlite connection, which is not `Sync`; the sqlx driver's futures are `Send` by their
/// concrete type.
pub(crate) trait Exec {
    type Row: RowRead;
    async fn execute_query(&mut self, q: Query<'_>) -> Result<u64, StoreError>;
    /// The first `limit` rows (all with `None`); the rest are not read.
    async fn fetch_query(
        &mut self,
        q: Query<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Self::Row>, StoreError>;
}

fn sqlx_query<'a>(
    q: &'a Query<'a>,
) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
    let mut s = sqlx::query(q.sql);
    for a in &q.args {
        s = match a {
            Arg::Int(v) => s.bind(*v),
            Arg::Real(v) => s.bind(*v),
            Arg::Text(v) => s.bind(v.clone()),
        };
    }
    s
}

impl Exec for sqlx::AnyConnection {
    type Row = AnyRow;

    async fn execute_query(&mut self, q: Query<'_>) -> Result<u64, StoreError> {
        sqlx_query(&q)
            .execute(&mut *self)
            .await
            .map(|r| r.rows_affected())
            .map_err(db_err)
    }

    async fn fetch_query(
        &mut self,
        q: Query<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        match limit {
            Some(1) => Ok(sqlx_query(&q)
                .fetch_optional(&mut *self)
                .await
                .map_err(db_err)?
                .into_iter()
                .collect()),
            _ => {
                let mut rows = sqlx_query(&q).fetch_all(&mut *self).await.map_err(db_err)?;
                rows.truncate(limit.unwrap_or(usize::MAX));
                Ok(rows)
            }
        }
    }
}

/// The sqlx connection behind a transaction, a pooled connection or a background turn.
macro_rules! exec_through_deref {
    ($($t:ty),*) => {$(
        impl Exec for $t {
            type Row = AnyRow;
            async fn execute_query(&mut self, q: Query<'_>) -> Result<u64, StoreError> {
                let conn: &mut sqlx::AnyConnection = &mut *self;
                conn.execute_query(q).await
            }
            async fn fetch_query(
                &mut self,
                q: Query<'_>,
                limit: Option<usize>,
            ) -> Result<Vec<AnyRow>, StoreError> {
                let conn: &mut sqlx::AnyConnection = &mut *self;
                conn.fetch_query(q, limit).await
            }
        }
    )*};
}

exec_through_deref!(
    sqlx::Transaction<'_, sqlx::Any>,
    sqlx::pool::PoolConnection<sqlx::Any>,
    crate::Background<sqlx::Transaction<'_, sqlx::Any>>,
    crate::Background<sqlx::pool::PoolConnection<sqlx::Any>>
);

/// [`Exec`] on the SQLite writer's connection, inside the transaction its thread began. Every
/// statement runs to its end when called, so a job's future is ready on its first poll.
pub(crate) struct Lite<'c> {
    conn: &'c rusqlite::Connection,
}

impl<'c> Lite<'c> {
    pub(crate) fn new(conn: &'c rusqlite::Connection) -> Self {
        Self { conn }
    }

    fn prepared(&self, q: &Query<'_>) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        let mut stmt = self.conn.prepare_cached(q.sql)?;
        for i in 1..=stmt.parameter_count() {
            // `$N` (or `?N`) is the statement's N-th argument, wherever it first appears.
            let n = stmt
                .parameter_name(i)
                .and_then(|name| name.get(1..))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=q.args.len()).contains(n))
                .ok_or(rusqlite::Error::InvalidParameterCount(i, q.args.len()))?;
            stmt.raw_bind_parameter(i, &q.args[n - 1])?;
        }
        Ok(stmt)
    }
}

pub(crate) fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.into())
}

impl Exec for Lite<'_> {
    type Row = LiteRow;

    async fn execute_query(&mut self, q: Query<'_>) -> Result<u64, StoreError> {
        let mut stmt = self.prepared(&q).map_err(sqlite_err)?;
        // Stepped to the end, so a statement with `RETURNING` runs whole too.
        let mut rows = stmt.raw_query();
        while rows.next().map_err(sqlite_err)?.is_some() {}
        Ok(self.conn.changes())
    }

    async fn fetch_query(
        &mut self,
        q: Query<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<LiteRow>, StoreError> {
        let mut stmt = self.prepared(&q).map_err(sqlite_err)?;
        let names: Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
        let width = names.len();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while out.len() < limit.unwrap_or(usize::MAX) {
            let Some(row) = rows.next().map_err(sqlite_err)? else {
                break;
            };
            let values = (0..width)
                .map(|i| row.get_ref(i).map(Value::from))
                .collect::<Result<_, _>>()
                .map_err(sqlite_err)?;
            out.push(LiteRow {
                names: names.clone(),
                values,
            });
        }
        Ok(out)
    }
}

/// A row read on the writer's thread, owned.
pub(crate) struct LiteRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

/// Reads a column by name, from either driver's row.
pub(crate) trait RowRead {
    fn read<T: Column>(&self, col: &str) -> Result<T, StoreError>;
}

impl RowRead for AnyRow {
    fn read<T: Column>(&self, col: &str) -> Result<T, StoreError> {
        sqlx::Row::try_get(self, col).map_err(db_err)
    }
}

impl RowRead for LiteRow {
    fn read<T: Column>(&self, col: &str) -> Result<T, StoreError> {
        let value = self
            .names
            .iter()
            .position(|n| n == col)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| StoreError::Database(format!("no column {col}").into()))?;
        T::from_value(value).ok_or_else(|| {
            StoreError::Database(
                format!(
                    "column {col}: {value:?} is not {}",
                    std::any::type_name::<T>()
                )
                .into(),
            )
        })
    }
}

/// A value a column can be read as, from either driver.
pub(crate) trait Column:
    for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>
{
    fn from_value(v: &Value) -> Option<Self>
    where
        Self: Sized;
}

impl Column for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl Column for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl Column for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Background work of one transaction, written once over [`Exec`]: on SQLite's writer thread
/// (`sqlite_writer`), else in a sqlx transaction. It owns what it needs, since it may run on
/// another thread.
pub(crate) trait Job: Send + 'static {
    type Out: Send + 'static;
    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError>;
}
