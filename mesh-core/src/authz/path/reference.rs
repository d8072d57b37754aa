//! The yardstick normalization is checked against, shared by the unit tests and the fuzz
//! target: what a lenient backend makes of a forwarded path, and a DENY on `/admin`.

use crate::authz::{
    evaluate, Action, ConnectionAttributes, OperationMatch, Policy, RequestAttributes, Rule,
};

/// What a lenient backend reads: every escape decoded once, `\` as `/`, dot segments removed,
/// empty segments dropped (nginx, Go and Tomcat each do some of this).
pub fn lenient_backend_view(path: &str) -> String {
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

/// Whether a lenient backend would serve `path` as `/admin` or below it.
pub fn reaches_admin(path: &str) -> bool {
    let view = lenient_backend_view(path);
    view == "/admin" || view.starts_with("/admin/")
}

/// A DENY on `/admin` and `/admin/*`, as the demo has.
pub fn deny_admin() -> Policy {
    Policy {
        key: "demo/deny-admin".into(),
        action: Action::Deny,
        rules: vec![Rule {
            to: vec![OperationMatch {
                paths: vec!["/admin".into(), "/admin/*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Whether `policy` denies a GET of `path` (already normalized).
pub fn denies(policy: &Policy, path: &str) -> bool {
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
