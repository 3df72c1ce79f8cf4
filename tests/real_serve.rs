//! `TS_SERVE_CONFIG` against the real programs: containerboot boots the
//! real `tailscaled` (v1.102.5, userspace networking) on a headscale
//! control server with a serve config file of TCP forwards; the real
//! daemon's serve config is read back over its LocalAPI, and a second real
//! node connects through the forwards to TCP servers of the test while the
//! file is replaced and rewritten, and a forwarded port turns into HTTP
//! (which tailscaled refuses in place: containerboot removes the port
//! first). A second test compares the simulator's `serve-config` endpoint
//! with the real one (see tests/real/README.md).
//!
//! headscale hands out no certificate domain, so only configs without
//! HTTPS can be applied here (`TCPForward`); `${TS_CERT_DOMAIN}` and HTTPS
//! are covered against the simulator (tests/serve.rs).
//!
//! Like `real_peers`, each test has its own network namespace (root) and
//! needs the real programs (`tests/real/setup`); without them it is
//! reported ignored, and fails under CI (`tests/support/harness.rs`).

#[path = "support/harness.rs"]
mod harness;
#[path = "real/support.rs"]
mod real;

use harness::Need;
use real::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const REAL_PROGRAMS: &[&str] = &["tailscaled", "tailscale", "headscale"];
const APPLIED: &str = "Applied serve config from";
const SERVE_CONFIG: &str = "/localapi/v0/serve-config";

fn prepare() {
    real_bin();
    isolate();
}

/// A TCP server on 127.0.0.1 that writes `greeting` and a newline to every
/// connection and counts them; stopped when dropped.
struct LineServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LineServer {
    /// On `port` (0: any free port).
    fn start(port: u16, greeting: &str) -> LineServer {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let line = format!("{greeting}\n");
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(mut s) = conn {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(line.as_bytes());
                    }
                }
            })
        };
        LineServer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects through the SOCKS5 proxy at 127.0.0.1:`proxy` to `ip`:`port`
/// and reads one line.
fn socks5_read_line(proxy: u16, ip: &str, port: u16) -> std::io::Result<String> {
    let s = socks5_connect(proxy, ip, port)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

/// The line read through node-b's SOCKS5 proxy from node-a's `ip`:`port`.
/// A failed attempt (no connection, nothing read) is retried: the first
/// ones fail while WireGuard's first handshake is still retried. A line,
/// once read, is the answer: a wrong one fails the test at the caller.
fn line_through(socks: u16, ip: &str, port: u16) -> String {
    eventually(&format!("a line from {ip}:{port} through node-b"), || {
        socks5_read_line(socks, ip, port)
            .ok()
            .filter(|l| !l.is_empty())
    })
}

/// `GET /` with `Host: host:port` through node-b's SOCKS5 proxy to
/// `ip`:`port` (HTTP/1.1 by hyper): the status and the body.
fn http_get_through(socks: u16, ip: &str, port: u16, host: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let stream = socks5_connect(socks, ip, port).map_err(|e| e.to_string())?;
    let stream = smol::Async::new(stream).map_err(|e| e.to_string())?;
    let request = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let _conn = smol::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/")
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let timeout = async {
        smol::Timer::after(std::time::Duration::from_secs(10)).await;
        Err("no HTTP answer within 10 s".to_string())
    };
    smol::block_on(smol::future::or(request, timeout))
}

/// The real daemon's serve config, as its LocalAPI reports it.
fn daemon_serve_config(node: &Node) -> Value {
    let got = localapi(&node.socket, "GET", SERVE_CONFIG, None, b"");
    assert_eq!(
        got.status,
        200,
        "GET {SERVE_CONFIG}: {}",
        String::from_utf8_lossy(&got.body)
    );
    got.json()
}

/// Waits until the real daemon holds `want`, then checks that its CLI
/// (`tailscale serve status --json`, its own LocalAPI client) agrees.
fn wait_until_served(node: &Node, want: &Value) {
    eventually(
        &format!("the real daemon to hold the serve config {want}"),
        || (daemon_serve_config(node) == *want).then_some(()),
    );
    let out = node.tailscale(&["serve", "status", "--json"]);
    assert!(out.status.success(), "tailscale serve status: {out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).expect("serve status JSON");
    assert_eq!(cli, *want);
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Writes `v` to a temporary file beside `path` and renames it over.
fn replace(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    write(&tmp, v);
    std::fs::rename(&tmp, path).unwrap();
}

fn forward(port: u16) -> Value {
    json!({"TCPForward": format!("127.0.0.1:{port}")})
}

fn tcp_forward_from_the_file_carries_a_peers_connections_and_follows_changes() {
    prepare();
    let hs = Headscale::start();
    let key = hs.auth_key("alice");

    // The servers behind node-a's forwards, on ports of their own. And a
    // decoy on the first served port itself: node-a's userspace netstack
    // hands a peer's connection to its own tailnet IP at a port it does not
    // serve to 127.0.0.1 at that port, so reaching the decoy through node-a
    // means "not served", reaching first/second means "forwarded by serve".
    let first = LineServer::start(0, "first");
    let second = LineServer::start(0, "second");
    let (port_a, port_b) = (8443, 9443);
    let decoy = LineServer::start(port_a, "not served");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.json");
    let config1 = json!({"TCP": {port_a.to_string(): forward(first.port)}});
    write(&file, &config1);

    let socks = free_port();
    let mut a = Node::real();
    a.login(&hs, &key, "node-a")
        .var("TS_SERVE_CONFIG", &file.display().to_string());
    let mut b = Node::real();
    b.login(&hs, &key, "node-b")
        .var("TS_SOCKS5_SERVER", &format!("127.0.0.1:{socks}"));
    let mut boot_a = a.start();
    let mut boot_b = b.start();
    boot_a.wait_for(STARTUP);
    boot_b.wait_for(STARTUP);
    let ip_a = a.ipv4();

    // 1. The file's config is what the real daemon serves, and node-b's
    // connection to node-a's port is forwarded to the first server.
    wait_until_served(&a, &config1);
    assert_eq!(line_through(socks, &ip_a, port_a), "first\n");
    assert_eq!(second.accepted(), 0, "nothing forwards to the second yet");

    // 2. A new file renamed over the old one: the port now forwards to the
    // second server, and a new port to the first.
    let config2 = json!({"TCP": {
        port_a.to_string(): forward(second.port),
        port_b.to_string(): forward(first.port),
    }});
    replace(&file, &config2);
    wait_until_served(&a, &config2);
    assert_eq!(line_through(socks, &ip_a, port_a), "second\n");
    assert_eq!(line_through(socks, &ip_a, port_b), "first\n");

    // 3. Rewritten in place without the first port: node-a no longer
    // serves it (the connection reaches the decoy behind node-a's netstack).
    let config3 = json!({"TCP": {port_b.to_string(): forward(second.port)}});
    write(&file, &config3);
    wait_until_served(&a, &config3);
    assert_eq!(line_through(socks, &ip_a, port_b), "second\n");
    assert_eq!(line_through(socks, &ip_a, port_a), "not served\n");
    assert!(decoy.accepted() >= 1);

    // 4. The served port turns from a TCP forward into HTTP (a text
    // handler for node-a's name): tailscaled refuses that in place, so
    // containerboot removes the port first, then applies the file.
    let name = a.status()["Self"]["DNSName"]
        .as_str()
        .expect("node-a's DNSName")
        .trim_end_matches('.')
        .to_string();
    let config4 = json!({
        "TCP": {port_b.to_string(): {"HTTP": true}},
        "Web": {format!("{name}:{port_b}"): {"Handlers": {"/": {"Text": "served over http"}}}}
    });
    replace(&file, &config4);
    wait_until_served(&a, &config4);
    let (status, body) = eventually("an HTTP answer from node-a through node-b", || {
        http_get_through(socks, &ip_a, port_b, &name).ok()
    });
    assert_eq!((status, body.as_str()), (200, "served over http"));

    let fa = boot_a.terminate();
    assert_eq!(fa.code, Some(0), "log:\n{}", fa.dump());
    // One apply per change, no failure on the way (a wrong ETag would have
    // shown as 412s and a retry warning, the change of kind as a 500).
    let applies = fa.log.iter().filter(|l| l.contains(APPLIED)).count();
    assert_eq!(applies, 4, "log:\n{}", fa.dump());
    assert!(
        fa.log
            .iter()
            .any(|l| l.contains(&format!("port {port_b} (tcp to http)"))),
        "log:\n{}",
        fa.dump()
    );
    assert!(
        !fa.log
            .iter()
            .any(|l| l.contains("serve config") && l.contains("failed")),
        "log:\n{}",
        fa.dump()
    );
    let fb = boot_b.terminate();
    assert_eq!(fb.code, Some(0), "log:\n{}", fb.dump());
}

/// What a LocalAPI client sees of `serve-config`, step by step, on a node
/// booted by containerboot without `TS_SERVE_CONFIG`.
#[derive(Debug, PartialEq)]
struct Endpoint {
    /// The first GET's body (no config was ever set).
    initial: Value,
    /// Every GET carried an `Etag` header.
    etag_on_every_get: bool,
    /// A POST whose `If-Match` is no ETag the daemon gave.
    stale_if_match: u16,
    /// A POST with the first GET's ETag; then the GET's body.
    with_etag: u16,
    after: Value,
    /// The ETag changed with the config.
    etag_changed: bool,
    /// A POST with the first ETag again (the config changed since).
    old_etag_again: u16,
    /// A POST changing a served port from a TCP forward to HTTP: the status
    /// and whether the config stayed as it was.
    type_change: u16,
    type_change_kept_the_config: bool,
    /// `{}` without `If-Match`: the status and the GET's body after.
    clear: u16,
    after_clear: Value,
}

fn observe_endpoint(n: &Node) -> Endpoint {
    let mut boot = n.start();
    boot.wait_for(STARTUP);
    let get = || {
        let g = localapi(&n.socket, "GET", SERVE_CONFIG, None, b"");
        assert_eq!(g.status, 200, "{g:?}");
        g
    };
    let post = |if_match: Option<&str>, v: &Value| {
        localapi(
            &n.socket,
            "POST",
            SERVE_CONFIG,
            if_match,
            v.to_string().as_bytes(),
        )
        .status
    };
    let tcp = json!({"TCP": {"8443": forward(1)}});
    let http = json!({"TCP": {"8443": {"HTTP": true}}});
    let first = get();
    let stale_if_match = post(Some("0123456789abcdef"), &tcp);
    let unchanged = get();
    let tag = first.etag.clone().unwrap_or_default();
    let with_etag = post(Some(&tag), &tcp);
    let after = get();
    let old_etag_again = post(Some(&tag), &json!({}));
    let type_change = post(after.etag.as_deref(), &http);
    let after_type_change = get();
    let clear = post(None, &json!({}));
    let after_clear = get();
    let f = boot.terminate();
    assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    Endpoint {
        initial: first.json(),
        etag_on_every_get: [&first, &unchanged, &after, &after_type_change, &after_clear]
            .iter()
            .all(|g| g.etag.as_ref().is_some_and(|t| !t.is_empty())),
        stale_if_match,
        with_etag,
        after: after.json(),
        etag_changed: after.etag != first.etag && unchanged.etag == first.etag,
        old_etag_again,
        type_change,
        type_change_kept_the_config: after_type_change.json() == tcp,
        clear,
        after_clear: after_clear.json(),
    }
}

/// The simulator's `serve-config` against the real daemon's, on what
/// containerboot relies on (ETag, If-Match, 412) and what a file change
/// can run into (a port changing its kind is refused in place).
fn simulator_serve_config_matches_the_real_daemon() {
    prepare();
    let hs = Headscale::start();
    let key = hs.auth_key("alice");
    let mut real = Node::real();
    real.login(&hs, &key, "alpha");
    let mut sim = Node::simulated();
    sim.login(&hs, &key, "alpha");
    let from_real = observe_endpoint(&real);
    let from_sim = observe_endpoint(&sim);
    // The facts about the real daemon first, so a wrong expectation fails
    // here and not as a diff.
    let expected = Endpoint {
        initial: Value::Null,
        etag_on_every_get: true,
        stale_if_match: 412,
        with_etag: 200,
        after: json!({"TCP": {"8443": forward(1)}}),
        etag_changed: true,
        old_etag_again: 412,
        type_change: 500,
        type_change_kept_the_config: true,
        clear: 200,
        after_clear: json!({}),
    };
    assert_eq!(from_real, expected);
    assert_eq!(from_sim, from_real);
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [Need::Root, Need::Program("ip"), Need::RealPrograms(REAL_PROGRAMS)],
        tests: [
            tcp_forward_from_the_file_carries_a_peers_connections_and_follows_changes,
            simulator_serve_config_matches_the_real_daemon,
        ],
    })
}
