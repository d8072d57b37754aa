//! The CONNECT `:authority` parser never panics, and what it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::hbone::authority;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(address) = authority::parse(text) {
        assert_eq!(authority::parse(&address.to_string()), Ok(address), "input {text:?}");
        assert_ne!(address.port(), 0, "port 0 accepted from {text:?}");
    }
});
