//! The console's pages. Reads and writes go through the API's own handlers (called as
//! functions with the session's caller), so a page shows what `/v1` would answer and a form
//! gets the API's validation message; only the filtered conversation list has its own query.

use super::session::{self, SIGN_IN_COOKIE};
use super::{checked_form, cookie, secure, set_cookie, Console, ConsoleError};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::input::ApiPath;
use crate::routes::{agents as api_agents, batches as api_batches, calls as api_calls};
use crate::routes::{conversations as api_conversations, webhooks as api_webhooks};
use crate::AppState;
use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use domain::call::CallStatus;
use domain::console::{ConversationFilter, ConversationFilter as Filter};
use domain::store::Page;
use domain::{AgentId, Millis};
use serde_json::{Map, Value};

type PageResult = Result<Response, ConsoleError>;

const ROWS_PER_PAGE: u32 = 50;

/// What every signed-in page's frame needs: the sign-out form's token and where we are.
pub struct Nav {
    pub csrf: String,
    pub section: &'static str,
}

impl Nav {
    fn new(c: &Console, section: &'static str) -> Self {
        Self {
            csrf: c.csrf.clone(),
            section,
        }
    }
}

fn html<T: Template>(status: StatusCode, page: &T) -> PageResult {
    Ok((status, Html(page.render()?)).into_response())
}

fn ok<T: Template>(page: &T) -> PageResult {
    html(StatusCode::OK, page)
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Unix ms as the console shows times: UTC, to the second.
fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn json_body(v: &Map<String, Value>) -> (HeaderMap, Body) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (headers, Body::from(Value::Object(v.clone()).to_string()))
}

// ---------------------------------------------------------------------------------------------
// Errors and sign-in

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub nav: Option<Nav>,
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    nav: Option<Nav>,
    token: String,
    error: Option<String>,
}

/// The sign-in page, with a fresh token in its form and in a cookie (double submit).
fn sign_in_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<String>,
) -> PageResult {
    let token = session::random_token();
    let page = SignInPage {
        nav: None,
        token: token.clone(),
        error,
    };
    let mut r = html(status, &page)?;
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, &token, 3600, secure(state, headers)),
    );
    Ok(r)
}

pub async fn home(State(state): State<AppState>, req: Request) -> PageResult {
    let (mut parts, _) = req.into_parts();
    match <Console as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    {
        Ok(_) => Ok(see_other("/console/conversations")),
        Err(ConsoleError::SignedOut { .. }) => {
            sign_in_page(&state, &parts.headers, StatusCode::OK, None)
        }
        Err(e) => Err(e),
    }
}

pub async fn sign_in(State(state): State<AppState>, req: Request) -> PageResult {
    let ip = crate::server::peer_ip(&req);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| ApiError::TooLarge)?;
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let expected = cookie(&parts.headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty()
        || !session::same_token(field(&fields, "csrf"), expected)
        || super::cross_site(&parts.headers)
    {
        return Err(ConsoleError::Forgery);
    }
    let now = Millis::now().0;
    if let Some(wait) = ip.and_then(|ip| state.auth_failures.spent(ip, now)) {
        let message = format!("too many failed sign-ins; try again in {wait} s");
        return sign_in_page(
            &state,
            &parts.headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(message),
        );
    }
    let key = field(&fields, "api_key").trim();
    match crate::auth::resolve_key(&state, key).await {
        Ok(caller) => {
            // A new sign-in replaces the browser's old session rather than leaving it live.
            if let Some(old) = cookie(&parts.headers, session::COOKIE) {
                state.console.close(old);
            }
            let lookup = crate::auth::key_lookup(key).unwrap_or_default().to_string();
            let token = state.console.open(caller, lookup);
            let secure = secure(&state, &parts.headers);
            let mut r = see_other("/console/conversations");
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(session::COOKIE, &token, session::ABSOLUTE.as_secs(), secure),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(SIGN_IN_COOKIE, "", 0, secure),
            );
            tracing::info!(tenant = caller.tenant.0, "console sign-in");
            Ok(r)
        }
        Err(ApiError::Unauthenticated) => {
            if let Some(ip) = ip {
                state.auth_failures.failed(ip, now);
            }
            let message = ApiError::Unauthenticated.to_string();
            sign_in_page(
                &state,
                &parts.headers,
                StatusCode::UNAUTHORIZED,
                Some(message),
            )
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    console: Console,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    checked_form(&console, &headers, &body)?;
    state.console.close(&console.token);
    let mut r = see_other("/console");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session::COOKIE, "", 0, secure(&state, &headers)),
    );
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Conversations

pub struct ConvRow {
    pub id: String,
    pub agent_id: i64,
    pub contact: String,
    pub status: &'static str,
    pub created: String,
    pub duration: String,
    pub batch: String,
}

pub struct AgentChoice {
    pub id: i64,
    pub name: String,
    pub selected: bool,
}

pub struct StatusChoice {
    pub value: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "console/conversations.html")]
struct ConversationsPage {
    nav: Option<Nav>,
    agents: Vec<AgentChoice>,
    statuses: Vec<StatusChoice>,
    batch: String,
    from: String,
    to: String,
    rows_html: String,
}

#[derive(Template)]
#[template(path = "console/conversation_rows.html")]
struct RowsFragment {
    rows: Vec<ConvRow>,
    total: u64,
    first: u64,
    last: u64,
    /// The filter as a query string (no page), for the poll and the page links.
    query: String,
    prev: Option<String>,
    next: Option<String>,
}

struct ListQuery {
    filter: Filter,
    page: u64,
    raw_batch: String,
    raw_from: String,
    raw_to: String,
    query: String,
}

/// `YYYY-MM-DD` (a date input's value) as the start of that day in UTC.
fn day_start(raw: &str, name: &str) -> Result<Option<Millis>, ConsoleError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let day =
        chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| ApiError::invalid(name))?;
    Ok(day
        .and_hms_opt(0, 0, 0)
        .map(|t| Millis(t.and_utc().timestamp_millis())))
}

fn list_query(raw: Option<&str>) -> Result<ListQuery, ConsoleError> {
    let pairs = crate::input::query_pairs(raw);
    let get = |k: &str| {
        crate::input::query_value(&pairs, k)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let agent = get("agent_id");
    let status = get("status");
    let batch = get("batch_id");
    let from = get("from");
    let to = get("to");
    let filter = ConversationFilter {
        agent: (!agent.is_empty())
            .then(|| crate::input::positive_id(&agent, "agent_id").map(AgentId))
            .transpose()?,
        status: (!status.is_empty())
            .then(|| CallStatus::parse(&status).ok_or_else(|| ApiError::invalid("status")))
            .transpose()?,
        batch: (!batch.is_empty())
            .then(|| crate::input::positive_id(&batch, "batch_id"))
            .transpose()?,
        created_from: day_start(&from, "from")?,
        // The "to" day is included: before the start of the next one.
        created_before: day_start(&to, "to")?.map(|m| Millis(m.0 + 86_400_000)),
    };
    let page = match get("page").as_str() {
        "" => 1,
        p => p
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| ApiError::invalid("page"))?,
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("status", &status),
        ("agent_id", &agent),
        ("batch_id", &batch),
        ("from", &from),
        ("to", &to),
    ] {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    Ok(ListQuery {
        filter,
        page,
        raw_batch: batch,
        raw_from: from,
        raw_to: to,
        query: q.finish(),
    })
}

async fn rows_fragment(
    state: &AppState,
    caller: Caller,
    q: &ListQuery,
) -> Result<RowsFragment, ConsoleError> {
    let page = Page {
        limit: ROWS_PER_PAGE,
        offset: (q.page - 1) * u64::from(ROWS_PER_PAGE),
    };
    let listed = state
        .store
        .find_conversations(caller.tenant, &q.filter, page)
        .await?;
    let rows: Vec<ConvRow> = listed
        .items
        .iter()
        .map(|c| ConvRow {
            id: c.id.to_string(),
            agent_id: c.agent.0,
            contact: c.contact_number.clone(),
            status: c.status.as_str(),
            created: when(Some(c.created_at.0)),
            duration: c
                .duration_seconds
                .map(|d| format!("{d} s"))
                .unwrap_or_default(),
            batch: c.batch_id.map(|b| b.to_string()).unwrap_or_default(),
        })
        .collect();
    let link = |p: u64| {
        let sep = if q.query.is_empty() { "" } else { "&" };
        format!("{}{sep}page={p}", q.query)
    };
    let first = page.offset + 1;
    let last = page.offset + rows.len() as u64;
    Ok(RowsFragment {
        prev: (q.page > 1).then(|| link(q.page - 1)),
        next: listed.has_more(page).then(|| link(q.page + 1)),
        total: listed.total,
        first: if rows.is_empty() { 0 } else { first },
        last,
        rows,
        query: if q.page > 1 {
            link(q.page)
        } else {
            q.query.clone()
        },
    })
}

pub async fn conversations(
    State(state): State<AppState>,
    console: Console,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = list_query(raw.as_deref())?;
    let rows = rows_fragment(&state, console.caller, &q).await?;
    let listed = state
        .store
        .list_agents(
            console.caller.tenant,
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await?;
    let agents = listed
        .items
        .iter()
        .map(|a| AgentChoice {
            id: a.id.0,
            name: a.config.name.clone(),
            selected: q.filter.agent == Some(a.id),
        })
        .collect();
    let statuses = CallStatus::ALL
        .iter()
        .map(|s| StatusChoice {
            value: s.as_str(),
            selected: q.filter.status == Some(*s),
        })
        .collect();
    ok(&ConversationsPage {
        nav: Some(Nav::new(&console, "conversations")),
        agents,
        statuses,
        batch: q.raw_batch.clone(),
        from: q.raw_from.clone(),
        to: q.raw_to.clone(),
        rows_html: rows.render()?,
    })
}

pub async fn conversation_rows(
    State(state): State<AppState>,
    console: Console,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = list_query(raw.as_deref())?;
    ok(&rows_fragment(&state, console.caller, &q).await?)
}

pub struct Line {
    pub agent: bool,
    pub message: String,
}

pub struct KeyValue {
    pub key: String,
    pub value: String,
}

pub struct DeliveryRow {
    pub id: i64,
    pub event_type: String,
    pub target: i64,
    pub conversation: String,
    pub status: String,
    pub attempts: usize,
    pub last: String,
    pub next_at: String,
    pub created: String,
}

fn delivery_row(d: &api_webhooks::DeliveryView) -> DeliveryRow {
    let last = match (&d.last_status, &d.last_error) {
        (Some(s), Some(e)) => format!("HTTP {s}: {e}"),
        (Some(s), None) => format!("HTTP {s}"),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    };
    DeliveryRow {
        id: d.webhook_delivery_id,
        event_type: d.event_type.clone(),
        target: d.webhook_target_id,
        conversation: d.conversation_id.clone().unwrap_or_default(),
        status: d.status.clone(),
        attempts: d.attempts.len(),
        last,
        next_at: when(d.next_attempt_at),
        created: when(Some(d.created_at)),
    }
}

pub struct ConvView {
    pub id: String,
    pub status: String,
    pub terminal: bool,
    pub failure_reason: Option<String>,
    pub agent_id: i64,
    pub contact: String,
    pub attempt: u32,
    pub batch: Option<i64>,
    pub trace_id: String,
    pub started: String,
    pub ended: String,
    pub duration: String,
    pub scheduled_for: Option<String>,
    pub metadata: Option<String>,
    pub results: Vec<KeyValue>,
    pub transcript: Vec<Line>,
    pub has_recording: bool,
    pub latency: Option<api_conversations::LatencyDetail>,
    pub turns: String,
    /// Shown once the API's conversation carries them (answering-machine detection, transfer).
    pub answered_by: Option<String>,
    pub transfer: Option<String>,
    pub deliveries: Vec<DeliveryRow>,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms_text(v: Option<u64>) -> String {
    v.map(|n| format!("{n} ms")).unwrap_or_else(|| "n/a".into())
}

/// `answered_by` and `transfer` as the API's conversation JSON carries them, once it does
/// (answering-machine detection and transfer add them): read from the JSON rather than the
/// struct, so the page shows them as soon as the API does, and nothing while they are `null`.
fn answered_and_transfer(json: &Value) -> (Option<String>, Option<String>) {
    let present = |name: &str| json.get(name).filter(|v| !v.is_null());
    let answered_by = present("answered_by").map(text_of);
    let transfer = present("transfer")
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
    (answered_by, transfer)
}

async fn conversation_view(
    state: &AppState,
    caller: Caller,
    id: String,
) -> Result<ConvView, ConsoleError> {
    let Json(found) = api_conversations::get_conversation(
        State(state.clone()),
        Extension(caller),
        ApiPath(id.clone()),
    )
    .await?;
    let d = found.data;
    let (answered_by, transfer) =
        answered_and_transfer(&serde_json::to_value(&d).unwrap_or(Value::Null));
    let query = format!(
        "conversation_id={}&limit=100",
        form_urlencoded::byte_serialize(d.item.conversation_id.as_bytes()).collect::<String>()
    );
    let Json(deliveries) = api_webhooks::list_webhook_deliveries(
        State(state.clone()),
        Extension(caller),
        RawQuery(Some(query)),
    )
    .await?;
    let status = CallStatus::parse(&d.item.status);
    Ok(ConvView {
        id: d.item.conversation_id.clone(),
        terminal: status.is_some_and(|s| s.is_terminal()),
        status: d.item.status.clone(),
        failure_reason: d.failure_reason.clone(),
        agent_id: d.item.agent_id,
        contact: d.item.contact_number.clone(),
        attempt: d.attempt,
        batch: d.batch_id,
        trace_id: d.trace_id.clone(),
        started: when(d.item.start_timestamp),
        ended: when(d.item.end_timestamp),
        duration: d
            .item
            .duration_seconds
            .map(|s| format!("{s} s"))
            .unwrap_or_default(),
        scheduled_for: d.scheduled_for.clone(),
        metadata: d.metadata.clone(),
        results: d
            .results
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: text_of(v),
            })
            .collect(),
        transcript: d
            .transcript
            .iter()
            .map(|l| Line {
                agent: l.role == "agent",
                message: l.message.clone(),
            })
            .collect(),
        has_recording: d.recording_url.is_some(),
        turns: d
            .latency
            .as_ref()
            .map(|l| {
                l.turns_ms
                    .iter()
                    .map(|t| format!("{t} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        latency: d.latency,
        answered_by,
        transfer,
        deliveries: deliveries.data.iter().map(delivery_row).collect(),
    })
}

#[derive(Template)]
#[template(path = "console/conversation.html")]
struct ConversationPage {
    nav: Option<Nav>,
    id: String,
    live_html: String,
}

#[derive(Template)]
#[template(path = "console/conversation_live.html")]
struct ConversationLive {
    v: ConvView,
    csrf: String,
}

impl ConvView {
    fn p50(&self) -> String {
        ms_text(self.latency.as_ref().and_then(|l| l.voice_to_voice_p50_ms))
    }
    fn p95(&self) -> String {
        ms_text(self.latency.as_ref().and_then(|l| l.voice_to_voice_p95_ms))
    }
    fn first_word(&self) -> String {
        ms_text(
            self.latency
                .as_ref()
                .and_then(|l| l.answer_to_first_word_ms),
        )
    }
}

pub async fn conversation(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> PageResult {
    let v = conversation_view(&state, console.caller, id).await?;
    let live = ConversationLive {
        csrf: console.csrf.clone(),
        v,
    };
    ok(&ConversationPage {
        nav: Some(Nav::new(&console, "conversations")),
        id: live.v.id.clone(),
        live_html: live.render()?,
    })
}

pub async fn conversation_live(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> PageResult {
    let v = conversation_view(&state, console.caller, id).await?;
    ok(&ConversationLive {
        csrf: console.csrf.clone(),
        v,
    })
}

pub async fn recording(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> PageResult {
    Ok(
        api_conversations::get_recording(State(state), Extension(console.caller), ApiPath(id))
            .await?,
    )
}

// ---------------------------------------------------------------------------------------------
// Batches

pub struct BatchRow {
    pub id: i64,
    pub name: String,
    pub agent_id: i64,
    pub status: String,
    pub total: i64,
    pub processed: i64,
    pub percent: i64,
    pub created: String,
}

fn percent(done: i64, total: i64) -> i64 {
    if total <= 0 {
        0
    } else {
        done.saturating_mul(100) / total
    }
}

fn batch_row(b: &api_batches::BatchItem) -> BatchRow {
    BatchRow {
        id: b.id,
        name: b.name.clone(),
        agent_id: b.agent_id,
        status: b.status.clone(),
        total: b.total_recipients,
        processed: b.total_processed,
        percent: percent(b.total_processed, b.total_recipients),
        created: b.created_at.clone(),
    }
}

#[derive(Template)]
#[template(path = "console/batches.html")]
struct BatchesPage {
    nav: Option<Nav>,
    rows: Vec<BatchRow>,
    total: u64,
}

pub async fn batches(State(state): State<AppState>, console: Console) -> PageResult {
    let Json(list) = api_batches::list_batches(
        State(state),
        Extension(console.caller),
        RawQuery(Some("limit=100".into())),
    )
    .await?;
    ok(&BatchesPage {
        nav: Some(Nav::new(&console, "batches")),
        rows: list.data.iter().map(batch_row).collect(),
        total: list.total,
    })
}

pub struct Count {
    pub label: &'static str,
    pub value: i64,
}

#[derive(Template)]
#[template(path = "console/batch_progress.html")]
struct BatchProgress {
    b: BatchRow,
    finished: bool,
    counts: Vec<Count>,
    success_rate: String,
    avg_duration: String,
}

#[derive(Template)]
#[template(path = "console/batch.html")]
struct BatchPage {
    nav: Option<Nav>,
    csrf: String,
    id: i64,
    name: String,
    progress_html: String,
}

async fn batch_progress_of(
    state: &AppState,
    caller: Caller,
    id: String,
) -> Result<BatchProgress, ConsoleError> {
    let Json(b) =
        api_batches::get_batch(State(state.clone()), Extension(caller), ApiPath(id)).await?;
    let b = b.data;
    let Json(m) = api_batches::get_batch_metrics(
        State(state.clone()),
        Extension(caller),
        ApiPath(b.id.to_string()),
    )
    .await?;
    let m = m.data;
    let counts = vec![
        Count {
            label: "pending",
            value: m.pending_count,
        },
        Count {
            label: "in progress",
            value: m.in_progress_count,
        },
        Count {
            label: "pending retry",
            value: m.pending_retry_count,
        },
        Count {
            label: "completed",
            value: m.completed_count,
        },
        Count {
            label: "busy",
            value: m.busy_count,
        },
        Count {
            label: "no answer",
            value: m.no_answer_count,
        },
        Count {
            label: "failed",
            value: m.failed_count,
        },
        Count {
            label: "socket failure",
            value: m.socket_failure_count,
        },
        Count {
            label: "unreachable",
            value: m.unreachable_count,
        },
        Count {
            label: "canceled",
            value: m.canceled_count,
        },
        Count {
            label: "total processed",
            value: m.total_processed,
        },
    ];
    Ok(BatchProgress {
        finished: b.status == "completed" || b.status == "canceled",
        b: batch_row(&b),
        counts,
        success_rate: format!("{:.2} %", m.success_rate),
        avg_duration: format!("{:.2} s", m.avg_duration_seconds),
    })
}

pub async fn batch(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> PageResult {
    let progress = batch_progress_of(&state, console.caller, id).await?;
    ok(&BatchPage {
        nav: Some(Nav::new(&console, "batches")),
        csrf: console.csrf.clone(),
        id: progress.b.id,
        name: progress.b.name.clone(),
        progress_html: progress.render()?,
    })
}

pub async fn batch_progress(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> PageResult {
    ok(&batch_progress_of(&state, console.caller, id).await?)
}

pub async fn batch_action(
    State(state): State<AppState>,
    console: Console,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    checked_form(&console, &headers, &body)?;
    let (s, c, p) = (State(state), Extension(console.caller), ApiPath(id.clone()));
    let Json(b) = match action.as_str() {
        "pause" => api_batches::pause_batch(s, c, p).await?,
        "resume" => api_batches::resume_batch(s, c, p).await?,
        "cancel" => api_batches::cancel_batch(s, c, p).await?,
        _ => return Err(ApiError::NotFound("not found".into()).into()),
    };
    Ok(see_other(&format!("/console/batches/{}", b.data.id)))
}

// ---------------------------------------------------------------------------------------------
// Agents

pub struct AgentRow {
    pub id: i64,
    pub name: String,
    pub phone_number: String,
    pub language: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct AgentsPage {
    nav: Option<Nav>,
    rows: Vec<AgentRow>,
}

fn str_of(m: &Map<String, Value>, k: &str) -> String {
    m.get(k)
        .map(|v| match v {
            Value::Null => String::new(),
            other => text_of(other),
        })
        .unwrap_or_default()
}

pub async fn agents(State(state): State<AppState>, console: Console) -> PageResult {
    let Json(list) = api_agents::list_agents(
        State(state),
        Extension(console.caller),
        RawQuery(Some("limit=100".into())),
    )
    .await?;
    ok(&AgentsPage {
        nav: Some(Nav::new(&console, "agents")),
        rows: list
            .data
            .iter()
            .map(|a| AgentRow {
                id: a.get("agent_id").and_then(Value::as_i64).unwrap_or(0),
                name: str_of(a, "name"),
                phone_number: str_of(a, "phone_number"),
                language: str_of(a, "language"),
                updated: str_of(a, "updated_at"),
            })
            .collect(),
    })
}

/// The form's own fields; everything else of the agent object is edited as JSON in `other`.
const SIMPLE_FIELDS: [(&str, &str, bool); 6] = [
    ("name", "Name", false),
    (
        "phone_number",
        "Phone number (one of the tenant's numbers)",
        false,
    ),
    ("language", "Language (BCP 47, e.g. en-US)", false),
    ("first_message", "First message", true),
    ("max_duration_seconds", "Maximum duration (seconds)", false),
    ("ring_timeout_seconds", "Ring timeout (seconds)", false),
];
const NUMERIC: [&str; 2] = ["max_duration_seconds", "ring_timeout_seconds"];
const NOT_EDITABLE: [&str; 3] = ["agent_id", "created_at", "updated_at"];

pub struct FormField {
    pub name: &'static str,
    pub label: &'static str,
    pub multiline: bool,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/agent.html")]
struct AgentPage {
    nav: Option<Nav>,
    csrf: String,
    /// `None` while creating.
    id: Option<i64>,
    fields: Vec<FormField>,
    other: String,
    other_error: Option<String>,
    /// An error the API named no field of this form for.
    saved: bool,
    call_phone: String,
    call_name: String,
    call_error: Option<String>,
}

/// The field an API validation message is about: `invalid <field>`, `<field> is required`,
/// `<field>.<part> not allowed`, and the two messages that name their field in words.
fn field_of(message: &str) -> Option<String> {
    let name = if let Some(rest) = message.strip_prefix("invalid ") {
        rest
    } else if let Some(rest) = message.strip_suffix(" is required") {
        rest
    } else if message == "unsupported language" {
        "language"
    } else if message == "phone number not found" {
        "phone_number"
    } else {
        message.split(' ').next().unwrap_or("")
    };
    let top = name.split(['.', '[']).next().unwrap_or("").trim();
    (!top.is_empty()).then(|| top.to_string())
}

fn agent_form(console: &Console, id: Option<i64>, agent: &Map<String, Value>) -> AgentPage {
    let fields = SIMPLE_FIELDS
        .iter()
        .map(|(name, label, multiline)| FormField {
            name,
            label,
            multiline: *multiline,
            value: str_of(agent, name),
            error: None,
        })
        .collect();
    let mut other = agent.clone();
    for k in SIMPLE_FIELDS.iter().map(|f| f.0).chain(NOT_EDITABLE) {
        other.remove(k);
    }
    AgentPage {
        nav: Some(Nav::new(console, "agents")),
        csrf: console.csrf.clone(),
        id,
        fields,
        other: serde_json::to_string_pretty(&Value::Object(other)).unwrap_or_default(),
        other_error: None,
        saved: false,
        call_phone: String::new(),
        call_name: String::new(),
        call_error: None,
    }
}

pub async fn new_agent(console: Console) -> PageResult {
    let mut defaults = Map::new();
    defaults.insert("language".into(), Value::String("en-US".into()));
    ok(&agent_form(&console, None, &defaults))
}

async fn agent_json(
    state: &AppState,
    caller: Caller,
    id: &str,
) -> Result<Map<String, Value>, ConsoleError> {
    let Json(a) = api_agents::get_agent(
        State(state.clone()),
        Extension(caller),
        ApiPath(id.to_string()),
    )
    .await?;
    Ok(a.data)
}

pub async fn agent(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let a = agent_json(&state, console.caller, &id).await?;
    let agent_id = a.get("agent_id").and_then(Value::as_i64);
    let mut page = agent_form(&console, agent_id, &a);
    page.saved = raw.as_deref() == Some("saved=1");
    ok(&page)
}

/// The agent object a submitted form describes, or the form again with the problem shown.
/// An empty field is `null` (not set), unless the stored agent had it as empty text: a save
/// that changes nothing must send back what it was shown.
fn agent_body(
    page: &mut AgentPage,
    fields: &[(String, String)],
    stored: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let mut body = Map::new();
    let other = field(fields, "other");
    if !other.trim().is_empty() {
        match serde_json::from_str::<Value>(other) {
            Ok(Value::Object(m)) => body.extend(m),
            _ => page.other_error = Some("invalid JSON: an object is expected".into()),
        }
    }
    page.other = other.to_string();
    for f in &mut page.fields {
        let raw = field(fields, f.name);
        f.value = raw.to_string();
        let value = if raw.is_empty() && stored.get(f.name) == Some(&Value::String(String::new())) {
            Value::String(String::new())
        } else if raw.trim().is_empty() {
            Value::Null
        } else if NUMERIC.contains(&f.name) {
            // A number when it reads as one; otherwise the text, for the API to refuse by name.
            raw.trim()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(raw.to_string()))
        } else {
            Value::String(raw.to_string())
        };
        body.insert(f.name.to_string(), value);
    }
    page.other_error.is_none().then_some(body)
}

/// Puts the API's message next to the field it names (the JSON box for the others).
fn show_error(page: &mut AgentPage, e: ApiError) -> Result<StatusCode, ConsoleError> {
    let (status, json) = e.status_and_body();
    if status.is_server_error() {
        return Err(e.into());
    }
    let message = json["error"]["message"].as_str().unwrap_or("").to_string();
    let named = field_of(&message);
    match page
        .fields
        .iter_mut()
        .find(|f| named.as_deref() == Some(f.name))
    {
        Some(f) => f.error = Some(message),
        None => page.other_error = Some(message),
    }
    Ok(status)
}

/// The stored key of an llm brain is shown masked; a form sent back with the mask keeps it.
fn keep_masked_key(body: &mut Map<String, Value>, stored: &Map<String, Value>) {
    let masked = body
        .get("brain")
        .and_then(|b| b.get("api_key"))
        .and_then(Value::as_str)
        == Some("********");
    if masked {
        if let (Some(Value::Object(brain)), Some(key)) = (
            body.get_mut("brain"),
            stored.get("brain").and_then(|b| b.get("api_key")),
        ) {
            brain.insert("api_key".into(), key.clone());
        }
    }
}

pub async fn create_agent(
    State(state): State<AppState>,
    console: Console,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let fields = checked_form(&console, &headers, &body)?;
    let mut page = agent_form(&console, None, &Map::new());
    let Some(mut agent) = agent_body(&mut page, &fields, &Map::new()) else {
        return html(StatusCode::BAD_REQUEST, &page);
    };
    agent.retain(|_, v| !v.is_null());
    let (h, b) = json_body(&agent);
    match api_agents::create_agent(State(state), Extension(console.caller), h, b).await {
        Ok(Json(a)) => {
            let id = a.data.get("agent_id").and_then(Value::as_i64).unwrap_or(0);
            Ok(see_other(&format!("/console/agents/{id}?saved=1")))
        }
        Err(e) => {
            let status = show_error(&mut page, e)?;
            html(status, &page)
        }
    }
}

pub async fn update_agent(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let fields = checked_form(&console, &headers, &body)?;
    let stored = agent_json(&state, console.caller, &id).await?;
    let agent_id = stored.get("agent_id").and_then(Value::as_i64);
    let mut page = agent_form(&console, agent_id, &stored);
    let Some(mut patch) = agent_body(&mut page, &fields, &stored) else {
        return html(StatusCode::BAD_REQUEST, &page);
    };
    // Fields removed from the JSON box are cleared, as a PATCH with `null` does.
    for k in stored.keys() {
        if !patch.contains_key(k) && !NOT_EDITABLE.contains(&k.as_str()) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    keep_masked_key(&mut patch, &stored);
    let (h, b) = json_body(&patch);
    match api_agents::update_agent(
        State(state),
        Extension(console.caller),
        ApiPath(id.clone()),
        h,
        b,
    )
    .await
    {
        Ok(_) => Ok(see_other(&format!("/console/agents/{id}?saved=1"))),
        Err(e) => {
            let status = show_error(&mut page, e)?;
            html(status, &page)
        }
    }
}

pub async fn test_call(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let fields = checked_form(&console, &headers, &body)?;
    let stored = agent_json(&state, console.caller, &id).await?;
    let agent_id = stored.get("agent_id").and_then(Value::as_i64).unwrap_or(0);
    let phone = field(&fields, "customer_phone").trim().to_string();
    let name = field(&fields, "customer_name").trim().to_string();
    let mut parameters = vec![serde_json::json!({"name": "customer_phone", "value": phone})];
    if !name.is_empty() {
        parameters.push(serde_json::json!({"name": "customer_name", "value": name}));
    }
    let mut call = Map::new();
    call.insert("agent_id".into(), Value::from(agent_id));
    call.insert("parameters".into(), Value::Array(parameters));
    let (h, b) = json_body(&call);
    match api_calls::create_call(State(state), Extension(console.caller), h, b).await {
        Ok(r) => {
            // The API's `Location` names the new conversation: show it.
            let to = r
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.strip_prefix("/v1/"))
                .map(|l| format!("/console/{l}"))
                .unwrap_or_else(|| "/console/conversations".into());
            Ok(see_other(&to))
        }
        Err(e) => {
            let mut page = agent_form(&console, Some(agent_id), &stored);
            page.call_phone = phone;
            page.call_name = name;
            let (status, json) = e.status_and_body();
            if status.is_server_error() {
                return Err(e.into());
            }
            page.call_error = json["error"]["message"].as_str().map(str::to_string);
            html(status, &page)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks

pub struct TargetRow {
    pub id: i64,
    pub agent_id: i64,
    pub agent: String,
    pub name: String,
    pub url: String,
    pub events: String,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "console/webhooks.html")]
struct WebhooksPage {
    nav: Option<Nav>,
    csrf: String,
    targets: Vec<TargetRow>,
    deliveries: Vec<DeliveryRow>,
    statuses: Vec<StatusChoice>,
    total: u64,
    back: String,
}

pub async fn webhooks(
    State(state): State<AppState>,
    console: Console,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let pairs = crate::input::query_pairs(raw.as_deref());
    let status = crate::input::query_value(&pairs, "status")
        .unwrap_or("")
        .to_string();
    let Json(agents) = api_agents::list_agents(
        State(state.clone()),
        Extension(console.caller),
        RawQuery(Some("limit=100".into())),
    )
    .await?;
    let mut targets = Vec::new();
    for a in &agents.data {
        let agent_id = a.get("agent_id").and_then(Value::as_i64).unwrap_or(0);
        let Json(list) = api_webhooks::list_webhook_targets(
            State(state.clone()),
            Extension(console.caller),
            ApiPath(agent_id.to_string()),
        )
        .await?;
        targets.extend(list.data.into_iter().map(|t| TargetRow {
            id: t.webhook_target_id,
            agent_id,
            agent: str_of(a, "name"),
            name: t.name,
            url: t.url,
            events: t.events.join(", "),
            active: t.active,
        }));
    }
    let mut query = String::from("limit=100");
    if !status.is_empty() {
        query.push_str("&status=");
        query.extend(form_urlencoded::byte_serialize(status.as_bytes()));
    }
    let Json(deliveries) = api_webhooks::list_webhook_deliveries(
        State(state),
        Extension(console.caller),
        RawQuery(Some(query)),
    )
    .await?;
    let back = if status.is_empty() {
        "/console/webhooks".to_string()
    } else {
        format!("/console/webhooks?status={status}")
    };
    ok(&WebhooksPage {
        nav: Some(Nav::new(&console, "webhooks")),
        csrf: console.csrf.clone(),
        targets,
        deliveries: deliveries.data.iter().map(delivery_row).collect(),
        statuses: ["pending", "delivered", "failed"]
            .into_iter()
            .map(|s| StatusChoice {
                value: s,
                selected: s == status,
            })
            .collect(),
        total: deliveries.total,
        back,
    })
}

/// Where a form may send the browser back to: a console page, never another site.
fn local_back(raw: &str) -> Option<&str> {
    let ok = raw.starts_with("/console")
        && !raw.starts_with("//")
        && !raw.contains("://")
        && !raw.contains('\\')
        && !raw.chars().any(char::is_control);
    ok.then_some(raw)
}

pub async fn retry_delivery(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let fields = checked_form(&console, &headers, &body)?;
    let _retried =
        api_webhooks::retry_webhook_delivery(State(state), Extension(console.caller), ApiPath(id))
            .await?;
    let back = local_back(field(&fields, "back")).unwrap_or("/console/webhooks");
    Ok(see_other(back))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_name_their_field() {
        assert_eq!(
            field_of("invalid max_duration_seconds").as_deref(),
            Some("max_duration_seconds")
        );
        assert_eq!(field_of("name is required").as_deref(), Some("name"));
        assert_eq!(
            field_of("unsupported language").as_deref(),
            Some("language")
        );
        assert_eq!(
            field_of("phone number not found").as_deref(),
            Some("phone_number")
        );
        assert_eq!(
            field_of("brain.base_url not allowed").as_deref(),
            Some("brain")
        );
        assert_eq!(
            field_of("invalid turn_taking").as_deref(),
            Some("turn_taking")
        );
    }

    #[test]
    fn answered_by_and_transfer_show_once_the_api_has_them() {
        let (a, t) = answered_and_transfer(&serde_json::json!({
            "answered_by": "machine",
            "transfer": {"target": "billing", "number": "+918045000000", "method": "refer",
                         "status": "connected", "at": 1764601200000i64}
        }));
        assert_eq!(a.as_deref(), Some("machine"));
        assert!(t.is_some_and(|t| t.contains("\"number\": \"+918045000000\"")));
        let none = answered_and_transfer(&serde_json::json!({"answered_by": null}));
        assert_eq!(none, (None, None));
    }

    #[test]
    fn only_console_pages_are_places_to_go_back_to() {
        assert_eq!(
            local_back("/console/webhooks?status=failed"),
            Some("/console/webhooks?status=failed")
        );
        assert_eq!(local_back("https://evil.example/console"), None);
        assert_eq!(local_back("//evil.example"), None);
        assert_eq!(local_back("/console\\@evil"), None);
        assert_eq!(local_back("/v1/agents"), None);
    }

    #[test]
    fn filters_read_from_the_query() {
        let q = list_query(Some(
            "status=completed&agent_id=2&batch_id=&from=2026-12-01&to=2026-12-01&page=2",
        ))
        .unwrap();
        assert_eq!(q.filter.status, Some(CallStatus::Completed));
        assert_eq!(q.filter.agent, Some(AgentId(2)));
        assert_eq!(q.filter.batch, None);
        let from = q.filter.created_from.unwrap().0;
        assert_eq!(
            q.filter.created_before.unwrap().0 - from,
            86_400_000,
            "the whole 'to' day"
        );
        assert_eq!(q.page, 2);
        assert_eq!(
            q.query,
            "status=completed&agent_id=2&from=2026-12-01&to=2026-12-01"
        );
        assert!(list_query(Some("status=nope")).is_err());
        assert!(list_query(Some("from=yesterday")).is_err());
    }
}
