//! CPU time and memory of a running process, from /proc.

use anyhow::{bail, Context};

/// Clock ticks per second of /proc/<pid>/stat's CPU times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A process the bench watches (a node tunnel or the waypoint).
#[derive(Debug, Clone)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

impl Watched {
    /// User plus system CPU seconds of all its threads so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("{} (pid {}) is gone", self.label, self.pid))?;
        cpu_seconds_of(&stat).with_context(|| format!("parse /proc/{}/stat", self.pid))
    }

    /// Resident set size now, in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        self.status_kib("VmRSS:").map(|kib| kib / 1024.0)
    }

    /// Peak resident set size since start or the last [`Watched::reset_peak`], in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_kib("VmHWM:").map(|kib| kib / 1024.0)
    }

    /// Starts a new peak (writing 5 to clear_refs resets VmHWM to the current RSS).
    pub fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .with_context(|| format!("reset the peak RSS of {}", self.label))
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("{} (pid {}) is gone", self.label, self.pid))?;
        status_field_kib(&status, field)
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }
}

/// Fields 14 and 15 (utime, stime) of /proc/<pid>/stat; the command name (field 2) may hold
/// spaces and parentheses, so counting starts after its last `)`.
fn cpu_seconds_of(stat: &str) -> anyhow::Result<f64> {
    let after_name = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, index 11 here.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("too few fields");
    };
    let ticks = utime.parse::<u64>()? + stime.parse::<u64>()?;
    Ok(ticks as f64 / USER_HZ)
}

fn status_field_kib(status: &str, field: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_skips_a_command_name_with_spaces() {
        let stat = "4242 (mesh node) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 150 0 0 20 0 6 0 \
                    100 1000000 2000 18446744073709551615";
        assert_eq!(cpu_seconds_of(stat).unwrap(), 4.0);
        assert!(cpu_seconds_of("4242 (x) S 1").is_err());
    }

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tmesh-node\nVmHWM:\t   30720 kB\nVmRSS:\t   16384 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(16384.0));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(30720.0));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn watches_this_process() {
        let me = Watched {
            label: "xtask".into(),
            pid: std::process::id(),
        };
        assert!(me.rss_mib().unwrap() > 0.0);
        assert!(me.peak_rss_mib().unwrap() >= me.rss_mib().unwrap() * 0.5);
        assert!(me.cpu_seconds().unwrap() >= 0.0);
    }
}
