//! The `containerboot` binary: parse the command line, build the settings,
//! run the shell, exit with its code. It holds no simulator: whatever name
//! it runs under, it is containerboot (the simulator is `tailscaled-sim`).

use containerboot::settings::Settings;
use containerboot::trace::{render, replay};
use containerboot::{logging, plan, shell};

const USAGE: &str = "usage: containerboot [COMMAND]
  run                      boot tailscaled as the TS_* variables say (the default)
  check [--json]           print what a start would do, or every configuration error
  replay FILE              replay a state trace; exit 0 only if every step is identical
  trace render FILE [--format mermaid|dot]
                           draw the transitions a state trace took
  demo                     run `tailscaled-sim demo` from beside this binary (the
                           simulator is not part of containerboot)
  version                  print the version";

/// How many steps a failing run prints to stderr.
const STEPS_ON_FAILURE: usize = 50;

/// Memory is handed back to the kernel when it is freed. glibc's
/// allocator raises its mmap threshold to the size of each large block
/// freed (up to 32 MiB), after which blocks that size come from the heap
/// and stay resident: one multi-megabyte netmap line would keep
/// containerboot at that size for good (22.8 MiB after a 17.8 MiB Notify,
/// benches/netmap.rs). A fixed threshold turns that off: large blocks are
/// mapped and unmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called first
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

fn main() {
    return_freed_memory();
    let mut rest = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(a) => rest.push(a),
            Err(bad) => std::process::exit(usage_error(&format!(
                "the argument {bad:?} is not valid UTF-8: containerboot's commands and file names must be"
            ))),
        }
    }
    logging::init();
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let code = match words.as_slice() {
        [] | ["run"] => run(),
        ["demo"] => demo(),
        ["check"] => check(false),
        ["check", "--json"] => check(true),
        ["replay", file] => replay_file(file),
        ["trace", "render", file] => render_file(file, render::Format::Mermaid),
        ["trace", "render", file, "--format", f] | ["trace", "render", "--format", f, file] => {
            match *f {
                "mermaid" => render_file(file, render::Format::Mermaid),
                "dot" => render_file(file, render::Format::Dot),
                other => usage_error(&format!("unknown format {other:?}: use mermaid or dot")),
            }
        }
        ["version" | "--version"] => {
            out(&format!("containerboot {}\n", env!("CARGO_PKG_VERSION")));
            0
        }
        ["help" | "-h" | "--help"] => {
            out(&format!("{USAGE}\n"));
            0
        }
        _ => usage_error(&format!("unknown command line {rest:?}")),
    };
    std::process::exit(code);
}

/// The simulator's binary, which `containerboot demo` runs.
const SIMULATOR: &str = "tailscaled-sim";

/// `containerboot demo`: the demo lives in the simulator's binary, so the
/// product carries no simulator; this hands over to `tailscaled-sim demo`
/// found beside this executable (a build's target directory, or the demo's
/// empty root), and says so when it is not there.
fn demo() -> i32 {
    use std::os::unix::process::CommandExt as _;
    let sim = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(SIMULATOR),
        Err(e) => {
            err(&format!(
                "containerboot demo: finding this executable (/proc/self/exe): {e}\n"
            ));
            return 1;
        }
    };
    // Returns only when the exec failed.
    let e = std::process::Command::new(&sim).arg("demo").exec();
    if e.kind() == std::io::ErrorKind::NotFound {
        err(&format!(
            "containerboot demo: the demo is run by the simulator binary {SIMULATOR}, \
             which is not beside this one ({} is missing); build it with \
             `cargo build --features sim --bin {SIMULATOR}`, or run \
             `cargo run --features sim --bin {SIMULATOR} -- demo`\n",
            sim.display()
        ));
    } else {
        err(&format!(
            "containerboot demo: running {}: {e}\n",
            sim.display()
        ));
    }
    1
}

/// Writes to stdout. A closed pipe (`containerboot check | head -1`) or a
/// full disk is not worth a panic, whose exit code 101 would hide the real
/// one: the error is dropped.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

/// Writes to stderr, as [`out`] does to stdout.
fn err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn usage_error(why: &str) -> i32 {
    err(&format!("containerboot: {why}\n{USAGE}\n"));
    2
}

fn settings_or_report() -> Option<Settings> {
    match containerboot::env::settings() {
        Ok(s) => Some(s),
        Err(errors) => {
            for e in &errors.0 {
                log::error!("invalid configuration: {e}");
            }
            None
        }
    }
}

fn run() -> i32 {
    let Some(settings) = settings_or_report() else {
        return 1;
    };
    let outcome = shell::run(settings, shell::Options::default());
    if outcome.code != 0 {
        // What a crash-looping pod leaves in `kubectl logs --previous`.
        log::error!(
            "exiting with code {}; the last steps of the state trace:",
            outcome.code
        );
        err(&outcome.trace.render_compact(STEPS_ON_FAILURE));
    }
    outcome.code
}

/// What `TS_DEBUG_FIREWALL_MODE=auto` would choose here and why: the same
/// census a start takes (read-only listings, nothing changed), its programs
/// reaped on SIGCHLD by the same source a run uses.
fn auto_choice() -> String {
    use containerboot::exec::netfilter::auto;
    use std::sync::Arc;
    let signals = match containerboot::sources::signals::install() {
        Ok(s) => s,
        Err(e) => return format!("not known: installing signal handlers: {e}"),
    };
    let reaper = Arc::new(containerboot::children::Reaper::default());
    let (choice, why) = smol::block_on(async {
        // Nobody reads the termination events of a check: the channel only
        // keeps the source running while the census does.
        let (tx, _rx) = smol::channel::unbounded();
        let _source = smol::spawn(containerboot::sources::signals::forward(
            signals,
            tx,
            reaper.clone(),
        ));
        smol::unblock(move || auto::decide(&auto::census(&reaper))).await
    });
    let name = match choice {
        auto::Choice::Nftables => "nftables",
        auto::Choice::Iptables => "iptables",
        auto::Choice::IptablesLegacy => "iptables (legacy)",
    };
    format!("{name} ({why})")
}

fn check(json: bool) -> i32 {
    let Some(settings) = settings_or_report() else {
        return 1;
    };
    if let Some(path) = &settings.serve_config {
        let valid = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|text| containerboot::machine::serve::parse_config(&text));
        if let Err(why) = valid {
            log::error!(
                "invalid configuration: TS_SERVE_CONFIG={:?}: {why} (a start would log this and apply the file once it is fixed)",
                path.display().to_string()
            );
            return 1;
        }
    }
    let mut plan = plan::plan(&settings);
    if settings.firewall == containerboot::settings::FirewallMode::Auto
        && settings.wants_proxy()
        && !settings.userspace
        && !settings.test.fake_netfilter
    {
        plan.netfilter.auto_choice = Some(auto_choice());
    }
    if json {
        match serde_json::to_string_pretty(&plan) {
            Ok(s) => out(&format!("{s}\n")),
            Err(e) => {
                log::error!("encoding the plan: {e}");
                return 1;
            }
        }
    } else {
        out(&plan.to_text());
    }
    0
}

fn read_trace(file: &str) -> Result<replay::Recorded, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
    replay::parse(&text).map_err(|e| format!("{file}: {e}"))
}

fn replay_file(file: &str) -> i32 {
    let recorded = match read_trace(file) {
        Ok(r) => r,
        Err(e) => {
            err(&format!("containerboot replay: {e}\n"));
            return 2;
        }
    };
    match replay::replay(&recorded) {
        Ok(n) => {
            out(&format!("replayed {n} steps: identical\n"));
            0
        }
        Err(d) => {
            out(&format!("replay diverged at {d}\n"));
            1
        }
    }
}

fn render_file(file: &str, format: render::Format) -> i32 {
    match read_trace(file) {
        Ok(r) => {
            out(&render::render(&r.steps, format));
            0
        }
        Err(e) => {
            err(&format!("containerboot trace render: {e}\n"));
            2
        }
    }
}
