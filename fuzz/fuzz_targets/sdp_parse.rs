//! The far end's SDP (200 OK, 183, re-INVITE, UPDATE) through the sip crate's parser, and, when
//! it parses, our answer to it, which must parse back to the same media; with SRTP, the keys
//! agreed must be the ones our answer carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::sdp::{parse, parse_with_crypto, LocalSdp};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(remote) = parse(&text) {
        let mut local = LocalSdp::offer([127, 0, 0, 1].into(), 10_000, 1, false);
        let (answer, keys) = local.answer(&remote, &[]).expect("a plain session answers");
        assert!(keys.is_none());
        let answer = answer.to_string();
        let back = parse(&answer).expect("our own answer parses");
        assert_eq!(back.codec, remote.codec);
        assert_eq!(back.payload_type, remote.payload_type);
        assert_eq!(back.telephone_event, remote.telephone_event);
        assert_eq!(back.direction, remote.direction.answer());
        assert!(!back.secure);
    }
    if let Ok((remote, crypto)) = parse_with_crypto(&text) {
        let mut local = LocalSdp::offer([127, 0, 0, 1].into(), 10_000, 1, true);
        // As the answer to our offer: accepted only with a line we offered.
        if let Ok(Some(keys)) = local.accept_answer(&remote, &crypto) {
            assert!(crypto.contains(&keys.theirs));
            let (_, ours) = parse_with_crypto(local.current()).expect("our offer parses");
            assert_eq!(ours, vec![keys.ours]);
        }
        // As a re-offer from the far end.
        if let Ok((answer, keys)) = local.answer(&remote, &crypto) {
            let answer = answer.to_string();
            let keys = keys.expect("an SRTP session answers with keys");
            let (back, ours) = parse_with_crypto(&answer).expect("our own answer parses");
            assert!(back.secure);
            assert_eq!(ours, vec![keys.ours]);
            assert!(crypto.contains(&keys.theirs));
        }
    }
});
