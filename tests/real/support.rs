//! Harness for the real-program suite (`tests/real_peers.rs`): the real
//! `tailscaled`/`tailscale`/`headscale` built by `tests/real/setup`, a
//! private network namespace per test, a headscale control server on
//! loopback, and containerboot runs whose log lines can be awaited.
//!
//! Kept apart from `tests/support` on purpose: this suite must not depend on
//! the simulator harness, and the simulator harness must not learn about
//! real programs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something expected before giving up. A safety
/// net against hangs, never an assertion about speed. Real logins through
/// headscale take a few seconds; 90 s leaves room for a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// The binary under test.
pub fn containerboot() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerboot"))
}

/// The simulator (`tailscaled-sim`, built for the tests by the `sim`
/// feature), for the comparisons with the real programs.
pub fn simulator() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailscaled-sim"))
}

/// The directory holding the real `tailscaled`, `tailscale` and `headscale`:
/// `CONTAINERBOOT_REAL_BIN=DIR`, or the cache `tests/real/setup` builds into
/// (see `harness::real_bin_dir`). The tests never build them: the harness
/// reports a test ignored (failed under CI) when one is missing, so a
/// missing program here is a bug of the test's list of needs.
pub fn real_bin() -> PathBuf {
    for name in ["tailscaled", "tailscale", "headscale"] {
        if let Err(e) = crate::harness::real_program(name) {
            panic!("the real programs are not available: {e}; run tests/real/setup");
        }
    }
    crate::harness::real_bin_dir().expect("checked above")
}

/// Puts the calling thread (and so every process it spawns afterwards) in a
/// new network namespace whose only interfaces are loopback and a veth pair
/// with both ends inside it: no packet can leave the machine.
///
/// Needs root: the harness checks it before the test runs.
pub fn isolate() {
    // SAFETY: NEWNET only changes this thread's network namespace; no file
    // descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .expect("unshare(CLONE_NEWNET)");
    // tailscaled pauses its control client while no interface has a usable
    // (non-loopback) address, so give it one: a veth pair whose both ends
    // are in this namespace. Nothing is routed anywhere else.
    for args in [
        "link set lo up",
        "link add tsr0 type veth peer name tsr1",
        "addr add 192.0.2.1/24 dev tsr0",
        "addr add 192.0.2.2/24 dev tsr1",
        "link set tsr0 up",
        "link set tsr1 up",
    ] {
        let out = Command::new("ip")
            .args(args.split(' '))
            .output()
            .unwrap_or_else(|e| panic!("ip {args}: {e} (install iproute2)"));
        assert!(out.status.success(), "ip {args}: {}", text(&out));
    }
    // The proof of isolation: the namespace knows no interface but ours and
    // has no route out.
    let links = cmd_ok(Command::new("ip").args(["-o", "link", "show"]));
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["lo", "tsr1", "tsr0"],
        "unexpected interfaces:\n{links}"
    );
    let routes = cmd_ok(Command::new("ip").args(["route", "show", "default"]));
    assert!(routes.trim().is_empty(), "a default route exists: {routes}");
}

/// A free TCP port on 127.0.0.1 in this thread's namespace, for a server
/// started afterwards. It is taken from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default): a port found
/// with `bind(0)` comes from that range, and between this check and the
/// server's own bind an outgoing connection (etcd's clients of itself, as
/// kube-apiserver once found: "address already in use") may take it as
/// its source port. Ports below the range are never handed out that way;
/// a counter keeps two calls from returning the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FLOOR: u32 = 20_000;
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    if low > FLOOR + 1_000 {
        let span = low - FLOOR;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (FLOOR + (start + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command to completion; panics unless it succeeds; returns stdout.
pub fn cmd_ok(c: &mut Command) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `f` until it returns `Some` or [`PATIENCE`] passes.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A headscale control server on 127.0.0.1 with its own sqlite database,
/// embedded DERP server and nothing external.
pub struct Headscale {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub url: String,
    child: Child,
    log: PathBuf,
}

impl Headscale {
    /// A server for the nodes of this namespace, on 127.0.0.1.
    pub fn start() -> Headscale {
        Headscale::start_on("127.0.0.1")
    }

    /// A server whose API (`server_url`) is on `ip`, an address of this
    /// namespace, so nodes in other namespaces routed to it can log in; its
    /// other listeners stay on 127.0.0.1.
    pub fn start_on(ip: &str) -> Headscale {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (http, metrics, grpc, stun) = (free_port(), free_port(), free_port(), free_port());
        let url = format!("http://{ip}:{http}");
        let config = d.join("config.yaml");
        let yaml = format!(
            r#"server_url: {url}
listen_addr: {ip}:{http}
metrics_listen_addr: 127.0.0.1:{metrics}
grpc_listen_addr: 127.0.0.1:{grpc}
grpc_allow_insecure: false
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: "loop"
    region_name: "Loopback DERP"
    verify_clients: true
    stun_listen_addr: "127.0.0.1:{stun}"
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
  update_frequency: 24h
disable_check_updates: true
node:
  expiry: 0
  ephemeral:
    inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: ""
dns:
  magic_dns: true
  base_domain: real.test
  override_local_dns: false
  nameservers:
    global: []
  search_domains: []
  extra_records: []
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
taildrop:
  enabled: false
auto_update:
  enabled: false
"#,
            d = d.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let log = d.join("headscale.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(real_bin().join("headscale"))
            .args(["serve", "-c"])
            .arg(&config)
            .env_clear()
            .env("HOME", d)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn headscale");
        let mut hs = Headscale {
            dir,
            config,
            url,
            child,
            log,
        };
        eventually("headscale to answer on its socket", || {
            if let Ok(Some(status)) = hs.child.try_wait() {
                panic!("headscale exited ({status}); log:\n{}", hs.log_text());
            }
            hs.cli(&["users", "list", "-o", "json"])
                .status
                .success()
                .then_some(())
        });
        hs
    }

    /// Runs the headscale CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(real_bin().join("headscale"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run headscale CLI")
    }

    /// Runs the CLI, panics unless it succeeds, parses stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "headscale {args:?} failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "headscale {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a user and a reusable pre-auth key for it; returns the key.
    pub fn auth_key(&self, user: &str) -> String {
        let u = self.json(&["users", "create", user, "-o", "json"]);
        let id = u["id"]
            .as_u64()
            .or_else(|| u["id"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("user without id: {u}"));
        let k = self.json(&[
            "preauthkeys",
            "create",
            "--user",
            &id.to_string(),
            "--reusable",
            "--expiration",
            "1h",
            "-o",
            "json",
        ]);
        k["key"]
            .as_str()
            .unwrap_or_else(|| panic!("pre-auth key without key: {k}"))
            .to_string()
    }

    /// `headscale nodes list -o json`, as an array (headscale prints `null`
    /// for none).
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        match self.json(&["nodes", "list", "-o", "json"]) {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Null => Vec::new(),
            other => panic!("nodes list: not an array: {other}"),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Headscale {
    fn drop(&mut self) {
        terminate_child(&mut self.child);
    }
}

fn terminate_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One containerboot's world: a temporary directory with the socket, the
/// state directory and the test root, and the environment to run with.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root: PathBuf,
    /// The directory put first on PATH: the real programs, or the simulator.
    pub bin: PathBuf,
    vars: Vec<(String, String)>,
}

impl Node {
    /// A node that runs the real `tailscaled` and `tailscale`.
    pub fn real() -> Node {
        Node::with_bin(real_bin())
    }

    /// A node that runs our simulator (`tailscaled-sim` under the names
    /// `tailscaled` and `tailscale`).
    pub fn simulated() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("sim-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["tailscaled", "tailscale"] {
            std::os::unix::fs::symlink(simulator(), bin.join(name)).unwrap();
        }
        Node::in_dir(dir, bin)
    }

    fn with_bin(bin: PathBuf) -> Node {
        Node::in_dir(tempfile::tempdir().expect("tempdir"), bin)
    }

    fn in_dir(dir: tempfile::TempDir, bin: PathBuf) -> Node {
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let socket = dir.path().join("tailscaled.sock");
        let mut n = Node {
            socket,
            root,
            bin,
            vars: Vec::new(),
            dir,
        };
        let (s, r, h) = (
            n.socket.display().to_string(),
            n.root.display().to_string(),
            n.dir.path().display().to_string(),
        );
        n.var("TS_SOCKET", &s)
            .var("TS_TEST_ONLY_ROOT", &r)
            .var("HOME", &h)
            // Belt and braces on top of the namespace: no log uploads, no
            // NAT-PMP/PCP/UPnP probes.
            .var("TS_TAILSCALED_EXTRA_ARGS", "--no-logs-no-support")
            .var("TS_NO_LOGS_NO_SUPPORT", "true")
            .var("TS_DISABLE_PORTMAPPER", "1")
            // tailscaled's log policy writes tailscaled.log.conf to
            // /var/lib/tailscale even with --no-logs-no-support unless told
            // where: keep it in the test directory.
            .var("TS_LOGS_DIR", &h);
        n
    }

    /// Sets an environment variable for containerboot and its children.
    pub fn var(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// Points the node at a headscale server with its auth key.
    pub fn login(&mut self, hs: &Headscale, key: &str, hostname: &str) -> &mut Self {
        let extra = format!("--login-server={}", hs.url);
        self.var("TS_AUTHKEY", key)
            .var("TS_HOSTNAME", hostname)
            .var("TS_EXTRA_ARGS", &extra)
    }

    /// Kernel networking (`TS_USERSPACE=false`) with the namespace's real
    /// tun device and forwarding sysctls: the node's test root gets `dev`
    /// and `proc` as symlinks to `/dev` and `/proc`, so containerboot finds
    /// the real `/dev/net/tun` (and creates nothing) and writes the real
    /// `/proc/sys/net/...` files, which belong to the network namespace of
    /// the process that opens them: containerboot's, never the host's when
    /// it runs in a namespace of the test's. The rest of the root (the
    /// socket symlink under `var/run`) stays in the test directory.
    pub fn kernel_mode(&mut self) -> &mut Self {
        for dir in ["dev", "proc"] {
            std::os::unix::fs::symlink(Path::new("/").join(dir), self.root.join(dir)).unwrap();
        }
        self.var("TS_USERSPACE", "false")
    }

    /// A state directory inside the node's directory, created.
    pub fn state_dir(&mut self) -> &mut Self {
        let d = self.dir.path().join("state");
        std::fs::create_dir_all(&d).unwrap();
        let d = d.display().to_string();
        self.var("TS_STATE_DIR", &d)
    }

    /// Starts containerboot.
    pub fn start(&self) -> Boot {
        self.start_as(Command::new(containerboot()))
    }

    /// Starts containerboot through `c` (a command that ends up running
    /// containerboot, e.g. in a private mount namespace); the node's
    /// environment is added to it.
    pub fn start_as(&self, mut c: Command) -> Boot {
        c.env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn containerboot");
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (stream, tag) in [
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                "",
            ),
            (Box::new(child.stdout.take().unwrap()), "[stdout] "),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let line = format!("{tag}{line}");
                    log.lock().unwrap().push(line.clone());
                    // Keep draining after the receiver is gone so the
                    // child never blocks on a full pipe.
                    let _ = tx.send(line);
                }
            });
        }
        Boot {
            child: Some(child),
            lines: rx,
            log,
        }
    }

    /// `tailscale --socket=S <args>` with the node's PATH programs.
    pub fn tailscale(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("tailscale"))
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run tailscale")
    }

    /// `tailscale status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.tailscale(&["status", "--json"]);
        assert!(
            out.status.success(),
            "tailscale status --json failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The node's first tailnet IPv4 address, from `tailscale status`.
    pub fn ipv4(&self) -> String {
        self.status()["Self"]["TailscaleIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains('.'))
            .expect("an IPv4 tailnet address")
            .to_string()
    }
}

/// Connects through the SOCKS5 proxy at 127.0.0.1:`proxy` (no
/// authentication) to the IPv4 address `ip`, port `port`; the stream, with a
/// 10 s read timeout, once the proxy reports the connection made.
pub fn socks5_connect(proxy: u16, ip: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    let err = |m: String| std::io::Error::other(m);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    if hello != [5, 0] {
        return Err(err(format!("SOCKS5 greeting answer {hello:?}")));
    }
    let addr: std::net::Ipv4Addr = ip.parse().map_err(|e| err(format!("{ip}: {e}")))?;
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&addr.octets());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(err(format!("SOCKS5 connect failed with code {}", reply[1])));
    }
    Ok(s)
}

/// What a fresh IPN bus watch reports: the messages of
/// `watch-ipn-bus?mask=InitialState|InitialPrefs|InitialNetMap`, their
/// non-null fields merged until both a state and a netmap have arrived, and
/// the first message as sent. Read over the unix socket by hand (HTTP/1.1,
/// chunked), so the same client reads the real daemon and the simulator.
pub fn bus_snapshot(socket: &Path) -> (serde_json::Value, serde_json::Value) {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET /localapi/v0/watch-ipn-bus?mask=14 HTTP/1.1\r\nHost: local-tailscaled.sock\r\nTailscale-Cap: 85\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "watch-ipn-bus: {line}");
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
    }
    assert!(chunked, "watch-ipn-bus is not chunked");
    let mut merged = serde_json::Map::new();
    let mut first = None;
    let mut pending = Vec::new();
    while !(merged.contains_key("State") && merged.contains_key("NetMap")) {
        line.clear();
        r.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        assert!(
            size > 0,
            "bus ended before a state and a netmap: {merged:?}"
        );
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).unwrap();
        pending.extend_from_slice(&chunk[..size]);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let msg: Vec<u8> = pending.drain(..=nl).collect();
            let v: serde_json::Value = serde_json::from_slice(&msg).expect("Notify JSON");
            if first.is_none() {
                first = Some(v.clone());
            }
            for (k, v) in v.as_object().expect("Notify object") {
                if !v.is_null() {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
    }
    (serde_json::Value::Object(merged), first.unwrap_or_default())
}

/// A running containerboot; stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Boot {
    child: Option<Child>,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A containerboot that has exited.
pub struct Finished {
    pub code: Option<i32>,
    pub log: Vec<String>,
}

impl Finished {
    pub fn has(&self, needle: &str) -> bool {
        self.log.iter().any(|l| l.contains(needle))
    }
    pub fn dump(&self) -> String {
        self.log.join("\n")
    }
}

impl Boot {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn dump(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`; panics with the whole log
    /// if containerboot exits first or PATIENCE passes.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "containerboot exited before logging {needle:?}; log:\n{}",
                        self.dump()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {needle:?} within {PATIENCE:?}; log:\n{}", self.dump());
                }
            }
        }
    }

    /// The pid of containerboot's child `tailscaled`.
    pub fn tailscaled_pid(&self) -> i32 {
        let parent = self.pid();
        eventually("tailscaled to be containerboot's child", || {
            children_named(parent, "tailscaled").first().copied()
        })
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(self) -> Finished {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid()) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.wait()
    }

    /// Waits for containerboot to exit (kills it after PATIENCE).
    pub fn wait(mut self) -> Finished {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait containerboot") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait containerboot");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF, once every process holding the pipes
        // (containerboot and tailscaled) is gone; give them a moment.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        Finished {
            code: status.code(),
            log: self.log.lock().unwrap().clone(),
        }
    }
}

impl Drop for Boot {
    /// Only reached without `terminate`/`wait`, i.e. when a test failed:
    /// stops containerboot, then makes sure its tailscaled is gone too, so
    /// a failed test leaves no daemon behind (containerboot's own shutdown
    /// is what the tests assert, not this).
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let daemons = children_named(child.id() as i32, "tailscaled");
        terminate_child(&mut child);
        for pid in daemons {
            if alive(pid) && is_named(pid, "tailscaled") {
                eprintln!("killing tailscaled {pid}, left behind by containerboot");
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// The children of `parent` whose argv[0] ends in `/name` or is `name`.
fn children_named(parent: i32, name: &str) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| is_named(*p, name))
        .collect()
}

fn is_named(pid: i32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
            Path::new(std::str::from_utf8(argv0).unwrap_or_default())
                .file_name()
                .is_some_and(|n| n == name)
        })
        .unwrap_or(false)
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// A LocalAPI answer: the status, the `Etag` header, the body.
#[derive(Debug)]
pub struct LocalApiAnswer {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl LocalApiAnswer {
    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "LocalAPI answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One LocalAPI request over the daemon's unix socket (real HTTP/1.1, by
/// hyper), with `If-Match: if_match` when given; panics if the daemon does
/// not answer within [`PATIENCE`].
pub fn localapi(
    socket: &Path,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: &[u8],
) -> LocalApiAnswer {
    use http_body_util::BodyExt;
    let what = format!("{method} {path} on {}", socket.display());
    let request = async {
        let stream = smol::net::unix::UnixStream::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(stream))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        let _conn = smol::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "local-tailscaled.sock");
        if let Some(tag) = if_match {
            req = req.header(hyper::header::IF_MATCH, tag);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_bytes()
            .to_vec();
        LocalApiAnswer { status, etag, body }
    };
    let timeout = async {
        smol::Timer::after(PATIENCE).await;
        panic!("{what}: no answer within {PATIENCE:?}");
    };
    smol::block_on(smol::future::or(request, timeout))
}
