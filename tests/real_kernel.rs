//! containerboot in kernel mode as an ingress and an egress proxy, end to
//! end with the real programs: the real `tailscaled` on a real tun device,
//! the real netfilter (containerboot's rules and tailscaled's own), and
//! data carried over the tailnet by WireGuard between two real nodes
//! logged in to a real headscale (see tests/real/README.md).
//!
//! Topology, every namespace the test's own (tests/real/netns.rs):
//!
//! ```text
//!  hub (the test's thread)            proxy                      server
//!  headscale on 192.0.2.1             containerboot, kernel      the TCP server
//!  node-b: tailscaled, userspace      mode, TS_USERSPACE=false   (ingress) or the
//!  (SOCKS5 on 127.0.0.1, its          tailscaled on tailscale0   client (egress)
//!  netstack dials 127.0.0.1)
//!        h0 192.0.2.1/24 ───veth─── a0 192.0.2.2/24, default via 192.0.2.1
//!                                   a1 198.51.100.1/24 ───veth─── s0 198.51.100.2/24
//!                                                                  default via 198.51.100.1
//! ```
//!
//! - Ingress: the proxy runs with `TS_DEST_IP=198.51.100.2`; node-b
//!   connects through its SOCKS5 proxy to the proxy's tailnet IP and talks
//!   to the server behind it.
//! - Egress: the proxy runs with `TS_TAILNET_TARGET_IP` (or `_FQDN`) naming
//!   node-b; a client in `server` connects to the proxy's LAN address
//!   198.51.100.1 and talks to a listener behind node-b's netstack.
//!
//! Each with the default iptables backend and with
//! `TS_DEBUG_FIREWALL_MODE=nftables` (which tailscaled, inheriting the
//! environment, follows too).
//!
//! Why a file of its own and not more tests in `tests/real_peers.rs`: these
//! need more of the machine (a tun device, iptables, nft) and a topology of
//! several namespaces, where `real_peers` keeps each test in one namespace
//! in userspace mode; the harness reports each file's needs once.

#[path = "support/harness.rs"]
mod harness;
#[path = "real/netns.rs"]
mod netns;
#[path = "real/support.rs"]
mod real;

use harness::Need;
use netns::{HostForwarding, Netns, hub};
use real::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The real programs this suite runs.
const REAL_PROGRAMS: &[&str] = &["tailscaled", "tailscale", "headscale"];

const HUB: &str = "192.0.2.1";
const PROXY_LAN: &str = "198.51.100.1";
const SERVER: &str = "198.51.100.2";

/// The netfilter backend containerboot (and tailscaled) use.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Firewall {
    /// `TS_DEBUG_FIREWALL_MODE` unset: iptables, containerboot's default.
    Iptables,
    /// `TS_DEBUG_FIREWALL_MODE=nftables`.
    Nftables,
}

/// The namespaces besides the test thread's own (the hub), linked as the
/// module's documentation draws them.
struct World {
    proxy: Netns,
    server: Netns,
    host_forwarding: HostForwarding,
    /// `/etc/resolv.conf` before the test: tailscaled in kernel mode has a
    /// DNS manager for the host's files (containerboot passes
    /// `--accept-dns=false`, so it must leave them alone).
    resolv_conf: Vec<u8>,
}

fn world() -> World {
    real_bin();
    let resolv_conf = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let (hub, host_forwarding) = hub();
    let proxy = Netns::new("proxy");
    let server = Netns::new("server");
    hub.link("h0", &format!("{HUB}/24"), &proxy, "a0", "192.0.2.2/24");
    proxy.link(
        "a1",
        &format!("{PROXY_LAN}/24"),
        &server,
        "s0",
        &format!("{SERVER}/24"),
    );
    server.ip(&format!("route add default via {PROXY_LAN}"));
    // A default route, as a pod has. Without one, tailscaled 1.102 takes
    // every link change (its own tailscale0 coming up) as one that may
    // affect all connections and closes its control connection; a reconnect
    // within 2 minutes of the first dial then goes to port 443 over TLS
    // only ("controlhttp: forcing port 443 dial due to recent noise
    // dial"), which the plain-HTTP headscale does not serve: the node stays
    // offline to the others and never learns their endpoints. The hub
    // routes nothing further.
    proxy.ip(&format!("route add default via {HUB}"));
    World {
        proxy,
        server,
        host_forwarding,
        resolv_conf,
    }
}

impl World {
    /// What a test checks of the host at its end: nothing of it changed.
    fn assert_host_untouched(&mut self) {
        self.host_forwarding.assert_unchanged();
        assert_eq!(
            std::fs::read("/etc/resolv.conf").unwrap_or_default(),
            self.resolv_conf,
            "/etc/resolv.conf changed during the test"
        );
    }

    /// The proxy's rules as its netfilter tools print them.
    fn proxy_rules(&self, fw: Firewall) -> String {
        match fw {
            Firewall::Iptables => self.proxy.cmd("iptables-save", &[]),
            Firewall::Nftables => self.proxy.cmd("nft", &["list", "ruleset"]),
        }
    }
}

/// The kernel-mode proxy node, logged in to `hs`.
fn proxy_node(hs: &Headscale, key: &str, hostname: &str, fw: Firewall) -> Node {
    let mut n = Node::real();
    n.login(hs, key, hostname).state_dir().kernel_mode();
    if fw == Firewall::Nftables {
        n.var("TS_DEBUG_FIREWALL_MODE", "nftables");
    }
    n
}

/// A TCP server that answers each line it reads with `TAG: line`, on its
/// own thread until dropped. Records where each connection came from.
struct EchoServer {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Serves on `listener` (bound in whichever namespace it belongs to).
    fn start(listener: TcpListener, tag: &'static str) -> EchoServer {
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop) = (peers.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, from)) => {
                            peers.lock().unwrap().push(from);
                            // A connection a client gave up on may fail
                            // here; the client retries with a new one.
                            let _ = echo_one(conn, tag);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        EchoServer {
            port,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

fn echo_one(conn: TcpStream, tag: &str) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    (&conn).write_all(format!("{tag}: {line}").as_bytes())
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `msg` and a newline on `conn`, returns the line that comes back.
fn exchange(conn: TcpStream, msg: &str) -> std::io::Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&conn).write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    Ok(line)
}

/// Retries `f` until it succeeds or PATIENCE passes (a safety net, not a
/// timing); then panics with its last error and what `diagnose` reports.
fn until_ok<T>(
    what: &str,
    diagnose: impl FnOnce() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!(
                "{what}: no success within {PATIENCE:?} ({attempts} attempts); the last error: \
                 {e}\n{}",
                diagnose()
            ),
            Err(e) => {
                eprintln!("{what}: attempt {attempts}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// What the proxy's namespace and both nodes report, for a failure.
fn diagnose(w: &World, nodes: &[(&Node, &Boot)]) -> String {
    let mut out = String::new();
    let mut show = |title: &str, text: String| {
        out.push_str(&format!("\n===== {title}\n{text}"));
    };
    for (program, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[]),
        ("nft", &["list", "ruleset"]),
        ("ip", &["addr"]),
        ("ip", &["rule"]),
        ("ip", &["route", "show", "table", "all"]),
        (
            "sysctl",
            &["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"],
        ),
    ] {
        let out = w.proxy.run(|| {
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
        });
        let text = match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        };
        show(&format!("proxy: {program} {}", args.join(" ")), text);
    }
    for (node, boot) in nodes {
        let st = node.tailscale(&["status"]);
        show(
            &format!("{}: tailscale status", node.dir.path().display()),
            format!(
                "{}{}",
                String::from_utf8_lossy(&st.stdout),
                String::from_utf8_lossy(&st.stderr)
            ),
        );
        show(&format!("{}: log", node.dir.path().display()), boot.dump());
    }
    out
}

/// Stops a containerboot; it must exit 0.
fn stop(boot: Boot) -> Finished {
    let f = boot.terminate();
    assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    f
}

fn ingress(fw: Firewall) {
    let mut w = world();
    let hs = Headscale::start_on(HUB);
    let key = hs.auth_key("alice");
    let server = EchoServer::start(
        w.server
            .run(|| TcpListener::bind((SERVER, 0)))
            .expect("bind the server"),
        "server",
    );

    let mut proxy = proxy_node(&hs, &key, "ingress", fw);
    proxy.var("TS_DEST_IP", SERVER);
    let mut boot_proxy = w.proxy.run(|| proxy.start());
    let socks = free_port();
    let mut client = Node::real();
    client
        .login(&hs, &key, "node-b")
        .state_dir()
        .var("TS_SOCKS5_SERVER", &format!("127.0.0.1:{socks}"));
    let mut boot_client = client.start();
    boot_proxy.wait_for(STARTUP);
    boot_client.wait_for(STARTUP);
    let proxy_ip = proxy.ipv4();

    // "Startup complete" comes after the rules are in place; the first
    // attempts may still fail while WireGuard's first handshake is retried.
    let echoed = until_ok(
        "node-b -> the proxy's tailnet IP -> the server",
        || diagnose(&w, &[(&proxy, &boot_proxy), (&client, &boot_client)]),
        || {
            let conn = socks5_connect(socks, &proxy_ip, server.port)
                .map_err(|e| format!("SOCKS5: {e}"))?;
            exchange(conn, "hello through the ingress").map_err(|e| format!("exchange: {e}"))
        },
    );
    assert_eq!(echoed, "server: hello through the ingress\n");

    // The proxy's namespace forwards, the host's was left alone.
    assert_eq!(w.proxy.sysctl("net/ipv4/ip_forward"), "1");
    assert!(
        w.proxy.ip("link show tailscale0").contains("tailscale0"),
        "tailscaled made its tun device in the proxy's namespace"
    );
    let rules = w.proxy_rules(fw);
    let dnat = match fw {
        Firewall::Iptables => {
            format!("-A TS-CB-PREROUTING -d {proxy_ip}/32 -j DNAT --to-destination {SERVER}")
        }
        Firewall::Nftables => format!("ip daddr {proxy_ip} dnat to {SERVER}"),
    };
    assert!(rules.contains(&dnat), "no {dnat:?} in:\n{rules}");
    eprintln!("the server saw connections from {:?}", server.peers());

    let f = stop(boot_proxy);
    if fw == Firewall::Nftables {
        assert!(f.has("netfilter: using nftables"), "{}", f.dump());
    }
    stop(boot_client);
    drop(server);
    w.assert_host_untouched();
}

/// Where the egress proxy is pointed at node-b.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Ip,
    Fqdn,
}

fn egress(fw: Firewall, target: Target) {
    let mut w = world();
    let hs = Headscale::start_on(HUB);
    let key = hs.auth_key("alice");

    // node-b in the hub, userspace: its netstack hands a connection to its
    // tailnet IP to 127.0.0.1 at the same port, here.
    let behind_b = EchoServer::start(
        TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"),
        "node-b",
    );
    let mut b = Node::real();
    b.login(&hs, &key, "node-b").state_dir();
    let mut boot_b = b.start();
    boot_b.wait_for(STARTUP);
    let ip_b = b.ipv4();

    let mut proxy = proxy_node(&hs, &key, "egress", fw);
    match target {
        Target::Ip => proxy.var("TS_TAILNET_TARGET_IP", &ip_b),
        Target::Fqdn => proxy.var("TS_TAILNET_TARGET_FQDN", "node-b.real.test"),
    };
    let mut boot_proxy = w.proxy.run(|| proxy.start());
    boot_proxy.wait_for(STARTUP);
    let proxy_ip = proxy.ipv4();

    let port = behind_b.port;
    let echoed = until_ok(
        "a client -> the proxy's LAN address -> node-b",
        || diagnose(&w, &[(&proxy, &boot_proxy), (&b, &boot_b)]),
        || {
            let conn = w
                .server
                .run(|| {
                    TcpStream::connect_timeout(
                        &format!("{PROXY_LAN}:{port}").parse().unwrap(),
                        Duration::from_secs(5),
                    )
                })
                .map_err(|e| format!("connect: {e}"))?;
            exchange(conn, "hello through the egress").map_err(|e| format!("exchange: {e}"))
        },
    );
    assert_eq!(echoed, "node-b: hello through the egress\n");

    assert_eq!(w.proxy.sysctl("net/ipv4/ip_forward"), "1");
    let rules = w.proxy_rules(fw);
    let expected = match fw {
        Firewall::Iptables => [
            format!("-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination {ip_b}"),
            format!("-A TS-CB-POSTROUTING -d {ip_b}/32 -j SNAT --to-source {proxy_ip}"),
        ],
        Firewall::Nftables => [
            format!("iifname != \"tailscale0\" dnat to {ip_b}"),
            format!("ip daddr {ip_b} snat to {proxy_ip}"),
        ],
    };
    for rule in expected {
        assert!(rules.contains(&rule), "no {rule:?} in:\n{rules}");
    }
    eprintln!(
        "node-b's listener saw connections from {:?}",
        behind_b.peers()
    );

    let f = stop(boot_proxy);
    if fw == Firewall::Nftables {
        assert!(f.has("netfilter: using nftables"), "{}", f.dump());
    }
    stop(boot_b);
    drop(behind_b);
    w.assert_host_untouched();
}

fn ingress_reaches_the_server_behind_ts_dest_ip() {
    ingress(Firewall::Iptables);
}

fn egress_reaches_the_tailnet_target_ip() {
    egress(Firewall::Iptables, Target::Ip);
}

fn ingress_with_nftables() {
    ingress(Firewall::Nftables);
}

fn egress_to_the_tailnet_target_fqdn_with_nftables() {
    egress(Firewall::Nftables, Target::Fqdn);
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [
            Need::Root,
            Need::Program("ip"),
            Need::Path("/dev/net/tun"),
            Need::Program("iptables-restore"),
            Need::Program("ip6tables-restore"),
            Need::RealPrograms(REAL_PROGRAMS),
        ],
        tests: [
            ingress_reaches_the_server_behind_ts_dest_ip,
            egress_reaches_the_tailnet_target_ip,
            ingress_with_nftables [Need::Program("nft")],
            egress_to_the_tailnet_target_fqdn_with_nftables [Need::Program("nft")],
        ],
    })
}
