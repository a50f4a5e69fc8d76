//! API keys and the per-key API rate limit.
//!
//! A key is `od_<lookup>_<secret>`: the lookup part finds the row, and the SHA-256 of the whole
//! key is compared in constant time with the stored hash. The secret carries ~238 bits of
//! entropy, so a fast hash is enough (no password stretching needed), and nothing stored can be
//! turned back into a key.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use domain::tenant::ApiKeyCredential;
use domain::{ApiKeyId, TenantId};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

const PREFIX: &str = "od_";
const LOOKUP_LEN: usize = 12;
const SECRET_LEN: usize = 40;

/// A freshly minted key: `key` is shown once; only `lookup` and `hash` are stored.
pub struct NewKey {
    pub key: String,
    pub lookup: String,
    pub hash: String,
}

fn random_alnum(n: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

pub fn generate_key() -> NewKey {
    let lookup = random_alnum(LOOKUP_LEN).to_ascii_lowercase();
    let key = format!("{PREFIX}{lookup}_{}", random_alnum(SECRET_LEN));
    let hash = hash_key(&key);
    NewKey { key, lookup, hash }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn lookup_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    (lookup.len() == LOOKUP_LEN && secret.len() == SECRET_LEN).then_some(lookup)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who is calling; inserted into the request by [`authenticate`].
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant: TenantId,
    pub key: ApiKeyId,
}

/// Fixed one-minute windows per key, as the contract's `X-RateLimit-Reset` (the end of the
/// current window) implies. Per node: with N nodes a key gets up to N times the limit, which is
/// documented; the per-number limit that protects callees is enforced in the database instead.
pub struct ApiRateLimiter {
    per_minute: u32,
    counts: MinuteCounts<ApiKeyId>,
}

pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    pub reset_unix: i64,
    pub allowed: bool,
}

impl ApiRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: MinuteCounts::new(),
        }
    }

    /// `None` when the limit is off.
    pub fn hit(&self, key: ApiKeyId, now_unix_ms: i64) -> Option<RateState> {
        if self.per_minute == 0 {
            return None;
        }
        let minute = now_unix_ms.div_euclid(60_000);
        let (count, allowed) = self.counts.add(key, minute, self.per_minute);
        Some(RateState {
            limit: self.per_minute,
            remaining: self.per_minute - count,
            reset_unix: (minute + 1) * 60,
            allowed,
        })
    }
}

/// Counts per key in fixed one-minute windows, the API limit's and the failed-auth budget's.
/// Bounded: past [`MINUTE_COUNTS_MAX_KEYS`] keys it starts afresh (memory, not counts, is
/// what a flood of distinct keys or addresses must not grow).
struct MinuteCounts<K> {
    counts: Mutex<HashMap<K, (i64, u32)>>,
}

const MINUTE_COUNTS_MAX_KEYS: usize = 100_000;

impl<K: std::hash::Hash + Eq> MinuteCounts<K> {
    fn new() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `key`'s count in `minute`, without counting.
    fn get(&self, key: &K, minute: i64) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get(key) {
            Some((m, n)) if *m == minute => *n,
            _ => 0,
        }
    }

    /// Counts one for `key` in `minute` unless it has reached `cap`; the count after, and
    /// whether this one was counted.
    fn add(&self, key: K, minute: i64, cap: u32) -> (u32, bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MINUTE_COUNTS_MAX_KEYS && !counts.contains_key(&key) {
            counts.clear();
        }
        let entry = counts.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        let counted = entry.1 < cap;
        if counted {
            entry.1 += 1;
        }
        (entry.1, counted)
    }
}

fn add_rate_headers(headers: &mut HeaderMap, s: &RateState) {
    let reset = Utc
        .timestamp_opt(s.reset_unix, 0)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .unwrap_or_default();
    for (name, value) in [
        ("x-ratelimit-limit", s.limit.to_string()),
        ("x-ratelimit-remaining", s.remaining.to_string()),
        ("x-ratelimit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// Middleware for every `/v1` request, whatever route it matches: resolves the bearer key to a
/// tenant, applies the per-key limit, and stamps the rate-limit headers on whatever is answered
/// (a 404 or 405 included). Other paths (probes, metrics, the API document) pass untouched.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    let now = domain::Millis::now().0;
    let ip = crate::server::peer_ip(&req);
    let caller = match resolve_budgeted(&state, ip, req.headers(), now).await {
        Ok(c) => c,
        Err(e) => return refuse(req, e.into_response()).await,
    };
    let rate = state.api_limiter.hit(caller.key, now);
    let mut response = match &rate {
        Some(r) if !r.allowed => {
            let retry_after_seconds = u64::try_from(r.reset_unix - now.div_euclid(1000))
                .unwrap_or(1)
                .max(1);
            let refusal = ApiError::ApiRateLimited {
                retry_after_seconds,
            }
            .into_response();
            refuse(req, refusal).await
        }
        _ => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
    };
    if let Some(r) = &rate {
        add_rate_headers(response.headers_mut(), r);
    }
    response
}

/// Bytes of a refused request's body read (and dropped) before the refusal is sent: a client
/// still sending a small body (a CSV upload with a wrong key) then reads the answer instead of
/// a broken pipe. A larger body is not read; the connection closes after the answer.
const DRAIN_REFUSED_BODY: usize = 64 * 1024;

async fn refuse(req: Request, response: Response) -> Response {
    // Bounded in time by the body deadline layer outside this one.
    let _ = axum::body::to_bytes(req.into_body(), DRAIN_REFUSED_BODY).await;
    response
}

/// [`resolve`] under the client address's budget of failed authentications: once it is spent,
/// only keys already verified (in the key cache) are honoured, and everything else is answered
/// 429 without touching the database.
async fn resolve_budgeted(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    now: i64,
) -> Result<Caller, ApiError> {
    let spent = ip.and_then(|ip| state.auth_failures.spent(ip, now));
    let resolved = match spent {
        None => resolve(state, headers).await,
        Some(retry_after_seconds) => match resolve_cached(state, headers) {
            Some(caller) => Ok(caller),
            None => {
                return Err(ApiError::AuthRateLimited {
                    retry_after_seconds,
                })
            }
        },
    };
    if let (Err(ApiError::Unauthenticated), Some(ip)) = (&resolved, ip) {
        state.auth_failures.failed(ip, now);
    }
    resolved
}

/// Requests without a valid key per client address, in fixed one-minute windows.
pub struct FailedAuthBudget {
    per_minute: u32,
    counts: MinuteCounts<std::net::IpAddr>,
}

impl FailedAuthBudget {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: MinuteCounts::new(),
        }
    }

    /// `Some(seconds until the window ends)` when `ip` has used up this minute's budget.
    pub fn spent(&self, ip: std::net::IpAddr, now_unix_ms: i64) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let minute = now_unix_ms.div_euclid(60_000);
        (self.counts.get(&ip, minute) >= self.per_minute)
            .then(|| u64::try_from((minute + 1) * 60 - now_unix_ms.div_euclid(1000)).unwrap_or(1))
    }

    pub fn failed(&self, ip: std::net::IpAddr, now_unix_ms: i64) {
        if self.per_minute > 0 {
            self.counts
                .add(ip, now_unix_ms.div_euclid(60_000), u32::MAX);
        }
    }
}

/// Recently seen keys, so that a busy client does not cost a database read per request. Only
/// keys found in the database are kept, for `ttl`: a revoked key stops working on every node
/// within that time (0 turns the cache off).
pub struct KeyCache {
    ttl: std::time::Duration,
    entries: Mutex<HashMap<String, (ApiKeyCredential, std::time::Instant)>>,
}

/// Bounds the cache; past it, it starts afresh (a burst of distinct keys costs reads, not memory).
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, lookup: &str) -> Option<ApiKeyCredential> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(lookup)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(cred, _)| cred.clone())
    }

    async fn get(
        &self,
        store: &dyn domain::store::Store,
        lookup: &str,
    ) -> Result<Option<ApiKeyCredential>, ApiError> {
        if let Some(cred) = self.cached(lookup) {
            return Ok(Some(cred));
        }
        let cred = store.find_api_key(lookup).await?;
        if let (Some(c), false) = (&cred, self.ttl.is_zero()) {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
            entries.insert(lookup.to_string(), (c.clone(), std::time::Instant::now()));
        }
        Ok(cred)
    }
}

async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let key = bearer(headers).ok_or(ApiError::Unauthenticated)?;
    resolve_key(state, key).await
}

/// The tenant of `key`, as a bearer header would resolve it (the console's sign-in).
pub(crate) async fn resolve_key(state: &AppState, key: &str) -> Result<Caller, ApiError> {
    let lookup = lookup_of(key).ok_or(ApiError::Unauthenticated)?;
    let cred = state
        .key_cache
        .get(state.store.as_ref(), lookup)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    verify(key, &cred)
}

/// The lookup part of a well-formed key (not a secret: it only finds the row).
pub(crate) fn key_lookup(key: &str) -> Option<&str> {
    lookup_of(key)
}

/// Whether the key a console session was opened with is still good: not revoked, not gone.
/// Read through the key cache, so a revocation ends sessions within its lifetime.
pub(crate) async fn key_still_valid(
    state: &AppState,
    lookup: &str,
    caller: Caller,
) -> Result<bool, ApiError> {
    let cred = state.key_cache.get(state.store.as_ref(), lookup).await?;
    Ok(cred.is_some_and(|c| !c.revoked && c.id == caller.key && c.tenant == caller.tenant))
}

/// A key already verified and still in the cache, without a database read.
fn resolve_cached(state: &AppState, headers: &HeaderMap) -> Option<Caller> {
    let key = bearer(headers)?;
    let cred = state.key_cache.cached(lookup_of(key)?)?;
    verify(key, &cred).ok()
}

fn verify(key: &str, cred: &ApiKeyCredential) -> Result<Caller, ApiError> {
    let matches: bool = hash_key(key)
        .as_bytes()
        .ct_eq(cred.secret_hash.as_bytes())
        .into();
    if !matches || cred.revoked {
        return Err(ApiError::Unauthenticated);
    }
    Ok(Caller {
        tenant: cred.tenant,
        key: cred.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_parseable_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.key, b.key);
        assert_eq!(lookup_of(&a.key), Some(a.lookup.as_str()));
        assert_eq!(a.hash, hash_key(&a.key));
        assert!(!a.hash.contains(&a.key[PREFIX.len() + LOOKUP_LEN + 1..]));
        assert_eq!(lookup_of("od_short_x"), None);
        assert_eq!(lookup_of(&a.key.replace("od_", "xx_")), None);
    }

    #[test]
    fn fixed_window_counts_down_and_resets_on_the_minute() {
        let l = ApiRateLimiter::new(2);
        let k = ApiKeyId(1);
        let t0 = 1_775_000_080_000; // 40 s into a minute
        assert_eq!(
            l.hit(k, t0).map(|s| (s.allowed, s.remaining)),
            Some((true, 1))
        );
        assert_eq!(
            l.hit(k, t0 + 1).map(|s| (s.allowed, s.remaining)),
            Some((true, 0))
        );
        let third = l.hit(k, t0 + 2).unwrap();
        assert!(!third.allowed);
        assert_eq!(third.reset_unix * 1000, t0 + 20_000);
        assert!(l.hit(k, t0 + 20_000).unwrap().allowed);
        assert!(ApiRateLimiter::new(0).hit(k, t0).is_none());
    }

    #[test]
    fn failed_auth_budget_is_per_address_and_minute() {
        let b = FailedAuthBudget::new(2);
        let (a, other): (std::net::IpAddr, std::net::IpAddr) =
            ("127.0.0.3".parse().unwrap(), "127.0.0.4".parse().unwrap());
        let t0 = 1_775_000_080_000; // 40 s into a minute
        b.failed(a, t0);
        assert_eq!(b.spent(a, t0), None);
        b.failed(a, t0 + 1);
        assert_eq!(b.spent(a, t0 + 2), Some(20), "until the minute ends");
        assert_eq!(b.spent(other, t0 + 2), None);
        assert_eq!(b.spent(a, t0 + 20_000), None, "a new minute");
        let off = FailedAuthBudget::new(0);
        off.failed(a, t0);
        off.failed(a, t0);
        assert_eq!(off.spent(a, t0), None);
    }
}
