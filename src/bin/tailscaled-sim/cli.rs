//! The simulated `tailscale` CLI: `up` and `set`, forwarded to the
//! simulated daemon's `/localapi/v0/sim/{up,set}` as a JSON object of the
//! flags given (names without dashes, values as strings).

use super::client;
use super::daemon::DEFAULT_SOCKET;
use super::flags::{self, Kind};
use containerboot::sources::localapi::LocalApiError;
use hyper::Method;
use ipnetwork::IpNetwork;
use serde_json::Value;
use smol::future::FutureExt as _;
use std::collections::BTreeMap;

const GLOBAL: &[(&str, Kind)] = &[("socket", Kind::Value)];

/// Flags of `up` and `set`; `authkey` is `up` only.
const UP: &[(&str, Kind)] = &[
    ("accept-dns", Kind::Bool),
    ("accept-routes", Kind::Bool),
    ("advertise-exit-node", Kind::Bool),
    ("advertise-routes", Kind::Value),
    ("advertise-tags", Kind::Value),
    ("authkey", Kind::Value),
    ("auth-key", Kind::Value),
    ("exit-node", Kind::Value),
    ("exit-node-allow-lan-access", Kind::Bool),
    ("force-reauth", Kind::Bool),
    ("hostname", Kind::Value),
    ("json", Kind::Bool),
    ("login-server", Kind::Value),
    ("netfilter-mode", Kind::Value),
    ("operator", Kind::Value),
    ("reset", Kind::Bool),
    ("shields-up", Kind::Bool),
    ("snat-subnet-routes", Kind::Bool),
    ("ssh", Kind::Bool),
    ("timeout", Kind::Value),
];

const NOT_RUNNING: &str = "failed to connect to local tailscaled; it doesn't appear to be running";

fn usage() {
    eprintln!("USAGE\n  tailscale [--socket=PATH] <up|set> [flags]");
}

fn sub_usage(sub: &str, defs: &[(&str, Kind)]) {
    eprintln!("USAGE\n  tailscale {sub} [flags]\n\nFLAGS");
    for (name, kind) in defs {
        match kind {
            Kind::Bool => eprintln!("  --{name}, --{name}=false"),
            Kind::Value => eprintln!("  --{name} string"),
        }
    }
}

/// Runs the CLI; returns the exit code.
pub(crate) fn run(args: Vec<String>) -> i32 {
    let global = match flags::parse(GLOBAL, &args) {
        Ok(p) => p,
        Err(flags::FlagError::Help) => {
            usage();
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            usage();
            return 2;
        }
    };
    let socket = global.get("socket").unwrap_or(DEFAULT_SOCKET).to_string();
    let Some((sub, sub_args)) = global.rest.split_first() else {
        usage();
        return 1;
    };
    let defs: Vec<(&str, Kind)> = match sub.as_str() {
        "up" => UP.to_vec(),
        "set" => UP
            .iter()
            .copied()
            .filter(|(n, _)| *n != "authkey" && *n != "auth-key")
            .collect(),
        other => {
            eprintln!("tailscale: unknown subcommand {other:?} (the simulator knows up and set)");
            return 1;
        }
    };
    let parsed = match flags::parse(&defs, sub_args) {
        Ok(p) => p,
        Err(flags::FlagError::Help) => {
            sub_usage(sub, &defs);
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            sub_usage(sub, &defs);
            return 2;
        }
    };
    if !parsed.rest.is_empty() {
        eprintln!("too many non-flag arguments: {:?}", parsed.rest);
        return 1;
    }
    let mut body: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parsed.values {
        let name = if name == "auth-key" { "authkey" } else { name };
        body.insert(name.to_string(), value.clone());
    }
    if let Some(routes) = body.get("advertise-routes") {
        for r in routes.split(',').filter(|r| !r.is_empty()) {
            match r.parse::<IpNetwork>() {
                Ok(n) if n.ip() == n.network() => {}
                Ok(n) => {
                    eprintln!(
                        "{r} has non-address bits set; expected {}/{}",
                        n.network(),
                        n.prefix()
                    );
                    return 1;
                }
                Err(_) => {
                    eprintln!("{r:?} is not a valid IP address or CIDR prefix");
                    return 1;
                }
            }
        }
    }
    let timeout = match body.get("timeout") {
        None => None,
        Some(t) => match flags::parse_duration(t) {
            Some(d) if !d.is_zero() => Some(d),
            Some(_) => None,
            None => {
                eprintln!("invalid value {t:?} for flag -timeout: parse error");
                sub_usage(sub, &defs);
                return 2;
            }
        },
    };
    leave_orphans();
    let path = format!("/localapi/v0/sim/{sub}");
    let payload = match serde_json::to_vec(&body) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tailscale: encoding request: {e}");
            return 1;
        }
    };
    let socket = std::path::PathBuf::from(socket);
    let call = async { Some(client::call(&socket, Method::POST, &path, payload).await) };
    let result = smol::block_on(call.or(async {
        match timeout {
            Some(d) => {
                smol::Timer::after(d).await;
                None
            }
            None => smol::future::pending().await,
        }
    }));
    match result {
        None => {
            eprintln!(
                "timeout waiting for Tailscale service to enter a Running state; check health with \"tailscale status\""
            );
            1
        }
        Some(Ok(answer)) => {
            if let Ok(v) = serde_json::from_slice::<Value>(&answer)
                && let Some(msg) = v.get("stderr").and_then(Value::as_str)
            {
                print_line(msg);
            }
            0
        }
        Some(Err(LocalApiError::Connect(_))) => {
            eprintln!("{NOT_RUNNING}");
            1
        }
        Some(Err(LocalApiError::Status { code, body })) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| format!("{code}: {}", body.trim()));
            match v.get("exit_code").and_then(Value::as_i64) {
                // A scripted failure: print exactly what the script says.
                Some(c) => {
                    print_line(&msg);
                    i32::try_from(c).unwrap_or(1)
                }
                None => {
                    eprintln!("backend error: {msg}");
                    1
                }
            }
        }
        Some(Err(e)) => {
            eprintln!("{e}");
            1
        }
    }
}

fn print_line(msg: &str) {
    if msg.ends_with('\n') {
        eprint!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// Leaves `cli_orphans` (from `SIM_SCRIPT`) short-lived orphans behind:
/// `sh` backgrounds that many `sleep 0.3` and exits, so they are
/// re-parented to the nearest subreaper (containerboot) and end while this
/// CLI run is still in flight.
fn leave_orphans() {
    let Some(path) = std::env::var_os("SIM_SCRIPT").filter(|p| !p.is_empty()) else {
        return;
    };
    let n = match super::script::Script::load(std::path::Path::new(&path)) {
        Ok(s) => s.cli_orphans,
        Err(_) => return,
    };
    if n == 0 {
        return;
    }
    let script = format!("i=0; while [ $i -lt {n} ]; do sleep 0.3 & i=$((i+1)); done");
    if let Err(e) = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
    {
        eprintln!("tailscale: leaving orphans: {e}");
    }
}
