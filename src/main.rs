//! The `containerboot` binary: parse the command line, build the settings,
//! run the shell, exit with its code. Under the names `tailscaled` and
//! `tailscale` it is the built-in simulator instead.

use containerboot::settings::Settings;
use containerboot::{demo, logging, shell, sim};

const USAGE: &str = "usage: containerboot [run | demo | version]
  run      boot tailscaled as configured by TS_* variables (the default)
  demo     boot the built-in tailscaled simulator in a temporary root
  version  print the version";

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    if let Some(code) = sim::dispatch(&argv0, rest.clone()) {
        std::process::exit(code);
    }
    logging::init();
    let code = match rest.first().map(String::as_str) {
        None | Some("run") => run(),
        Some("demo") => demo::run(),
        Some("version" | "--version") => {
            println!("containerboot {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("containerboot: unknown command {other:?}\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                log::error!("invalid configuration: {e}");
            }
            return 1;
        }
    };
    shell::run(settings, shell::Options::default()).code
}
