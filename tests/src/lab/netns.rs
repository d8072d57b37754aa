//! Named network namespaces (`ip netns`) and veth links, removed on drop.

use std::process::{Command, Output};

use anyhow::{bail, Context};

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (install iproute2)")?;
    check(&output, &format!("ip {}", args.join(" ")))
}

/// Runs `ip` inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Sets a sysctl inside namespace `ns` (e.g. `net.ipv4.ip_forward=1`).
pub fn sysctl_in(ns: &str, setting: &str) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", setting])
        .output()
        .context("run sysctl in namespace")?;
    check(&output, &format!("sysctl {setting} in {ns}"))
}

fn check(output: &Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace this process created; deleted (with its links) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mounted handle, for `setns` or `SO_NETNS_COOKIE` lookups.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "delete", &self.name]) {
            eprintln!("lab: could not delete netns {}: {error:#}", self.name);
        }
    }
}

/// Names of existing network namespaces that start with `prefix` (leftovers of a killed run).
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter(|name| name.starts_with(prefix))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: (&NetNs, &str), b: (&NetNs, &str)) -> anyhow::Result<()> {
    let (ns_a, if_a) = a;
    let (ns_b, if_b) = b;
    ip_in(
        ns_a.name(),
        &[
            "link",
            "add",
            if_a,
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            ns_b.name(),
        ],
    )?;
    ip_in(ns_a.name(), &["link", "set", if_a, "up"])?;
    ip_in(ns_b.name(), &["link", "set", if_b, "up"])
}
