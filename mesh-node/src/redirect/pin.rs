//! Optional bpffs pinning, so enrolled pods stay captured while mesh-node restarts (fail closed).
//!
//! Layout under the pin directory (e.g. `/sys/fs/bpf/weft`): `maps/<MAP>` for every map the
//! programs share, `links/<program>` for every cgroup program's (and the splice `sk_msg`'s) bpf
//! link. A pinned link keeps its program attached after the loader exits; the next loader opens
//! the same maps (aya's `map_pin_path`), then swaps each pinned link's program for the new one
//! with `BPF_LINK_UPDATE`, which is atomic, so there is no moment in which enrolled pods are not
//! redirected. Pinned maps are only adopted when their key size, value size and capacity match
//! this build's ABI; anything else needs [`remove_all`] first (which does open a window). A map
//! this build adds (e.g. `PORT_MTLS`) and not pinned yet is created and pinned at load.
//!
//! The splice `sk_msg` link (when splicing is on) is attached to the pinned `SPLICE` sockhash
//! (a sockmap bpf link, Linux >= 6.10). Not pinned: the aya-log ring buffer.

use std::{
    fs,
    mem::size_of,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use mesh_ebpf_common::{capacity, counter, maps, OrigDst, PortKey, RedirectConfig, TupleKey};

use super::bpf_sys;

/// `statfs` type of the BPF filesystem (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Key size, value size and capacity of a pinnable map, as this build's programs declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// Map name (also its pin file name).
    pub name: &'static str,
    /// Key size in bytes (LPM tries include their 4-byte prefix length).
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// `max_entries`.
    pub max_entries: u32,
}

const fn layout<K, V>(name: &'static str, max_entries: u32) -> MapLayout {
    MapLayout {
        name,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
    }
}

/// Every map that is pinned and adopted, with the layout this build expects.
pub const PINNED_MAPS: [MapLayout; 11] = [
    layout::<u32, RedirectConfig>(maps::CONFIG, 1),
    layout::<u64, u32>(maps::ENROLLED, capacity::ENROLLED),
    layout::<PortKey, u32>(maps::PORT_MTLS, capacity::PORT_MTLS),
    layout::<u16, u8>(maps::EXCLUDED_PORTS, capacity::EXCLUDED_PORTS),
    layout::<(u32, [u8; 4]), u8>(maps::EXCLUDED_V4, capacity::EXCLUDED_CIDRS),
    layout::<(u32, [u8; 16]), u8>(maps::EXCLUDED_V6, capacity::EXCLUDED_CIDRS),
    layout::<u64, OrigDst>(maps::ORIG_BY_COOKIE, capacity::CONNECTIONS),
    layout::<TupleKey, OrigDst>(maps::ORIG_BY_TUPLE, capacity::CONNECTIONS),
    layout::<u32, u64>(maps::COUNTERS, counter::COUNT),
    layout::<TupleKey, u32>(maps::SPLICE, capacity::CONNECTIONS),
    layout::<TupleKey, u32>(maps::SPLICE_STATE, capacity::CONNECTIONS),
];

/// Errors pinning, adopting or removing pinned objects.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin directory's parent is not on bpffs.
    #[error(
        "{path} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`, or a \
         hostPath /sys/fs/bpf volume in the DaemonSet) and pin below it"
    )]
    NotBpffs {
        /// The directory checked.
        path: PathBuf,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("cannot {operation} {path}: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pinned map was made by a build with a different ABI.
    #[error(
        "pinned map {path} has key/value/entries {found:?}, this build needs {expected:?}: \
         remove the old pins with `mesh-node --bpf-cleanup --bpf-pin-path <dir>` (this briefly \
         detaches redirection)"
    )]
    Incompatible {
        /// The pin file.
        path: PathBuf,
        /// (key size, value size, max entries) found.
        found: (u32, u32, u32),
        /// (key size, value size, max entries) expected.
        expected: (u32, u32, u32),
    },
    /// A pinned map could not be inspected.
    #[error("cannot inspect pinned map {path}: {source}")]
    Inspect {
        /// The pin file.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Subdirectory of the per-pod inbound steering links (`sk_lookup`, one per netns cookie).
const STEERING: &str = "steering";

/// A pin directory on bpffs, with its `maps/`, `links/` and `steering/` subdirectories.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates (or reuses) `root`; its parent must be on bpffs.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        require_bpffs(parent)?;
        let dirs = [
            root.to_path_buf(),
            root.join("maps"),
            root.join("links"),
            root.join(STEERING),
        ];
        for dir in dirs {
            fs::create_dir_all(&dir).map_err(|source| io_error("create", &dir, source))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The pin directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where each enrolled pod's inbound steering link is pinned, by netns cookie.
    pub fn steering_dir(&self) -> PathBuf {
        self.root.join(STEERING)
    }

    /// Where the link of program `name` is pinned.
    pub fn link_path(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Checks that every already pinned map has the layout this build expects.
    pub fn check_adoptable(&self) -> Result<(), PinError> {
        PINNED_MAPS
            .iter()
            .try_for_each(|layout| self.check_map(layout))
    }

    fn check_map(&self, expected: &MapLayout) -> Result<(), PinError> {
        let path = self.map_path(expected.name);
        if !path.exists() {
            return Ok(());
        }
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::Inspect {
            path: path.clone(),
            source,
        })?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        let wanted = (expected.key_size, expected.value_size, expected.max_entries);
        if found != wanted {
            return Err(PinError::Incompatible {
                path,
                found,
                expected: wanted,
            });
        }
        Ok(())
    }
}

impl PinDir {
    /// Detaches and unpins links whose program is not in `current` (a previous build's programs
    /// this build no longer has); returns how many. Call after attaching the current programs.
    pub fn retire_links(&self, current: &[&str]) -> Result<usize, PinError> {
        let dir = self.root.join("links");
        let mut retired = 0;
        for path in pinned_files(&dir)? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if current.contains(&name) {
                continue;
            }
            detach_link(&path)?;
            fs::remove_file(&path).map_err(|source| io_error("remove", &path, source))?;
            tracing::info!(link = %path.display(), "retired pinned link of a program this build no longer has");
            retired += 1;
        }
        Ok(retired)
    }
}

/// What [`remove_all`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Link pins removed (each detached its program unless a running loader still holds it).
    pub links: usize,
    /// Map pins removed.
    pub maps: usize,
}

/// Removes every Weft pin under `root` and the directory itself. Links go first, each detached
/// synchronously (`BPF_LINK_DETACH`) so the programs are gone when this returns, even for a
/// mesh-node still running on them; then the maps. A missing directory is not an error.
pub fn remove_all(root: &Path) -> Result<Removed, PinError> {
    if !root.exists() {
        return Ok(Removed::default());
    }
    require_bpffs(root)?;
    detach_links(&root.join("links"))?;
    // A steering link whose namespace is gone is already detached: detaching it again may fail,
    // which must not keep the rest in place.
    for path in pinned_files(&root.join(STEERING))? {
        let _ = detach_link(&path);
    }
    let links = remove_entries(&root.join("links"))? + remove_entries(&root.join(STEERING))?;
    let maps = remove_entries(&root.join("maps"))?;
    fs::remove_dir(root).map_err(|source| io_error("remove", root, source))?;
    Ok(Removed { links, maps })
}

/// Detaches every link pinned in `dir`.
fn detach_links(dir: &Path) -> Result<(), PinError> {
    pinned_files(dir)?
        .iter()
        .try_for_each(|path| detach_link(path))
}

fn detach_link(path: &Path) -> Result<(), PinError> {
    let link = bpf_sys::obj_get(path).map_err(|source| io_error("open", path, source))?;
    bpf_sys::link_detach(link.as_fd()).map_err(|source| io_error("detach", path, source))
}

/// Removes the files of `dir` and `dir` itself; returns how many files there were.
fn remove_entries(dir: &Path) -> Result<usize, PinError> {
    let files = pinned_files(dir)?;
    for path in &files {
        fs::remove_file(path).map_err(|source| io_error("remove", path, source))?;
    }
    match fs::remove_dir(dir) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("remove", dir, source))
        }
        _ => Ok(files.len()),
    }
}

/// The files in `dir`; none when it does not exist.
fn pinned_files(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error("list", dir, source)),
    };
    entries
        .map(|entry| {
            entry
                .map(|e| e.path())
                .map_err(|source| io_error("list", dir, source))
        })
        .collect()
}

/// Fails unless `path` is on a bpf filesystem.
pub fn require_bpffs(path: &Path) -> Result<(), PinError> {
    let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| PinError::NotBpffs {
        path: path.to_owned(),
    })?;
    // SAFETY: statfs only writes the struct passed; all-zero is a valid initial value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a writable statfs struct.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(io_error("statfs", path, source));
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(PinError::NotBpffs {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> PinError {
    PinError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_bpffs_parent_is_refused_with_a_mount_hint() {
        let dir = Path::new("/tmp/wfte-not-bpffs-weft");
        let err = PinDir::open(dir).expect_err("/tmp is not bpffs");
        let text = err.to_string();
        assert!(text.contains("mount -t bpf"), "{text}");
        assert!(!dir.exists(), "nothing created");
    }

    #[test]
    fn removing_a_missing_pin_directory_is_a_no_op() {
        let removed = remove_all(Path::new("/nonexistent/weft-pins")).expect("idempotent");
        assert_eq!(removed, Removed::default());
    }

    #[test]
    fn lpm_layouts_include_the_prefix_length() {
        let v6 = PINNED_MAPS
            .iter()
            .find(|l| l.name == maps::EXCLUDED_V6)
            .expect("listed");
        assert_eq!((v6.key_size, v6.value_size), (20, 1));
    }
}
