//! The far end's SDP (200 OK, 183, re-INVITE, UPDATE) through the sip crate's parser, and, when
//! it parses, our answer to it, which must parse back to the same media.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::sdp::{parse, LocalSdp};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(remote) = parse(&text) {
        let mut local = LocalSdp::offer([127, 0, 0, 1].into(), 10_000, 1);
        let answer = local.answer(&remote).to_string();
        let back = parse(&answer).expect("our own answer parses");
        assert_eq!(back.codec, remote.codec);
        assert_eq!(back.payload_type, remote.payload_type);
        assert_eq!(back.telephone_event, remote.telephone_event);
        assert_eq!(back.direction, remote.direction.answer());
    }
});
