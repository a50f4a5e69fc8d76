//! The input policy for text, the same at every door (JSON fields, form fields, CSV cells,
//! query parameters) and on both database backends.

/// Whether `text` is acceptable where line breaks are allowed (`multiline`) or not. Control
/// characters never are: PostgreSQL cannot store NUL, and CR/LF must never reach a SIP or HTTP
/// header. Tab, CR and LF are ordinary text in multi-line fields.
pub fn is_clean(text: &str, multiline: bool) -> bool {
    // Most text is ASCII without controls: one byte scan decides it.
    let plain = text.bytes().all(|b| (0x20..0x7f).contains(&b));
    plain
        || text
            .chars()
            .all(|c| !c.is_control() || (multiline && matches!(c, '\t' | '\n' | '\r')))
}

#[cfg(test)]
mod tests {
    use super::is_clean;

    #[test]
    fn controls_are_refused_and_line_breaks_only_in_multiline_text() {
        for ok in ["", "Rahul", "राहुल", "a b", "ü€😀"] {
            assert!(is_clean(ok, false), "{ok:?}");
        }
        for bad in ["a\0b", "a\u{7f}", "a\u{85}b", "x\u{1b}[31m"] {
            assert!(!is_clean(bad, false) && !is_clean(bad, true), "{bad:?}");
        }
        for line in ["a\nb", "a\r\nX-Injected: 1", "a\tb"] {
            assert!(!is_clean(line, false) && is_clean(line, true), "{line:?}");
        }
    }
}
