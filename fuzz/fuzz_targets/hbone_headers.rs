//! `forwarded` and `traceparent` parsing never panic on any header bytes, and an accepted
//! `traceparent` survives a round trip.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mesh_core::hbone::headers::{forwarded_for, TraceParent};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", value);
        let _ = forwarded_for(&headers);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parent) = TraceParent::parse(text) {
        assert_eq!(TraceParent::parse(&parent.to_string()), Ok(parent), "input {text:?}");
    }
});
