//! The header builder: whatever it accepts holds no character that could end a header line,
//! and every message the guard lets through is free of them too; a request the parser cannot read
//! gets, if anything, a 501/400 that is free of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::header::{check_message, sip_uri, HeaderValue};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(value) = HeaderValue::new("fuzz", text.as_ref()) {
        assert!(!value.as_str().chars().any(|c| c.is_control() && c != '\t'));
        if let Ok(host) = HeaderValue::new("host", "127.0.0.1:5060") {
            if let Ok(uri) = sip_uri(&value, &host) {
                let _ = HeaderValue::new("uri", uri.to_string());
            }
        }
    }
    // A far end's message, parsed the way rsipstack parses one off the wire.
    if let Ok(msg) = rsipstack::sip::SipMessage::try_from(data) {
        let _ = check_message(&msg);
    } else if let Some(answer) = rsipstack::transport::unknown_method::not_implemented(data) {
        // What the UDP transport sends back for a request it could not parse (patch 4): no
        // control character but the line ends, and nothing after the blank line.
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.chars().any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t')));
        assert!(text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1);
    }
});
