//! Who opened a tunnelled connection, for telemetry: the source workload's metadata as ztunnel
//! carries it in the CONNECT `baggage` header (`k8s.namespace.name`, `k8s.<kind>.name`,
//! `service.name`, `service.version`), plus Istio's canonical service and revision rules.
//!
//! Baggage is informational: it labels metrics and logs, never decides policy (the verified
//! SPIFFE identity does that).

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue};

use super::headers::{baggage, HeaderError, BAGGAGE};

/// Controller kinds a `k8s.<kind>.name` key may name, most specific first.
const KINDS: [&str; 7] = [
    "deployment",
    "cronjob",
    "statefulset",
    "daemonset",
    "job",
    "replicaset",
    "pod",
];

/// Longest baggage value read.
const MAX_VALUE: usize = 253;

/// The source workload of a connection, as telemetry labels it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct WorkloadMeta {
    /// Namespace.
    pub namespace: String,
    /// Controller name (a Deployment's, ...), or the pod's when it has none.
    pub workload_name: String,
    /// Lowercase kind of `workload_name` (`deployment`, ..., `pod`).
    pub workload_kind: String,
    /// Istio canonical service ([`canonical_service`]).
    pub canonical_service: String,
    /// Istio canonical revision ([`canonical_revision`]).
    pub canonical_revision: String,
}

impl WorkloadMeta {
    /// The `baggage` value: only the fields that are set, so an unknown never claims a value.
    pub fn to_baggage(&self) -> Result<HeaderValue, HeaderError> {
        let kind_key = format!("k8s.{}.name", self.workload_kind);
        let pairs = [
            ("k8s.namespace.name", self.namespace.as_str()),
            (kind_key.as_str(), self.workload_name.as_str()),
            ("service.name", self.canonical_service.as_str()),
            ("service.version", self.canonical_revision.as_str()),
        ];
        let known: Vec<(&str, &str)> = pairs
            .into_iter()
            .filter(|(key, value)| !value.is_empty() && *key != "k8s..name")
            .collect();
        baggage(&known)
    }

    /// Reads the metadata from a CONNECT's `baggage`; `None` when there is none or nothing
    /// usable in it. Unknown keys and oversized values are ignored.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = headers.get(BAGGAGE)?.to_str().ok()?;
        let pairs: BTreeMap<&str, &str> = text
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim()))
            .filter(|(_, value)| !value.is_empty() && value.len() <= MAX_VALUE)
            .collect();
        let value = |key: &str| pairs.get(key).map(|v| (*v).to_owned()).unwrap_or_default();
        let (workload_kind, workload_name) = KINDS
            .iter()
            .find_map(|kind| {
                let name = pairs.get(format!("k8s.{kind}.name").as_str())?;
                Some(((*kind).to_owned(), (*name).to_owned()))
            })
            .unwrap_or_default();
        let meta = Self {
            namespace: value("k8s.namespace.name"),
            workload_name,
            workload_kind,
            canonical_service: value("service.name"),
            canonical_revision: value("service.version"),
        };
        (meta != Self::default()).then_some(meta)
    }
}

/// A telemetry label from `field` of `meta`: `unknown` when there is no metadata or the field
/// is empty (Istio's value for what a proxy does not know).
pub fn label(meta: Option<&WorkloadMeta>, field: fn(&WorkloadMeta) -> &String) -> String {
    meta.map(field)
        .filter(|value| !value.is_empty())
        .map_or_else(|| "unknown".to_owned(), Clone::clone)
}

/// Istio's canonical service of a workload: label `service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the workload name.
pub fn canonical_service<'a>(
    labels: &'a BTreeMap<String, String>,
    workload_name: &'a str,
) -> &'a str {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()))
    .map_or(workload_name, String::as_str)
}

/// Istio's canonical revision: label `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> &str {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()))
    .map_or("latest", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn canonical_names_follow_istio_precedence() {
        let cases = [
            (vec![], "web", "latest"),
            (vec![("app", "shop"), ("version", "v2")], "shop", "v2"),
            (
                vec![
                    ("app", "shop"),
                    ("app.kubernetes.io/name", "storefront"),
                    ("app.kubernetes.io/version", "1.4"),
                    ("version", "v2"),
                ],
                "storefront",
                "1.4",
            ),
            (
                vec![
                    ("app", "shop"),
                    ("service.istio.io/canonical-name", "canon"),
                    ("service.istio.io/canonical-revision", "r9"),
                ],
                "canon",
                "r9",
            ),
            (vec![("app", "")], "web", "latest"),
        ];
        for (pairs, service, revision) in cases {
            let labels = labels(&pairs);
            assert_eq!(canonical_service(&labels, "web"), service, "{pairs:?}");
            assert_eq!(canonical_revision(&labels), revision, "{pairs:?}");
        }
    }

    #[test]
    fn metadata_round_trips_through_baggage() {
        let meta = WorkloadMeta {
            namespace: "shop".into(),
            workload_name: "web".into(),
            workload_kind: "deployment".into(),
            canonical_service: "web".into(),
            canonical_revision: "v1".into(),
        };
        let value = meta.to_baggage().unwrap();
        assert_eq!(
            value,
            "k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1"
        );
        let mut headers = HeaderMap::new();
        headers.insert(BAGGAGE, value);
        assert_eq!(WorkloadMeta::from_headers(&headers), Some(meta));
    }

    #[test]
    fn foreign_and_partial_baggage_is_read_leniently() {
        let read = |text: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(BAGGAGE, text.parse().unwrap());
            WorkloadMeta::from_headers(&headers)
        };
        // ztunnel's shape, with a cluster key and spaces.
        let meta = read("k8s.cluster.name=c1, k8s.namespace.name=a, k8s.statefulset.name=db")
            .expect("usable");
        assert_eq!(
            (meta.workload_name.as_str(), meta.workload_kind.as_str()),
            ("db", "statefulset")
        );
        // The controller wins over the pod.
        let meta = read("k8s.pod.name=p-1,k8s.deployment.name=p").expect("usable");
        assert_eq!(meta.workload_name, "p");
        assert_eq!(read("k8s.pod.name="), None);
        assert_eq!(read("garbage"), None);
        let long = format!("k8s.pod.name={}", "x".repeat(300));
        assert_eq!(read(&long), None);
        // Unset fields stay out of the header.
        let partial = WorkloadMeta {
            namespace: "a".into(),
            ..WorkloadMeta::default()
        };
        assert_eq!(partial.to_baggage().unwrap(), "k8s.namespace.name=a");
    }
}
