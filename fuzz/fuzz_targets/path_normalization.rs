//! Path normalization: never panics, is idempotent, and no spelling of a denied path gets past
//! a DENY on `/admin` and `/admin/*` when a lenient backend would serve it as `/admin...`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::authz::{
    path::{
        self,
        reference::{deny_admin, denies, lenient_backend_view, reaches_admin},
    },
    PathNormalization,
};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let deny = deny_admin();
    for mode in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        let Ok(normalized) = path::normalize(input, mode) else { continue };
        let again = path::normalize(&normalized, mode).expect("a normalized path normalizes");
        assert_eq!(again, normalized, "{mode} not idempotent on {input:?}");
        if matches!(mode, PathNormalization::None | PathNormalization::Base) {
            continue;
        }
        if reaches_admin(&normalized) {
            assert!(
                denies(&deny, &normalized),
                "{mode}: {input:?} -> {normalized:?} (backend reads {:?}) allowed",
                lenient_backend_view(&normalized)
            );
        }
    }
});
