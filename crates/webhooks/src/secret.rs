//! Webhook signing secrets and their rotation window.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;

/// Prefix of secrets in the Standard Webhooks form (`whsec_<base64 key>`).
pub const WHSEC_PREFIX: &str = "whsec_";

/// Shortest caller-provided secret accepted, in characters.
///
/// Below this an offline guess of the HMAC key from one captured delivery gets cheap; anything
/// stricter would turn away the 16-20 character secrets that many providers hand out.
pub const MIN_SECRET_CHARS: usize = 16;

/// Longest caller-provided secret accepted, in characters; it ends up in a database column and
/// in API responses, so it is bounded.
pub const MAX_SECRET_CHARS: usize = 256;

/// How long a replaced secret keeps signing beside its successor.
pub const ROTATION_OVERLAP: TimeDelta = TimeDelta::hours(24);

const GENERATED_KEY_BYTES: usize = 32;

/// Why a caller-provided secret was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Too short or too long.
    #[error("secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters long")]
    Length,
    /// Contains whitespace or a control character.
    #[error("secret must not contain whitespace or control characters")]
    Whitespace,
    /// Starts with `whsec_` but the rest is not padded standard base64.
    #[error("a secret starting with whsec_ must continue with padded standard base64")]
    Base64,
}

/// A webhook signing secret.
///
/// `Debug` and `Display` print a placeholder so the secret cannot leak through logs or error
/// reports; [`WebhookSecret::expose`] is the one deliberate way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    raw: String,
    standard_key: Vec<u8>,
}

impl WebhookSecret {
    /// A fresh `whsec_<base64 of 32 random bytes>` secret from the OS-seeded thread RNG.
    pub fn generate() -> Self {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::thread_rng().fill_bytes(&mut key);
        Self {
            raw: format!("{WHSEC_PREFIX}{}", STANDARD.encode(key)),
            standard_key: key.to_vec(),
        }
    }

    /// Validates a caller-provided (or stored) secret.
    ///
    /// Accepted: 16 to 256 characters, none of them whitespace or control characters. A secret
    /// that starts with `whsec_` must continue with padded standard base64, because Standard
    /// Webhooks receivers will base64-decode it; any other secret is used as its UTF-8 bytes.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let chars = raw.chars().count();
        if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&chars) {
            return Err(SecretError::Length);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SecretError::Whitespace);
        }
        let standard_key = match raw.strip_prefix(WHSEC_PREFIX) {
            Some(encoded) => {
                let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
                if key.is_empty() {
                    return Err(SecretError::Base64);
                }
                key
            }
            None => raw.as_bytes().to_vec(),
        };
        Ok(Self {
            raw: raw.to_owned(),
            standard_key,
        })
    }

    /// The secret as the customer knows it, for storage and for showing it once at creation.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// Key bytes of the FormantAI scheme: the secret's UTF-8 bytes.
    pub fn formantai_key(&self) -> &[u8] {
        self.raw.as_bytes()
    }

    /// Key bytes of the Standard Webhooks scheme: the base64-decoded part after `whsec_`, or
    /// the UTF-8 bytes of a secret without that prefix.
    pub fn standard_key(&self) -> &[u8] {
        &self.standard_key
    }

    /// Whether the secret is in the `whsec_<base64>` form.
    pub fn is_whsec(&self) -> bool {
        self.raw.starts_with(WHSEC_PREFIX)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A target's current secret plus, after a rotation, the one it replaced.
///
/// Only one replaced secret is kept: the contract has a rotation send two signatures, so a
/// second rotation inside the overlap retires the oldest secret at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSet {
    current: WebhookSecret,
    previous: Option<(WebhookSecret, DateTime<Utc>)>,
}

impl SecretSet {
    /// A set with no rotation in progress.
    pub fn new(current: WebhookSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// Rebuilds a set from storage: `previous` was replaced at `rotated_at`.
    pub fn with_previous(
        current: WebhookSecret,
        previous: WebhookSecret,
        rotated_at: DateTime<Utc>,
    ) -> Self {
        Self {
            current,
            previous: Some((previous, rotated_at)),
        }
    }

    /// Makes `next` the current secret; the replaced one keeps signing for [`ROTATION_OVERLAP`].
    pub fn rotate(&mut self, next: WebhookSecret, now: DateTime<Utc>) {
        let replaced = std::mem::replace(&mut self.current, next);
        self.previous = Some((replaced, now));
    }

    /// The secret that new receivers should be given.
    pub fn current(&self) -> &WebhookSecret {
        &self.current
    }

    /// The replaced secret and when it was replaced, for storage.
    pub fn previous(&self) -> Option<(&WebhookSecret, DateTime<Utc>)> {
        self.previous.as_ref().map(|(secret, at)| (secret, *at))
    }

    /// Secrets that sign a delivery made at `now`, newest first.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&WebhookSecret> {
        let mut secrets = vec![&self.current];
        if let Some((previous, rotated_at)) = &self.previous {
            if now < *rotated_at + ROTATION_OVERLAP {
                secrets.push(previous);
            }
        }
        secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_is_whsec_of_32_random_bytes() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert!(a.expose().starts_with(WHSEC_PREFIX));
        let decoded = STANDARD.decode(&a.expose()[WHSEC_PREFIX.len()..]).unwrap();
        assert_eq!(decoded.len(), 32);
        assert_eq!(a.standard_key(), decoded.as_slice());
        assert_eq!(a.formantai_key(), a.expose().as_bytes());
        assert!(a.is_whsec());
        assert_ne!(a, b);
        // A generated secret must survive the round trip through storage.
        assert_eq!(WebhookSecret::parse(a.expose()).unwrap(), a);
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let secret = WebhookSecret::parse("plain-secret-value-1234").unwrap();
        let shown = format!("{secret} {secret:?} {:?}", SecretSet::new(secret.clone()));
        assert!(!shown.contains("plain-secret"), "{shown}");
        assert!(!shown.contains("1234"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn plain_secret_keys_both_schemes_with_its_utf8_bytes() {
        let secret = WebhookSecret::parse("clé-secrète-personnelle").unwrap();
        assert!(!secret.is_whsec());
        assert_eq!(secret.formantai_key(), "clé-secrète-personnelle".as_bytes());
        assert_eq!(secret.standard_key(), "clé-secrète-personnelle".as_bytes());
    }

    #[test]
    fn whsec_secret_keys_standard_scheme_with_decoded_bytes() {
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.standard_key(),
            STANDARD.decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap()
        );
        assert_eq!(
            secret.formantai_key(),
            b"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
        );
    }

    #[test]
    fn length_bounds_are_in_characters() {
        assert_eq!(WebhookSecret::parse(""), Err(SecretError::Length));
        assert_eq!(
            WebhookSecret::parse(&"a".repeat(MIN_SECRET_CHARS - 1)),
            Err(SecretError::Length)
        );
        assert!(WebhookSecret::parse(&"a".repeat(MIN_SECRET_CHARS)).is_ok());
        assert!(WebhookSecret::parse(&"a".repeat(MAX_SECRET_CHARS)).is_ok());
        assert_eq!(
            WebhookSecret::parse(&"a".repeat(MAX_SECRET_CHARS + 1)),
            Err(SecretError::Length)
        );
        // 16 two-byte characters are 32 bytes but still 16 characters.
        assert!(WebhookSecret::parse(&"é".repeat(MIN_SECRET_CHARS)).is_ok());
    }

    #[test]
    fn whitespace_and_control_characters_are_rejected() {
        for bad in [
            "secret with spaces inside",
            "trailing-newline-secret\n",
            "\tleading-tab-secret-value",
            "nul\u{0}in-the-middle-of-it",
            "no-break\u{a0}space-secret-value",
        ] {
            assert_eq!(
                WebhookSecret::parse(bad),
                Err(SecretError::Whitespace),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn whsec_prefix_requires_padded_standard_base64() {
        // Unpadded and URL-safe forms are refused because reference verifiers decode with the
        // padded standard alphabet and would derive a different key or fail.
        for bad in [
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7o",
            "whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD",
            "whsec_not base64 at all!",
            "whsec_!!!!!!!!!!!!!!!!",
        ] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD"),
            Err(SecretError::Base64)
        );
    }

    #[test]
    fn error_messages_do_not_echo_the_secret() {
        let err = WebhookSecret::parse("whsec_leaky leaky leaky").unwrap_err();
        assert!(!err.to_string().contains("leaky"));
    }

    #[test]
    fn rotation_signs_with_both_for_24_hours_then_only_the_new_one() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let t0 = DateTime::parse_from_rfc3339("2026-03-18T20:53:41Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut set = SecretSet::new(old.clone());
        assert_eq!(set.signing_secrets(t0), vec![&old]);

        set.rotate(new.clone(), t0);
        assert_eq!(set.current(), &new);
        assert_eq!(set.previous(), Some((&old, t0)));
        assert_eq!(set.signing_secrets(t0), vec![&new, &old]);
        let almost = t0 + ROTATION_OVERLAP - TimeDelta::seconds(1);
        assert_eq!(set.signing_secrets(almost), vec![&new, &old]);
        assert_eq!(set.signing_secrets(t0 + ROTATION_OVERLAP), vec![&new]);

        let rebuilt = SecretSet::with_previous(new.clone(), old.clone(), t0);
        assert_eq!(rebuilt, set);
    }

    #[test]
    fn second_rotation_retires_the_oldest_secret() {
        let (a, b, c) = (
            WebhookSecret::generate(),
            WebhookSecret::generate(),
            WebhookSecret::generate(),
        );
        let t0 = Utc::now();
        let mut set = SecretSet::new(a);
        set.rotate(b.clone(), t0);
        set.rotate(c.clone(), t0 + TimeDelta::hours(1));
        assert_eq!(set.signing_secrets(t0 + TimeDelta::hours(2)), vec![&c, &b]);
    }
}
