//! The simulated `tailscaled`: a LocalAPI server on a unix socket whose
//! backend walks through scripted IPN states.
//!
//! Everything runs on one thread (a `LocalExecutor`): the accept loop, one
//! task per connection, and the engine task that owns the state machine and
//! its timers. Handlers talk to the engine over a channel; watchers get
//! pre-encoded lines over their own channels.

use super::flags::{self, Kind};
use super::script::{NodePlan, Outcome, Plan, Script, TAILNET_DOMAIN};
use bytes::Bytes;
use containerboot::ipn::{IpnState, mask};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use smol::channel::{Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::net::unix::{UnixListener, UnixStream};
use smol::stream::StreamExt as _;
use smol::{LocalExecutor, Timer};
use smol_hyper::rt::FuturesIo;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Where the daemon listens without `--socket`.
pub(crate) const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";
/// The `Version` sent first on every watch.
pub(crate) const VERSION: &str = "1.56.1-sim";
/// The file, under `--statedir`, that remembers a login.
pub(crate) const STATE_FILE: &str = "sim-state.json";
/// How long shutdown waits for open connections to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

macro_rules! say {
    // A closed stderr is no reason to stop (a test closes containerboot's).
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "sim-tailscaled: {}", format_args!($($t)*));
    }};
}

/// The flags the real tailscaled accepts that containerboot may pass.
const FLAGS: &[(&str, Kind)] = &[
    ("socket", Kind::Value),
    ("state", Kind::Value),
    ("statedir", Kind::Value),
    ("tun", Kind::Value),
    ("socks5-server", Kind::Value),
    ("outbound-http-proxy-listen", Kind::Value),
    ("config", Kind::Value),
    ("verbose", Kind::Value),
    ("port", Kind::Value),
    ("no-logs-no-support", Kind::Bool),
    ("debug", Kind::Value),
    ("cleanup", Kind::Bool),
    ("bird-socket", Kind::Value),
];

fn usage() {
    eprintln!("Usage of tailscaled:");
    for (name, kind) in FLAGS {
        match kind {
            Kind::Bool => eprintln!("  -{name}"),
            Kind::Value => eprintln!("  -{name} string"),
        }
    }
}

/// The preferences the CLI sets, in Go's `ipn.Prefs` names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Prefs {
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    #[serde(rename = "RouteAll")]
    pub accept_routes: bool,
    #[serde(rename = "CorpDNS")]
    pub accept_dns: bool,
    #[serde(rename = "RunSSH")]
    pub ssh: bool,
    #[serde(rename = "WantRunning")]
    pub want_running: bool,
    #[serde(rename = "LoggedOut")]
    pub logged_out: bool,
    #[serde(rename = "Hostname")]
    pub hostname: String,
    #[serde(rename = "AdvertiseRoutes")]
    pub advertise_routes: Option<Vec<String>>,
    #[serde(rename = "AdvertiseExitNode", default)]
    pub advertise_exit_node: bool,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            control_url: "https://controlplane.tailscale.com".into(),
            accept_routes: false,
            accept_dns: true,
            ssh: false,
            want_running: false,
            logged_out: true,
            hostname: String::new(),
            advertise_routes: None,
            advertise_exit_node: false,
        }
    }
}

impl Prefs {
    /// Applies the CLI's flags (names without dashes, values as given).
    fn apply(&mut self, flags: &BTreeMap<String, String>) {
        let on = |name: &str| flags.get(name).and_then(|v| flags::parse_bool(v));
        if on("reset") == Some(true) {
            *self = Prefs {
                want_running: self.want_running,
                logged_out: self.logged_out,
                ..Prefs::default()
            };
        }
        if let Some(h) = flags.get("hostname") {
            self.hostname = h.clone();
        }
        if let Some(r) = flags.get("advertise-routes") {
            let routes: Vec<String> = r
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            self.advertise_routes = (!routes.is_empty()).then_some(routes);
        }
        if let Some(u) = flags.get("login-server") {
            self.control_url = u.clone();
        }
        if let Some(b) = on("accept-dns") {
            self.accept_dns = b;
        }
        if let Some(b) = on("accept-routes") {
            self.accept_routes = b;
        }
        if let Some(b) = on("ssh") {
            self.ssh = b;
        }
        if let Some(b) = on("advertise-exit-node") {
            self.advertise_exit_node = b;
        }
    }
}

/// What `--statedir` remembers across restarts.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    logged_in: bool,
    #[serde(default)]
    prefs: Option<Prefs>,
}

/// Everything the daemon needs to run.
pub(crate) struct DaemonOpts {
    /// The LocalAPI socket path.
    pub socket: PathBuf,
    /// `D/sim-state.json` when state is kept on disk.
    pub persist: Option<PathBuf>,
    /// The secret, with `--state=kube:NAME`.
    pub kube: Option<std::sync::Arc<super::kubestore::KubeStore>>,
    /// The checked script.
    pub plan: Plan,
    /// Whether to handle SIGTERM/SIGINT (off for in-process tests).
    pub signals: bool,
    /// Told once the socket is listening.
    pub ready: Option<Sender<()>>,
    /// `--config` names a file with an `AuthKey`: log in on start, as the
    /// real daemon does with a config file.
    pub config_login: bool,
    /// `--config`: the file `reload-config` loads again.
    pub config: Option<String>,
}

/// Whether the `--config` file at `path` carries a non-empty `AuthKey`.
fn config_has_auth_key(path: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let value: Result<serde_json::Value, _> =
        jsonc_parser::parse_to_serde_value(&text, &jsonc_parser::ParseOptions::default());
    value
        .ok()
        .and_then(|v| {
            v.get("AuthKey")
                .and_then(|k| k.as_str())
                .map(|k| !k.is_empty())
        })
        .unwrap_or(false)
}

/// The process entry point: parses the flags, reads `SIM_SCRIPT`, runs.
pub(crate) fn main(args: Vec<String>) -> i32 {
    let parsed = match flags::parse(FLAGS, &args) {
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
    if !parsed.rest.is_empty() {
        say!(
            "tailscaled does not take non-flag arguments: {:?}",
            parsed.rest
        );
        return 1;
    }
    let script = match std::env::var_os("SIM_SCRIPT") {
        Some(path) if !path.is_empty() => match Script::load(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                say!("SIM_SCRIPT={}: {e}", Path::new(&path).display());
                return 1;
            }
        },
        _ => Script::default(),
    };
    let plan = match script.plan() {
        Ok(p) => p,
        Err(e) => {
            let path = std::env::var_os("SIM_SCRIPT").unwrap_or_default();
            say!("SIM_SCRIPT={}: {e}", Path::new(&path).display());
            return 1;
        }
    };
    let opts = DaemonOpts {
        socket: PathBuf::from(parsed.get("socket").unwrap_or(DEFAULT_SOCKET)),
        persist: persist_path(parsed.get("state"), parsed.get("statedir")),
        kube: parsed
            .get("state")
            .and_then(|s| s.strip_prefix("kube:"))
            .and_then(|name| match super::kubestore::KubeStore::from_env(name) {
                Ok(store) => Some(std::sync::Arc::new(store)),
                Err(e) => {
                    say!("store.New failed: {e}; starting with in-memory store");
                    None
                }
            }),
        plan,
        signals: true,
        ready: None,
        config_login: parsed.get("config").is_some_and(config_has_auth_key),
        config: parsed.get("config").map(str::to_string),
    };
    smol::block_on(run_daemon(opts, future::pending()))
}

/// `D/sim-state.json` when `--statedir=D` is given and `--state` is absent
/// or a file path (not `mem:`, `kube:...` or another `scheme:` store).
pub(crate) fn persist_path(state: Option<&str>, statedir: Option<&str>) -> Option<PathBuf> {
    let dir = statedir.filter(|d| !d.is_empty())?;
    let on_disk = match state {
        None | Some("") => true,
        Some(s) => s.starts_with('/') || !s.contains(':'),
    };
    on_disk.then(|| Path::new(dir).join(STATE_FILE))
}

/// The state every handler sees.
struct Shared {
    state: IpnState,
    logged_in: bool,
    prefs: Prefs,
    netmap: Option<Value>,
    watchers: Vec<Sender<Bytes>>,
    serve_config: Bytes,
    /// 412s still to answer to serve-config POSTs with `If-Match`.
    serve_conflicts: u32,
    /// `--config`, for `reload-config`.
    config: Option<String>,
    /// `reload-config` answers 404 (an older tailscaled).
    reload_missing: bool,
    /// Watch requests still to answer with 500 (`signal_faults`, SIGHUP).
    watch_errors: u32,
    closed: bool,
}

impl Shared {
    /// Sends these messages, one per line, to every open watch.
    fn broadcast(&mut self, msgs: &[Value]) {
        let bytes = encode_lines(msgs);
        self.watchers.retain(|w| w.try_send(bytes.clone()).is_ok());
    }
}

/// The `ipn.Notify` fields Go always encodes (no `omitempty`): the real
/// tailscaled sends every one of them in every message, `null` when unset,
/// and `Version` in every message, not only the first.
const NOTIFY_ALWAYS: &[&str] = &[
    "ErrMessage",
    "LoginFinished",
    "State",
    "Prefs",
    "NetMap",
    "Engine",
    "BrowseToURL",
];

/// One message as the real daemon encodes it: `Version`, then the fields of
/// `msg`, every other always-encoded field `null`.
pub(super) fn notify(msg: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("Version".into(), json!(VERSION));
    for k in NOTIFY_ALWAYS {
        out.insert((*k).into(), Value::Null);
    }
    if let Value::Object(fields) = msg {
        for (k, v) in fields {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn encode_lines(msgs: &[Value]) -> Bytes {
    let mut out = Vec::new();
    for m in msgs {
        // Serializing a Value cannot fail.
        out.extend_from_slice(notify(m).to_string().as_bytes());
        out.push(b'\n');
    }
    Bytes::from(out)
}

fn state_msg(s: IpnState) -> Value {
    json!({ "State": i64::from(s) })
}

fn node_json(id: usize, n: &NodePlan, hostname: &str) -> Value {
    let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
    json!({
        "ID": id,
        "StableID": n.stable_id,
        "Name": n.name,
        "User": 1,
        "Key": format!("nodekey:{:064x}", id),
        "KeyExpiry": "2099-01-01T00:00:00Z",
        "Machine": format!("mkey:{:064x}", id),
        "Addresses": addrs,
        "AllowedIPs": addrs,
        "Endpoints": null,
        "DERP": "127.3.3.40:1",
        "Hostinfo": { "Hostname": hostname, "OS": "linux" },
        "Created": "2024-01-01T00:00:00Z",
        "MachineAuthorized": true,
        "Online": true,
    })
}

/// The netmap as Go marshals it, with a few fields containerboot ignores.
/// The message telling watchers the netmap is now `nm`: the whole netmap
/// (`legacy_netmap`), or, as tailscaled 1.102 on Linux, only this node as
/// `SelfChange` (the sim's peers never change).
fn netmap_change(plan: &Plan, nm: &Value) -> Value {
    if plan.legacy_netmap {
        json!({ "NetMap": nm })
    } else {
        json!({ "SelfChange": nm["SelfNode"] })
    }
}

fn netmap_json(plan: &Plan, prefs: &Prefs) -> Value {
    let mut me = plan.self_node.clone();
    let host = prefs.hostname.trim().to_ascii_lowercase();
    if !host.is_empty() {
        me.name = format!("{host}.{TAILNET_DOMAIN}.");
    }
    let short = me.name.split('.').next().unwrap_or_default().to_string();
    let cert_domains = plan
        .cert_domains
        .clone()
        .unwrap_or_else(|| vec![me.name.trim_end_matches('.').to_string()]);
    let peers = if plan.peers.is_empty() {
        Value::Null
    } else {
        Value::Array(
            plan.peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let h = p.name.split('.').next().unwrap_or_default().to_string();
                    node_json(i + 2, p, &h)
                })
                .collect(),
        )
    };
    json!({
        "SelfNode": node_json(1, &me, &short),
        "NodeKey": format!("nodekey:{:064x}", 1),
        "Peers": peers,
        "DNS": { "CertDomains": cert_domains, "Domains": [TAILNET_DOMAIN], "Proxied": true },
        // `filtertype.Match`: prefixes, not the `*` of the wire's
        // FilterRule (Go's decoder refuses `*` as a netip.Prefix).
        "PacketFilter": [{ "IPProto": [6, 17, 1, 58], "Srcs": ["0.0.0.0/0", "::/0"], "Dsts": [{ "Net": "0.0.0.0/0", "Ports": { "First": 0, "Last": 65535 } }, { "Net": "::/0", "Ports": { "First": 0, "Last": 65535 } }], "Caps": [] }],
        "SSHPolicy": null,
        "CollectServices": false,
        "DERPMap": { "Regions": {} },
        "ControlHealth": null,
        "Domain": TAILNET_DOMAIN,
        "DomainAuditLogID": "",
        "UserProfiles": { "1": { "ID": 1, "LoginName": "sim@example.com", "DisplayName": "Sim" } },
    })
}

/// A CLI request to the engine, with where to answer.
enum Cmd {
    Up(BTreeMap<String, String>, Sender<Outcome>),
    Set(BTreeMap<String, String>, Sender<Outcome>),
}

/// The backend: owns the state sequence and its timers.
struct Engine {
    shared: Rc<RefCell<Shared>>,
    plan: Plan,
    persist: Option<PathBuf>,
    kube: Option<std::sync::Arc<super::kubestore::KubeStore>>,
    steps: VecDeque<IpnState>,
    step_at: Option<Instant>,
    waiters: Vec<Sender<Outcome>>,
    leave_at: Option<Instant>,
    left: bool,
    exit_at: Option<Instant>,
    drop_at: Option<Instant>,
    dropped: bool,
    renode_at: Option<Instant>,
    /// The next `notify_file` send and how many are left.
    notify_at: Option<Instant>,
    notify_left: u32,
    notify_armed: bool,
}

impl Engine {
    /// Runs until a scripted crash; returns its exit code.
    async fn run(mut self, cmds: Receiver<Cmd>) -> i32 {
        let mut cmds_open = true;
        loop {
            if let Some(code) = self.fire_due(Instant::now()) {
                return code;
            }
            let deadline = [
                self.step_at,
                self.leave_at,
                self.exit_at,
                self.drop_at,
                self.renode_at,
                self.notify_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let timer = async {
                match deadline {
                    Some(d) => {
                        Timer::at(d).await;
                    }
                    None => future::pending::<()>().await,
                }
                None
            };
            let cmd = async {
                if cmds_open {
                    Some(cmds.recv().await.ok())
                } else {
                    future::pending().await
                }
            };
            let got = cmd.or(timer).await;
            match got {
                Some(Some(Cmd::Up(flags, reply))) => self.on_up(&flags, reply),
                Some(Some(Cmd::Set(flags, reply))) => self.on_set(&flags, reply),
                Some(None) => cmds_open = false,
                None => {}
            }
        }
    }

    /// Handles every timer that is due; `Some(code)` to exit.
    fn fire_due(&mut self, now: Instant) -> Option<i32> {
        if self.exit_at.is_some_and(|t| t <= now) {
            say!("exiting with code {} as scripted", self.plan.exit_code);
            return Some(self.plan.exit_code);
        }
        if self.step_at.is_some_and(|t| t <= now) {
            self.step_at = None;
            match self.steps.pop_front() {
                Some(s) => self.enter(s, now),
                None => self.answer_waiters(),
            }
            if self.steps.is_empty() {
                self.answer_waiters();
            } else {
                self.step_at = Some(now + self.plan.step_delay);
            }
        }
        if self.drop_at.is_some_and(|t| t <= now) {
            self.drop_at = None;
            self.dropped = true;
            say!("closing every bus watch as scripted");
            self.shared.borrow_mut().watchers.clear();
        }
        if self.notify_at.is_some_and(|t| t <= now)
            && let Some((line, _, every)) = &self.plan.notify_file
        {
            self.notify_left = self.notify_left.saturating_sub(1);
            self.notify_at = (self.notify_left > 0).then(|| now + *every);
            let mut sh = self.shared.borrow_mut();
            let watchers = sh.watchers.len();
            sh.watchers.retain(|w| w.try_send(line.clone()).is_ok());
            drop(sh);
            super::record(
                "notify-file",
                &[line.len().to_string(), watchers.to_string()],
            );
        }
        if self.renode_at.is_some_and(|t| t <= now)
            && let Some((_, later)) = self.plan.later_self_node.take()
        {
            self.renode_at = None;
            say!(
                "self node is now {} {} as scripted",
                later.stable_id,
                later.name
            );
            self.plan.self_node = later;
            let mut sh = self.shared.borrow_mut();
            let nm = netmap_json(&self.plan, &sh.prefs);
            sh.netmap = Some(nm.clone());
            let msg = netmap_change(&self.plan, &nm);
            sh.broadcast(&[msg]);
        }
        if self.leave_at.is_some_and(|t| t <= now) {
            self.leave_at = None;
            self.left = true;
            let s = self.plan.leave_running_state;
            self.enter(s, now);
        }
        None
    }

    /// Moves to state `s`, telling every watcher.
    fn enter(&mut self, s: IpnState, now: Instant) {
        let mut sh = self.shared.borrow_mut();
        let was = sh.state;
        let mut msgs = Vec::new();
        if s == IpnState::Running && was != IpnState::Running {
            sh.logged_in = true;
            sh.prefs.logged_out = false;
            sh.prefs.want_running = true;
            let nm = netmap_json(&self.plan, &sh.prefs);
            sh.netmap = Some(nm.clone());
            msgs.push(netmap_change(&self.plan, &nm));
            if let Some(path) = &self.persist {
                let p = Persisted {
                    logged_in: true,
                    prefs: Some(sh.prefs.clone()),
                };
                if let Err(e) = write_atomic(path, &p) {
                    say!("saving state to {}: {e}", path.display());
                }
            }
            if let Some(store) = &self.kube
                && let Err(e) = store.save(&sh.prefs)
            {
                say!("saving state to the kube secret: {e}");
            }
            if let Some(d) = self.plan.exit_after_running {
                self.exit_at.get_or_insert(now + d);
            }
            if let (Some(d), false) = (self.plan.leave_running_after, self.left) {
                self.leave_at.get_or_insert(now + d);
            }
            if let (Some(d), false) = (self.plan.drop_bus_after_running, self.dropped) {
                self.drop_at.get_or_insert(now + d);
            }
            if let Some((d, _)) = &self.plan.later_self_node {
                self.renode_at.get_or_insert(now + *d);
            }
            if let Some((_, count, every)) = &self.plan.notify_file
                && !self.notify_armed
            {
                self.notify_armed = true;
                self.notify_left = *count;
                self.notify_at = Some(now + *every);
            }
        }
        if matches!(
            s,
            IpnState::NeedsLogin | IpnState::NeedsMachineAuth | IpnState::NoState
        ) {
            sh.logged_in = false;
        }
        sh.state = s;
        msgs.push(state_msg(s));
        sh.broadcast(&msgs);
        drop(sh);
        say!("state {was} -> {s}");
        if s == IpnState::Running {
            self.answer_waiters();
        }
    }

    fn answer_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            let _ = w.try_send(self.plan.up_result.clone());
        }
    }

    /// Applies CLI flags to prefs; a changed name is a new netmap.
    fn apply_prefs(&mut self, flags: &BTreeMap<String, String>) {
        let mut sh = self.shared.borrow_mut();
        sh.prefs.apply(flags);
        if sh.netmap.is_some() {
            let nm = netmap_json(&self.plan, &sh.prefs);
            if sh.netmap.as_ref() != Some(&nm) {
                sh.netmap = Some(nm.clone());
                let msg = netmap_change(&self.plan, &nm);
                sh.broadcast(&[msg]);
            }
        }
    }

    fn on_up(&mut self, flags: &BTreeMap<String, String>, reply: Sender<Outcome>) {
        if self.plan.up_result.exit_code != 0 {
            let _ = reply.try_send(self.plan.up_result.clone());
            return;
        }
        self.apply_prefs(flags);
        self.shared.borrow_mut().prefs.want_running = true;
        if self.shared.borrow().state == IpnState::Running {
            let _ = reply.try_send(self.plan.up_result.clone());
            return;
        }
        self.waiters.push(reply);
        if self.steps.is_empty() && self.step_at.is_none() {
            self.steps = self.plan.states_after_up.iter().copied().collect();
            self.step_at = Some(Instant::now());
        }
    }

    fn on_set(&mut self, flags: &BTreeMap<String, String>, reply: Sender<Outcome>) {
        if self.plan.set_result.exit_code == 0 {
            self.apply_prefs(flags);
        }
        let _ = reply.try_send(self.plan.set_result.clone());
    }
}

fn write_atomic(path: &Path, value: &Persisted) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// FNV-1a, hex: the serve config's ETag.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The split points of a batch of lines for `split_chunks`: a third and two
/// thirds into every line, never at a line end, so every line spans several
/// chunks and every line boundary inside a batch falls inside a chunk.
pub(crate) fn split_chunks(batch: Bytes) -> Vec<Bytes> {
    let mut cuts = Vec::new();
    let mut start = 0;
    for (i, &b) in batch.iter().enumerate() {
        if b == b'\n' {
            let len = i + 1 - start;
            for k in [len / 3, 2 * len / 3] {
                if k > 0 && start + k < i + 1 {
                    cuts.push(start + k);
                }
            }
            start = i + 1;
        }
    }
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        if c > prev {
            out.push(batch.slice(prev..c));
            prev = c;
        }
    }
    if prev < batch.len() {
        out.push(batch.slice(prev..));
    }
    out
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    full(status, json!({ "error": msg }).to_string())
}

/// What every connection shares.
struct Ctx {
    shared: Rc<RefCell<Shared>>,
    cmds: Sender<Cmd>,
    split: bool,
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let get = req.method() == Method::GET;
    let post = req.method() == Method::POST;
    match path.as_str() {
        "/localapi/v0/watch-ipn-bus" if get => watch(ctx, &query),
        "/localapi/v0/sim/up" if post => cli_call(ctx, req, true).await,
        "/localapi/v0/sim/set" if post => cli_call(ctx, req, false).await,
        "/localapi/v0/serve-config" if get => {
            let cfg = ctx.shared.borrow().serve_config.clone();
            let mut resp = full(StatusCode::OK, cfg.clone());
            if let Ok(v) = hyper::header::HeaderValue::from_str(&etag(&cfg)) {
                resp.headers_mut().insert(hyper::header::ETAG, v);
            }
            resp
        }
        "/localapi/v0/serve-config" if post => set_serve_config(ctx, req).await,
        "/localapi/v0/dns-config" => {
            // As tailscaled 1.102: the netmap's `DNS`, any method; 503 with
            // `http.Error`'s text before the first netmap.
            let dns = ctx
                .shared
                .borrow()
                .netmap
                .as_ref()
                .map(|nm| nm["DNS"].clone());
            match dns {
                Some(dns) => {
                    super::record("dns-config", &["200".to_string()]);
                    let mut resp = full(StatusCode::OK, format!("{dns:#}\n"));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                None => {
                    super::record("dns-config", &["503".to_string()]);
                    let mut resp = full(StatusCode::SERVICE_UNAVAILABLE, "no netmap\n");
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    resp
                }
            }
        }
        "/localapi/v0/reload-config" if ctx.shared.borrow().reload_missing => {
            // What tailscaled before v1.80 answers a path it does not know
            // (checked against v1.102.5 with an unknown path).
            super::record("reload-config", &["404".to_string()]);
            let mut resp = full(StatusCode::NOT_FOUND, "404 page not found\n");
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        "/localapi/v0/reload-config" if post => reload_config(ctx),
        "/localapi/v0/reload-config" => {
            let mut resp = full(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        "/localapi/v0/watch-ipn-bus"
        | "/localapi/v0/sim/up"
        | "/localapi/v0/sim/set"
        | "/localapi/v0/serve-config" => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} not allowed", req.method()),
        ),
        p => error(StatusCode::NOT_FOUND, &format!("{p} not found")),
    }
}

fn watch(ctx: &Ctx, query: &str) -> Response<Body> {
    let mask_value = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("mask="))
        .unwrap_or("0");
    let Ok(m) = mask_value.parse::<u32>() else {
        return error(StatusCode::BAD_REQUEST, "bad mask");
    };
    let mut sh = ctx.shared.borrow_mut();
    if sh.closed {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tailscaled is shutting down",
        );
    }
    if sh.watch_errors > 0 {
        sh.watch_errors -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "watch-ipn-bus: backend not ready (scripted)",
        );
    }
    let mut first = serde_json::Map::new();
    if m & mask::INITIAL_STATE != 0 {
        first.insert("State".into(), json!(i64::from(sh.state)));
    }
    if m & mask::INITIAL_PREFS != 0 {
        first.insert("Prefs".into(), json!(sh.prefs));
    }
    if m & mask::INITIAL_NETMAP != 0
        && let Some(nm) = &sh.netmap
    {
        first.insert("NetMap".into(), nm.clone());
    }
    let (tx, rx) = smol::channel::unbounded();
    // The channel is new and unbounded: this send cannot fail.
    let _ = tx.try_send(encode_lines(&[Value::Object(first)]));
    sh.watchers.push(tx);
    let split = ctx.split;
    let frames = rx.flat_map(move |batch| {
        let parts = if split {
            split_chunks(batch)
        } else {
            vec![batch]
        };
        smol::stream::iter(
            parts
                .into_iter()
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        )
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn cli_call(ctx: &Ctx, req: Request<Incoming>, up: bool) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    let flags: BTreeMap<String, String> = if body.is_empty() {
        BTreeMap::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad flags: {e}")),
        }
    };
    let (tx, rx) = smol::channel::bounded(1);
    let cmd = if up {
        Cmd::Up(flags, tx)
    } else {
        Cmd::Set(flags, tx)
    };
    if ctx.cmds.send(cmd).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tailscaled is shutting down",
        );
    }
    match rx.recv().await {
        Ok(Outcome {
            exit_code: 0,
            stderr,
        }) => full(StatusCode::OK, json!({ "stderr": stderr }).to_string()),
        Ok(Outcome { exit_code, stderr }) => {
            let msg = stderr.unwrap_or_else(|| "backend error: simulated failure".into());
            full(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": msg, "exit_code": exit_code }).to_string(),
            )
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tailscaled is shutting down",
        ),
    }
}

async fn set_serve_config(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let if_match = req
        .headers()
        .get(hyper::header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "serve config must be an object"),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad serve config: {e}")),
    };
    let mut sh = ctx.shared.borrow_mut();
    // Each POST is recorded (`$SIM_RECORD`): its answer, its If-Match and
    // its body as sent, so tests can assert on what was posted.
    let record = |status: StatusCode| {
        super::record(
            "serve-config",
            &[
                status.as_u16().to_string(),
                if_match.clone(),
                String::from_utf8_lossy(&body).into_owned(),
            ],
        );
    };
    if !if_match.is_empty() && sh.serve_conflicts > 0 {
        sh.serve_conflicts -= 1;
        record(StatusCode::PRECONDITION_FAILED);
        return error(
            StatusCode::PRECONDITION_FAILED,
            "preconditions failed: etag mismatch (scripted conflict)",
        );
    }
    if !if_match.is_empty() && if_match.trim_matches('"') != etag(&sh.serve_config) {
        record(StatusCode::PRECONDITION_FAILED);
        return error(
            StatusCode::PRECONDITION_FAILED,
            "preconditions failed: etag mismatch",
        );
    }
    if let Err(e) = serve_kinds_kept(&sh.serve_config, &value) {
        record(StatusCode::INTERNAL_SERVER_ERROR);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("updating config: {e}"),
        );
    }
    record(StatusCode::OK);
    sh.serve_config = Bytes::from(value.to_string());
    full(StatusCode::OK, "{}")
}

/// The kind of a `TCP` port handler, as tailscaled names it
/// (`serveTypeFromPortHandler` in ipn/ipnlocal/serve.go).
fn serve_kind(handler: &Value) -> &'static str {
    let set = |k: &str| match handler.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    };
    if set("HTTP") {
        "http"
    } else if set("HTTPS") {
        "https"
    } else if set("TerminateTLS") {
        "tls-terminated-tcp"
    } else if set("TCPForward") {
        "tcp"
    } else {
        "unknownServeType"
    }
}

/// tailscaled refuses a config that changes the kind of a port the current
/// one serves (`validateServeConfigUpdate`), with this message (answered
/// 500 as `{"error":"updating config: …"}`, checked against 1.102.5 by
/// tests/real_serve.rs).
fn serve_kinds_kept(current: &[u8], incoming: &Value) -> Result<(), String> {
    let current: Value = serde_json::from_slice(current).unwrap_or(Value::Null);
    let (Some(old), Some(new)) = (
        current.get("TCP").and_then(Value::as_object),
        incoming.get("TCP").and_then(Value::as_object),
    ) else {
        return Ok(());
    };
    for (port, handler) in new {
        if let Some(was) = old.get(port) {
            let (want, have) = (serve_kind(handler), serve_kind(was));
            if want != have {
                return Err(format!(
                    "want to serve {want:?}, but port {port} is already serving {have:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `POST /localapi/v0/reload-config`, as tailscaled (v1.80 and later)
/// answers it: the `--config` file loaded again, and
/// `{"Reloaded":bool,"Err":string}`; `Reloaded` false without a config
/// file. A file that fails to load is answered 200 with an empty body:
/// the real handler returns before writing its JSON when there is an
/// error (so `Err` never reaches the client). Each call is recorded:
/// status, whether it reloaded, and the text loaded (or the error).
fn reload_config(ctx: &Ctx) -> Response<Body> {
    let Some(path) = ctx.shared.borrow().config.clone() else {
        super::record(
            "reload-config",
            &["200".into(), "false".into(), String::new()],
        );
        return full(StatusCode::OK, "{\"Reloaded\":false,\"Err\":\"\"}\n");
    };
    let loaded = std::fs::read_to_string(&path)
        .map_err(|e| format!("open {path}: {e}"))
        .and_then(|text| {
            let value: Value =
                jsonc_parser::parse_to_serde_value(&text, &jsonc_parser::ParseOptions::default())
                    .map_err(|e| format!("error parsing config file {path}: {e}"))?;
            match value.get("Version").and_then(Value::as_str) {
                Some("alpha0") => Ok(text),
                _ => Err(format!("unsupported config file version in {path}")),
            }
        });
    match loaded {
        Ok(text) => {
            super::record("reload-config", &["200".into(), "true".into(), text]);
            full(StatusCode::OK, "{\"Reloaded\":true,\"Err\":\"\"}\n")
        }
        Err(e) => {
            say!("reload-config: {e}");
            super::record("reload-config", &["200".into(), "false".into(), e]);
            let mut resp = full(StatusCode::OK, Bytes::new());
            resp.headers_mut().remove(hyper::header::CONTENT_TYPE);
            resp
        }
    }
}

async fn serve_conn(stream: UnixStream, ctx: Rc<Ctx>) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(FuturesIo::new(stream), service)
        .await;
}

/// Accepts connections forever, one task each; each task holds a clone of
/// `alive` so shutdown can wait for them.
async fn accept_loop(
    ex: &LocalExecutor<'_>,
    listener: UnixListener,
    ctx: Rc<Ctx>,
    alive: Sender<()>,
) -> i32 {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                let alive = alive.clone();
                ex.spawn(async move {
                    let _alive = alive;
                    serve_conn(stream, ctx).await;
                })
                .detach();
            }
            Err(e) => {
                say!("accept: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why the daemon stopped.
enum Ended {
    /// A signal or the shutdown handle: close cleanly, exit 0.
    Stopped,
    /// A scripted crash or a startup failure: exit with this code.
    Exit(i32),
}

fn create_listener(socket: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(socket)
}

/// Runs the daemon until a signal, `shutdown` completing, or a scripted
/// crash; returns the exit code.
pub(crate) async fn run_daemon(opts: DaemonOpts, shutdown: impl Future<Output = ()>) -> i32 {
    let handled: &[async_signal::Signal] = if opts.signals && opts.plan.signal_faults {
        &[
            async_signal::Signal::Term,
            async_signal::Signal::Int,
            async_signal::Signal::Usr1,
            async_signal::Signal::Usr2,
            async_signal::Signal::Hup,
        ]
    } else {
        &[async_signal::Signal::Term, async_signal::Signal::Int]
    };
    let signals = if opts.signals {
        match async_signal::Signals::new(handled.iter().copied()) {
            Ok(s) => Some(s),
            Err(e) => {
                say!("cannot handle signals: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let plan = opts.plan;
    let from_secret = opts.kube.as_ref().and_then(|store| match store.load() {
        Ok(s) => Some(Persisted {
            logged_in: s.logged_in,
            prefs: s.prefs,
        }),
        Err(e) => {
            say!("reading state from the kube secret: {e}");
            None
        }
    });
    let saved: Option<Persisted> = from_secret.or_else(|| {
        opts.persist.as_deref().and_then(|p| {
            let text = std::fs::read(p).ok()?;
            match serde_json::from_slice(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    say!("ignoring unreadable {}: {e}", p.display());
                    None
                }
            }
        })
    });
    // A saved login comes with a cached netmap: like tailscaled 1.102, the
    // daemon is Running before anyone can watch. A config file's auth key
    // still has to log in first (Starting, then Running).
    let cached = saved.as_ref().is_some_and(|s| s.logged_in);
    let resumed = cached || opts.config_login;
    let mut prefs = saved.and_then(|s| s.prefs).unwrap_or_default();
    if resumed {
        prefs.want_running = true;
    }
    let shared = Rc::new(RefCell::new(Shared {
        state: if resumed {
            IpnState::NoState
        } else {
            plan.initial_state
        },
        logged_in: false,
        prefs,
        netmap: None,
        watchers: Vec::new(),
        // No config yet: tailscaled 1.102.5 answers `null` (a nil
        // ipn.ServeConfig), `{}` only once one was set.
        serve_config: Bytes::from_static(b"null"),
        serve_conflicts: plan.serve_config_conflicts,
        config: opts.config.clone(),
        reload_missing: plan.reload_config_missing,
        watch_errors: 0,
        closed: false,
    }));
    let ignore_sigterm = plan.ignore_sigterm;
    let crash_code = plan.exit_code;
    let watchers = shared.clone();
    let ex = LocalExecutor::new();
    let socket = opts.socket.clone();
    let (alive_tx, alive_rx) = smol::channel::bounded::<()>(1);
    let accept_alive = alive_tx.clone();

    let stop = async {
        let Some(mut signals) = signals else {
            return future::pending().await;
        };
        loop {
            match signals.next().await {
                Some(Ok(async_signal::Signal::Term)) if ignore_sigterm => {
                    say!("ignoring SIGTERM as scripted");
                }
                Some(Ok(async_signal::Signal::Usr1)) => {
                    say!("exiting with code {crash_code} on SIGUSR1 as scripted");
                    return Ended::Exit(crash_code);
                }
                Some(Ok(async_signal::Signal::Usr2)) => {
                    say!("closing every bus watch on SIGUSR2 as scripted");
                    watchers.borrow_mut().watchers.clear();
                }
                Some(Ok(async_signal::Signal::Hup)) => {
                    say!("closing every bus watch and failing the next watch request on SIGHUP as scripted");
                    let mut sh = watchers.borrow_mut();
                    sh.watchers.clear();
                    sh.watch_errors += 1;
                }
                Some(Ok(sig)) => {
                    say!(
                        "got SIG{}, shutting down",
                        format!("{sig:?}").to_uppercase()
                    );
                    return Ended::Stopped;
                }
                _ => return future::pending().await,
            }
        }
    }
    .or(async {
        shutdown.await;
        Ended::Stopped
    });

    let serve = async {
        if !plan.socket_delay.is_zero() {
            Timer::after(plan.socket_delay).await;
        }
        let listener = match create_listener(&socket) {
            Ok(l) => l,
            Err(e) => {
                say!("cannot listen on {}: {e}", socket.display());
                return Ended::Exit(1);
            }
        };
        say!("listening on {}", socket.display());
        if let Some(ready) = &opts.ready {
            let _ = ready.try_send(());
        }
        let (cmd_tx, cmd_rx) = smol::channel::unbounded();
        let mut engine = Engine {
            shared: shared.clone(),
            plan: plan.clone(),
            persist: opts.persist.clone(),
            kube: opts.kube.clone(),
            steps: VecDeque::new(),
            step_at: None,
            waiters: Vec::new(),
            leave_at: None,
            drop_at: None,
            dropped: false,
            renode_at: None,
            notify_at: None,
            notify_left: 0,
            notify_armed: false,
            left: false,
            exit_at: None,
        };
        if cached {
            // Before the accept loop runs: the first watch already sees it.
            say!("found a saved login, running from the cached netmap");
            engine.enter(IpnState::Running, Instant::now());
        } else if resumed {
            say!("found an auth key in the config file, logging in");
            engine.steps = [IpnState::Starting, IpnState::Running].into();
            engine.step_at = Some(Instant::now());
        }
        let engine = ex.spawn(engine.run(cmd_rx));
        let ctx = Rc::new(Ctx {
            shared: shared.clone(),
            cmds: cmd_tx,
            split: plan.split_chunks,
        });
        let accept = accept_loop(&ex, listener, ctx, accept_alive);
        Ended::Exit(engine.or(accept).await)
    };

    ex.run(async {
        let ended = serve.or(stop).await;
        match ended {
            Ended::Exit(code) => code,
            Ended::Stopped => {
                {
                    let mut sh = shared.borrow_mut();
                    sh.closed = true;
                    sh.watchers.clear();
                }
                let _ = std::fs::remove_file(&socket);
                drop(alive_tx);
                // Let open connections finish their streams.
                let _ = alive_rx
                    .recv()
                    .or(async {
                        Timer::after(CLOSE_GRACE).await;
                        Ok(())
                    })
                    .await;
                0
            }
        }
    })
    .await
}
