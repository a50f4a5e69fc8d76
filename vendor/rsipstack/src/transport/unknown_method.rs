// outdial patch 4: a request whose method the parser does not know (RFC 4475 3.1.1.2 intmeth,
// 3.1.1.5 esc02) is a valid request the parser cannot represent (`Method` has no extension
// variant). RFC 3261 §8.2.1: a UAS answers a method it does not recognise with 501. The answer
// is built from the request's own lines, so nothing but its first line must parse.

/// RFC 3261 `token` characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The answer to `packet` when it is a request with a well-formed Request-Line whose method is a
/// token the parser does not know, carrying the headers a response copies (RFC 3261 §8.2.6.2:
/// every Via, From, To, Call-ID, CSeq): 501, or 400 when its CSeq names another method (RFC
/// 4475 mismatch02). The To gets a tag of ours when it has none. A From or To whose display name
/// holds control characters is copied without it (the URI and tag are what identify it; we send
/// no control characters). `None` for anything else, which stays dropped.
pub fn not_implemented(packet: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(packet).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, uri, version) = (request_line.next()?, request_line.next()?, request_line.next()?);
    if request_line.next().is_some()
        || !is_token(method)
        || uri.is_empty()
        || version != "SIP/2.0"
        || method.parse::<crate::sip::Method>().is_ok()
    {
        return None;
    }
    // Header lines with their folded continuations joined (RFC 3261 §7.3.1).
    let mut headers: Vec<String> = Vec::new();
    for line in lines {
        match (line.starts_with([' ', '\t']), headers.last_mut()) {
            (true, Some(last)) => {
                last.push(' ');
                last.push_str(line.trim_start());
            }
            (true, None) => return None,
            (false, _) => headers.push(line.to_string()),
        }
    }
    let named = |long: &str, short: &str| -> Vec<&String> {
        headers
            .iter()
            .filter(|h| {
                h.split_once(':').is_some_and(|(name, _)| {
                    let name = name.trim();
                    name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
                })
            })
            .collect()
    };
    let cseq_method = named("CSeq", "")
        .first()
        .and_then(|h| h.split_once(':'))
        .and_then(|(_, v)| v.split_whitespace().nth(1))?
        .to_string();
    let mut answer = match cseq_method == method {
        true => String::from("SIP/2.0 501 Not Implemented\r\n"),
        false => String::from("SIP/2.0 400 CSeq Method Does Not Match\r\n"),
    };
    for (long, short, many) in [
        ("Via", "v", true),
        ("From", "f", false),
        ("To", "t", false),
        ("Call-ID", "i", false),
        ("CSeq", "", false),
    ] {
        let found = named(long, short);
        if found.is_empty() || (!many && found.len() > 1) {
            return None;
        }
        for h in found {
            let mut line = without_control_characters(h)?;
            if long == "To" && !has_tag(&line) {
                line.push_str(";tag=");
                line.push_str(&crate::transaction::random_text(8));
            }
            answer.push_str(&line);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("Content-Length: 0\r\n\r\n");
    Some(answer.into_bytes())
}

fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// The header line as is, or with its display name left out when only that holds control
/// characters; `None` when they are elsewhere.
fn without_control_characters(line: &str) -> Option<String> {
    if !line.chars().any(is_control) {
        return Some(line.to_string());
    }
    let (name, value) = line.split_once(':')?;
    let addr = &value[value.find('<')?..];
    (!addr.chars().any(is_control)).then(|| format!("{name}: {addr}"))
}

/// Whether a To header carries a `tag` parameter (after the URI's closing `>` when there is one).
fn has_tag(line: &str) -> bool {
    let params = line.rsplit_once('>').map_or(line, |(_, p)| p);
    params
        .split(';')
        .skip(1)
        .any(|p| p.split('=').next().is_some_and(|n| n.trim().eq_ignore_ascii_case("tag")))
}

// Tested from crates/sip/tests/unknown_method.rs (this vendored crate is not a workspace member).
