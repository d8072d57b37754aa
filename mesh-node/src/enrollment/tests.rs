//! [`wanted_from_config`]: which pods are captured, and the mode of each of their ports.

use super::*;

use EnrollMode::{Capture as P, Strict as S};

/// One row of the mode table: where the pod's mode comes from, the override of port 9090, and
/// what the kernel must enforce on 9090 and on another port (8080).
struct Row {
    mesh: &'static str,
    namespace: Option<&'static str>,
    workload: Option<&'static str>,
    port_9090: Option<&'static str>,
    expect_9090: EnrollMode,
    expect_8080: EnrollMode,
}

const fn row(
    mesh: &'static str,
    (namespace, workload): (Option<&'static str>, Option<&'static str>),
    port_9090: Option<&'static str>,
    (expect_9090, expect_8080): (EnrollMode, EnrollMode),
) -> Row {
    Row {
        mesh,
        namespace,
        workload,
        port_9090,
        expect_9090,
        expect_8080,
    }
}

const STRICT: Option<&str> = Some("STRICT");
const PERMISSIVE: Option<&str> = Some("PERMISSIVE");

/// Pod mode from the mesh, the namespace or the workload, times no/PERMISSIVE/STRICT override.
const TABLE: [Row; 15] = [
    row("PERMISSIVE", (None, None), None, (P, P)),
    row("PERMISSIVE", (None, None), PERMISSIVE, (P, P)),
    row("PERMISSIVE", (None, None), STRICT, (S, P)),
    row("STRICT", (None, None), None, (S, S)),
    row("STRICT", (None, None), PERMISSIVE, (P, S)),
    row("STRICT", (None, None), STRICT, (S, S)),
    row("PERMISSIVE", (STRICT, None), PERMISSIVE, (P, S)),
    row("PERMISSIVE", (STRICT, None), STRICT, (S, S)),
    row("STRICT", (PERMISSIVE, None), None, (P, P)),
    row("STRICT", (PERMISSIVE, None), STRICT, (S, P)),
    row("PERMISSIVE", (STRICT, PERMISSIVE), None, (P, P)),
    row("PERMISSIVE", (STRICT, PERMISSIVE), STRICT, (S, P)),
    row("PERMISSIVE", (None, STRICT), None, (S, S)),
    row("PERMISSIVE", (None, STRICT), PERMISSIVE, (P, S)),
    row("STRICT", (PERMISSIVE, STRICT), PERMISSIVE, (P, S)),
];

fn config_of(row: &Row) -> Config {
    let namespaces = row
        .namespace
        .map(|mode| format!("{{demo: {mode}}}"))
        .unwrap_or_else(|| "{}".to_owned());
    let mtls = row
        .workload
        .map(|mode| format!(", mtls: {mode}"))
        .unwrap_or_default();
    let ports = row
        .port_9090
        .map(|mode| format!(", port_mtls: {{9090: {mode}}}"))
        .unwrap_or_default();
    let yaml = format!(
        "node_name: n1\npeer_authentication: {{mode: {}, namespaces: {namespaces}}}\n\
         workloads:\n  - {{name: a, namespace: demo, service_account: a, ip: 10.0.0.1, \
         node: n1{mtls}{ports}}}\n",
        row.mesh
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

#[test]
fn the_port_override_wins_on_its_port_and_the_pod_mode_everywhere_else() {
    for (index, row) in TABLE.iter().enumerate() {
        let wanted = wanted_from_config(&config_of(row));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let policy = wanted
            .get(&ip)
            .unwrap_or_else(|| panic!("row {index}: pod wanted"));
        let got = (policy.mode_of_port(9090), policy.mode_of_port(8080));
        assert_eq!(got, (row.expect_9090, row.expect_8080), "row {index}");
        assert_eq!(policy.mode(), row.expect_8080, "row {index}: pod mode");
        // Only an override that differs from the pod's mode takes a kernel map entry.
        let differs = row.expect_9090 != row.expect_8080;
        let overrides = policy.port_overrides();
        let expected = differs.then(|| BTreeMap::from([(9090, row.expect_9090)]));
        assert_eq!(overrides, &expected.unwrap_or_default(), "row {index}");
    }
}

#[test]
fn wanted_pods_are_the_local_ones_with_their_modes_and_port_overrides() {
    let yaml = r#"
node_name: n1
peer_authentication:
  mode: PERMISSIVE
  namespaces: {demo: STRICT}
workloads:
  - {name: a, namespace: demo, service_account: a, ip: 10.0.0.1, node: n1}
  - {name: b, namespace: other, service_account: b, ip: 10.0.0.2, node: n1}
  - {name: c, namespace: demo, service_account: c, ip: 10.0.0.3, node: n2}
  - {name: d, namespace: demo, service_account: d, ip: 10.0.0.4, node: n1, mtls: PERMISSIVE}
  - {name: e, namespace: other, service_account: e, ip: 10.0.0.5, node: n1, port_mtls: {5432: STRICT}}
  - {name: f, namespace: demo, service_account: f, ip: 10.0.0.6, node: n1, port_mtls: {9090: PERMISSIVE, 8443: STRICT}}
"#;
    let config = Config::from_yaml(yaml).unwrap();
    let wanted = wanted_from_config(&config);
    let expected = BTreeMap::from([
        ("10.0.0.1".parse().unwrap(), EnrollPolicy::from(S)),
        ("10.0.0.2".parse().unwrap(), EnrollPolicy::from(P)),
        ("10.0.0.4".parse().unwrap(), EnrollPolicy::from(P)),
        (
            "10.0.0.5".parse().unwrap(),
            EnrollPolicy::new(P, [(5432, S)]),
        ),
        (
            "10.0.0.6".parse().unwrap(),
            EnrollPolicy::new(S, [(9090, P)]),
        ),
    ]);
    assert_eq!(wanted, expected);
}

#[test]
fn a_pod_with_too_many_port_overrides_is_enforced_at_its_strictest_mode() {
    let ports = |n: u16| -> String {
        (1..=n)
            .map(|p| format!("{}: STRICT", 10_000 + p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = u16::try_from(MAX_PORT_OVERRIDES_PER_POD).expect("small");
    let yaml = format!(
        "node_name: n1\nworkloads:\n\
         - {{ name: a, namespace: ns, service_account: a, ip: 10.0.0.1, node: n1, port_mtls: {{ {} }} }}\n\
         - {{ name: b, namespace: ns, service_account: b, ip: 10.0.0.2, node: n1, port_mtls: {{ {} }} }}\n",
        ports(max),
        ports(max + 1)
    );
    let wanted = wanted_from_config(&Config::from_yaml(&yaml).expect("config"));
    let at_cap = &wanted[&"10.0.0.1".parse::<IpAddr>().expect("ip")];
    assert_eq!(at_cap.port_overrides().len(), MAX_PORT_OVERRIDES_PER_POD);
    assert_eq!(at_cap.mode(), EnrollMode::Capture);
    let over = &wanted[&"10.0.0.2".parse::<IpAddr>().expect("ip")];
    assert!(over.port_overrides().is_empty(), "no overrides stored");
    assert_eq!(
        over.mode(),
        EnrollMode::Strict,
        "strict on every port, never weaker than wanted"
    );
}
