//! The one gate every value passes on its way into a SIP header.
//!
//! A SIP message is text whose header lines end at CR LF, and many stacks also end a line at a
//! lone CR or LF. A tenant's trunk username, a realm the far end challenged with, a display name
//! or any other value copied into a header could therefore smuggle extra header lines into our
//! requests. [`HeaderValue`] can only be built from text without such characters, and
//! [`Guard`] holds rsipstack to the same rule for the values it copies itself (digest echoes,
//! tags, routes), so no outgoing message can carry a line we did not write.

use rsipstack::sip::{self, Header, Headers, HeadersExt, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tracing::{error, warn};

/// Why a value cannot go into a SIP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} cannot go into a SIP header: control character {} at byte {index}", Escaped(*.found))]
pub struct HeaderError {
    /// What the value was (`trunk username`, `Proxy-Authenticate`, ...).
    pub field: String,
    /// The offending character.
    pub found: char,
    /// Its byte offset in the value.
    pub index: usize,
}

struct Escaped(char);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", u32::from(self.0))
    }
}

/// Text that is safe inside one SIP header line: no control character except HTAB, which SIP's
/// grammar allows as whitespace and which never ends a line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValue(String);

impl HeaderValue {
    /// Fails with a [`HeaderError`] naming `field` when `value` holds CR, LF, NUL, DEL or any
    /// other control character (C0 or C1) but HTAB.
    pub fn new(field: &str, value: impl Into<String>) -> Result<Self, HeaderError> {
        let value = value.into();
        check(field, &value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for HeaderValue {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The check behind [`HeaderValue::new`], for text that is only looked at.
pub fn check(field: &str, value: &str) -> Result<(), HeaderError> {
    match value
        .char_indices()
        .find(|&(_, c)| c.is_control() && c != '\t')
    {
        None => Ok(()),
        Some((index, found)) => Err(HeaderError {
            field: field.to_string(),
            found,
            index,
        }),
    }
}

/// `sip:user@host` from checked parts; the URI parser would otherwise accept the rest of a
/// line as part of the user.
pub fn sip_uri(user: &HeaderValue, host: &HeaderValue) -> Result<sip::Uri, UriError> {
    let text = format!("sip:{user}@{host}");
    sip::Uri::try_from(text.as_str()).map_err(|e| UriError::Parse {
        uri: text,
        reason: e.to_string(),
    })
}

/// A URI that could not be built from its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("cannot build URI {uri}: {reason}")]
    Parse { uri: String, reason: String },
}

/// Checks every header of a message as it would be written on the wire.
pub fn check_message(msg: &SipMessage) -> Result<(), HeaderError> {
    let headers = match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    };
    headers.iter().try_for_each(check_header)
}

fn check_header(header: &Header) -> Result<(), HeaderError> {
    let line = header.to_string();
    let (name, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
    // Only the one space the writer puts after the colon is skipped: trimming more would hide a
    // leading line break.
    check(name.trim(), value.strip_prefix(' ').unwrap_or(value))?;
    check("SIP header name", name)
}

const MAX_REFUSALS: usize = 1024;

/// What [`Guard`] had to take out of a call's messages, by Call-ID.
pub(crate) type Refusals = Arc<Mutex<HashMap<String, HeaderError>>>;

/// The endpoint's message inspector: drops any header line a control character would break, on
/// the way out (the last line of defence behind [`HeaderValue`]) and on the way in (so a
/// challenge's realm or nonce, or a tag or route, that rsipstack would echo never reaches a
/// request). What it drops is remembered under the message's Call-ID so that call fails with a
/// reason instead of going on without the header.
pub(crate) struct Guard {
    pub refusals: Refusals,
}

impl Guard {
    fn scrub(&self, mut msg: SipMessage, outgoing: bool) -> SipMessage {
        if check_message(&msg).is_ok() {
            return msg;
        }
        let call_id = msg
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let headers: &mut Headers = match &mut msg {
            SipMessage::Request(r) => &mut r.headers,
            SipMessage::Response(r) => &mut r.headers,
        };
        let mut first: Option<HeaderError> = None;
        headers.retain(|h| match check_header(h) {
            Ok(()) => true,
            Err(e) => {
                first.get_or_insert(e);
                false
            }
        });
        let Some(e) = first else {
            return msg;
        };
        let decisive = if outgoing {
            error!(call_id, error = %e, "header with a control character dropped from outgoing SIP message");
            true
        } else {
            warn!(call_id, error = %e, "header with a control character dropped from incoming SIP message");
            // Without its challenge a 401/407 cannot be answered: the call ends, and must say why.
            // Any other header is the far end's problem and the call goes on without it.
            let f = e.field.to_ascii_lowercase();
            f == "www-authenticate" || f == "proxy-authenticate"
        };
        if decisive {
            if let Ok(mut refusals) = self.refusals.lock() {
                // Call tasks take their own entries out; the cap bounds what strays could leave.
                if refusals.len() < MAX_REFUSALS {
                    refusals.entry(call_id).or_insert(e);
                }
            }
        }
        msg
    }
}

impl MessageInspector for Guard {
    fn before_send(&self, msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        self.scrub(msg, true)
    }

    fn after_received(&self, msg: SipMessage, _from: Option<&SipAddr>) -> SipMessage {
        self.scrub(msg, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_text_and_tab() {
        for ok in [
            "alice",
            "+14155550100",
            "Asha \"Acme\" <x>",
            "a\tb",
            "ünïcødé",
            "",
        ] {
            assert_eq!(HeaderValue::new("v", ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_line_breaks_and_other_controls_with_their_place() {
        let e = HeaderValue::new("trunk username", "alice\r\nX-Injected: 1").unwrap_err();
        assert_eq!(
            e,
            HeaderError {
                field: "trunk username".into(),
                found: '\r',
                index: 5
            }
        );
        assert_eq!(
            e.to_string(),
            "trunk username cannot go into a SIP header: control character U+000D at byte 5"
        );
        for bad in [
            "a\nb", "a\rb", "a\0b", "a\x7fb", "a\u{85}b", "\x1b[0m", "x\x0b",
        ] {
            assert!(HeaderValue::new("v", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uri_from_checked_parts() {
        let user = HeaderValue::new("from", "+14155550100").unwrap();
        let host = HeaderValue::new("host", "127.0.0.1:5080").unwrap();
        assert_eq!(
            sip_uri(&user, &host).unwrap().to_string(),
            "sip:+14155550100@127.0.0.1:5080"
        );
    }

    fn invite_with(extra: &str) -> SipMessage {
        let text = format!(
            "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:alice@127.0.0.1>;tag=1\r\n\
             To: <sip:bob@127.0.0.1>\r\n\
             Call-ID: guard-test\r\n\
             CSeq: 2 INVITE\r\n\
             {extra}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        SipMessage::try_from(text.as_str()).unwrap()
    }

    #[test]
    fn guard_drops_an_unsafe_header_and_remembers_the_call() {
        let guard = Guard {
            refusals: Refusals::default(),
        };
        let mut msg = invite_with("Subject: fine");
        // What rsipstack writes when a digest field carries a line break.
        if let SipMessage::Request(r) = &mut msg {
            r.headers.push(Header::ProxyAuthorization(
                "Digest username=\"alice\r\nX-Injected: 1\", realm=\"r\"".into(),
            ));
        }
        assert!(msg.to_string().contains("\r\nX-Injected: 1"));
        let out = guard.before_send(msg, None);
        let wire = out.to_string();
        assert!(!wire.contains("X-Injected"), "{wire}");
        assert!(!wire.contains("Proxy-Authorization"), "{wire}");
        assert!(wire.contains("Subject: fine"), "{wire}");
        let refusals = guard.refusals.lock().unwrap();
        assert_eq!(refusals["guard-test"].field, "Proxy-Authorization");
    }

    #[test]
    fn guard_passes_clean_messages_unchanged() {
        let guard = Guard {
            refusals: Refusals::default(),
        };
        let msg = invite_with("Subject: fine");
        let before = msg.to_string();
        assert_eq!(guard.after_received(msg, None).to_string(), before);
        assert!(guard.refusals.lock().unwrap().is_empty());
    }
}
