//! outdial patch 4 of the vendored rsipstack (vendor/README.md): a request of a method the
//! parser does not know is answered 501 from its own lines (400 when its CSeq names another
//! method), with a To tag of ours and no control characters; anything else stays dropped. The
//! RFC 4475 messages that need it are sent over the wire in `torture.rs`.

use rsipstack::transport::unknown_method::not_implemented;

#[test]
fn an_unknown_method_gets_501_with_the_requests_headers() {
    let req = "FOO.bar-1 sip:a@b.example SIP/2.0\r\n\
               Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
               v: SIP/2.0/UDP 192.0.2.2\r\n ;branch=z9hG4bK2\r\n\
               To: <sip:a@b.example>\r\nFrom: <sip:c@d.example>;tag=1\r\n\
               Call-ID: x@y\r\nCSeq: 7 FOO.bar-1\r\nMax-Forwards: 70\r\n\r\n";
    let answer = String::from_utf8(not_implemented(req.as_bytes()).unwrap()).unwrap();
    // The To had no tag: ours is added.
    let (_, after) = answer.split_once("To: <sip:a@b.example>;tag=").unwrap();
    let ours = &after[..8];
    assert!(ours.chars().all(|c| c.is_ascii_alphanumeric()), "{answer}");
    let answer = answer.replace(ours, "TAG");
    assert_eq!(
        answer,
        "SIP/2.0 501 Not Implemented\r\n\
         Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
         v: SIP/2.0/UDP 192.0.2.2 ;branch=z9hG4bK2\r\n\
         From: <sip:c@d.example>;tag=1\r\nTo: <sip:a@b.example>;tag=TAG\r\n\
         Call-ID: x@y\r\nCSeq: 7 FOO.bar-1\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn a_cseq_of_another_method_gets_400_and_control_characters_are_not_sent() {
    let req = "NEWMETHOD sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
               From: \"BEL:\u{7}\" <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
               Call-ID: i\r\nCSeq: 8 INVITE\r\n\r\n";
    let answer = String::from_utf8(not_implemented(req.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        answer,
        "SIP/2.0 400 CSeq Method Does Not Match\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
         From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: i\r\nCSeq: 8 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    // Control characters outside a display name: no answer at all.
    let bad = req.replace("Call-ID: i", "Call-ID: i\u{7}");
    assert!(not_implemented(bad.as_bytes()).is_none());
}

#[test]
fn known_methods_responses_and_broken_requests_are_left_alone() {
    let with = |first: &str| {
        format!(
            "{first}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:c@d>\r\nCall-ID: i\r\nCSeq: 1 X\r\n\r\n"
        )
    };
    // A known method failed to parse for another reason: not ours to answer this way.
    assert!(not_implemented(with("INVITE sip:a@b SIP/2.0").as_bytes()).is_none());
    assert!(not_implemented(with("SIP/2.0 200 OK").as_bytes()).is_none());
    assert!(not_implemented(with("FOO sip:a@b SIP/7.0").as_bytes()).is_none());
    assert!(not_implemented(with("FO(O sip:a@b SIP/2.0").as_bytes()).is_none());
    assert!(not_implemented(with("FOO  sip:a@b SIP/2.0").as_bytes()).is_none());
    // Without a Call-ID there is nothing to answer with.
    let no_call_id = "FOO sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\n\
                      To: <sip:c@d>\r\nCSeq: 1 FOO\r\n\r\n";
    assert!(not_implemented(no_call_id.as_bytes()).is_none());
}
