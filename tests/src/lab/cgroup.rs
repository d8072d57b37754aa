//! cgroup v2 directories for lab nodes and pods, removed on drop.
//!
//! Weft's eBPF programs apply by the cgroup a socket was created in, so every lab pod runs in its
//! own cgroup below its node's. Nothing is ever attached to the cgroup2 root of the machine.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Where the cgroup2 hierarchy is mounted, read from `/proc/self/mountinfo` (hybrid hosts mount
/// it at `/sys/fs/cgroup/unified`, pure-v2 hosts at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    mountinfo
        .lines()
        .find_map(cgroup2_mount_point)
        .context("no cgroup2 filesystem is mounted (needs a kernel with cgroup v2)")
}

/// The mount point of a mountinfo line whose filesystem type is `cgroup2`.
fn cgroup2_mount_point(line: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point options [optional...] - fstype source ...
    let (before, after) = line.split_once(" - ")?;
    let fstype = after.split_whitespace().next()?;
    (fstype == "cgroup2").then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
}

/// A cgroup this process created; killed and removed on drop, children first.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `relative` below the cgroup2 mount (and any missing parents).
    pub fn create(relative: &Path) -> anyhow::Result<Self> {
        let path = cgroup2_mount()?.join(relative);
        fs::create_dir_all(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// Creates a child cgroup.
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` file a process writes its pid into to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Kills every process in the cgroup tree and removes the directories.
    pub fn destroy(&self) -> anyhow::Result<()> {
        remove_tree(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(error) = self.destroy() {
            eprintln!(
                "lab: could not remove cgroup {}: {error:#}",
                self.path.display()
            );
        }
    }
}

/// Kills the processes of `path`'s tree (cgroup.kill) and removes it, deepest first.
pub fn remove_tree(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs the whole subtree at once.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    // The killed processes take a moment to leave; rmdir fails with EBUSY until they have.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                bail!("rmdir {}: {error}", path.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let line = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 \
                    - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            cgroup2_mount_point(line),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn ignores_cgroup_v1_and_other_filesystems() {
        let v1 = "36 25 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu";
        let tmpfs = "25 1 0:22 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755";
        assert_eq!(cgroup2_mount_point(v1), None);
        assert_eq!(cgroup2_mount_point(tmpfs), None);
    }
}
