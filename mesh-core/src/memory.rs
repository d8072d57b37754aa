//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps memory freed by connections that ended (in every thread's arena) and
//! reuses it, so a proxy's resident size stays at its peak after a burst of load. Every
//! [`TRIM_INTERVAL`], [`trim_periodically`] asks glibc to return free pages (`malloc_trim`, which
//! releases whole free pages inside every arena, not only at the heap's top; with little free it
//! costs microseconds). Other C libraries: nothing to do.

use std::time::Duration;

use crate::drain::DrainWatch;

/// How often to look.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Returns free memory to the system every [`TRIM_INTERVAL`] until `drain`.
pub async fn trim_periodically(mut drain: DrainWatch) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        // A few milliseconds for a large heap: off the runtime's worker threads.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Releases free heap pages to the system; returns whether any were released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn freed_memory_goes_back_after_a_trim() {
        // Many mid-sized blocks (below the mmap threshold, so they live in the heap), touched so
        // they are resident; every other one kept so the heap cannot simply shrink at its top.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 32 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(64).collect();
        let before = rss_kib();
        assert!(trim(), "128 MiB of free heap and nothing released");
        let after = rss_kib();
        assert!(
            after + 64 * 1024 < before,
            "RSS went from {before} KiB to {after} KiB"
        );
        drop(kept);
    }
}
