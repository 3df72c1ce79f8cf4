//! Outputs of the core: each carries everything its executor needs.

use super::event::Cli;
use super::rules::{NetfilterBackend, Rule};
pub use crate::secret::Arg;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// Normal progress.
    Info,
    /// Something was skipped or degraded.
    Warn,
    /// The reason containerboot is exiting.
    Error,
}

/// A signal for tailscaled's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillSignal {
    /// Ask it to stop.
    Term,
    /// Make it stop.
    Kill,
}

/// Everything containerboot can do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Write a log line.
    Log {
        /// Info for progress, Warn for what was skipped, Error for why it exits.
        level: Level,
        /// The line, after `boot: <time> `.
        message: String,
    },
    /// Create `dev/net/tun` if missing, then enable forwarding as asked.
    PrepareKernel {
        /// The filesystem root (`TS_TEST_ONLY_ROOT`).
        root: PathBuf,
        /// Enable `proc/sys/net/ipv4/ip_forward`.
        ipv4_forwarding: bool,
        /// Enable `proc/sys/net/ipv6/conf/all/forwarding`.
        ipv6_forwarding: bool,
    },
    /// Start tailscaled in its own process group.
    SpawnTailscaled {
        /// The full command line, program first.
        argv: Vec<String>,
    },
    /// Report `SocketReady` once `path` exists.
    WaitSocket {
        /// `TS_SOCKET`.
        path: PathBuf,
    },
    /// Open a bus watch, closing any open one.
    WatchBus {
        /// Its number; events from it carry this.
        watch: u64,
        /// The `mask` parameter (by bit name in a trace).
        #[serde(with = "crate::ipn::mask::by_name")]
        mask: u32,
        /// `TS_TAILNET_TARGET_FQDN`: the peers whose name matches it are
        /// kept when a netmap is reduced for the core.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fqdn: Option<String>,
    },
    /// Make `link` a symlink to `target` (creating its directory, 0700);
    /// failure is a warning.
    SymlinkSocket {
        /// The conventional socket path under the root.
        link: PathBuf,
        /// `TS_SOCKET`.
        target: PathBuf,
    },
    /// Run the CLI and report `CliFinished`.
    RunCli {
        /// `up` or `set`; its `CliFinished` carries the same.
        cli: Cli,
        /// The full command line, program first.
        argv: Vec<Arg>,
    },
    /// Read back the proxy rules of ours, make them equal `rules` (adding,
    /// removing and de-duplicating in one transaction per family, touching
    /// nothing that is not ours) and report `RulesReconciled`.
    ReconcileRules {
        /// With which backend.
        backend: NetfilterBackend,
        /// The whole desired rule set (a set: sorted, each rule once).
        rules: Vec<Rule>,
    },
    /// Signal the CLI run in flight, if it still runs.
    SignalCli {
        /// `up` or `set`: only that run is signalled, if it still runs.
        cli: Cli,
        /// SIGTERM on shutdown.
        signal: KillSignal,
    },
    /// Signal tailscaled's process group.
    SignalTailscaled {
        /// SIGTERM, or SIGKILL after the grace or on a second signal.
        signal: KillSignal,
    },
    /// Write the whole trace to `path` (temp file + rename, mode 0600) and
    /// report `TraceDumped`.
    DumpTrace {
        /// `TS_TRACE_FILE`.
        path: PathBuf,
    },
    /// Make one Kubernetes API call (off the event loop) and report `Kube`.
    Kube {
        /// The request to make; the reply comes back with it.
        call: super::kube::KubeCall,
    },
    /// Watch the serve config file: report `ServeConfigRead` (or
    /// `ServeConfigUnreadable`) now and after each change in its directory.
    WatchServeConfig {
        /// `TS_SERVE_CONFIG`.
        path: PathBuf,
    },
    /// Watch the tailscaled config file: report `ConfigFileRead` (or
    /// `ConfigFileUnreadable`) now and after each change in its directory.
    WatchConfigFile {
        /// `EXPERIMENTAL_TS_CONFIGFILE_PATH`.
        path: std::path::PathBuf,
    },
    /// `POST /localapi/v0/reload-config` and report `ConfigReloaded`.
    ReloadConfig {
        /// `TS_SOCKET`.
        socket: std::path::PathBuf,
    },
    /// Replace tailscaled's serve config with `config` (GET for the ETag,
    /// POST with `If-Match`, again on 412) and report `ServeConfigSet`.
    SetServeConfig {
        /// `TS_SOCKET`.
        socket: PathBuf,
        /// The whole config (`{}` clears it).
        config: serde_json::Value,
    },
    /// `GET /localapi/v0/dns-config` and report `DnsConfigFetched`: the
    /// cert domain after a `SelfChange` (tailscaled 1.102 sends no DNS
    /// changes on the bus).
    FetchDnsConfig {
        /// `TS_SOCKET`.
        socket: PathBuf,
    },
    /// Print the startup-complete line.
    AnnounceStartupComplete,
    /// Exit the process.
    Exit {
        /// The exit code.
        code: i32,
    },
}

/// The key log line, verbatim (docs/protocols.md §7).
pub const STARTUP_COMPLETE: &str = "Startup complete, waiting for shutdown signal";
