//! The local-directory source: the same multi-document YAML a user would `kubectl apply`,
//! read from a directory (recursively, `*.yaml` / `*.yml`, hidden entries skipped) and
//! reloaded when it changes.
//!
//! Change detection polls a fingerprint (hash of every file's path and content); after a
//! change the source waits for the debounce period and reloads only once the directory has
//! stopped changing, so an editor's half-written save is not applied. Reads are synchronous:
//! a config directory is small, and this keeps paused-time tests deterministic.

use std::collections::{hash_map::DefaultHasher, BTreeMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatch;
use tokio::time::MissedTickBehavior;

use crate::model::Diagnostic;
use crate::registry::{parse_yaml, ObjectKey, Parsed, Resource};
use crate::store::Store;

/// Errors reading the config directory.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The directory (or a subdirectory) cannot be listed.
    #[error("cannot list config directory {path}: {source} (is --config-dir correct?)")]
    ListDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The YAML files under `dir`, sorted.
/// Largest config file read (bounded memory).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Deepest directory nesting read; deeper (or a symlink loop) is an error, not a stack overflow.
const MAX_DEPTH: usize = 8;

fn yaml_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), LocalError> {
    if depth > MAX_DEPTH {
        let message = format!("nested deeper than {MAX_DEPTH} directories (symlink loop?)");
        let source = std::io::Error::other(message);
        return Err(LocalError::ListDir {
            path: dir.to_path_buf(),
            source,
        });
    }
    let list_err = |source| LocalError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            // Includes Kubernetes ConfigMap mounts' `..data` directories (duplicates).
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, depth + 1, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and parses every YAML file under `dir`; returns the result and a fingerprint.
pub fn load_dir(dir: &Path) -> Result<(Parsed, u64), LocalError> {
    load_dir_keeping(dir, &mut LastGood::default())
}

/// The objects of each file as last parsed without a YAML syntax error.
pub type LastGood = BTreeMap<PathBuf, Vec<(ObjectKey, String, Resource)>>;

/// [`load_dir`], except that a file with a YAML syntax error contributes the objects it had the
/// last time it parsed (`last_good`), with a diagnostic saying so: a broken edit must not delete
/// the policies in that file, which would open what they closed. `last_good` is updated from
/// the files that parse.
pub fn load_dir_keeping(dir: &Path, last_good: &mut LastGood) -> Result<(Parsed, u64), LocalError> {
    let mut files = Vec::new();
    yaml_files(dir, 0, &mut files)?;
    files.sort();
    let mut parsed = Parsed::default();
    let mut hasher = DefaultHasher::new();
    let mut fresh = LastGood::new();
    for path in files {
        let read_err = |source| LocalError::ReadFile {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(read_err)?.len();
        if size > MAX_FILE_BYTES {
            let message = format!("{size} bytes, over the {MAX_FILE_BYTES}-byte limit");
            return Err(read_err(std::io::Error::other(message)));
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        path.hash(&mut hasher);
        text.hash(&mut hasher);
        let origin = path.display().to_string();
        let mut file = Parsed::default();
        let complete = parse_yaml(&origin, &text, &mut file);
        parsed.diagnostics.append(&mut file.diagnostics);
        match (complete, last_good.remove(&path)) {
            (false, Some(kept)) => {
                parsed.diagnostics.push(Diagnostic {
                    origin,
                    object: "file".to_string(),
                    field: "-".to_string(),
                    message: format!(
                        "keeping what this file held before the syntax error ({} objects)",
                        kept.len()
                    ),
                });
                parsed.objects.extend(kept.iter().cloned());
                fresh.insert(path, kept);
            }
            (true, _) => {
                fresh.insert(path, file.objects.clone());
                parsed.objects.append(&mut file.objects);
            }
            // Broken and never parsed: nothing to keep.
            (false, None) => parsed.objects.append(&mut file.objects),
        }
    }
    // Files that are gone are forgotten.
    *last_good = fresh;
    Ok((parsed, hasher.finish()))
}

/// Watches a directory and replaces the registry content when it changes.
#[derive(Debug, Clone)]
pub struct LocalSource {
    /// Directory.
    pub dir: PathBuf,
    /// How often to check for changes.
    pub poll_interval: Duration,
    /// How long the directory must be unchanged before a reload is applied.
    pub debounce: Duration,
    /// Each file's objects as last parsed cleanly (see [`load_dir_keeping`]).
    pub last_good: Arc<parking_lot::Mutex<LastGood>>,
}

impl LocalSource {
    /// Loads the directory into the store once; fails if it cannot be read (startup error).
    pub fn load_into(&self, store: &Store) -> Result<u64, LocalError> {
        let (parsed, fingerprint) = load_dir_keeping(&self.dir, &mut self.last_good.lock())?;
        let objects = parsed.objects.len();
        store.update(|registry| registry.replace_all(parsed));
        tracing::info!(dir = %self.dir.display(), objects, "loaded config directory");
        Ok(fingerprint)
    }

    /// Polls for changes until drain; read errors keep the last good config.
    pub async fn run(self, store: Arc<Store>, mut fingerprint: u64, mut drain: DrainWatch) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = drain.signaled() => return,
            }
            match self.changed_and_settled(fingerprint).await {
                Ok(Some((parsed, new_fingerprint))) => {
                    let objects = parsed.objects.len();
                    store.update(|registry| registry.replace_all(parsed));
                    fingerprint = new_fingerprint;
                    tracing::info!(dir = %self.dir.display(), objects, "config directory changed, reloaded");
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "keeping the last good config"),
            }
        }
    }

    /// `Some` when the directory differs from `fingerprint` and stayed the same over the
    /// debounce period.
    async fn changed_and_settled(
        &self,
        fingerprint: u64,
    ) -> Result<Option<(Parsed, u64)>, LocalError> {
        let (_, seen) = load_dir(&self.dir)?;
        if seen == fingerprint {
            return Ok(None);
        }
        tokio::time::sleep(self.debounce).await;
        let (parsed, settled) = load_dir_keeping(&self.dir, &mut self.last_good.lock())?;
        Ok((settled == seen).then_some((parsed, settled)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::hub::Hub;
    use crate::registry::{Registry, RegistryConfig};

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: app}\nspec: {nodeName: n1, containers: []}\nstatus: {podIP: 10.0.0.1}\n";

    fn store() -> Arc<Store> {
        let hub = Arc::new(Hub::with_feed_id("test".into(), 1000));
        Store::new(Registry::new(RegistryConfig::default()), hub)
    }

    #[test]
    fn loads_nested_yaml_and_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("..data")).expect("mkdir");
        std::fs::write(dir.path().join("ns.yaml"), NS).expect("write");
        std::fs::write(dir.path().join("sub/pod.yml"), POD).expect("write");
        std::fs::write(dir.path().join("..data/pod.yaml"), POD).expect("write");
        std::fs::write(dir.path().join("README.md"), "not yaml").expect("write");
        let (parsed, _) = load_dir(dir.path()).expect("load");
        assert_eq!(parsed.objects.len(), 2);
        assert!(parsed.diagnostics.is_empty());
    }

    #[test]
    fn a_syntax_error_keeps_the_files_last_good_objects() {
        const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: app}\nspec: {mtls: {mode: STRICT}}\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("strict.yaml");
        std::fs::write(&file, STRICT).expect("write");
        let mut last_good = LastGood::default();
        let (parsed, _) = load_dir_keeping(dir.path(), &mut last_good).expect("load");
        assert_eq!(parsed.objects.len(), 1);
        // A broken edit: the policy stays, and the user is told.
        std::fs::write(&file, format!("{STRICT}  bad: [indent\n")).expect("write");
        std::fs::write(dir.path().join("new.yaml"), "kind: [").expect("write");
        let (parsed, _) = load_dir_keeping(dir.path(), &mut last_good).expect("load");
        assert_eq!(parsed.objects.len(), 1, "{:?}", parsed.diagnostics);
        assert_eq!(parsed.objects[0].0.name, "default");
        let messages: Vec<&str> = parsed
            .diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("keeping what this file held")),
            "{messages:?}"
        );
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.starts_with("invalid yaml"))
                .count(),
            2
        );
        // Fixed, then removed: the file's current content counts.
        std::fs::write(&file, NS).expect("write");
        let (parsed, _) = load_dir_keeping(dir.path(), &mut last_good).expect("load");
        assert_eq!(parsed.objects[0].0.name, "app");
        std::fs::remove_file(&file).expect("remove");
        let (parsed, _) = load_dir_keeping(dir.path(), &mut last_good).expect("load");
        assert!(parsed.objects.is_empty());
        assert!(
            last_good.is_empty(),
            "removed files are forgotten, broken ones never kept"
        );
    }

    #[test]
    fn symlink_loop_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).expect("symlink");
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symlink loop"), "{err}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = load_dir(Path::new("/nonexistent/weft-config"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/weft-config") && err.contains("--config-dir"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reloads_after_change_and_keeps_config_when_directory_vanishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ns.yaml"), NS).expect("write");
        let store = store();
        let source = LocalSource {
            dir: dir.path().to_path_buf(),
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(200),
            last_good: Default::default(),
        };
        let fingerprint = source.load_into(&store).expect("initial load");
        store.publish_now();
        assert!(store.hub().latest().workloads.is_empty());
        let (trigger, watch) = mesh_core::drain::channel();
        let publisher = tokio::spawn(
            Arc::clone(&store).run_publisher(Duration::from_millis(50), watch.clone()),
        );
        let task = tokio::spawn(source.clone().run(Arc::clone(&store), fingerprint, watch));
        let mut versions = store.hub().subscribe_versions();
        std::fs::write(dir.path().join("pod.yaml"), POD).expect("write");
        tokio::time::timeout(Duration::from_secs(10), versions.changed())
            .await
            .expect("reload within 10s")
            .expect("hub alive");
        assert!(store.hub().latest().workloads.contains_key("app/web"));
        // A vanished directory logs and keeps the last good config.
        std::fs::remove_dir_all(dir.path()).expect("rm");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(store.hub().latest().workloads.contains_key("app/web"));
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            mesh_core::drain::DrainOutcome::Complete
        );
        task.await.expect("source task");
        publisher.await.expect("publisher task");
    }
}
