//! Credentials at rest: trunk passwords, webhook signing secrets and llm api keys are sealed
//! with ChaCha20-Poly1305 (ring's AEAD) when the operator gives the service a key, so a copy of
//! the database or a backup does not hand them out.
//!
//! A sealed value is `enc:v1:<key id>:<base64 of nonce, ciphertext and tag>`; the key id (the
//! first 8 hex digits of the key's SHA-256) says which key opens it, so old keys can stay
//! listed while `outdial secrets rotate` re-seals everything with the new one. A value without
//! the prefix is plaintext (written before a key was set) and is read as it is.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "enc:v1:";

/// A key given to the service is not 32 bytes of base64.
#[derive(Debug, thiserror::Error)]
#[error("a secret key must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)")]
pub struct SecretKeyError;

/// A stored secret that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed with key {0}, which this node was not given")]
    UnknownKey(String),
    #[error("sealed value is damaged or was sealed with another key")]
    Damaged,
    #[error("no randomness for a nonce")]
    Random,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn parse(text: &str) -> Result<Self, SecretKeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretKeyError)?;
        if bytes.len() != 32 {
            return Err(SecretKeyError);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SecretKeyError)?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

/// The node's sealing keys: the current one seals, every listed one opens.
#[derive(Default)]
pub struct SecretBox {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SecretBox {
    /// `current` seals (none: secrets are stored as given); `previous` keys only open.
    pub fn new(current: Option<&str>, previous: &[String]) -> Result<Self, SecretKeyError> {
        Ok(Self {
            current: current.map(Key::parse).transpose()?,
            previous: previous
                .iter()
                .map(|k| Key::parse(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether new secrets are sealed.
    pub fn seals(&self) -> bool {
        self.current.is_some()
    }

    /// The sealed form of `plain`, or `plain` itself when no key is set.
    pub fn seal(&self, plain: &str) -> Result<String, SealError> {
        let Some(key) = &self.current else {
            return Ok(plain.to_owned());
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = plain.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Damaged)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            key.id,
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        ))
    }

    /// The plaintext of a stored value (sealed or not).
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, body) = rest.split_once(':').ok_or(SealError::Damaged)?;
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Damaged)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key.id.as_bytes()), &mut buf)
            .map_err(|_| SealError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Damaged)
    }

    /// Whether `stored` is already sealed with the current key (nothing to rotate).
    pub fn is_current(&self, stored: &str) -> bool {
        match (&self.current, stored.strip_prefix(PREFIX)) {
            (Some(key), Some(rest)) => rest.split_once(':').is_some_and(|(id, _)| id == key.id),
            (None, None) => true,
            _ => false,
        }
    }
}

impl crate::SqlStore {
    fn sealed(&self, plain: &str) -> Result<String, domain::store::StoreError> {
        self.secrets.seal(plain).map_err(|e| {
            domain::store::StoreError::Database(format!("sealing a secret: {e}").into())
        })
    }

    pub(crate) fn seal_opt(
        &self,
        plain: Option<&str>,
    ) -> Result<Option<String>, domain::store::StoreError> {
        plain.map(|p| self.sealed(p)).transpose()
    }

    pub(crate) fn open_opt(
        &self,
        stored: Option<String>,
    ) -> Result<Option<String>, domain::store::StoreError> {
        stored
            .map(|s| {
                self.secrets
                    .open(&s)
                    .map_err(|e| domain::store::StoreError::Corrupt(format!("stored secret: {e}")))
            })
            .transpose()
    }

    /// The agent with its llm api key sealed (to store) or opened (as read).
    pub(crate) fn agent_key(
        &self,
        mut cfg: domain::AgentConfig,
        seal: bool,
    ) -> Result<domain::AgentConfig, domain::store::StoreError> {
        if let domain::agent::Brain::Llm { api_key, .. } = &mut cfg.brain {
            *api_key = if seal {
                self.seal_opt(api_key.as_deref())?
            } else {
                self.open_opt(api_key.take())?
            };
        }
        Ok(cfg)
    }
}

impl crate::SqlStore {
    /// Re-seals every stored secret that is not sealed with the current key (after the key
    /// changed, or to seal what was stored before a key was set). Returns how many were
    /// rewritten. Each row is rewritten only if it still holds what was read, so a secret
    /// changed meanwhile through the API is left as that change wrote it.
    pub async fn reseal_secrets(&self) -> Result<usize, domain::store::StoreError> {
        use crate::db_err;
        use crate::rows::get;
        let mut rewritten = 0;
        for (table, column) in [
            ("trunks", "password"),
            ("webhook_targets", "secret"),
            ("webhook_targets", "previous_secret"),
        ] {
            let rows = sqlx::query(&format!(
                "SELECT id, {column} AS v FROM {table} WHERE {column} IS NOT NULL"
            ))
            .fetch_all(&self.write)
            .await
            .map_err(db_err)?;
            for row in rows {
                let id: i64 = get(&row, "id")?;
                let stored: String = get(&row, "v")?;
                if self.secrets.is_current(&stored) {
                    continue;
                }
                let plain = self.open_opt(Some(stored.clone()))?.unwrap_or_default();
                rewritten += self
                    .replace_if_unchanged(table, column, id, &stored, &self.sealed(&plain)?)
                    .await?;
            }
        }
        let rows = sqlx::query("SELECT id, config FROM agents")
            .fetch_all(&self.write)
            .await
            .map_err(db_err)?;
        for row in rows {
            let id: i64 = get(&row, "id")?;
            let stored: String = get(&row, "config")?;
            let mut config: serde_json::Value = serde_json::from_str(&stored)
                .map_err(|_| domain::store::StoreError::Corrupt("agents.config".into()))?;
            let Some(key) = config
                .pointer_mut("/brain/api_key")
                .filter(|k| k.as_str().is_some_and(|k| !self.secrets.is_current(k)))
            else {
                continue;
            };
            let plain = self
                .open_opt(key.as_str().map(str::to_owned))?
                .unwrap_or_default();
            *key = serde_json::Value::String(self.sealed(&plain)?);
            rewritten += self
                .replace_if_unchanged("agents", "config", id, &stored, &config.to_string())
                .await?;
        }
        Ok(rewritten)
    }

    /// Writes `new` where the row still holds `old` (a change made meanwhile wins); 1 or 0.
    async fn replace_if_unchanged(
        &self,
        table: &str,
        column: &str,
        id: i64,
        old: &str,
        new: &str,
    ) -> Result<usize, domain::store::StoreError> {
        let n = sqlx::query(&format!(
            "UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3"
        ))
        .bind(new)
        .bind(id)
        .bind(old)
        .execute(&self.write)
        .await
        .map_err(crate::db_err)?;
        Ok(usize::try_from(n.rows_affected()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn sealed_values_open_with_the_current_or_a_previous_key_only() {
        let one = SecretBox::new(Some(K1), &[]).unwrap();
        let sealed = one.seal("hunter2").unwrap();
        assert!(sealed.starts_with("enc:v1:") && !sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            one.seal("hunter2").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(one.open(&sealed).unwrap(), "hunter2");
        assert!(one.is_current(&sealed));

        let rotated = SecretBox::new(Some(K2), &[K1.to_string()]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), "hunter2");
        assert!(!rotated.is_current(&sealed));
        let without_old = SecretBox::new(Some(K2), &[]).unwrap();
        assert!(matches!(
            without_old.open(&sealed),
            Err(SealError::UnknownKey(_))
        ));

        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(one.open(&damaged).is_err());

        // Plaintext from before a key was set reads as it is; no key seals nothing.
        assert_eq!(one.open("legacy").unwrap(), "legacy");
        assert_eq!(SecretBox::default().seal("p").unwrap(), "p");
        for bad in ["", "c2hvcnQ=", "not base64!"] {
            assert!(SecretBox::new(Some(bad), &[]).is_err(), "{bad:?}");
        }
    }
}
