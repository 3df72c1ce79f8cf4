//! The tailscaled simulator: stands in for the real `tailscaled` daemon and
//! the `tailscale` CLI in tests and in the demo.
//!
//! The containerboot binary is installed (symlinked or copied) as
//! `tailscaled` and `tailscale` in a `PATH` directory, busybox style;
//! [`dispatch`] picks the role from `argv[0]`.
//!
//! Environment:
//! - `SIM_RECORD=FILE`: both roles append one JSON line
//!   `{"prog":"tailscaled"|"tailscale","args":[...]}` to FILE at start.
//! - `SIM_SCRIPT=FILE`: the daemon reads its behaviour from FILE, a JSON
//!   [`script::Script`]; a bad file is an error (exit 1).
//!
//! The daemon serves the LocalAPI (`watch-ipn-bus`, `serve-config`) on its
//! `--socket`, plus `/localapi/v0/sim/up` and `/localapi/v0/sim/set`, which
//! the simulated CLI posts its flags to. With `--statedir=D` and state on
//! disk, a login is remembered in `D/sim-state.json`.

mod cli;
mod daemon;
mod flags;
mod kubestore;
pub mod script;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::Path;

/// Runs the simulator when `argv0` names `tailscaled` or `tailscale`;
/// returns its exit code, or `None` for any other name. `args` excludes
/// `argv0`.
pub fn dispatch(argv0: &str, args: Vec<String>) -> Option<i32> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    match name {
        "tailscaled" => {
            record("tailscaled", &args);
            Some(daemon::main(args))
        }
        "tailscale" => {
            record("tailscale", &args);
            Some(cli::run(args))
        }
        _ => None,
    }
}

/// Appends `{"prog":..,"args":[..]}` to `$SIM_RECORD`, if set.
fn record(prog: &str, args: &[String]) {
    let Some(path) = std::env::var_os("SIM_RECORD").filter(|p| !p.is_empty()) else {
        return;
    };
    if let Err(e) = append_record(Path::new(&path), prog, args) {
        eprintln!("sim-{prog}: SIM_RECORD={}: {e}", Path::new(&path).display());
    }
}

/// Appends one JSON line to `path` with `O_APPEND`, in one write.
fn append_record(path: &Path, prog: &str, args: &[String]) -> std::io::Result<()> {
    let mut line = serde_json::json!({ "prog": prog, "args": args }).to_string();
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}
