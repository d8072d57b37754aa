//! SPIFFE ID parsing never panics, and an accepted ID prints back to an equal one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<SpiffeId>() {
        let again: SpiffeId = id.to_string().parse().expect("printed id parses");
        assert_eq!(again, id, "input {text:?}");
    }
});
