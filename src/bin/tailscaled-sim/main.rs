//! `tailscaled-sim`: the tailscaled simulator. It stands in for the real
//! `tailscaled` daemon and the `tailscale` CLI in tests and in the demo.
//!
//! It is not part of the product: a binary of its own, built only with the
//! `sim` feature (which `cargo test` turns on), so the `containerboot`
//! binary never becomes a fake tailscaled, whatever name it runs under.
//!
//! It is installed (symlinked or copied) as `tailscaled` and `tailscale` in
//! a `PATH` directory, busybox style; [`dispatch`] picks the role from
//! `argv[0]`. Under its own name it knows one verb, `demo`.
//!
//! Environment:
//! - `SIM_RECORD=FILE`: both roles append one JSON line
//!   `{"prog":"tailscaled"|"tailscale","args":[...]}` to FILE at start;
//!   the daemon appends `{"prog":"serve-config","args":[status, if-match,
//!   body]}` for each serve-config POST.
//! - `SIM_SCRIPT=FILE`: the daemon reads its behaviour from FILE, a JSON
//!   [`script::Script`]; a bad file is an error (exit 1).
//!
//! The daemon serves the LocalAPI (`watch-ipn-bus`, `serve-config`) on its
//! `--socket`, plus `/localapi/v0/sim/up` and `/localapi/v0/sim/set`, which
//! the simulated CLI posts its flags to. With `--statedir=D` and state on
//! disk, a login is remembered in `D/sim-state.json`.

mod cli;
mod client;
mod daemon;
mod demo;
mod flags;
mod kubestore;
mod script;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::Path;

const USAGE: &str = "usage: tailscaled-sim COMMAND
  demo       boot containerboot against the simulator in a temporary root
  version    print the version
As tailscaled or tailscale (a symlink or copy by that name), it is the
simulated daemon or CLI.";

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    if let Some(code) = dispatch(&argv0, rest.clone()) {
        std::process::exit(code);
    }
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let code = match words.as_slice() {
        ["demo"] => {
            containerboot::logging::init();
            demo::run()
        }
        ["version" | "--version"] => {
            println!("tailscaled-sim {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("tailscaled-sim: unknown command line {rest:?}\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs the simulator when `argv0` names `tailscaled` or `tailscale`;
/// returns its exit code, or `None` for any other name. `args` excludes
/// `argv0`.
fn dispatch(argv0: &str, args: Vec<String>) -> Option<i32> {
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
