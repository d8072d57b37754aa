//! Translation tests: `HTTPRoute` in, then requests through the compiled route table.

use super::*;
use crate::{
    config::from_yaml,
    route::{action, Action, RouteTable},
    translate::{from_gateway, Endpoints},
};

const ROUTE: &str = r#"
metadata: {name: store}
spec:
  hostnames: [store.example.com]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: store-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-api, value: "1"}]}}
      backendRefs: [{name: store-v2, weight: 80}, {name: store-v1, weight: 20}]
      timeouts: {request: 5s}
    - matches: [{path: {type: Exact, value: /old}}]
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
    - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-beta, value: "yes"}]}]
      backendRefs: [{name: beta, namespace: canary}]
"#;

fn table() -> RouteTable {
    let route: HttpRoute = from_yaml(ROUTE).expect("yaml");
    let config = from_gateway(&[route], &Endpoints::new()).expect("translates");
    RouteTable::new(&config.routes, &config.destinations).expect("compiles")
}

fn decide(t: &RouteTable, path: &str, headers: &[(&str, &str)]) -> String {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut parts = b.body(()).expect("request").into_parts().0;
    let Some(sel) = t.select("store.example.com", &parts) else {
        return "404".into();
    };
    match &sel.rule.action {
        Action::Forward(targets) => {
            if let Some(rw) = &sel.rule.rewrite {
                let prefix = sel.outcome.matched_prefix.as_deref();
                action::apply_rewrite(&mut parts.uri, &mut parts.headers, rw, prefix)
                    .expect("rewrite");
            }
            let names: Vec<_> = targets
                .targets()
                .iter()
                .map(|t| format!("{}:{}", t.destination, t.weight))
                .collect();
            format!("{} {}", names.join(","), parts.uri)
        }
        Action::Redirect(r) => format!("redirect {:?} {:?}", r.code, r.path),
        Action::Direct { status, .. } => format!("direct {status}"),
    }
}

#[test]
fn precedence_and_element_prefixes() {
    let t = table();
    let cases = [
        ("/", &[][..], "store-v1:1 /"),
        ("/api", &[][..], "store-v2:80,store-v1:20 /v2"),
        ("/api/items", &[][..], "store-v2:80,store-v1:20 /v2/items"),
        // `/apix` is not under the `/api` element prefix.
        ("/apix", &[][..], "store-v1:1 /apix"),
        ("/old", &[][..], "redirect Some(302) Some(Full(\"/new\"))"),
        // More header matches win over an equal path prefix, whatever the rule order.
        ("/x", &[("x-beta", "yes")][..], "beta.canary:1 /x"),
        (
            "/api/x",
            &[("x-beta", "yes")][..],
            "store-v2:80,store-v1:20 /v2/x",
        ),
    ];
    for (path, headers, want) in cases {
        assert_eq!(decide(&t, path, headers), want, "{path} {headers:?}");
    }
}

#[test]
fn empty_hostnames_match_all_and_zero_weights_answer_500() {
    let route: HttpRoute =
        from_yaml("metadata: {name: r}\nspec: {rules: [{backendRefs: [{name: a, weight: 0}]}]}")
            .expect("yaml");
    let config = http_route(&route).expect("translates");
    assert_eq!(config.hosts, vec!["*"]);
    assert_eq!(
        config.rules[0].direct_response.as_ref().map(|d| d.status),
        Some(500)
    );
}

#[test]
fn unsupported_filters_are_rejected() {
    let route: HttpRoute =
        from_yaml("metadata: {name: r}\nspec: {rules: [{filters: [{type: ExtensionRef}], backendRefs: [{name: a}]}]}")
            .expect("yaml");
    let err = http_route(&route).expect_err("unsupported");
    assert!(err.to_string().contains("ExtensionRef"), "{err}");
}
