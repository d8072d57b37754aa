//! Ambient enrollment and waypoint binding, decided from namespace, service and pod labels.
//!
//! A pod is in the mesh when its namespace carries `weft.dev/dataplane-mode=ambient` (or Istio's
//! `istio.io/dataplane-mode=ambient`); a pod label overrides the namespace either way, and
//! `none` opts a pod out. A waypoint is chosen with `weft.dev/use-waypoint` (or
//! `istio.io/use-waypoint`): the most specific object wins (pod, then service, then namespace),
//! and the value `none` explicitly opts out of an inherited waypoint.

use std::collections::BTreeMap;

/// Label that enrols a namespace or pod, in Weft's own domain.
pub const DATAPLANE_MODE: &str = "weft.dev/dataplane-mode";
/// Istio's enrolment label, honoured for compatibility.
pub const ISTIO_DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Namespace label: `always` keeps its pods' same-node connections on mTLS.
pub const SAME_NODE_ENCRYPTION: &str = "weft.dev/same-node-encryption";

/// Whether same-node connections of a pod in a namespace with `namespace_labels` may skip mTLS:
/// unless the mesh or the namespace (`weft.dev/same-node-encryption: always`) says otherwise.
pub fn same_node_plaintext(always_encrypt: bool, namespace_labels: &Labels) -> bool {
    !always_encrypt
        && namespace_labels
            .get(SAME_NODE_ENCRYPTION)
            .is_none_or(|value| value != "always")
}
/// Label naming the waypoint a namespace, service or pod uses.
pub const USE_WAYPOINT: &str = "weft.dev/use-waypoint";
/// Istio's waypoint label, honoured for compatibility.
pub const ISTIO_USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the namespace of the waypoint, when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "weft.dev/use-waypoint-namespace";
/// Istio's waypoint-namespace label.
pub const ISTIO_USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";

type Labels = BTreeMap<String, String>;

/// What a label set says about enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModeLabel {
    Ambient,
    None,
    Absent,
}

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|key| labels.get(*key).map(String::as_str))
}

fn mode_label(labels: &Labels) -> ModeLabel {
    match first_label(labels, &[DATAPLANE_MODE, ISTIO_DATAPLANE_MODE]) {
        Some("ambient") => ModeLabel::Ambient,
        // Any other value (`none`, or a sidecar-era value) is treated as "not ambient".
        Some(_) => ModeLabel::None,
        None => ModeLabel::Absent,
    }
}

/// Whether a pod is captured by the mesh, given its own and its namespace's labels.
pub fn is_enrolled(namespace_labels: &Labels, pod_labels: &Labels) -> bool {
    match mode_label(pod_labels) {
        ModeLabel::Ambient => true,
        ModeLabel::None => false,
        ModeLabel::Absent => mode_label(namespace_labels) == ModeLabel::Ambient,
    }
}

/// A waypoint named by labels: the Service `name` in `namespace` fronts the waypoint pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaypointName {
    /// Namespace of the waypoint.
    pub namespace: String,
    /// Name of the waypoint (its Gateway and Service).
    pub name: String,
}

/// What one object's labels say about its waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WaypointLabel {
    Use(WaypointName),
    OptOut,
    Absent,
}

fn waypoint_label(labels: &Labels, own_namespace: &str) -> WaypointLabel {
    match first_label(labels, &[USE_WAYPOINT, ISTIO_USE_WAYPOINT]) {
        None | Some("") => WaypointLabel::Absent,
        Some("none") => WaypointLabel::OptOut,
        Some(name) => {
            let namespace = first_label(
                labels,
                &[USE_WAYPOINT_NAMESPACE, ISTIO_USE_WAYPOINT_NAMESPACE],
            )
            .unwrap_or(own_namespace);
            WaypointLabel::Use(WaypointName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
    }
}

/// The waypoint for an object, from the most specific label set to the least (e.g. pod, then
/// namespace). The first set that says anything decides; `none` stops inheritance.
pub fn waypoint_for(own_namespace: &str, label_sets: &[&Labels]) -> Option<WaypointName> {
    for labels in label_sets {
        match waypoint_label(labels, own_namespace) {
            WaypointLabel::Use(name) => return Some(name),
            WaypointLabel::OptOut => return None,
            WaypointLabel::Absent => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn enrolment_table() {
        let ambient = labels(&[(DATAPLANE_MODE, "ambient")]);
        let istio_ambient = labels(&[(ISTIO_DATAPLANE_MODE, "ambient")]);
        let none = labels(&[(DATAPLANE_MODE, "none")]);
        let istio_none = labels(&[(ISTIO_DATAPLANE_MODE, "none")]);
        let empty = Labels::new();
        let cases = [
            (&ambient, &empty, true),
            (&istio_ambient, &empty, true),
            (&empty, &empty, false),
            (&ambient, &none, false),
            (&ambient, &istio_none, false),
            (&empty, &ambient, true),
            (&empty, &istio_ambient, true),
            (&none, &ambient, true),
        ];
        for (i, (ns, pod, want)) in cases.iter().enumerate() {
            assert_eq!(
                is_enrolled(ns, pod),
                *want,
                "case {i}: ns={ns:?} pod={pod:?}"
            );
        }
    }

    #[test]
    fn weft_label_wins_over_istio_label_on_the_same_object() {
        let both = labels(&[(DATAPLANE_MODE, "none"), (ISTIO_DATAPLANE_MODE, "ambient")]);
        assert!(!is_enrolled(&Labels::new(), &both));
    }

    #[test]
    fn waypoint_most_specific_wins_and_none_opts_out() {
        let ns = labels(&[(USE_WAYPOINT, "ns-wp")]);
        let svc = labels(&[(ISTIO_USE_WAYPOINT, "svc-wp")]);
        let pod_none = labels(&[(USE_WAYPOINT, "none")]);
        let empty = Labels::new();
        let wp = |name: &str| {
            Some(WaypointName {
                namespace: "app".into(),
                name: name.into(),
            })
        };
        assert_eq!(waypoint_for("app", &[&empty, &ns]), wp("ns-wp"));
        assert_eq!(waypoint_for("app", &[&svc, &ns]), wp("svc-wp"));
        assert_eq!(waypoint_for("app", &[&pod_none, &ns]), None);
        assert_eq!(waypoint_for("app", &[&empty, &empty]), None);
    }

    #[test]
    fn waypoint_namespace_label_points_elsewhere() {
        let l = labels(&[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "infra")]);
        let got = waypoint_for("app", &[&l]).expect("waypoint");
        assert_eq!(got.namespace, "infra");
        assert_eq!(got.name, "shared");
    }
}
