//! A `POST /v1/call` body, through the same two steps the route takes: the JSON object, then
//! the request's fields in the contract's order.
#![no_main]

use api::auth::Caller;
use api::input::json_object;
use api::routes::calls::parse_call_request;
use domain::{ApiKeyId, Millis, TenantId, TraceId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = json_object(data) {
        let caller = Caller {
            tenant: TenantId(1),
            key: ApiKeyId(1),
        };
        let _ = parse_call_request(&body, caller, TraceId::new(), Millis(1_775_000_000_000));
    }
});
