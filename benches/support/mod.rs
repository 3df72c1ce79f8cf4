//! What the process-level benches share: the simulator on PATH, a number
//! from the environment, a field of `/proc/PID/status`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `dir/bin` holding the simulator as `tailscaled` and `tailscale`: put it
/// first on a subject's PATH.
pub fn sim_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["tailscaled", "tailscale"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tailscaled-sim"), bin.join(name)).unwrap();
    }
    bin
}

/// The environment variable `name` as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `kB` field of `/proc/<pid>/status` (`pid` "self" for this process),
/// e.g. `VmRSS:`; 0 when it cannot be read.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
