//! Console sign-in sessions: an API key is exchanged once for a random session token kept in
//! an HttpOnly cookie; the key itself never reaches the page again.
//!
//! Sessions live in this node's memory. Sign-out and expiry remove them at once; a revoked key
//! ends its sessions within the key cache's lifetime, because every request checks the key's
//! row again through [`crate::auth::KeyCache`].

use crate::auth::Caller;
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "outdial_console";
/// The sign-in form's own token cookie (double submit), so a third-party page cannot sign a
/// browser in with the attacker's key.
pub const SIGN_IN_COOKIE: &str = "outdial_console_signin";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(60 * 60);
/// A session ends this long after sign-in, used or not; the cookie's `Max-Age`.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// Bounds memory: past this many live sessions the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;
const TOKEN_LEN: usize = 43;

/// What a signed-in page knows about its operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// The key's lookup part (not a secret), to find its row again for revocation checks.
    pub key_lookup: String,
    /// The per-session CSRF token every form carries.
    pub csrf: String,
    started: Instant,
    last_seen: Instant,
}

pub fn random_token() -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect()
}

/// Tokens are stored hashed: a heap dump shows no usable cookie.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal without leaking where two tokens first differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new session for `caller`; the returned token goes into the cookie.
    pub fn open(&self, caller: Caller, key_lookup: String) -> String {
        let token = random_token();
        let now = Instant::now();
        let session = Session {
            caller,
            key_lookup,
            csrf: random_token(),
            started: now,
            last_seen: now,
        };
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&token), session);
        token
    }

    /// The live session of `token`, its idle clock restarted.
    pub fn touch(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let key = digest(token);
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&key) {
            Some(s) if live(s, now) => {
                s.last_seen = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, token: &str) {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&digest(token));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.started) < ABSOLUTE && now.duration_since(s.last_seen) < IDLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{ApiKeyId, TenantId};

    fn caller() -> Caller {
        Caller {
            tenant: TenantId(7),
            key: ApiKeyId(3),
        }
    }

    #[test]
    fn a_session_is_found_by_its_token_until_closed() {
        let s = Sessions::new();
        let token = s.open(caller(), "lookup".into());
        let got = s.touch(&token).expect("live");
        assert_eq!(got.caller.tenant, TenantId(7));
        assert_eq!(got.csrf.len(), TOKEN_LEN);
        assert!(s.touch("not-a-token").is_none());
        s.close(&token);
        assert!(s.touch(&token).is_none(), "signed out server-side");
    }

    #[test]
    fn tokens_differ_and_compare_exactly() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[1..]));
    }

    #[test]
    fn an_idle_or_old_session_is_not_live() {
        let now = Instant::now();
        let mut s = Session {
            caller: caller(),
            key_lookup: String::new(),
            csrf: String::new(),
            started: now,
            last_seen: now,
        };
        assert!(live(&s, now));
        assert!(!live(&s, now + IDLE));
        s.last_seen = now + ABSOLUTE - Duration::from_secs(1);
        assert!(!live(&s, now + ABSOLUTE));
    }
}
