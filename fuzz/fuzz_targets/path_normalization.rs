//! Path normalization: never panics, is idempotent, and no spelling of a denied path gets past
//! a DENY on `/admin` and `/admin/*` when a lenient backend would serve it as `/admin...`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::authz::{
    evaluate, path, Action, ConnectionAttributes, OperationMatch, PathNormalization, Policy,
    RequestAttributes, Rule,
};

/// What a lenient backend reads: every escape decoded once, `\` as `/`, dot segments removed,
/// empty segments dropped.
fn backend_view(path: &str) -> String {
    let raw = path.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                bytes.push(byte);
                i += 3;
            }
            None => {
                bytes.push(raw[i]);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut kept: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    format!("/{}", kept.join("/"))
}

fn denied(policy: &Policy, path: &str) -> bool {
    let connection = ConnectionAttributes {
        source_ip: [10, 0, 0, 1].into(),
        source_principal: None,
        destination_ip: [10, 0, 0, 2].into(),
        destination_port: 80,
    };
    let headers = http::HeaderMap::new();
    let request = RequestAttributes {
        method: "GET",
        path,
        host: "demo",
        headers: &headers,
        remote_ip: None,
        sni: None,
        auth: None,
    };
    !evaluate([policy], &connection, Some(&request)).is_allowed()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let deny = Policy {
        key: "demo/deny-admin".into(),
        action: Action::Deny,
        rules: vec![Rule {
            to: vec![OperationMatch {
                paths: vec!["/admin".into(), "/admin/*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
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
        let view = backend_view(&normalized);
        if view == "/admin" || view.starts_with("/admin/") {
            assert!(
                denied(&deny, &normalized),
                "{mode}: {input:?} -> {normalized:?} (backend reads {view:?}) allowed"
            );
        }
    }
});
