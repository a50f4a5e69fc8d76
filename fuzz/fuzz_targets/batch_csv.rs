//! A batch upload's CSV, through the parser `POST /v1/batch-call` uses, and every row's call
//! parameters as they would be stored.
#![no_main]

use domain::batch::parse_recipients;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(recipients) = parse_recipients(data, 1_000) {
        for i in 0..recipients.len() {
            let _ = recipients.parameters_json(i).expect("parameters encode");
        }
    }
});
