//! The admin `/config_dump` page (15000, localhost only): what the node runs with, for operators.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use tokio::sync::watch;

use crate::{config::Config, proxy::Proxy, ready::ReadyState};

/// What the admin dump shows, computed per request: the start-up config plus the current mesh
/// view, in-pod listeners and readiness.
pub(crate) struct Dump {
    pub(crate) proxy: Proxy,
    pub(crate) startup: Config,
    pub(crate) in_pod: watch::Receiver<BTreeMap<IpAddr, PathBuf>>,
    pub(crate) ready: ReadyState,
}

impl Dump {
    pub(crate) fn render(&self) -> String {
        let proxy = &self.proxy;
        let identities: Vec<String> = proxy
            .certs
            .identities()
            .iter()
            .map(|i| i.to_string())
            .collect();
        let workloads: Vec<_> = proxy
            .state()
            .workloads()
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name, "namespace": w.namespace, "ip": w.ip, "node": w.node,
                    "addresses": w.addresses,
                    "identity": w.identity.to_string(),
                    "waypoint": w.waypoint.as_ref().map(|wp| wp.key.clone()),
                })
            })
            .collect();
        let in_pod: BTreeMap<String, String> = self
            .in_pod
            .borrow()
            .iter()
            .map(|(ip, netns)| (ip.to_string(), netns.display().to_string()))
            .collect();
        let dump = serde_json::json!({
            "startup_config": self.startup,
            "workloads": workloads,
            "certificates": identities,
            "policies": proxy.authz.policy_count(),
            "in_pod_listeners": in_pod,
            "not_ready_reasons": self.ready.not_ready_reasons(),
        });
        serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
