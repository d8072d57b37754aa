//! Locating the cgroup v2 hierarchy the programs attach to.
//!
//! The mount point differs between hybrid (`/sys/fs/cgroup/unified`) and pure-v2
//! (`/sys/fs/cgroup`) nodes, so it is read from `/proc/self/mountinfo`, never assumed.

use std::{
    fs,
    path::{Component, Path, PathBuf},
};

/// Errors locating or opening a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// mountinfo could not be read.
    #[error("cannot read {path}: {source}")]
    ReadMountinfo {
        /// The file read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup2 mount in {path}: is the unified cgroup hierarchy mounted?")]
    NoCgroup2 {
        /// The mountinfo file searched.
        path: PathBuf,
    },
    /// The configured cgroup path tries to leave the hierarchy.
    #[error("cgroup path {path} must be relative to the cgroup2 mount and must not contain ..")]
    BadPath {
        /// The rejected path.
        path: PathBuf,
    },
    /// The cgroup directory could not be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Open {
        /// The cgroup directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The mount point of the cgroup2 filesystem of this process.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    cgroup2_mount_from(Path::new("/proc/self/mountinfo"))
}

/// As [`cgroup2_mount`], from an explicit mountinfo file.
pub fn cgroup2_mount_from(mountinfo: &Path) -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string(mountinfo).map_err(|source| CgroupError::ReadMountinfo {
        path: mountinfo.to_owned(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or_else(|| CgroupError::NoCgroup2 {
        path: mountinfo.to_owned(),
    })
}

/// Finds the first `cgroup2` mount point in mountinfo text (see proc(5)).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Optional fields end at " - "; the filesystem type comes right after it.
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Joins a configured relative cgroup path onto the mount, refusing `..` and absolute paths.
pub fn resolve(mount: &Path, relative: &Path) -> Result<PathBuf, CgroupError> {
    let clean = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !clean {
        return Err(CgroupError::BadPath {
            path: relative.to_owned(),
        });
    }
    Ok(mount.join(relative))
}

/// Opens a cgroup directory for attaching programs.
pub fn open(path: &Path) -> Result<fs::File, CgroupError> {
    fs::File::open(path).map_err(|source| CgroupError::Open {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / / rw,relatime shared:1 - overlay overlay rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/systemd rw,relatime shared:11 - cgroup cgroup rw,name=systemd
";

    #[test]
    fn finds_hybrid_unified_mount() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount_with_optional_fields() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn ignores_v1_only_and_unescapes_spaces() {
        assert_eq!(
            parse_cgroup2_mount("42 35 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
        let text = "41 35 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn this_machine_has_a_cgroup2_mount() {
        let mount = cgroup2_mount().expect("cgroup2 mounted on CI and dev machines");
        assert!(
            mount.join("cgroup.procs").exists(),
            "{} has no cgroup.procs",
            mount.display()
        );
    }

    #[test]
    fn resolve_refuses_escapes() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            resolve(mount, Path::new("kubepods")).ok(),
            Some(mount.join("kubepods"))
        );
        assert_eq!(
            resolve(mount, Path::new("")).ok(),
            Some(mount.to_path_buf())
        );
        assert!(matches!(
            resolve(mount, Path::new("../etc")),
            Err(CgroupError::BadPath { .. })
        ));
        assert!(matches!(
            resolve(mount, Path::new("/etc")),
            Err(CgroupError::BadPath { .. })
        ));
    }
}
