//! Network namespace helpers: the kernel's netns cookie (the enrollment key) and running code in
//! another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so work is done on a short-lived
//! dedicated thread and the caller's thread never changes namespace.

use std::{
    fs::File,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

/// `SO_NETNS_COOKIE` (Linux 5.14+), not exported by every libc version.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Errors reading a netns cookie or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The namespace path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A syscall failed.
    #[error("{call} failed: {source}")]
    Syscall {
        /// The failing call.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The helper thread panicked.
    #[error("network namespace helper thread panicked")]
    ThreadPanicked,
}

/// The cookie of the network namespace at `path` (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
pub fn cookie_of_path(path: &Path) -> Result<u64, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    cookie_of_fd(file.as_fd())
}

/// The cookie of the network namespace referred to by `fd`.
pub fn cookie_of_fd(fd: BorrowedFd<'_>) -> Result<u64, NetnsError> {
    run_in(fd, current_cookie)?
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64, NetnsError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(syscall_error("socket"));
    }
    // SAFETY: `raw` is a freshly created descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(syscall_error("getsockopt(SO_NETNS_COOKIE)"));
    }
    Ok(cookie)
}

/// Runs `f` on a new thread that first enters the network namespace `fd`, and returns its result.
pub fn run_in<T, F>(fd: BorrowedFd<'_>, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(fd)?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::ThreadPanicked)?
    })
}

/// Moves the calling thread into the network namespace `fd`.
///
/// Only for threads dedicated to that namespace; prefer [`run_in`].
pub fn enter(fd: BorrowedFd<'_>) -> Result<(), NetnsError> {
    // SAFETY: setns on a valid descriptor affects only the calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(syscall_error("setns(CLONE_NEWNET)"));
    }
    Ok(())
}

fn syscall_error(call: &'static str) -> NetnsError {
    NetnsError::Syscall {
        call,
        source: io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_stable_nonzero_cookie() {
        let here = current_cookie().expect("SO_NETNS_COOKIE needs Linux 5.14+");
        assert_ne!(here, 0);
        assert_eq!(
            cookie_of_path(Path::new("/proc/self/ns/net")).ok(),
            Some(here)
        );
    }

    #[test]
    fn missing_namespace_path_is_reported_with_the_path() {
        let err = cookie_of_path(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
