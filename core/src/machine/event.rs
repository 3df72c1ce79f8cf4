//! Inputs to the core: everything that can happen to containerboot.

use crate::ipn::{IpnState, Node};
use serde::{Deserialize, Serialize};

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessExit {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessExit::Code(c) => write!(f, "exit status {c}"),
            ProcessExit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// The two CLI runs containerboot makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cli {
    /// `tailscale up`
    Up,
    /// `tailscale set`
    Set,
}

impl std::fmt::Display for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cli::Up => "up",
            Cli::Set => "set",
        })
    }
}

/// What a CLI run came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CliOutcome {
    /// The process ran and ended.
    Exited {
        /// How it ended.
        status: ProcessExit,
        /// What it wrote to stderr (bounded).
        stderr: String,
    },
    /// It could not be started at all.
    SpawnFailed {
        /// The OS error from spawning it (e.g. not on `PATH`).
        message: String,
    },
}

/// The kernel-mode preparation step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepStep {
    /// Creating `dev/net/tun`.
    Tun,
    /// Enabling IP forwarding.
    Forwarding,
}

/// Termination signals containerboot acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sig {
    /// SIGTERM
    Term,
    /// SIGINT
    Int,
    /// SIGUSR1: dump the trace.
    Usr1,
    /// SIGHUP: shut down, as SIGTERM (there is nothing to reload).
    Hup,
    /// SIGQUIT: shut down, as SIGTERM.
    Quit,
    /// SIGUSR2: no meaning here; noted and ignored rather than fatal.
    Usr2,
}

/// What a reconciliation of the proxy rules came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcileOutcome {
    /// The installed rules of ours now equal the rule set asked for.
    Done {
        /// The backend that did it (`Auto` resolved).
        backend: super::rules::NetfilterBackend,
        /// Why that backend (for `Auto`: what the host already uses).
        why: String,
        /// What was found and changed.
        counts: super::rules::RuleCounts,
    },
    /// Nothing was changed, or the change was rolled back.
    Failed {
        /// The backend, the operation, the kernel's or command's error and
        /// the fix.
        error: String,
    },
}

/// One IPN bus message, reduced to what the core reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BusMessage {
    /// The backend state, when it changed (by name in a trace).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::ipn::state_by_name"
    )]
    pub state: Option<IpnState>,
    /// The netmap, when it changed (a whole one: the first of a watch, or
    /// every change from daemons before the deltas below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_map: Option<NetMapView>,
    /// This node, when it changed without a whole netmap (`SelfChange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_change: Option<Node>,
    /// Peers added or replaced that match the egress FQDN
    /// (`PeersChanged`, cut down like `matching_peers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_changed: Vec<Node>,
    /// IDs of peers that no longer match: removed (`PeersRemoved`), or
    /// replaced by a node of another name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_gone: Vec<u64>,
}

impl BusMessage {
    /// Whether it carries a netmap change without a whole netmap.
    pub fn has_delta(&self) -> bool {
        self.self_change.is_some() || !self.peers_changed.is_empty() || !self.peers_gone.is_empty()
    }
}

impl NetMapView {
    /// The view after the deltas of `m`: the self node replaced, matching
    /// peers upserted by ID, peers gone removed; peers stay in ID order.
    pub fn apply_delta(&mut self, m: &BusMessage) {
        if let Some(node) = &m.self_change {
            self.self_node = node.clone();
        }
        self.matching_peers.retain(|p| {
            !m.peers_gone.contains(&p.id) && !m.peers_changed.iter().any(|c| c.id == p.id)
        });
        self.matching_peers.extend(m.peers_changed.iter().cloned());
        self.matching_peers.sort_by_key(|p| p.id);
    }
}

/// The parts of a netmap the core uses: the peer list is cut down to the
/// peers matching `TS_TAILNET_TARGET_FQDN`, so a trace of a large tailnet
/// stays small.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetMapView {
    /// This node.
    pub self_node: Node,
    /// Peers whose name matches the egress FQDN, in netmap order.
    #[serde(default)]
    pub matching_peers: Vec<Node>,
    /// The first cert domain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_domain: Option<String>,
}

impl BusMessage {
    /// Decodes one bus line (a JSON `Notify`) into what the core reads,
    /// keeping only the peers that match `fqdn`, in one pass
    /// (`crate::notify`).
    pub fn decode(line: &[u8], fqdn: Option<&str>) -> Result<BusMessage, serde_json::Error> {
        crate::notify::decode(line, fqdn)
    }

    /// Reduces a bus `Notify`, keeping only peers that match `fqdn`.
    pub fn from_notify(n: crate::ipn::Notify, fqdn: Option<&str>) -> BusMessage {
        let (peers_changed, mut peers_gone): (Vec<Node>, Vec<Node>) = match fqdn {
            Some(want) => n
                .peers_changed
                .into_iter()
                .partition(|p| fqdn_matches(&p.name, want)),
            None => (Vec::new(), Vec::new()),
        };
        let mut gone: Vec<u64> = peers_gone.drain(..).map(|p| p.id).collect();
        if fqdn.is_some() {
            gone.extend(n.peers_removed);
        }
        BusMessage {
            self_change: n.self_change,
            peers_changed,
            peers_gone: gone,
            state: n.state,
            net_map: n.net_map.map(|nm| NetMapView {
                matching_peers: match fqdn {
                    Some(want) => nm
                        .peers
                        .into_iter()
                        .filter(|p| fqdn_matches(&p.name, want))
                        .collect(),
                    None => Vec::new(),
                },
                self_node: nm.self_node,
                cert_domain: nm.dns.cert_domains.into_iter().next(),
            }),
        }
    }
}

/// Whether a node name matches a configured FQDN: case-insensitive, as
/// upstream, and ignoring the trailing dot real netmaps carry (upstream
/// required the user to write it; both forms are accepted here).
pub fn fqdn_matches(name: &str, want: &str) -> bool {
    name.trim_end_matches('.')
        .eq_ignore_ascii_case(want.trim_end_matches('.'))
}

/// Everything that can happen to containerboot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The shell is ready; begin.
    Start,
    /// Kernel-mode preparation succeeded.
    KernelPrepared,
    /// Kernel-mode preparation failed.
    KernelPrepFailed {
        /// The tun device or the forwarding sysctls.
        step: PrepStep,
        /// The OS error.
        error: String,
    },
    /// tailscaled could not be started.
    TailscaledSpawnFailed {
        /// The OS error from spawning it (e.g. not on `PATH`).
        error: String,
    },
    /// The LocalAPI socket exists.
    SocketReady,
    /// Watching for the socket failed.
    SocketWaitFailed {
        /// What inotify or the directory walk reported.
        error: String,
    },
    /// The conventional socket symlink could not be made.
    SymlinkFailed {
        /// The OS error, naming the file.
        error: String,
    },
    /// A bus watch was opened.
    BusOpened {
        /// The watch it belongs to.
        watch: u64,
    },
    /// A bus watch could not be opened, or broke.
    BusFailed {
        /// The watch it belongs to.
        watch: u64,
        /// The connection or HTTP error.
        error: String,
    },
    /// A message on a bus watch.
    Bus {
        /// The watch it belongs to.
        watch: u64,
        /// The message, reduced to what the core reads.
        message: BusMessage,
    },
    /// tailscaled closed a bus watch.
    BusEnded {
        /// The watch it belongs to.
        watch: u64,
    },
    /// A CLI run ended.
    CliFinished {
        /// `up` or `set`.
        cli: Cli,
        /// Its exit status and stderr, or why it could not start.
        outcome: CliOutcome,
    },
    /// A `ReconcileRules` answered.
    RulesReconciled {
        /// What it came to.
        outcome: ReconcileOutcome,
    },
    /// tailscaled exited.
    TailscaledExited {
        /// Its exit code or the signal that killed it.
        status: ProcessExit,
    },
    /// A termination signal arrived.
    Signal {
        /// SIGTERM, SIGINT or SIGUSR1.
        signal: Sig,
    },
    /// The timer for `Machine::next_deadline` fired.
    DeadlineExpired,
    /// One armed timer is due (the machine makes these from
    /// `DeadlineExpired`, one per wake-up).
    Timeout {
        /// The timer that was due (removed from the table before this).
        deadline: super::ctx::Deadline,
    },
    /// A Kubernetes API call came back.
    Kube {
        /// The call, as asked.
        call: super::kube::KubeCall,
        /// What it came to.
        reply: super::kube::KubeReply,
    },
    /// The serve config file was read (at the start of its watch, and
    /// after each change to its directory).
    ServeConfigRead {
        /// Its text (not yet checked).
        content: String,
    },
    /// The serve config file could not be read (missing, unreadable), or
    /// its directory could not be watched.
    ServeConfigUnreadable {
        /// The OS error, naming the file.
        error: String,
    },
    /// A `FetchDnsConfig` answered.
    DnsConfigFetched {
        /// `CertDomains[0]` of tailscaled's DNS config, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cert_domain: Option<String>,
        /// Why it could not be read, if it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A `SetServeConfig` answered.
    ServeConfigSet {
        /// Why it failed (after re-reading on 412s), if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The tailscaled config file (`EXPERIMENTAL_TS_CONFIGFILE_PATH`) was
    /// read (at the start of its watch, and after each change).
    ConfigFileRead {
        /// A digest of its text (SHA-256, hex): the text itself may hold
        /// the auth key and is kept out of the core and the trace.
        digest: String,
        /// What `settings::check_config_text` found wrong with it: HuJSON
        /// with line and column, an object, `"Version": "alpha0"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problem: Option<String>,
    },
    /// The tailscaled config file could not be read (missing, unreadable).
    ConfigFileUnreadable {
        /// The OS error.
        error: String,
    },
    /// A `ReloadConfig` answered.
    ConfigReloaded {
        /// What tailscaled said.
        outcome: super::config_reload::ReloadOutcome,
    },
    /// inotify is unavailable for a watched path (its instance or watch
    /// limit reached, or another failure): the source checks it every
    /// `every_ms` instead.
    WatchFallback {
        /// The file (or socket) watched.
        path: std::path::PathBuf,
        /// What failed.
        error: String,
        /// The sysctl to raise, when a limit was reached
        /// (`fs.inotify.max_user_instances` or `fs.inotify.max_user_watches`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sysctl: Option<String>,
        /// How often the path is checked now.
        every_ms: u64,
    },
    /// The trace was written (or not) after `DumpTrace`.
    TraceDumped {
        /// `TS_TRACE_FILE`.
        path: std::path::PathBuf,
        /// How many steps it holds.
        steps: usize,
        /// Why it could not be written.
        error: Option<String>,
    },
}
