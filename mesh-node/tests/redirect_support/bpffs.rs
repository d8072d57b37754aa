//! A private bpffs instance per test, so pinning tests never touch the machine's /sys/fs/bpf.

use std::{fs, path::PathBuf};

use super::run;

/// A private bpffs instance mounted on a temporary directory; unmounting drops every pin.
pub struct Bpffs {
    mount: PathBuf,
}

impl Bpffs {
    /// Mounts a new bpffs at `/tmp/<name>-<pid>`.
    pub fn mount(name: &str) -> Self {
        let mount = PathBuf::from(format!("/tmp/{name}-{}", std::process::id()));
        let _ = run("umount", &[&mount.to_string_lossy()]);
        fs::create_dir_all(&mount).expect("mount point");
        run("mount", &["-t", "bpf", "bpf", &mount.to_string_lossy()]).expect("mount bpffs");
        Self { mount }
    }

    /// The pin directory tests use: `weft` under the mount.
    pub fn pins(&self) -> PathBuf {
        self.mount.join("weft")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(error) = run("umount", &[&self.mount.to_string_lossy()]) {
            eprintln!("cleanup of bpffs {}: {error:#}", self.mount.display());
        }
        let _ = fs::remove_dir(&self.mount);
    }
}
