//! [`wanted`]: which pods are captured, and the mode of each of their ports.

use mesh_core::proto::{build, control::v1 as pb};

use super::*;
use crate::feed::{convert::state_of, MeshSnapshot};

use EnrollMode::{Capture as P, Strict as S};

fn pod(
    name: &str,
    ip: &str,
    node: &str,
    mode: pb::MtlsMode,
    ports: &[(u32, pb::MtlsMode)],
) -> pb::Workload {
    let mut pod = build::workload("demo", name, name, ip.parse().unwrap(), node);
    pod.mtls = mode as i32;
    pod.port_mtls = ports.iter().map(|(p, m)| (*p, *m as i32)).collect();
    pod
}

fn wanted_of(workloads: Vec<pb::Workload>) -> BTreeMap<IpAddr, EnrollPolicy> {
    wanted(&state_of("n1", &MeshSnapshot::of(workloads, [])))
}

#[test]
fn the_port_override_wins_on_its_port_and_the_pod_mode_everywhere_else() {
    use pb::MtlsMode::{Permissive as WP, Strict as WS};
    // Pod mode, the override of port 9090, and what the kernel enforces on 9090 and on 8080.
    let table = [
        (WP, None, (P, P)),
        (WP, Some(WP), (P, P)),
        (WP, Some(WS), (S, P)),
        (WS, None, (S, S)),
        (WS, Some(WP), (P, S)),
        (WS, Some(WS), (S, S)),
    ];
    for (index, (mode, port_9090, expected)) in table.into_iter().enumerate() {
        let ports: Vec<(u32, pb::MtlsMode)> = port_9090.map(|m| (9090, m)).into_iter().collect();
        let wanted = wanted_of(vec![pod("a", "10.0.0.1", "n1", mode, &ports)]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let policy = wanted
            .get(&ip)
            .unwrap_or_else(|| panic!("row {index}: pod wanted"));
        let got = (policy.mode_of_port(9090), policy.mode_of_port(8080));
        assert_eq!(got, expected, "row {index}");
        assert_eq!(policy.mode(), expected.1, "row {index}: pod mode");
        // Only an override that differs from the pod's mode takes a kernel map entry.
        let differs = expected.0 != expected.1;
        let overrides = policy.port_overrides();
        let want = differs.then(|| BTreeMap::from([(9090, expected.0)]));
        assert_eq!(overrides, &want.unwrap_or_default(), "row {index}");
    }
}

#[test]
fn wanted_pods_are_the_local_ones_with_their_modes_and_port_overrides() {
    use pb::MtlsMode::{Disable, Permissive as WP, Strict as WS};
    let mut outside = pod("g", "10.0.0.7", "n1", WS, &[]);
    outside.tunnel = pb::TunnelProtocol::None as i32;
    let wanted = wanted_of(vec![
        pod("a", "10.0.0.1", "n1", WS, &[]),
        pod("b", "10.0.0.2", "n1", WP, &[]),
        pod("c", "10.0.0.3", "n2", WS, &[]),
        pod("d", "10.0.0.4", "n1", Disable, &[]),
        pod("e", "10.0.0.5", "n1", WP, &[(5432, WS)]),
        pod("f", "10.0.0.6", "n1", WS, &[(9090, WP), (8443, WS)]),
        outside,
    ]);
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
    assert_eq!(
        wanted, expected,
        "remote pods and pods outside the mesh are not captured"
    );
}

#[test]
fn a_pod_with_too_many_port_overrides_is_enforced_at_its_strictest_mode() {
    let ports = |n: u32| -> Vec<(u32, pb::MtlsMode)> {
        (1..=n)
            .map(|p| (10_000 + p, pb::MtlsMode::Strict))
            .collect()
    };
    let max = u32::try_from(MAX_PORT_OVERRIDES_PER_POD).expect("small");
    let wanted = wanted_of(vec![
        pod("a", "10.0.0.1", "n1", pb::MtlsMode::Permissive, &ports(max)),
        pod(
            "b",
            "10.0.0.2",
            "n1",
            pb::MtlsMode::Permissive,
            &ports(max + 1),
        ),
    ]);
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
