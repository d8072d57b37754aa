//! Putting `weft-cni` into a node's CNI configuration and taking it out again.
//!
//! The runtime uses the first file of its configuration directory in name order (`.conflist`,
//! or a single-plugin `.conf`). Installing appends a `weft-cni` entry to that file's `plugins`
//! (a `.conf` becomes a `.conflist` holding it first), so the network plugin runs first and
//! its result, with the pod's addresses, reaches `weft-cni` as `prevResult`. Both operations are
//! idempotent and write by rename, so the runtime never reads half a file.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The `type` of our entry.
pub const PLUGIN_TYPE: &str = "weft-cni";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No network configuration to chain into.
    #[error("no CNI network configuration (*.conflist, *.conf) in {0}: install the cluster's network plugin first")]
    NoConfig(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not what the CNI specification describes.
    #[error("{path}: not a CNI network configuration: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The entry `weft-cni` adds.
pub fn plugin_entry(socket: &Path, exclude_namespaces: &[String]) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "socket": socket,
        "exclude_namespaces": exclude_namespaces,
    })
}

/// `config` (a network configuration list, or a single plugin's configuration) with `entry`
/// last in its plugins, replacing an earlier `weft-cni` entry.
pub fn chain(config: &Value, entry: &Value) -> Result<Value, String> {
    let mut list = as_list(config)?;
    let plugins = list["plugins"]
        .as_array_mut()
        .ok_or("plugins is not a list")?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry.clone());
    Ok(list)
}

/// `config` without `weft-cni` entries.
pub fn unchain(config: &Value) -> Result<Value, String> {
    let mut list = config.clone();
    if let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    }
    Ok(list)
}

fn as_list(config: &Value) -> Result<Value, String> {
    let object = config.as_object().ok_or("not a JSON object")?;
    if object.contains_key("plugins") {
        return Ok(config.clone());
    }
    if !object.contains_key("type") {
        return Err("neither plugins nor type".into());
    }
    let mut plugin = config.clone();
    let mut list = json!({
        "cniVersion": object.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
        "name": object.get("name").cloned().unwrap_or(json!("k8s-pod-network")),
    });
    if let Some(plugin) = plugin.as_object_mut() {
        plugin.remove("cniVersion");
        plugin.remove("name");
    }
    list["plugins"] = json!([plugin]);
    Ok(list)
}

/// The configuration file the runtime uses: the first `.conflist`/`.conf`/`.json` by name.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    let io = |source| InstallError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let ext = path.extension().and_then(|e| e.to_str());
            matches!(ext, Some("conflist" | "conf" | "json")) && path.is_file()
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(dir.to_owned()))
}

/// Where [`install`] left the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The configuration file that holds it.
    pub path: PathBuf,
    /// Whether this call wrote it (`false`: it was there already).
    pub changed: bool,
}

/// Chains `entry` into the primary configuration of `dir`, writing only if that changes it.
pub fn install(dir: &Path, entry: &Value) -> Result<Installed, InstallError> {
    let path = primary_config(dir)?;
    let config = read(&path)?;
    let chained = chain(&config, entry).map_err(|reason| InstallError::Invalid {
        path: path.clone(),
        reason,
    })?;
    // A single-plugin file becomes a list: same name, `.conflist`, so it still sorts first.
    let target = match path.extension().and_then(|e| e.to_str()) {
        Some("conflist") => path.clone(),
        _ => path.with_extension("conflist"),
    };
    if target == path && chained == config {
        return Ok(Installed {
            path: target,
            changed: false,
        });
    }
    write(&target, &chained)?;
    if target != path {
        std::fs::remove_file(&path).map_err(|source| InstallError::Io { path, source })?;
    }
    Ok(Installed {
        path: target,
        changed: true,
    })
}

/// Takes `weft-cni` out of every configuration list in `dir`; returns the files changed.
pub fn uninstall(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| InstallError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let config = read(&path)?;
        let cleaned = unchain(&config).map_err(|reason| InstallError::Invalid {
            path: path.clone(),
            reason,
        })?;
        if cleaned != config {
            write(&path, &cleaned)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

fn read(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| InstallError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn write(path: &Path, value: &Value) -> Result<(), InstallError> {
    let io = |source| InstallError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    let temporary = path.with_extension("weft-tmp");
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        plugin_entry(Path::new("/var/run/weft/cni.sock"), &["kube-system".into()])
    }

    #[test]
    fn chains_last_once_and_unchains() {
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [
            {"type": "ptp"}, {"type": "portmap"}
        ]});
        let chained = chain(&list, &entry()).unwrap();
        let types: Vec<&str> = chained["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "portmap", "weft-cni"]);
        assert_eq!(chain(&chained, &entry()).unwrap(), chained, "idempotent");
        assert_eq!(unchain(&chained).unwrap(), list);
    }

    #[test]
    fn a_single_plugin_config_becomes_a_list() {
        let conf =
            json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge", "bridge": "cni0"});
        let chained = chain(&conf, &entry()).unwrap();
        assert_eq!(chained["cniVersion"], "0.4.0");
        assert_eq!(chained["name"], "net");
        assert_eq!(
            chained["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(chained["plugins"][1]["type"], "weft-cni");
        assert!(chain(&json!({"name": "x"}), &entry()).is_err());
        assert!(chain(&json!([1]), &entry()).is_err());
    }

    #[test]
    fn installs_into_the_first_file_and_uninstalls() {
        let dir = std::env::temp_dir().join(format!("weft-cni-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            install(&dir, &entry()),
            Err(InstallError::NoConfig(_))
        ));
        std::fs::write(
            dir.join("10-flannel.conf"),
            r#"{"name": "cbr0", "type": "flannel"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("99-other.conflist"),
            r#"{"name": "o", "plugins": []}"#,
        )
        .unwrap();
        let installed = install(&dir, &entry()).unwrap();
        assert!(installed.changed);
        let written = installed.path;
        assert_eq!(written, dir.join("10-flannel.conflist"));
        let again = install(&dir, &entry()).unwrap();
        assert_eq!(
            (again.path.as_path(), again.changed),
            (written.as_path(), false)
        );
        assert!(!dir.join("10-flannel.conf").exists());
        let installed = read(&written).unwrap();
        assert_eq!(installed["plugins"][1]["type"], "weft-cni");
        let other = read(&dir.join("99-other.conflist")).unwrap();
        assert_eq!(
            other["plugins"],
            json!([]),
            "only the primary file is chained"
        );
        assert_eq!(uninstall(&dir).unwrap(), std::slice::from_ref(&written));
        assert_eq!(
            read(&written).unwrap()["plugins"].as_array().unwrap().len(),
            1
        );
        assert!(uninstall(&dir).unwrap().is_empty(), "idempotent");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
